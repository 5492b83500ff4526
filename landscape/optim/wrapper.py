"""A one-call, ``torch.optim``-style optimizer around a gradient rule and a base optimizer.

For people used to davda54/sam (``SAM(params, base_optimizer_class, rho=..., **base_kwargs)``)::

    opt = SharpnessAwareOptimizer(model, torch.optim.AdamW, rule="func-sam", rho=0.05, lr=1e-3)
    for x, y in loader:
        loss = opt.step(inputs=x, targets=y)       # rule fills .grad, base optimizer steps

``opt.step(closure)`` with a closure that runs forward + ``loss.backward()`` also works for the rules
that only need gradients at parameter points (plain, sam, asam, precond-sam, fsgld).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from landscape.losses import LossLike
from landscape.optim.base import GradientRule
from landscape.optim.langevin import SGLD
from landscape.optim.rules import make_rule
from landscape.optim.step import trained_parameters

_BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgld": SGLD,
}


class SharpnessAwareOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` that forms the gradient with a rule and steps a base optimizer.

    ``model``'s trained parameters (``requires_grad``) are optimised. ``base_optimizer`` is a
    ``torch.optim.Optimizer`` class or one of "sgd", "adamw", "adam", "sgld"; ``base_kwargs``
    (``lr``, ``weight_decay``, ``betas``, ``beta``, ...) go to it. ``rule`` is a name from
    :data:`landscape.optim.RULES` (with ``rho`` and ``rule_options``) or a :class:`GradientRule`.
    The base optimizer shares this object's ``param_groups``, so LR schedulers may wrap either.
    ``state_dict()`` holds both the base optimizer's and the rule's state.

    Each :meth:`step` costs what the rule costs (see ``rule.cost``) plus one base-optimizer step.
    """

    def __init__(
        self,
        model: nn.Module,
        base_optimizer: type[torch.optim.Optimizer] | str = torch.optim.AdamW,
        rule: str | GradientRule = "sam",
        *,
        rho: float | None = None,
        loss_fn: LossLike = "cross_entropy",
        rule_options: dict[str, Any] | None = None,
        **base_kwargs: Any,
    ) -> None:
        params = [p for _, p in trained_parameters(model)]
        if not params:
            raise ValueError("the model has no parameter with requires_grad=True")
        super().__init__(params, dict(base_kwargs))
        if isinstance(base_optimizer, str):
            if base_optimizer not in _BASE_OPTIMIZERS:
                raise ValueError(
                    f"unknown base optimizer {base_optimizer!r}; choose one of {sorted(_BASE_OPTIMIZERS)}"
                )
            base_optimizer = _BASE_OPTIMIZERS[base_optimizer]
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        if isinstance(rule, GradientRule):
            if rho is not None or rule_options:
                raise ValueError("pass rho and rule_options only with a rule name")
            self.rule = rule
        else:
            self.rule = make_rule(rule, rho=rho, **(rule_options or {}))
        self.model = model
        self.loss_fn = loss_fn

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        *,
        inputs: Any = None,
        targets: Any = None,
    ) -> Tensor:
        """Form the rule's gradient on a batch, then take one base-optimizer step.

        Either ``inputs``/``targets`` (any rule) or a davda54-style ``closure`` that runs forward
        + ``loss.backward()`` and returns the loss (rules with ``supports_closure``; the closure
        need not zero the gradients). Returns the detached batch loss the rule reports.
        """
        if closure is not None:
            if inputs is not None or targets is not None:
                raise ValueError("pass either a closure or inputs/targets, not both")
            loss = self.rule.compute_gradient_from_closure(closure, self.model, optimizer=self.base_optimizer)
        elif inputs is None or targets is None:
            raise ValueError("step() needs inputs= and targets= (or a closure)")
        else:
            loss = self.rule.compute_gradient(
                self.model, inputs, targets, loss_fn=self.loss_fn, optimizer=self.base_optimizer
            )
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (rules overwrite ``.grad`` anyway; kept for torch.optim habits)."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"base": base optimizer state, "rule": rule state}``."""
        return {"base": self.base_optimizer.state_dict(), "rule": self.rule.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.rule.load_state_dict(state_dict["rule"])
