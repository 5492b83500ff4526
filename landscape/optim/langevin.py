"""Langevin updates: SGLD (a base optimizer) and fSGLD's Gaussian-perturbed gradient (a rule).

SGLD (Welling & Teh, ICML 2011, optimisation form): ``theta <- theta - lr grad U(theta) +
sqrt(2 lr / beta) xi``, ``xi ~ N(0, I)``, with U the mean training loss and beta the inverse
temperature. Its stationary law is the Gibbs measure ``exp(-beta U)`` up to O(lr) discretisation
error: on ``U = a theta^2 / 2`` the variance is ``1 / (beta a (1 - lr a / 2))``.

fSGLD (Bruno, Hwang, An, Sabanis, Lim, "Flatness-Aware Stochastic Gradient Langevin Dynamics",
2025, arXiv 2510.02174): the same update with the gradient taken at ``theta + e``,
``e ~ N(0, sigma^2 I)``, and ``sigma = beta^{-(1 + eta)/4}`` (eta = 0.01, the authors' setting),
so that the chain targets the Hessian-trace regularised objective ``U + (sigma^2 / 2) tr H`` (the Taylor identity ``E U(theta + e) = U + sigma^2/2 tr H +
O(sigma^4)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from landscape.optim.base import GradientRule, check_finite_positive
from landscape.optim.noise import GaussianNoise, GaussianPerturbation, SeededGenerator
from landscape.optim.step import Step
from landscape.optim.tensors import write_grads


def fsgld_sigma(beta: float, eta: float = 0.01) -> float:
    """fSGLD's coupled perturbation scale ``sigma = beta^{-(1 + eta)/4}`` (arXiv 2510.02174).

    ``sigma^2 = beta^{-(1+eta)/2}`` shrinks more slowly than the temperature 1/beta, so the
    flatness term ``(sigma^2/2) tr H`` outlives the thermal noise as beta -> infinity. eta = 0.01
    is the authors' default (youngsikhwang/Flatness-aware-SGLD ``main.py``).
    """
    beta = check_finite_positive(beta, "beta")
    if eta <= 0:
        raise ValueError(f"eta must be positive, got {eta}")
    return float(beta ** (-(1.0 + eta) / 4.0))


class SGLD(torch.optim.Optimizer):
    """Stochastic gradient Langevin dynamics as a ``torch.optim.Optimizer``.

    ``theta <- theta - lr (grad + weight_decay theta) + sqrt(2 lr / beta) xi``, ``xi ~ N(0, I)``
    (Welling & Teh 2011; the optimisation form with inverse temperature beta used by Bruno et al. 2025, arXiv 2510.02174).
    ``beta = inf`` is plain SGD. The noise comes from a seeded generator (``generator`` or
    ``seed``) whose state is part of ``state_dict()``. Default beta = 1e8 (the README example of the fSGLD authors'
    code, youngsikhwang/Flatness-aware-SGLD, uses beta^-1 = 1e-8).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        beta: float = 1e8,
        weight_decay: float = 0.0,
        *,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        check_finite_positive(lr, "lr")
        check_finite_positive(beta, "beta")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        super().__init__(params, {"lr": lr, "beta": beta, "weight_decay": weight_decay})
        self.noise = SeededGenerator(seed, generator)
        self._buffers: dict[int, GaussianNoise] = {}  # per param group: reused noise storage

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One SGLD update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            lr, beta, weight_decay = group["lr"], group["beta"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if weight_decay != 0:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
            torch._foreach_add_(params, grads, alpha=-lr)
            noise_std = math.sqrt(2.0 * lr / beta)
            if noise_std > 0:
                buffer = self._buffers.setdefault(index, GaussianNoise())
                torch._foreach_add_(params, buffer.draw(params, self.noise, std=noise_std))
        return loss

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus the noise generator's state."""
        state = super().state_dict()
        state["noise_generator"] = self.noise.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, generator included."""
        state_dict = dict(state_dict)
        noise = state_dict.pop("noise_generator", None)
        super().load_state_dict(state_dict)
        if noise is not None:
            self.noise.load_state_dict(noise)


class FSGLD(GradientRule):
    """fSGLD's gradient: ``grad U(theta + e)``, ``e ~ N(0, sigma^2 I)``, parameters restored after.

    Composes with :class:`SGLD` as the base optimizer (arXiv 2510.02174; the official code perturbs,
    runs forward/backward, subtracts e, then takes the Langevin step). sigma is ``sigma`` if
    given, else ``fsgld_sigma(beta, eta)`` with ``beta`` given here or read from the SGLD
    ``optimizer``'s first param group. e comes from the rule's seeded generator. Cost: 1 forward
    + 1 backward (one noise draw and one parameter copy). BatchNorm statistics are updated at the
    perturbed point (the only pass). The returned loss is the loss at ``theta + e``.
    """

    name = "fsgld"
    cost = "1F+1B"

    def __init__(
        self,
        *,
        sigma: float | None = None,
        beta: float | None = None,
        eta: float = 0.01,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if sigma is not None and sigma < 0:
            raise ValueError(f"sigma must be non-negative, got {sigma}")
        self.sigma = sigma
        self.beta = beta
        self.eta = float(eta)
        self._perturbation = GaussianPerturbation()

    def current_sigma(self, optimizer: torch.optim.Optimizer | None = None) -> float:
        """sigma: given directly, or coupled to beta (given or read from the SGLD optimizer)."""
        if self.sigma is not None:
            return float(self.sigma)
        beta = self.beta
        if beta is None:
            base = getattr(optimizer, "base_optimizer", optimizer)
            if base is None or "beta" not in base.param_groups[0]:
                raise ValueError("fsgld needs sigma=, beta= or an SGLD optimizer to read beta from")
            beta = base.param_groups[0]["beta"]
        return fsgld_sigma(beta, self.eta)

    def _compute(self, step: Step) -> Tensor:
        sigma = self.current_sigma(step.optimizer)
        self._perturbation.apply_(step.params, self.generator, std=sigma)
        try:
            value, grads = step.gradient()
        finally:
            self._perturbation.restore_()
        write_grads(step.params, grads)
        return value
