"""The closure protocol: every rule driven by a ``torch.optim``-style closure.

A closure, as ``torch.optim.LBFGS`` and Lightning's automatic optimization call it, re-evaluates
the model: it (optionally) zeroes the gradients, runs the forward pass, calls ``backward()`` on
the loss and returns the loss. A rule may call it several times per step (SAM: at theta and at
theta + e). Rules that need only gradients at parameter points use it as it is; rules that need
the model's outputs F (the Functional-SAM family, RW-SAM, m-SAM) call it with the model's forward
*captured* (:class:`ClosureCapture`):

* a forward pre-hook records the model call (positional and keyword inputs) and the global RNG
  state just before the forward (so a later pass replays the same dropout masks);
* a forward hook records F with its graph to the parameters and hands the closure, in F's place,
  a detached leaf ``F^``; the closure's ``backward()`` then stops at ``F^`` and leaves
  ``r = dL/dF`` in ``F^.grad`` (cheap: no backward through the network), while the rule
  differentiates through F's graph itself (``J^T r``, or ``J^T`` of any other vector);
* the closure's loss becomes, for the rule, the surrogate ``L~(F) = L + <r, F - stop(F)>``
  (:class:`ClosureLoss`): its value is the closure's loss and its first derivatives are exact
  (``dL~/dF = r``, ``dL~/dtheta = J^T r = g``), which is all a rule differentiates.

Rules that split the loss by sample (RW-SAM, m-SAM) need the targets as well. They are known
when the closure computes its loss with the optimizer's criterion
(``SharpnessAwareOptimizer.loss(outputs, targets)``, :func:`note_targets`) or passes ``labels=``
to a Hugging Face model (the model's own loss, :class:`landscape.losses.ModelLoss`, then computed
from the captured logits). With the model call, the targets and the loss known, the rule runs on
the batch exactly as with ``inputs=``/``targets=`` (the captured first pass is reused).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import UserError
from landscape.losses import Loss, ModelLoss, SampleTerms
from landscape.models import unwrap_output
from landscape.optim.noise import RngState

__all__ = ["CapturedPass", "ClosureCapture", "ClosureLoss", "ModelInputs", "note_targets"]


@dataclass
class ModelInputs:
    """One model call's inputs: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class CapturedPass:
    """What one captured closure call saw (see the module docstring)."""

    outputs: Tensor
    value: Tensor | None
    residual: Tensor | None
    inputs: ModelInputs
    forward_rng: RngState
    targets: Any = None
    loss: Loss | None = None


_ACTIVE: list[ClosureCapture] = []


def note_targets(outputs: Any, targets: Any, loss: Loss) -> None:
    """Tell the capture running now (if any) the targets and loss its closure computes with."""
    if _ACTIVE:
        _ACTIVE[-1].note_targets(outputs, targets, loss)


def _replace(output: Any, old: Tensor, new: Tensor) -> Any:
    """``output`` with the tensor ``old`` (where :func:`unwrap_output` finds it) replaced by ``new``."""
    if output is old:
        return new
    if isinstance(output, tuple) and not hasattr(output, "logits"):
        return type(output)([_replace(output[0], old, new), *output[1:]])
    if isinstance(output, list):
        return [_replace(output[0], old, new), *output[1:]]
    if isinstance(output, Mapping) and not hasattr(output, "logits"):
        key = "logits" if "logits" in output else next(iter(output))
        return {**output, key: _replace(output[key], old, new)}
    if hasattr(output, "logits"):
        output.logits = _replace(output.logits, old, new)
        return output
    return output


