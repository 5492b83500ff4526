"""One call of a gradient rule: :class:`Step` holds what the rule's hook reads.

A rule's ``_compute(step)`` gets the model, its trained parameters, the batch, the loss and the
base optimizer in one object, with the operations every rule is built from:

* :meth:`Step.outputs`: a forward pass, outputs unwrapped (tensor, tuple, dict, ``.logits``);
  a dict batch is passed as keyword arguments (``model(**inputs)``, Hugging Face style);
* :meth:`Step.gradient`: the *gradient oracle* ``(loss, grads)`` of the mean batch loss at the
  current parameter values, from the batch (forward + ``autograd.grad``) or from a closure
  (forward + ``loss.backward()``);
* :meth:`Step.perturbed`: a block run at ``theta + e`` (parameters restored bit for bit after it,
  BatchNorm statistics untouched, the first pass's dropout masks replayed);
* :meth:`Step.micro_batch`: the same call on samples ``start:stop`` (m-SAM).

Given a closure instead of a batch, the same operations run through the closure
(:mod:`landscape.optim.closure`): :meth:`Step.gradient` calls it as it is; the first use of
:meth:`Step.outputs`, :attr:`Step.loss` or :attr:`Step.targets` calls it once with the model's
forward captured, which shows the model call, its outputs and ``r = dL/dF`` (and the targets,
when the closure computes its loss with the optimizer's criterion or a Hugging Face model's
``labels=``); every rule then works as on a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import UserError
from landscape.losses import Loss
from landscape.models import unwrap_output
from landscape.optim.closure import (
    CapturedPass,
    ClosureCapture,
    ClosureLoss,
    ModelInputs,
    needs_targets_error,
)
from landscape.optim.noise import RngState
from landscape.optim.norm_statistics import frozen_norm_statistics
from landscape.optim.tensors import perturb_, restore_

__all__ = [
    "GradientOracle",
    "Step",
    "call_model",
    "closure_oracle",
    "model_oracle",
    "slice_batch",
    "split_labels",
    "trained_parameters",
]

GradientOracle = Callable[[], tuple[Tensor, list[Tensor | None]]]
"""Returns ``(loss, grads)`` of the batch loss at the current parameter values."""


def trained_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of ``model`` with ``requires_grad`` (shared tensors once)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict batch (Hugging Face keyword inputs), ``model(*args, **kwargs)``
    for a captured :class:`ModelInputs`, otherwise ``model(inputs)``."""
    if isinstance(inputs, ModelInputs):
        return model(*inputs.args, **inputs.kwargs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def split_labels(inputs: Any, targets: Any) -> tuple[Any, Any, bool]:
    """``(inputs, targets, from_labels)``: without ``targets``, a dict batch's ``labels`` entry
    (Hugging Face style) becomes the targets and leaves the inputs."""
    if targets is None and isinstance(inputs, Mapping) and inputs.get("labels") is not None:
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        return rest, inputs["labels"], True
    return inputs, targets, False


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a tensor, or of every tensor in a tuple, list, dict or model call."""
    if isinstance(batch, ModelInputs):
        return ModelInputs(slice_batch(batch.args, start, stop), slice_batch(batch.kwargs, start, stop))
    if isinstance(batch, Tensor):
        return batch[start:stop]
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(b, start, stop) for b in batch)
    if isinstance(batch, dict):
        return {k: slice_batch(v, start, stop) for k, v in batch.items()}
    return batch


def model_oracle(
    model: nn.Module, params: Sequence[Tensor], inputs: Any, targets: Any, loss: Loss
) -> GradientOracle:
    """Oracle that runs ``model(inputs)`` and differentiates the mean loss with ``autograd.grad``."""

    def oracle() -> tuple[Tensor, list[Tensor | None]]:
        with torch.enable_grad():
            value = loss(unwrap_output(call_model(model, inputs)), targets)
            grads = torch.autograd.grad(value, params, allow_unused=True)
        return value.detach(), list(grads)

    return oracle


def closure_oracle(closure: Callable[[], Tensor], params: Sequence[Tensor]) -> GradientOracle:
    """Oracle from a closure (forward + ``loss.backward()``, returns the loss), called as it is."""

    def oracle() -> tuple[Tensor, list[Tensor | None]]:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            value = closure()
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        if value is None:
            raise UserError(
                "the closure returned no loss (it must run forward and backward and return the loss)"
            )
        return torch.as_tensor(value).detach(), grads

    return oracle


class Step:
    """One rule call: model, trained parameters, batch, loss, base optimizer, and shared operations.

    Built by :meth:`landscape.optim.GradientRule.compute_gradient` (``inputs``, ``targets`` and
    ``loss`` given) or by ``compute_gradient_from_closure`` (``closure`` given; the batch, the
    outputs and the loss then come through the closure: module docstring). ``rule`` names the rule
    in messages; ``needs_targets``: the rule splits the loss by sample (a closure must then show
    the targets).
    """

    def __init__(
        self,
        model: nn.Module,
        named: list[tuple[str, nn.Parameter]],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        inputs: Any = None,
        targets: Any = None,
        loss: Loss | None = None,
        closure: Callable[[], Tensor] | None = None,
        rule: str = "rule",
        needs_targets: bool = False,
    ) -> None:
        self.model = model
        self.named = named
        self.params: list[nn.Parameter] = [p for _, p in named]
        self.optimizer = optimizer
        self._inputs = inputs
        self._targets = targets
        self._loss = loss
        self._closure = closure
        self._rule = rule
        self._needs_targets = needs_targets
        self._first: CapturedPass | None = None  # the discovery pass, reused by the first outputs()
        self._closure_rng: RngState | None = None  # the RNG before the discovery pass's closure call
        self._depth = 0  # > 0 inside perturbed()
        self.grad_scale = 1.0
        """Factor for the rule's final gradient: a scaled closure's scale when the rule ran unscaled."""
        if closure is not None:
            self._oracle = closure_oracle(closure, self.params)
        else:
            self._oracle = model_oracle(model, self.params, inputs, targets, self.loss)

    # ------------------------------------------------------------------ batch, loss, closure
    @property
    def loss(self) -> Loss:
        """The batch loss (for a closure: found by its first captured call)."""
        if self._loss is None:
            if self._closure is None:
                raise RuntimeError("this rule call has no loss")
            self._discover()
        assert self._loss is not None
        return self._loss

    @property
    def inputs(self) -> Any:
        """The model inputs (for a closure: its model call, once captured)."""
        if self._closure is not None and self._loss is None:
            self._discover()
        return self._inputs

    @property
    def targets(self) -> Any:
        """The targets (for a closure: ``None`` unless it showed them)."""
        if self._closure is not None and self._loss is None:
            self._discover()
        return self._targets

    def _capture(self, graph: bool) -> CapturedPass:
        assert self._closure is not None
        return ClosureCapture(self.model, self.params, self._rule, graph=graph).run(self._closure)

    def _discover(self) -> None:
        """Call the closure once, captured: the batch when it shows its targets, else its loss."""
        self._closure_rng = RngState(self.params[0].device)
        first = self._capture(graph=True)  # the first pass at theta: rules differentiate through it
        self._first = first
        if first.targets is None or first.loss is None:
            if self._needs_targets:
                raise needs_targets_error(self._rule)
            surrogate = ClosureLoss(self._rule)
            surrogate.register(first)
            self._loss = surrogate
            return
        scale = closure_scale(first)
        if scale != 1.0 and not self._needs_targets:
            # a scaled closure (GradScaler): the surrogate keeps its scale in every pass
            surrogate = ClosureLoss(self._rule)
            surrogate.register(first)
            self._loss = surrogate
            return
        # the rule runs on the batch (unscaled); the result gets the closure's scale back
        self.grad_scale = scale
        self._inputs, self._targets, self._loss = first.inputs, first.targets, first.loss
        self._oracle = model_oracle(self.model, self.params, self._inputs, self._targets, self._loss)

    def outputs(self) -> Tensor:
        """``model(inputs)``, unwrapped to the output tensor F (with a graph when grad is enabled)."""
        if self._closure is not None and self._loss is None:
            self._discover()
        first = self._first
        if first is not None and self._depth == 0:
            self._first = None  # the discovery pass is the first pass at theta: use it once
            if torch.is_grad_enabled() or not first.outputs.requires_grad:
                return first.outputs
            return first.outputs.detach()
        if isinstance(self._loss, ClosureLoss):
            captured = self._capture(graph=torch.is_grad_enabled())
            self._loss.register(captured)
            return captured.outputs
        return unwrap_output(call_model(self.model, self._inputs))

    def gradient(self) -> tuple[Tensor, list[Tensor | None]]:
        """``(loss, grads)``: the detached mean batch loss and its gradient (``None`` for a
        parameter the loss does not use) at the current parameter values."""
        return self._oracle()

    def micro_batch(self, start: int, stop: int) -> Step:
        """This call restricted to samples ``start:stop`` of the batch."""
        inputs, targets, loss = self.inputs, self.targets, self.loss
        if self._first is not None:
            # a closure's discovery pass is not reused by micro-batches: replay its RNG instead,
            # so that they draw the dropout masks a batch call would
            self._first.forward_rng.restore()
            self._first = None
        return Step(
            self.model,
            self.named,
            self.optimizer,
            inputs=slice_batch(inputs, start, stop),
            targets=slice_batch(targets, start, stop),
            loss=loss,
            rule=self._rule,
        )

    def rng_state(self) -> RngState:
        """A snapshot of the global RNG to restore before a later pass so that it replays this
        pass's dropout masks: now, or, after a closure's captured first pass, the state before
        that pass (before its model forward when the rule then runs the model itself)."""
        if self._first is not None:
            if isinstance(self._loss, ClosureLoss) and self._closure_rng is not None:
                return self._closure_rng
            return self._first.forward_rng
        return RngState(self.params[0].device)

    @contextmanager
    def perturbed(
        self, eps: Sequence[Tensor | None], rng: RngState | None, params: Sequence[Tensor] | None = None
    ) -> Iterator[None]:
        """Run the block at ``theta + eps``: ``params`` (default: all trained) moved in place,
        BatchNorm running statistics frozen, the global RNG put back to ``rng`` (the first
        pass's dropout masks); theta restored bit for bit afterwards, also on error."""
        params = self.params if params is None else params
        saved = perturb_(params, eps)
        del eps  # the caller may free e (parameter-sized) while the block runs
        self._depth += 1
        try:
            with frozen_norm_statistics(self.model):
                if rng is not None:
                    rng.restore()
                yield
        finally:
            self._depth -= 1
            restore_(params, saved)


def closure_scale(first: CapturedPass) -> float:
    """The factor by which the closure scaled its backward (``GradScaler``: ``scaler.scale(loss)``),
    measured as ``<r_seen, r> / <r, r>`` with r the loss's own output gradient; snapped to the
    nearest power of two (what ``GradScaler`` uses) when within 1e-3 of it."""
    if first.residual is None or first.loss is None:
        return 1.0
    own = first.loss.output_gradient(first.outputs.detach(), first.targets)
    seen = first.residual.to(own.dtype)
    norm = float((own * own).sum())
    if norm == 0.0:
        return 1.0
    scale = float((seen * own).sum()) / norm
    if scale > 0:
        power = 2.0 ** round(math.log2(scale))
        if abs(scale / power - 1.0) < 1e-3:
            return power
    return scale
