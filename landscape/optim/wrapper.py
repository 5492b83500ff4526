"""A ``torch.optim``-style optimizer around a gradient rule and a base optimizer.

For people used to ``torch.optim`` and davda54/sam (``SAM(params, base_optimizer_class, rho=...)``)::

    opt = SharpnessAwareOptimizer(model, torch.optim.AdamW, rule="func-sam", rho=0.05, lr=1e-3)

    def closure():                                  # as for torch.optim.LBFGS or Lightning
        opt.zero_grad()
        loss = opt.loss(model(x), y)                # or any loss of model(x); see docs/optimizers.md
        loss.backward()
        return loss

    loss = opt.step(closure)                        # rule gradient (closure called per pass) + base step
    loss = opt.step(inputs=x, targets=y)            # the same from the batch
    loss = opt.compute_gradient(inputs=x, targets=y)  # only the rule's gradient into p.grad ...
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # ... clip, unscale, log ...
    opt.step()                                      # ... then the base step on it

Every rule works in every form (:mod:`landscape.optim.closure` says how a closure reaches the
rules that need the model outputs). ``param_groups`` and ``state`` *are* the base optimizer's (a
view, also after ``load_state_dict``), so LR schedulers, per-group options and ``GradScaler``
work on this object as on the base optimizer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import UserError
from landscape.losses import Loss, LossLike, as_loss
from landscape.optim.base import GradientRule
from landscape.optim.closure import note_targets
from landscape.optim.langevin import SGLD
from landscape.optim.rules import make_rule
from landscape.optim.step import split_labels, trained_parameters

_BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgld": SGLD,
}

_NO_GRADIENT = (
    "step() without a closure or inputs= steps on a rule gradient, and none was formed since the "
    "last step: call compute_gradient(...) first, or step(closure) / step(inputs=..., targets=...) "
    "(Lightning with precision='16-mixed' calls the closure itself: use 'bf16-mixed' or manual "
    "optimization)"
)


class SharpnessAwareOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` that forms the gradient with a rule and steps a base optimizer.

    ``model``'s trained parameters (``requires_grad``) are optimised; ``params`` may split them
    into groups with their own options (``[{"params": decay, "weight_decay": 0.1},
    {"params": no_decay, "weight_decay": 0.0}]``), as for any ``torch.optim`` optimizer.
    ``base_optimizer`` is a ``torch.optim.Optimizer`` class or one of "sgd", "adamw", "adam",
    "sgld"; ``base_kwargs`` (``lr``, ``weight_decay``, ``betas``, ``beta``, ...) go to it. ``rule``
    is a name from :data:`landscape.optim.RULES` (with ``rho`` and ``rule_options``) or a
    :class:`GradientRule`. ``loss_fn`` is the loss of ``step(inputs=..., targets=...)`` and of
    :meth:`loss` (default: cross-entropy, or the model's own for a dict batch with ``labels``).
    ``max_grad_norm`` clips the rule's gradient (global L2 norm) before the base step.

    ``param_groups`` and ``state`` are the base optimizer's own objects (read through, also after
    :meth:`load_state_dict`), so an LR scheduler may wrap either optimizer. ``state_dict()``
    holds both the base optimizer's and the rule's state.

    Each :meth:`step` costs what the rule costs (see ``rule.cost``) plus one base-optimizer step.
    """

    def __init__(
        self,
        model: nn.Module,
        base_optimizer: type[torch.optim.Optimizer] | str = torch.optim.AdamW,
        rule: str | GradientRule = "sam",
        *,
        rho: float | None = None,
        loss_fn: LossLike | None = None,
        rule_options: dict[str, Any] | None = None,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        max_grad_norm: float | None = None,
        **base_kwargs: Any,
    ) -> None:
        trained = [p for _, p in trained_parameters(model)]
        if not trained:
            raise ValueError("the model has no parameter with requires_grad=True")
        groups = _check_groups(trained, params)
        if isinstance(base_optimizer, str):
            if base_optimizer not in _BASE_OPTIMIZERS:
                raise ValueError(
                    f"unknown base optimizer {base_optimizer!r}; choose one of {sorted(_BASE_OPTIMIZERS)}"
                )
            base_optimizer = _BASE_OPTIMIZERS[base_optimizer]
        # torch.optim.Optimizer's own bookkeeping (hooks, step patching) on a scratch copy of the
        # groups; param_groups and state then read through to the base optimizer
        super().__init__([dict(g) for g in groups], dict(base_kwargs))
        self.base_optimizer = base_optimizer(groups, **base_kwargs)
        self.__dict__.pop("_pending_groups", None)
        self.__dict__.pop("_pending_state", None)
        self.defaults.update(self.base_optimizer.defaults)
        if isinstance(rule, GradientRule):
            if rho is not None or rule_options:
                raise ValueError("pass rho and rule_options only with a rule name")
            self.rule = rule
        else:
            self.rule = make_rule(rule, rho=rho, **(rule_options or {}))
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
        self.model = model
        self.loss_fn = loss_fn
        self.max_grad_norm = max_grad_norm
        self._criterion: Loss | None = None
        self._prepared = False

    # ------------------------------------------------------- the base optimizer's own objects
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's ``param_groups`` (the same list)."""
        base = self.__dict__.get("base_optimizer")
        if base is None:
            return self.__dict__.setdefault("_pending_groups", [])
        return base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        base = self.__dict__.get("base_optimizer")
        if base is None:
            self.__dict__["_pending_groups"] = groups
        else:
            base.param_groups = groups

    @property  # type: ignore[override]
    def state(self) -> defaultdict[Tensor, Any]:
        """The base optimizer's ``state`` (the same mapping)."""
        base = self.__dict__.get("base_optimizer")
        if base is None:
            return self.__dict__.setdefault("_pending_state", defaultdict(dict))
        return base.state

    @state.setter
    def state(self, state: defaultdict[Tensor, Any]) -> None:
        base = self.__dict__.get("base_optimizer")
        if base is None:
            self.__dict__["_pending_state"] = state
        else:
            base.state = state

    # ----------------------------------------------------------------------------- the loss
    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """The mean batch loss of ``outputs`` (``loss_fn``); inside a closure it also shows the
        rule the targets, which RW-SAM and m-SAM need (a closure does not show them otherwise)."""
        criterion = self._criterion
        if criterion is None:
            criterion = self._criterion = as_loss(self.loss_fn or "cross_entropy", model=self.model)
        from landscape.models import unwrap_output

        value = criterion(unwrap_output(outputs), targets)
        note_targets(outputs, targets, criterion)
        return value

    # ----------------------------------------------------------------------------- stepping
    def compute_gradient(
        self, closure: Callable[[], Any] | None = None, *, inputs: Any = None, targets: Any = None
    ) -> Tensor:
        """Fill ``p.grad`` with the rule's gradient (then clipped to ``max_grad_norm``) and return
        the detached batch loss; the next :meth:`step` without arguments steps on it.

        Either a closure (forward + ``backward()``, returns the loss; called once per pass of the
        rule) or ``inputs`` (+ ``targets``; a dict batch may carry ``labels`` instead).
        """
        if closure is not None:
            if inputs is not None or targets is not None:
                raise ValueError("pass either a closure or inputs/targets, not both")
            loss = self.rule.compute_gradient_from_closure(closure, self.model, optimizer=self.base_optimizer)
        else:
            inputs, targets, from_labels = split_labels(inputs, targets)
            if inputs is None or targets is None:
                raise ValueError("compute_gradient() needs inputs= and targets= (or a closure)")
            loss_fn = (
                self.loss_fn if self.loss_fn is not None else ("model" if from_labels else "cross_entropy")
            )
            loss = self.rule.compute_gradient(
                self.model, inputs, targets, loss_fn=loss_fn, optimizer=self.base_optimizer
            )
        if self.max_grad_norm is not None:
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self._prepared = True
        return loss

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        *,
        inputs: Any = None,
        targets: Any = None,
    ) -> Tensor | None:
        """Form the rule's gradient (:meth:`compute_gradient`), then take one base-optimizer step.

        Without a closure or inputs, step on the gradient :meth:`compute_gradient` formed (the
        form ``GradScaler.step(opt)`` and Hugging Face's ``Trainer`` call); stepping twice on one
        gradient, or on a gradient no rule formed, raises. Returns the detached batch loss (None
        when the gradient was formed before).
        """
        loss = None
        if closure is not None or inputs is not None:
            loss = self.compute_gradient(closure, inputs=inputs, targets=targets)
        elif targets is not None:
            raise ValueError("step(targets=...) needs inputs= as well")
        elif not self._prepared:
            raise UserError(_NO_GRADIENT)
        self.base_optimizer.step()
        self._prepared = False
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (rules overwrite ``.grad`` anyway; kept for torch.optim habits)."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"base": base optimizer state, "rule": rule state}``."""
        return {"base": self.base_optimizer.state_dict(), "rule": self.rule.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (``param_groups`` stays the base's own list)."""
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.rule.load_state_dict(state_dict["rule"])
        self._prepared = False

    def __getstate__(self) -> dict[str, Any]:
        """Everything (torch's own keeps only defaults, state and groups: the base and the rule
        would be lost in a copy)."""
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"SharpnessAwareOptimizer(rule={self.rule!r}, base={type(self.base_optimizer).__name__})"


def _check_groups(
    trained: list[Tensor], params: Iterable[Tensor] | Iterable[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Parameter groups that cover exactly the model's trained parameters (each once)."""
    if params is None:
        return [{"params": trained}]
    groups = list(params)
    if not groups:
        raise ValueError("params is empty")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    listed: list[Tensor] = []
    out = []
    for group in groups:
        members = group["params"]
        members = [members] if isinstance(members, Tensor) else list(members)
        listed.extend(members)
        out.append({**group, "params": members})
    if len({id(p) for p in listed}) != len(listed) or {id(p) for p in listed} != {id(p) for p in trained}:
        raise ValueError(
            "params must list each of the model's trained parameters (requires_grad) exactly once; "
            "the rule perturbs and fills the gradient of all of them"
        )
    return out
