"""The losses: one object per loss, read by the curvature engine, the gradient rules and evaluation.

A loss ``l(F, y)`` compares model outputs ``F`` with targets ``y``. Every loss object answers three
kinds of question about it:

* **the engine** (:class:`landscape.problem.Problem` and the curvature operators): the *summed*
  per-target loss of one data chunk (:meth:`Loss.sum`), how many targets the chunk counts
  (:meth:`Loss.count`; the full-data mean divides the summed chunks by the total once), the
  Hessian of the summed loss with respect to the outputs applied to vectors
  (:meth:`Loss.output_hessian_product`; the Gauss-Newton matrix is ``G = J^T H_F J``), and the
  target conversion and shape checks of a data set (:meth:`Loss.prepare_targets`,
  :meth:`Loss.check_outputs`);
* **the gradient rules** (:mod:`landscape.optim`): the *mean* batch loss (calling the object,
  :meth:`Loss.mean`), its output gradient ``r = dL/dF`` (:meth:`Loss.output_gradient`, closed
  forms for the built-ins), and its split by sample (:meth:`Loss.terms`, :class:`SampleTerms`)
  for the per-sample views of RW-SAM and m-sharpness;
* **evaluation**: the summed loss in float64, the count and, for classification, the number of
  targets whose arg-max output is right (:meth:`Loss.evaluate`, :class:`EvalSums`).

Built-in losses (:data:`LOSSES`):

* ``"cross_entropy"`` (:class:`CrossEntropy`): logits ``[..., C]``, integer targets ``[...]``;
  targets equal to :data:`IGNORE_INDEX` are not counted (``F.cross_entropy(...,
  ignore_index=-100)``). Output Hessian per target ``diag(p) - p p^T``, ``p = softmax(F)``
  (Singh, Mobahi, Agarwala, Dauphin 2025, arXiv 2502.02407, Sec. 3.3).
* ``"mse"`` (:class:`MeanSquaredError`): ``(F - y)^2`` per output element, mean over all elements
  (torch's ``mse_loss`` convention, so one target per element). Output Hessian ``2 I``.

A callable ``(outputs, targets) -> mean loss`` (:class:`CallableLoss`) counts one target per
sample; its output gradient and output Hessian come from autograd.

The first dimension of outputs and targets is the sample (batch) dimension.

Adding a loss (extension point)
-------------------------------
A new loss is one subclass of :class:`Loss` and, for a named one, one entry of :data:`LOSSES`.
It implements :meth:`Loss.sum` and :meth:`Loss.count` (what the mean divides by); everything
else has a generic default that is exact for any loss that is a sum over targets:
:meth:`Loss.mean` is ``sum / count``, :meth:`Loss.output_gradient` and
:meth:`Loss.output_hessian_product` differentiate :meth:`Loss.sum` by autograd (double-backward),
:meth:`Loss.terms` evaluates the loss sample by sample. A closed form (as cross-entropy's) replaces
a default where it saves a pass. The losses planned next fit this way:

* ``"bce"`` (binary cross-entropy with logits): ``sum`` = ``F.binary_cross_entropy_with_logits(...,
  reduction="sum")``, count = elements, closed forms ``r = (sigmoid(F) - y) / count`` and output
  Hessian ``diag(sigmoid(F) (1 - sigmoid(F)))``; ``correct`` thresholds at 0.
* ``"nll"`` (log-probabilities in, as ``F.nll_loss``): as cross-entropy with ``p = exp(F)``; the
  output Hessian of ``-log p_y`` in F is 0, so G = 0 and the whole Hessian is functional.
* a ``torch.nn`` loss module (``CrossEntropyLoss(label_smoothing=..., weight=..., ignore_index=...)``,
  ``reduction="mean"``): ``count`` from its ``ignore_index`` (class weights: the sum of the counted
  targets' weights, which is what torch's weighted mean divides by), ``sum = module(F, y) * count``,
  output Hessian by autograd (label smoothing keeps ``diag(p) - p p^T``, weights scale it per target).
* ``"model"`` (Hugging Face models that compute their own loss from ``labels``): the loss is read
  from the model's output instead of computed from F; ``count`` is the number of labels that are
  not ``-100`` after the model's own shift; its GGN needs the logits as well, so it names the
  output-space loss it wraps (usually cross-entropy) for ``output_hessian_product``.

This module sits on the lowest floor: it imports torch and :mod:`landscape.errors` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "CallableLoss",
    "CrossEntropy",
    "EvalSums",
    "Loss",
    "LossLike",
    "MeanSquaredError",
    "SampleTerms",
    "as_loss",
    "batch_size",
]

IGNORE_INDEX = -100
"""Targets equal to this value are not counted by cross-entropy (as in ``F.cross_entropy``)."""


def batch_size(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, (tuple, list)):
        return batch_size(batch[0])
    if isinstance(batch, dict):
        return batch_size(next(iter(batch.values())))
    raise TypeError(f"cannot find a batch dimension in {type(batch).__name__}")


@dataclass(frozen=True)
class EvalSums:
    """One chunk's evaluation: the summed loss (float64), the targets counted and, for
    classification, how many of them have their arg-max output right (``None`` otherwise)."""

    loss_sum: float
    count: int
    correct: int | None


class Loss:
    """One loss ``l(F, y)`` with what the engine, the rules and evaluation read (module docstring).

    Subclasses implement :meth:`sum` and :meth:`count`; the rest has exact generic defaults.
    """

    name: ClassVar[str] = "loss"
    classification: ClassVar[bool] = False
    """Whether targets are class ids (then :meth:`correct` counts right arg-max predictions)."""

    # ----------------------------------------------------------------------- engine: sums
    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Sum of the per-target losses of one chunk (a 0-dim tensor with its graph)."""
        raise NotImplementedError

    def count(self, targets: Any) -> int:  # pragma: no cover - abstract
        """How many targets the chunk counts: what its mean loss divides :meth:`sum` by."""
        raise NotImplementedError

    def output_hessian_product(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """``H_F u`` for the Hessian of :meth:`sum` with respect to the outputs F.

        ``U`` is shaped like ``outputs``, optionally with leading column dimensions
        (``[k, *outputs.shape]``: k vectors at once); the result is shaped like ``U``. Default:
        double-backward through :meth:`sum`, one vector-Hessian product per column.
        """
        base = outputs.detach()
        columns = U.reshape(-1, *base.shape)
        leaf = base.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.sum(leaf, targets), leaf, create_graph=True)
            products = [
                torch.autograd.grad(grad, leaf, grad_outputs=u.to(grad.dtype), retain_graph=True)[0]
                for u in columns
            ]
        return torch.stack(products).reshape(U.shape)

    # ------------------------------------------------------------------ engine: data checks
    def prepare_targets(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """The targets as the loss reads them: values in the compute ``dtype``, all finite."""
        y = targets.to(dtype)
        if not torch.isfinite(y).all():
            raise UserError("the targets contain NaN or infinite values")
        return y

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        """Raise ``UserError`` when the model's ``outputs`` on the first chunk do not fit the
        targets; ``targets`` holds every chunk's targets, the first chunk's first."""

    # ------------------------------------------------------------------------ rules: means
    def __call__(self, outputs: Tensor, targets: Any) -> Tensor:
        """The mean batch loss (a 0-dim tensor with its graph); the same as :meth:`mean`."""
        return self.mean(outputs, targets)

    def mean(self, outputs: Tensor, targets: Any) -> Tensor:
        """The mean batch loss: :meth:`sum` over :meth:`count`."""
        return self.sum(outputs, targets) / self.count(targets)

    def output_gradient(self, outputs: Tensor, targets: Any) -> Tensor:
        """``r = dL/dF`` of the mean batch loss at ``outputs``, detached, shaped like ``outputs``.

        Default: autograd through :meth:`mean`.
        """
        leaf = outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.mean(leaf, targets), leaf)
        return grad

    def terms(self, outputs: Tensor, targets: Any) -> SampleTerms:
        """The per-sample decomposition of this batch's loss (see :class:`SampleTerms`).

        Default: the loss evaluated on one-sample slices."""
        return SampleTerms(self, outputs, targets, None, None)

    def sample_has_targets(self, targets: Any) -> Tensor:
        """Boolean ``[B]``: whether sample i has at least one counted target."""
        return torch.ones(batch_size(targets), dtype=torch.bool, device=_device(targets))

    # --------------------------------------------------------------------------- evaluation
    def correct(self, outputs: Tensor, targets: Tensor) -> int | None:
        """How many counted targets have their arg-max output right (``None``: not classification)."""
        return None

    def evaluate(self, outputs: Tensor, targets: Tensor) -> EvalSums:
        """One evaluation chunk: :meth:`sum` in float64, :meth:`count` and :meth:`correct`."""
        with torch.no_grad():
            total = float(self.sum(outputs.double(), self._float64_targets(targets)))
        return EvalSums(total, self.count(targets), self.correct(outputs, targets))

    def _float64_targets(self, targets: Any) -> Any:
        """The targets to pair with float64 outputs (float targets in float64, others as they are)."""
        if isinstance(targets, Tensor) and targets.is_floating_point():
            return targets.double()
        return targets

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _device(batch: Any) -> torch.device | None:
    if isinstance(batch, Tensor):
        return batch.device
    if isinstance(batch, (tuple, list)) and batch:
        return _device(batch[0])
    if isinstance(batch, dict) and batch:
        return _device(next(iter(batch.values())))
    return None


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits ``[..., C]`` with integer targets ``[...]``.

    Targets equal to :data:`IGNORE_INDEX` are not counted: the mean is exactly
    ``F.cross_entropy(..., ignore_index=-100)``.
    """

    name = "cross_entropy"
    classification = True

    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``sum_i -log softmax(F_i)[y_i]`` over the counted targets."""
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            reduction="sum",
            ignore_index=IGNORE_INDEX,
        )

    def count(self, targets: Tensor) -> int:
        """The targets that are not :data:`IGNORE_INDEX`."""
        return int((targets != IGNORE_INDEX).sum())

    def mean(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``F.cross_entropy`` with its mean over the counted targets (nan when there are none)."""
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )

    def output_hessian_product(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """``(diag(p) - p p^T) u`` per target, ``p = softmax(F)``; zero for ignored targets."""
        p = torch.softmax(outputs, dim=-1)
        pu = p * U
        out = pu - p * pu.sum(dim=-1, keepdim=True)
        mask = (targets != IGNORE_INDEX).to(out.dtype).unsqueeze(-1)
        return out * mask

    def output_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``r = (softmax(F) - onehot(y)) m / sum(m)`` with ``m`` the mask of counted targets.

        One pass instead of a loss forward + backward; 0 for a batch without counted targets
        (where the loss is nan), as autograd gives.
        """
        outputs = outputs.detach()
        classes = outputs.shape[-1]
        flat_targets = targets.reshape(-1)
        counted = flat_targets != IGNORE_INDEX
        probs = torch.softmax(outputs.reshape(-1, classes), dim=-1)
        weights = counted.to(probs.dtype)
        # scatter -1 at each counted target (ignored rows get -0 at a clamped index)
        probs.scatter_add_(1, flat_targets.clamp_min(0).unsqueeze(1), -weights.unsqueeze(1))
        # an all-ignored batch has loss nan and, as autograd gives, gradient 0
        probs.mul_((weights / weights.sum().clamp_min(1.0)).unsqueeze(1))
        return probs.reshape(outputs.shape)

    def terms(self, outputs: Tensor, targets: Tensor) -> SampleTerms:
        """Per-element losses and the mask of counted targets."""
        elem = F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).reshape(targets.shape)
        return SampleTerms(self, outputs, targets, elem, (targets != IGNORE_INDEX).to(elem.dtype))

    def sample_has_targets(self, targets: Tensor) -> Tensor:
        """Whether sample i has a target that is not :data:`IGNORE_INDEX`."""
        return (targets != IGNORE_INDEX).reshape(targets.shape[0], -1).any(1)

    def prepare_targets(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """Integer class ids (``long``); float targets must hold whole numbers."""
        if targets.is_floating_point() and not torch.equal(targets, targets.round()):
            raise UserError("cross-entropy targets must be integer class ids (got fractional values)")
        return targets.long()

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        """Logits ``[..., C]`` for targets ``[...]``; every counted label in ``0..C-1``."""
        if outputs.shape[:-1] != targets[0].shape:
            raise UserError(
                f"model outputs of shape {tuple(outputs.shape)} do not match targets of shape "
                f"{tuple(targets[0].shape)} (cross-entropy expects logits [..., C] and targets [...])"
            )
        classes = outputs.shape[-1]
        for chunk in targets:
            y = chunk[chunk != IGNORE_INDEX]
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
                raise UserError(
                    f"labels out of range: found {int(y.min())}..{int(y.max())}, model has {classes} classes"
                )

    def correct(self, outputs: Tensor, targets: Tensor) -> int:
        """Counted targets whose arg-max logit is the target."""
        flat = targets.reshape(-1)
        keep = flat != IGNORE_INDEX
        return int((outputs.reshape(-1, outputs.shape[-1]).argmax(-1) == flat)[keep].sum())


class MeanSquaredError(Loss):
    """``(F - y)^2`` per output element; the mean runs over all elements (torch's ``mse_loss``)."""

    name = "mse"

    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``sum (F - y)^2`` over all output elements (``mse_loss`` with ``reduction="sum"``)."""
        return F.mse_loss(outputs, targets.reshape(outputs.shape), reduction="sum")

    def count(self, targets: Tensor) -> int:
        """Every element of the targets."""
        return int(targets.numel())

    def mean(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``F.mse_loss`` with its mean over all elements."""
        return F.mse_loss(outputs, targets)

    def output_hessian_product(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """``2 u``."""
        return 2.0 * U

    def output_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``r = 2 (F - y) / numel``."""
        return (outputs.detach() - targets).mul_(2.0 / outputs.numel())

    def terms(self, outputs: Tensor, targets: Tensor) -> SampleTerms:
        """Per-element squared errors."""
        return SampleTerms(self, outputs, targets, F.mse_loss(outputs, targets, reduction="none"), None)

    def _float64_targets(self, targets: Tensor) -> Tensor:
        return targets.double()

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        """As many outputs as target elements."""
        if outputs.numel() != targets[0].numel():
            raise UserError(
                f"model outputs of shape {tuple(outputs.shape)} do not match "
                f"mse targets of shape {tuple(targets[0].shape)}"
            )


class CallableLoss(Loss):
    """A user function ``fn(outputs, targets) -> mean loss`` over one target per sample."""

    name = "callable"

    def __init__(self, fn: Callable[[Tensor, Any], Tensor]) -> None:
        self.fn = fn

    def sum(self, outputs: Tensor, targets: Any) -> Tensor:
        """The mean times the number of samples."""
        return self.fn(outputs, targets) * self.count(targets)

    def count(self, targets: Any) -> int:
        """The samples of the batch."""
        return batch_size(targets)

    def mean(self, outputs: Tensor, targets: Any) -> Tensor:
        """``fn(outputs, targets)``."""
        return self.fn(outputs, targets)

    def __repr__(self) -> str:
        return f"CallableLoss({getattr(self.fn, '__name__', self.fn)!r})"


LOSSES: dict[str, type[Loss]] = {"cross_entropy": CrossEntropy, "mse": MeanSquaredError}
"""The losses known by name (``--loss``): name -> class."""

LossLike: TypeAlias = str | Loss | Callable[[Tensor, Tensor], Tensor]
"""A loss: a name of :data:`LOSSES`, a :class:`Loss` or a callable ``(outputs, targets) -> mean loss``."""


def as_loss(loss: LossLike) -> Loss:
    """The :class:`Loss` for a name, a :class:`Loss` (returned as it is) or a callable."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in LOSSES:
            names = ", ".join(repr(n) for n in LOSSES)
            raise ValueError(f"unknown loss {loss!r}; use {names} or a callable")
        return LOSSES[loss]()
    if callable(loss):
        return CallableLoss(loss)
    raise TypeError(f"loss_fn must be a name or a callable, got {type(loss).__name__}")


class SampleTerms:
    """One batch's loss split by sample, computed once and read three ways.

    Built-in losses keep the per-element losses ``elem`` (and the mask of counted targets); a loss
    without them (a callable) is evaluated on one-sample slices of the outputs.
    """

    def __init__(
        self, loss: Loss, outputs: Tensor, targets: Any, elem: Tensor | None, mask: Tensor | None
    ) -> None:
        self.loss, self.outputs, self.targets, self.elem, self.mask = loss, outputs, targets, elem, mask
        self._per_sample_graph: Tensor | None = None

    def _sliced_per_sample(self) -> Tensor:
        if self._per_sample_graph is None:
            mean, out, y = self.loss.mean, self.outputs, self.targets
            self._per_sample_graph = torch.stack(
                [mean(out[i : i + 1], y[i : i + 1]) for i in range(len(out))]
            )
        return self._per_sample_graph

    def _count(self) -> Tensor | float:
        assert self.elem is not None
        return self.mask.sum() if self.mask is not None else float(self.elem.numel())

    def mean(self) -> Tensor:
        """The mean batch loss (with its graph)."""
        if self.elem is None:
            return self.loss.mean(self.outputs, self.targets)
        return self.elem.sum() / self._count()

    def per_sample(self) -> Tensor:
        """Detached per-sample mean losses ``l_i``, shape ``[B]`` (0 for a sample without targets)."""
        if self.elem is None:
            return self._sliced_per_sample().detach()
        batch = self.elem.shape[0]
        sums = self.elem.detach().reshape(batch, -1).sum(1)
        if self.mask is None:
            return sums / self.elem[0].numel()
        return sums / self.mask.reshape(batch, -1).sum(1).clamp_min(1.0)

    def weighted(self, sample_weights: Tensor) -> Tensor:
        """The batch loss with sample i's terms scaled by ``sample_weights[i]`` (with its graph).

        With all weights 1 this is exactly the mean batch loss: for the built-in losses every
        element of sample i is scaled by w_i inside the same mean, so samples with more counted
        targets keep their larger share. For a callable it is ``mean_i w_i l_i``.
        """
        if self.elem is None:
            return (sample_weights * self._sliced_per_sample()).mean()
        w = sample_weights.to(self.elem.dtype).reshape(-1, *([1] * (self.elem.dim() - 1)))
        return (self.elem * w).sum() / self._count()
