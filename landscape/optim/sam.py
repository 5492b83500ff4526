"""Plain gradients and the parameter-space SAM family: SAM, ASAM, precond-SAM, m-SAM.

RW-SAM, which perturbs along per-sample gradients weighted by their norms, is in
:mod:`landscape.optim.rwsam`.

Every rule here evaluates ``grad L`` at one or more parameter points and leaves the update to the
base optimizer (weight decay therefore acts at the restored theta, as in davda54/sam).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from landscape.losses import Loss, batch_size
from landscape.optim.base import GradientRule, PerturbationRule, RhoSchedule
from landscape.optim.step import Step, slice_batch
from landscape.optim.tensors import write_grads


class PlainGradient(GradientRule):
    """The plain batch gradient ``g = grad L(theta)`` (rules ``sgd``, ``adamw``, ``sgld``).

    Cost: 1 forward + 1 backward. The name only records which base optimizer the CLI pairs it with.
    """

    cost = "1F+1B"

    def __init__(self, name: str = "sgd", *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.name = name

    def _compute(self, step: Step) -> Tensor:
        value, grads = step.gradient()
        write_grads(step.params, grads)
        return value


class SAM(PerturbationRule):
    """Sharpness-Aware Minimization: the gradient at the ascent point ``theta + e``.

    ``g_SAM = grad L(theta + rho eps*)``, ``eps* = g / ||g||`` (Foret, Kleiner, Mobahi, Neyshabur,
    ICLR 2021, arXiv 2010.01412; written as Eq. 2 in Singh et al. 2025, arXiv 2502.02407). The dependence of eps* on theta is dropped, as in the paper. With ``geometry`` the
    same class gives ASAM and precond-SAM (see :class:`PerturbationRule`).

    The perturbed pass replays the first pass's dropout masks and does not update BatchNorm
    running statistics. Cost: 2 forward + 2 backward; memory: one copy of the trained parameters.
    Default rho = 0.05 (davda54/sam and the google-research/sam CIFAR setting).
    """

    name = "sam"
    cost = "2F+2B"

    def _compute(self, step: Step) -> Tensor:
        rng = step.rng_state()
        value, grads = step.gradient()
        eps = self.perturbation(step.named, grads, self.current_rho(), step.optimizer)
        del grads
        with step.perturbed(eps, rng):
            _, perturbed_grads = step.gradient()
        write_grads(step.params, perturbed_grads)
        return value


class ASAM(SAM):
    """Adaptive SAM: ``e = rho T^2 g / ||T g||``, ``T = |w| + eta`` on weight tensors, else 1.

    Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization", ICML 2021 (the normalisation
    operator T_w of their Eq. 11/Sec. 3; "weight tensors" = parameter names containing "weight",
    as in the official SamsungLabs/ASAM code). Defaults rho = 0.5, eta = 0.01 (the official
    class defaults); rho is about 10x SAM's. Cost as SAM.
    """

    name = "asam"

    def __init__(
        self,
        rho: float = 0.5,
        *,
        eta: float = 0.01,
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            rho, geometry="adaptive", eta=eta, rho_warmup=rho_warmup, rho_schedule=rho_schedule, seed=seed
        )


class PrecondSAM(SAM):
    """Preconditioned SAM: ``g = grad L(theta + rho M^{-1} eps*)`` (Singh, Mobahi,
    Agarwala, Dauphin 2025, arXiv 2502.02407, Eq. 12).

    ``M = sqrt(v_hat) + eps_adam`` is the base AdamW's own denominator after its last completed
    step t (``v_hat = exp_avg_sq / (1 - beta2^t)``); M = 1 before Adam's first step. eps* is
    normalised first and preconditioned afterwards, so ``||e|| = rho ||M^{-1} eps*||``, which is
    about ``rho sqrt(n) / ||g||`` once v tracks g^2: rho lives on a much smaller scale than SAM's.
    Pass ``optimizer=<the AdamW>`` to :meth:`compute_gradient`. Default rho = 0.001 is ours (the
    paper gives no value; tune it). Cost: SAM's plus one elementwise divide.
    """

    name = "precond-sam"

    def __init__(
        self,
        rho: float = 0.001,
        *,
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(rho, geometry="adam", rho_warmup=rho_warmup, rho_schedule=rho_schedule, seed=seed)


class MSAM(PerturbationRule):
    """m-SAM: SAM with one perturbation per micro-batch of m consecutive samples.

    The batch is cut into micro-batches c of size m (the last one may be smaller). Each gets its
    own ``e_c = rho g_c / ||g_c||``, ``g_c = grad L_c(theta)``, and the result is
    ``sum_c (n_c / B) grad L_c(theta + e_c)`` (Foret et al. 2021, arXiv 2010.01412, Sec. 4
    "m-sharpness"; Luo, Harandi, Phung, Le 2025, arXiv 2509.18001, study why small m generalises
    better). m >= B is SAM. Micro-batches run one after another:
    the FLOPs of SAM but B/m sequential steps. The returned loss is ``sum_c (n_c/B) L_c(theta)``.
    BatchNorm running statistics are updated once per micro-batch by the unperturbed passes, as in
    gradient accumulation; the perturbed passes leave them alone. Micro-batches without any
    counted target (cross-entropy, all ``-100``) are skipped and B counts only the others.
    """

    name = "msam"
    cost = "2F+2B (B/m sequential micro-batches)"
    needs_targets = True
    local_perturbation = True  # each micro-batch keeps its own e_c, also data-parallel

    def __init__(
        self,
        rho: float = 0.05,
        *,
        m: int = 32,
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(rho, rho_warmup=rho_warmup, rho_schedule=rho_schedule, seed=seed)
        if m < 1:
            raise ValueError(f"micro-batch size m must be >= 1, got {m}")
        self.m = int(m)

    def _micro_batches(self, targets: Any, loss: Loss) -> list[tuple[int, int]]:
        """(start, stop) of the micro-batches that have a counted target."""
        total = batch_size(targets)
        spans = [(start, min(start + self.m, total)) for start in range(0, total, self.m)]
        return [(a, b) for a, b in spans if bool(loss.sample_has_targets(slice_batch(targets, a, b)).any())]

    def _local_count(self, loss: Loss, targets: Any) -> float:
        # m-SAM's mean weights micro-batches by their samples (B counts the micro-batches kept)
        return float(sum(b - a for a, b in self._micro_batches(targets, loss)))

    def _compute(self, step: Step) -> Tensor:
        params = step.params
        rho = self.current_rho()
        chunks = [(step.micro_batch(a, b), b - a) for a, b in self._micro_batches(step.targets, step.loss)]
        if not chunks:
            raise ValueError("no micro-batch has a counted target")
        counted = sum(n for _, n in chunks)
        accumulated: list[Tensor | None] = [None] * len(params)
        value = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
        for chunk, n in chunks:
            weight = n / counted
            rng = chunk.rng_state()
            chunk_value, grads = chunk.gradient()
            eps = self.perturbation(step.named, grads, rho, step.optimizer)
            del grads
            with chunk.perturbed(eps, rng):
                _, perturbed_grads = chunk.gradient()
            value = value + weight * chunk_value
            for i, g in enumerate(perturbed_grads):
                if g is None:
                    continue
                accumulated[i] = (
                    g * weight if accumulated[i] is None else accumulated[i].add_(g, alpha=weight)
                )
        write_grads(params, accumulated)
        return value