class ClosureCapture:
    """Run a closure once with ``model``'s forward captured (module docstring).

    ``graph=False`` runs the model's forward without a graph (LOGIT-SAM's perturbed pass needs
    only ``r``). ``rule`` names the rule in error messages.
    """

    def __init__(self, model: nn.Module, params: Sequence[Tensor], rule: str, *, graph: bool = True) -> None:
        self.model, self.params, self.rule, self.graph = model, params, rule, graph
        self.calls = 0
        self._outputs: Tensor | None = None
        self._leaf: Tensor | None = None
        self._inputs = ModelInputs()
        self._rng: RngState | None = None
        self._grad_mode = True
        self._grad_disabled = False
        self._labels: Any = None
        self._model_loss: ModelLoss | None = None
        self.targets: Any = None
        self.loss: Loss | None = None

    # ----------------------------------------------------------------------------- hooks
    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls > 1:
            raise UserError(
                f"rule {self.rule!r}: the closure called {type(module).__name__} more than once; "
                "a rule that needs the model outputs takes one forward pass per closure call"
            )
        self._rng = RngState(self.params[0].device)
        if "labels" in kwargs and kwargs["labels"] is not None:
            try:
                self._model_loss = ModelLoss(module)
            except (UserError, ValueError):
                self._model_loss = None
            if self._model_loss is not None:  # the model's own loss: computed from the captured logits
                kwargs = dict(kwargs)
                self._labels = kwargs.pop("labels")
        self._inputs = ModelInputs(tuple(args), dict(kwargs))
        if not self.graph:
            self._grad_mode, self._grad_disabled = torch.is_grad_enabled(), True
            torch.set_grad_enabled(False)
        return args, kwargs

    def _post(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        if self._grad_disabled:
            torch.set_grad_enabled(self._grad_mode)
            self._grad_disabled = False
        outputs = unwrap_output(output)
        leaf = outputs.detach().requires_grad_(True)
        self._outputs, self._leaf = outputs, leaf
        output = _replace(output, outputs, leaf)
        if self._model_loss is not None and hasattr(output, "loss"):
            loss = self._model_loss(leaf, self._labels)
            if isinstance(output, Mapping):  # a ModelOutput: item and attribute
                output["loss"] = loss
            else:
                output.loss = loss
            self.note_targets(leaf, self._labels, self._model_loss)
        return output

    def note_targets(self, outputs: Any, targets: Any, loss: Loss) -> None:
        """The closure computed its loss with ``loss`` on ``targets`` (from the captured outputs)."""
        if self._leaf is not None and unwrap_output(outputs) is self._leaf:
            self.targets, self.loss = targets, loss

    # ------------------------------------------------------------------------------- run
    def run(self, closure: Callable[[], Any]) -> CapturedPass:
        """Call ``closure`` once, hooked; return what it saw. The parameters' ``.grad`` is left as
        it was found (``None``)."""
        saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        pre = self.model.register_forward_pre_hook(self._pre, with_kwargs=True)
        post = self.model.register_forward_hook(self._post, with_kwargs=True)
        _ACTIVE.append(self)
        try:
            with torch.enable_grad():
                value = closure()
        finally:
            _ACTIVE.remove(self)
            pre.remove()
            post.remove()
            if self._grad_disabled:  # the forward failed between the hooks
                torch.set_grad_enabled(self._grad_mode)
        direct = [p for p in self.params if p.grad is not None and bool(p.grad.ne(0).any())]
        for p, g in zip(self.params, saved, strict=True):
            p.grad = g
        return self._result(value, direct)

    def _result(self, value: Any, direct: list[Tensor]) -> CapturedPass:
        name = type(self.model).__name__
        if self._outputs is None or self._leaf is None or self._rng is None:
            raise UserError(
                f"rule {self.rule!r}: the closure never called {name}; build the optimizer on the "
                "module your closure calls"
            )
        if direct:
            raise UserError(
                f"rule {self.rule!r}: the closure's loss reaches the parameters other than through "
                f"the output of {name} (a penalty on the weights?); use the base optimizer's "
                "weight_decay, or call step(inputs=..., targets=...)"
            )
        residual = self._leaf.grad
        if residual is None and value is not None:
            raise UserError(
                f"rule {self.rule!r}: the closure's loss does not depend on the output of {name} "
                "(or the closure did not call backward()); the closure must run forward and "
                "backward and return the loss"
            )
        detached = None if value is None else torch.as_tensor(value).detach()
        return CapturedPass(
            self._outputs, detached, residual, self._inputs, self._rng, self.targets, self.loss
        )


class ClosureLoss(Loss):
    """The loss of a closure as a rule sees it: ``L~(F) = L + <r, F - stop(F)>`` for each captured F.

    Exact in value and first derivatives (all a rule differentiates); it has no sum, count or
    per-sample split (a closure does not show the targets).
    """

    name = "closure"

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self._passes: dict[int, tuple[weakref.ref[Tensor], CapturedPass]] = {}

    def register(self, captured: CapturedPass) -> None:
        """Remember a captured pass under its outputs (held weakly)."""
        self._passes = {k: v for k, v in self._passes.items() if v[0]() is not None}
        self._passes[id(captured.outputs)] = (weakref.ref(captured.outputs), captured)

    def _pass(self, outputs: Tensor) -> CapturedPass:
        entry = self._passes.get(id(outputs))
        if entry is None or entry[0]() is not outputs:
            raise RuntimeError("these outputs did not come from a captured closure call")
        captured = entry[1]
        if captured.value is None or captured.residual is None:
            raise UserError(f"rule {self.rule!r}: the closure returned no loss (it must return the loss)")
        return captured

    def mean(self, outputs: Tensor, targets: Any) -> Tensor:
        """``L + <r, F - stop(F)>``."""
        captured = self._pass(outputs)
        assert captured.value is not None and captured.residual is not None
        residual = captured.residual.to(outputs.dtype)
        return captured.value.to(outputs.dtype) + (residual * (outputs - outputs.detach())).sum()

    def output_gradient(self, outputs: Tensor, targets: Any) -> Tensor:
        """``r = dL/dF`` as the closure's backward found it."""
        captured = self._pass(outputs)
        assert captured.residual is not None
        return captured.residual

    def _needs_targets(self) -> UserError:
        return needs_targets_error(self.rule)

    def sum(self, outputs: Tensor, targets: Any) -> Tensor:
        raise self._needs_targets()

    def count(self, targets: Any) -> int:
        raise self._needs_targets()

    def terms(self, outputs: Tensor, targets: Any) -> SampleTerms:
        raise self._needs_targets()

    def sample_has_targets(self, targets: Any) -> Tensor:
        raise self._needs_targets()


def needs_targets_error(rule: str) -> UserError:
    """The one-line error of a rule that splits the loss by sample when the closure hides the targets."""
    return UserError(
        f"rule {rule!r} splits the loss by sample and a closure does not show the targets: compute "
        "the closure's loss with opt.loss(outputs, targets) (or pass labels= to a Hugging Face "
        "model), or call step(inputs=..., targets=...)"
    )
