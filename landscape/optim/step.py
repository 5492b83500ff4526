"""One call of a gradient rule: :class:`Step` holds what the rule's hook reads.

A rule's ``_compute(step)`` gets the model, its trained parameters, the batch, the loss and the
base optimizer in one object, with the operations every rule is built from:

* :meth:`Step.outputs`: a forward pass, outputs unwrapped (tensor, tuple, dict, ``.logits``);
* :meth:`Step.gradient`: the *gradient oracle* ``(loss, grads)`` of the mean batch loss at the
  current parameter values, from the batch (forward + ``autograd.grad``) or from a davda54-style
  closure (forward + ``loss.backward()``);
* :meth:`Step.perturbed`: a block run at ``theta + e`` (parameters restored bit for bit after it,
  BatchNorm statistics untouched, the first pass's dropout masks replayed);
* :meth:`Step.micro_batch`: the same call on samples ``start:stop`` (m-SAM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from landscape.losses import Loss
from landscape.models import unwrap_output
from landscape.optim.noise import RngState
from landscape.optim.norm_statistics import frozen_norm_statistics
from landscape.optim.tensors import perturb_, restore_

__all__ = [
    "GradientOracle",
    "Step",
    "closure_oracle",
    "model_oracle",
    "slice_batch",
    "trained_parameters",
]

GradientOracle = Callable[[], tuple[Tensor, list[Tensor | None]]]
"""Returns ``(loss, grads)`` of the batch loss at the current parameter values."""


def trained_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of ``model`` with ``requires_grad`` (shared tensors once)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a tensor, or of every tensor in a tuple, list or dict."""
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
            value = loss(unwrap_output(model(inputs)), targets)
            grads = torch.autograd.grad(value, params, allow_unused=True)
        return value.detach(), list(grads)

    return oracle


def closure_oracle(closure: Callable[[], Tensor], params: Sequence[Tensor]) -> GradientOracle:
    """Oracle from a davda54-style closure (forward + ``loss.backward()``, returns the loss)."""

    def oracle() -> tuple[Tensor, list[Tensor | None]]:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            value = closure()
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        return torch.as_tensor(value).detach(), grads

    return oracle


class Step:
    """One rule call: model, trained parameters, batch, loss, base optimizer, and shared operations.

    Built by :meth:`landscape.optim.GradientRule.compute_gradient` (``inputs``, ``targets`` and
    ``loss`` given) or by ``compute_gradient_from_closure`` (``closure`` given; then only
    :meth:`gradient` is available).
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
    ) -> None:
        self.model = model
        self.named = named
        self.params: list[nn.Parameter] = [p for _, p in named]
        self.optimizer = optimizer
        self.inputs = inputs
        self.targets = targets
        self._loss = loss
        if closure is not None:
            self._oracle = closure_oracle(closure, self.params)
        else:
            self._oracle = model_oracle(model, self.params, inputs, targets, self.loss)

    @property
    def loss(self) -> Loss:
        """The batch loss (not known for a closure call)."""
        if self._loss is None:
            raise RuntimeError("this rule call came with a closure: it has no loss or batch")
        return self._loss

    def outputs(self) -> Tensor:
        """``model(inputs)``, unwrapped to the output tensor F."""
        return unwrap_output(self.model(self.inputs))

    def gradient(self) -> tuple[Tensor, list[Tensor | None]]:
        """``(loss, grads)``: the detached mean batch loss and its gradient (``None`` for a
        parameter the loss does not use) at the current parameter values."""
        return self._oracle()

    def micro_batch(self, start: int, stop: int) -> Step:
        """This call restricted to samples ``start:stop`` of the batch."""
        return Step(
            self.model,
            self.named,
            self.optimizer,
            inputs=slice_batch(self.inputs, start, stop),
            targets=slice_batch(self.targets, start, stop),
            loss=self.loss,
        )

    def rng_state(self) -> RngState:
        """A snapshot of the global RNG now (restore it to replay this pass's dropout masks)."""
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
        try:
            with frozen_norm_statistics(self.model):
                if rng is not None:
                    rng.restore()
                yield
        finally:
            restore_(params, saved)
