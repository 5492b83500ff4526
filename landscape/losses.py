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

Built-in losses (:data:`LOSSES`), each with closed forms of its output gradient and output Hessian:

* ``"cross_entropy"`` (:class:`CrossEntropy`): logits ``[..., C]``, integer targets ``[...]``;
  targets equal to :data:`IGNORE_INDEX` are not counted (``F.cross_entropy(...,
  ignore_index=-100)``). Output Hessian per target ``diag(p) - p p^T``, ``p = softmax(F)``
  (Singh, Mobahi, Agarwala, Dauphin 2025, arXiv 2502.02407, Sec. 3.3).
* ``"mse"`` (:class:`MeanSquaredError`): ``(F - y)^2`` per output element, mean over all elements
  (torch's ``mse_loss`` convention, so one target per element). Output Hessian ``2 I``.
* ``"bce"`` (:class:`BinaryCrossEntropy`): binary cross-entropy on logits with targets in [0, 1]
  (``F.binary_cross_entropy_with_logits``), one target per element. Output Hessian
  ``diag(s (1 - s))``, ``s = sigmoid(F)``.
* ``"nll"`` (:class:`NegativeLogLikelihood`): log-probabilities ``[..., C]`` in, as
  ``F.nll_loss`` (ignore index as cross-entropy). The loss is linear in F, so its output Hessian
  is 0: the Gauss-Newton matrix vanishes and the whole Hessian is functional (``H = H_F``).
* ``"model"`` (:class:`ModelLoss`): the loss a Hugging Face model computes itself from
  ``labels=``, written as a function of its logits so that H, G and H_F stay defined. Its kind
  comes from the model (``model.loss_type`` and ``config.problem_type``): causal language
  models shift the labels left by one (position t predicts label t + 1; the last position
  predicts nothing), masked-LM and token classification do not shift, sequence classification
  is cross-entropy, mse or bce by ``problem_type``. Needs the model: ``as_loss("model", model=m)``.

Besides names, :func:`as_loss` takes a ``torch.nn`` loss module (:class:`TorchLoss`:
``CrossEntropyLoss`` with ``weight``, ``ignore_index`` and ``label_smoothing``; ``NLLLoss``;
``MSELoss``; ``BCEWithLogitsLoss`` with ``weight`` and ``pos_weight``; ``L1Loss``,
``SmoothL1Loss``, ``HuberLoss``; ``reduction="mean"``), whose mean is exactly the module's and
whose count is what torch's mean divides by (the summed class weights of the counted targets for a
weighted cross-entropy), and a callable ``(outputs, targets) -> mean loss`` (:class:`CallableLoss`),
which counts one target per sample; where no closed form is written the output gradient and output
Hessian come from autograd on the outputs (double-backward through :meth:`Loss.sum`).

The first dimension of outputs and targets is the sample (batch) dimension.

Adding a loss (extension point)
-------------------------------
A new loss is one subclass of :class:`Loss` and, for a named one, one entry of :data:`LOSSES`.
It implements :meth:`Loss.sum` and :meth:`Loss.count` (what the mean divides by); everything
else has a generic default that is exact for any loss that is a sum over targets:
:meth:`Loss.mean` is ``sum / count``, :meth:`Loss.output_gradient` and
:meth:`Loss.output_hessian_product` differentiate :meth:`Loss.sum` by autograd (double-backward),
:meth:`Loss.terms` evaluates the loss sample by sample. A closed form (as cross-entropy's) replaces
a default where it saves a pass.

A string that is not a name but an import path (``package.module:callable``, ``file.py:fn``;
:func:`is_import_path`) names code: :func:`imported_loss` imports it once. Files never choose
code to run: callers that read a spec from a checkpoint or a ``config.json`` check it with
:mod:`landscape.trust` first, as for model and data specs.

This module sits on the inputs floor: it imports torch, :mod:`landscape.errors` and (for import
paths) :mod:`landscape.models.zoo`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "BinaryCrossEntropy",
    "CallableLoss",
    "CrossEntropy",
    "ElementwiseLoss",
    "EvalSums",
    "Loss",
    "LossLike",
    "MeanSquaredError",
    "ModelLoss",
    "NegativeLogLikelihood",
    "SampleTerms",
    "as_loss",
    "batch_size",
    "imported_loss",
    "is_import_path",
    "loss_name",
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

    def count(self, targets: Any) -> int | float:  # pragma: no cover - abstract
        """How many targets the chunk counts: what its mean loss divides :meth:`sum` by (a float
        only for class-weighted losses: the summed weights of the counted targets)."""
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
        """The targets as the loss reads them: float targets in the compute ``dtype`` and finite;
        integer targets (class ids for a callable) as they are."""
        if not targets.is_floating_point():
            return targets
        return _float_targets(targets, dtype)

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


def _float_targets(targets: Tensor, dtype: torch.dtype) -> Tensor:
    """Targets as values in ``dtype``, all finite (regression-type losses)."""
    y = targets.to(dtype)
    if not torch.isfinite(y).all():
        raise UserError("the targets contain NaN or infinite values")
    return y


def _device(batch: Any) -> torch.device | None:
    if isinstance(batch, Tensor):
        return batch.device
    if isinstance(batch, (tuple, list)) and batch:
        return _device(batch[0])
    if isinstance(batch, dict) and batch:
        return _device(next(iter(batch.values())))
    return None


def _class_weights(weight: Tensor | None, like: Tensor) -> Tensor | None:
    return None if weight is None else weight.to(device=like.device, dtype=like.dtype)


class _ClassTargets(Loss):
    """Shared by the losses on ``[..., C]`` outputs with integer class targets ``[...]``: targets
    equal to ``ignore_index`` are not counted; with class weights ``w`` a target of class c
    counts ``w_c`` (torch's weighted mean divides by the summed weights of the counted targets)."""

    classification = True

    def __init__(self, *, weight: Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        self.weight = None if weight is None else weight.detach()
        self.ignore_index = int(ignore_index)

    def _target_weights(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """Per target: its class weight (1 without weights), 0 where ignored; shaped like targets."""
        counted = targets != self.ignore_index
        if self.weight is None:
            return counted.to(dtype)
        weight = self.weight.to(device=targets.device, dtype=dtype)
        return weight[targets.clamp_min(0)] * counted.to(dtype)

    def count(self, targets: Tensor) -> int | float:
        """The targets that are not ``ignore_index`` (with class weights: their summed weights)."""
        if self.weight is None:
            return int((targets != self.ignore_index).sum())
        return float(self._target_weights(targets, torch.float64).sum())

    def sample_has_targets(self, targets: Tensor) -> Tensor:
        """Whether sample i has a target that is not ``ignore_index``."""
        return (targets != self.ignore_index).reshape(targets.shape[0], -1).any(1)

    def prepare_targets(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """Integer class ids (``long``); float targets must hold whole numbers."""
        if targets.is_floating_point() and not torch.equal(targets, targets.round()):
            raise UserError(f"{self.name} targets must be integer class ids (got fractional values)")
        return targets.long()

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        """Outputs ``[..., C]`` for targets ``[...]``; every counted label in ``0..C-1``."""
        if outputs.shape[:-1] != targets[0].shape:
            raise UserError(
                f"model outputs of shape {tuple(outputs.shape)} do not match targets of shape "
                f"{tuple(targets[0].shape)} ({self.name} expects outputs [..., C] and targets [...])"
            )
        classes = outputs.shape[-1]
        for chunk in targets:
            y = chunk[chunk != self.ignore_index]
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
                raise UserError(
                    f"labels out of range: found {int(y.min())}..{int(y.max())}, model has {classes} classes"
                )

    def correct(self, outputs: Tensor, targets: Tensor) -> int:
        """Counted targets whose arg-max output is the target."""
        flat = targets.reshape(-1)
        keep = flat != self.ignore_index
        return int((outputs.reshape(-1, outputs.shape[-1]).argmax(-1) == flat)[keep].sum())

    def _options(self) -> list[str]:
        options = [] if self.weight is None else ["weight=..."]
        if self.ignore_index != IGNORE_INDEX:
            options.append(f"ignore_index={self.ignore_index}")
        return options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._options())})"


class CrossEntropy(_ClassTargets):
    """Softmax cross-entropy on logits ``[..., C]`` with integer targets ``[...]``.

    Targets equal to ``ignore_index`` (default :data:`IGNORE_INDEX`) are not counted; ``weight``
    (per class) and ``label_smoothing`` eps are torch's: the mean is exactly ``F.cross_entropy``
    with the same options. Per counted target i with class y,
    ``l_i = (1 - eps) w_y (-log p_y) + (eps / C) sum_c w_c (-log p_c)``, ``p = softmax(F_i)``, and
    the mean divides their sum by the count (:meth:`count`). Output Hessian per target
    ``a_i (diag(p) - p p^T)`` with ``a_i = (1 - eps) w_y + (eps / C) sum_c w_c`` (every
    ``-log p_c`` has the Hessian ``diag(p) - p p^T``); ``a_i = 1`` without weights.
    """

    name = "cross_entropy"

    def __init__(
        self, *, weight: Tensor | None = None, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    @property
    def _plain(self) -> bool:
        return self.weight is None and self.label_smoothing == 0.0

    def _torch(self, outputs: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            weight=_class_weights(self.weight, outputs),
            ignore_index=self.ignore_index,
            reduction=reduction,
            label_smoothing=self.label_smoothing,
        )

    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``sum_i l_i`` over the counted targets (``F.cross_entropy`` with ``reduction="sum"``)."""
        return self._torch(outputs, targets, "sum")

    def mean(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``F.cross_entropy`` with its mean over the counted targets (nan when there are none)."""
        return self._torch(outputs, targets, "mean")

    def _hessian_scale(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """``a_i`` per target (0 where ignored), shaped like the targets."""
        counted = self._target_weights(targets, dtype)
        if self.label_smoothing == 0.0:
            return counted
        eps = self.label_smoothing
        mask = (targets != self.ignore_index).to(dtype)
        if self.weight is None:
            return counted * (1.0 - eps) + eps * mask
        weight = self.weight.to(device=targets.device, dtype=dtype)
        return counted * (1.0 - eps) + eps * weight.mean() * mask

    def output_hessian_product(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """``a_i (diag(p) - p p^T) u`` per target, ``p = softmax(F)``; zero for ignored targets."""
        p = torch.softmax(outputs, dim=-1)
        pu = p * U
        out = pu - p * pu.sum(dim=-1, keepdim=True)
        if self._plain:
            mask = (targets != self.ignore_index).to(out.dtype).unsqueeze(-1)
        else:
            mask = self._hessian_scale(targets, out.dtype).unsqueeze(-1)
        return out * mask

    def output_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``r = (softmax(F) - onehot(y)) m / sum(m)`` with ``m`` the mask of counted targets.

        One pass instead of a loss forward + backward; 0 for a batch without counted targets
        (where the loss is nan), as autograd gives. With weights or label smoothing,
        ``r_i = [a_i p - (1 - eps) w_y onehot(y) - (eps / C) w] / count``.
        """
        outputs = outputs.detach()
        classes = outputs.shape[-1]
        flat_targets = targets.reshape(-1)
        probs = torch.softmax(outputs.reshape(-1, classes), dim=-1)
        if not self._plain:
            return self._weighted_output_gradient(probs, flat_targets).reshape(outputs.shape)
        counted = flat_targets != self.ignore_index
        weights = counted.to(probs.dtype)
        # scatter -1 at each counted target (ignored rows get -0 at a clamped index)
        probs.scatter_add_(1, flat_targets.clamp_min(0).unsqueeze(1), -weights.unsqueeze(1))
        # an all-ignored batch has loss nan and, as autograd gives, gradient 0
        probs.mul_((weights / weights.sum().clamp_min(1.0)).unsqueeze(1))
        return probs.reshape(outputs.shape)

    def _weighted_output_gradient(self, probs: Tensor, targets: Tensor) -> Tensor:
        eps, classes, dtype = self.label_smoothing, probs.shape[-1], probs.dtype
        counted = self._target_weights(targets, dtype)
        mask = (targets != self.ignore_index).to(dtype)
        weight = torch.ones(classes, dtype=dtype, device=probs.device) if self.weight is None else None
        weight = self.weight.to(device=probs.device, dtype=dtype) if weight is None else weight
        out = probs * self._hessian_scale(targets, dtype).unsqueeze(1)
        out.scatter_add_(1, targets.clamp_min(0).unsqueeze(1), -((1.0 - eps) * counted).unsqueeze(1))
        out -= (eps / classes) * weight.unsqueeze(0) * mask.unsqueeze(1)
        total = counted.sum()
        return out / total if float(total) > 0 else out * 0.0

    def terms(self, outputs: Tensor, targets: Tensor) -> SampleTerms:
        """Per-element losses and what each counts (1, its class weight, or 0 where ignored)."""
        elem = self._torch(outputs, targets, "none").reshape(targets.shape)
        return SampleTerms(self, outputs, targets, elem, self._target_weights(targets, elem.dtype))

    def _options(self) -> list[str]:
        smoothing = [f"label_smoothing={self.label_smoothing}"] if self.label_smoothing else []
        return super()._options() + smoothing


class NegativeLogLikelihood(_ClassTargets):
    """``-w_y F_y`` on log-probabilities ``[..., C]`` with integer targets, as ``F.nll_loss``.

    The loss is linear in F: its output gradient is ``-w_y onehot(y) / count`` and its output
    Hessian 0, so the Gauss-Newton matrix vanishes and the Hessian is all functional (H = H_F;
    Singh, Mobahi, Agarwala, Dauphin 2025, arXiv 2502.02407, Eq. 7-8). A model that ends in
    ``log_softmax`` and is trained with ``nll`` has the same loss as cross-entropy on its
    logits, but the log-softmax's curvature then sits in H_F instead of G.
    """

    name = "nll"

    def _torch(self, outputs: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return F.nll_loss(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            weight=_class_weights(self.weight, outputs),
            ignore_index=self.ignore_index,
            reduction=reduction,
        )

    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``sum_i -w_{y_i} F_{i, y_i}`` over the counted targets."""
        return self._torch(outputs, targets, "sum")

    def mean(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``F.nll_loss`` with its (weighted) mean."""
        return self._torch(outputs, targets, "mean")

    def output_hessian_product(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """0: the loss is linear in its inputs."""
        return torch.zeros_like(U)

    def output_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``r = -w_y onehot(y) / count`` (0 for a batch without counted targets)."""
        outputs = outputs.detach()
        classes = outputs.shape[-1]
        flat = targets.reshape(-1)
        counted = self._target_weights(flat, outputs.dtype)
        out = torch.zeros(flat.numel(), classes, dtype=outputs.dtype, device=outputs.device)
        out.scatter_(1, flat.clamp_min(0).unsqueeze(1), -counted.unsqueeze(1))
        return out.div_(counted.sum().clamp_min(torch.finfo(outputs.dtype).tiny)).reshape(outputs.shape)

    def terms(self, outputs: Tensor, targets: Tensor) -> SampleTerms:
        """Per-element losses and what each counts."""
        elem = self._torch(outputs, targets, "none").reshape(targets.shape)
        return SampleTerms(self, outputs, targets, elem, self._target_weights(targets, elem.dtype))


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

    def prepare_targets(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """Values in the compute ``dtype`` (integer targets converted), all finite."""
        return _float_targets(targets, dtype)

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        """As many outputs as target elements."""
        _check_elementwise(self.name, outputs, targets)


def _check_elementwise(name: str, outputs: Tensor, targets: Sequence[Tensor]) -> None:
    if outputs.numel() != targets[0].numel():
        raise UserError(
            f"model outputs of shape {tuple(outputs.shape)} do not match "
            f"{name} targets of shape {tuple(targets[0].shape)}"
        )


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits, one target in [0, 1] per output element, as
    ``F.binary_cross_entropy_with_logits`` (``weight`` per element, ``pos_weight`` per class).

    Per element ``l = -w [q y log s + (1 - y) log(1 - s)]``, ``s = sigmoid(F)``, q the positive
    weight; the mean runs over all elements. Closed forms: ``dl/dF = w [s (q y + 1 - y) - q y]``
    and ``d2l/dF2 = w (q y + 1 - y) s (1 - s)`` (``diag(s (1 - s))`` without weights).
    """

    name = "bce"

    def __init__(self, *, weight: Tensor | None = None, pos_weight: Tensor | None = None) -> None:
        self.weight = None if weight is None else weight.detach()
        self.pos_weight = None if pos_weight is None else pos_weight.detach()

    def _torch(self, outputs: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            outputs,
            targets.reshape(outputs.shape).to(outputs.dtype),
            weight=_class_weights(self.weight, outputs),
            pos_weight=_class_weights(self.pos_weight, outputs),
            reduction=reduction,
        )

    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``sum l`` over all elements."""
        return self._torch(outputs, targets, "sum")

    def count(self, targets: Tensor) -> int:
        """Every element of the targets."""
        return int(targets.numel())

    def mean(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``F.binary_cross_entropy_with_logits`` with its mean over all elements."""
        return self._torch(outputs, targets, "mean")

    def _factors(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(s, w (q y + 1 - y), w q y)`` broadcast to the outputs."""
        s = torch.sigmoid(outputs)
        y = targets.reshape(outputs.shape).to(outputs.dtype)
        qy = y if self.pos_weight is None else y * _class_weights(self.pos_weight, outputs)
        curvature, linear = qy + 1.0 - y, qy
        if self.weight is not None:
            w = _class_weights(self.weight, outputs)
            curvature, linear = curvature * w, linear * w
        return s, curvature, linear

    def output_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``r = w [s (q y + 1 - y) - q y] / numel``."""
        s, curvature, linear = self._factors(outputs.detach(), targets)
        return (s * curvature - linear).div_(outputs.numel())

    def output_hessian_product(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """``w (q y + 1 - y) s (1 - s) u`` elementwise."""
        s, curvature, _ = self._factors(outputs, targets)
        return U * (curvature * s * (1.0 - s))

    def terms(self, outputs: Tensor, targets: Tensor) -> SampleTerms:
        """Per-element losses."""
        return SampleTerms(self, outputs, targets, self._torch(outputs, targets, "none"), None)

    def prepare_targets(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """Float targets in [0, 1]."""
        y = _float_targets(targets, dtype)
        if y.numel() and (float(y.min()) < 0.0 or float(y.max()) > 1.0):
            raise UserError("bce targets must lie in [0, 1]")
        return y

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        """As many outputs as target elements."""
        _check_elementwise(self.name, outputs, targets)

    def _float64_targets(self, targets: Tensor) -> Tensor:
        return targets.double()


class ElementwiseLoss(Loss):
    """A ``torch.nn`` loss module that compares outputs and targets element by element with a
    mean over all elements (``L1Loss``, ``SmoothL1Loss``, ``HuberLoss``): its sum is the module's
    own function with ``reduction="sum"``; output gradient and Hessian by autograd."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.name = type(module).__name__  # type: ignore[misc]

    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The module's loss with ``reduction="sum"``."""
        target = targets.reshape(outputs.shape).to(outputs.dtype)
        module = self.module
        if isinstance(module, nn.HuberLoss):
            return F.huber_loss(outputs, target, reduction="sum", delta=module.delta)
        if isinstance(module, nn.SmoothL1Loss):
            return F.smooth_l1_loss(outputs, target, reduction="sum", beta=module.beta)
        return F.l1_loss(outputs, target, reduction="sum")

    def count(self, targets: Tensor) -> int:
        """Every element of the targets."""
        return int(targets.numel())

    def prepare_targets(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """Values in the compute ``dtype``, all finite."""
        return _float_targets(targets, dtype)

    def mean(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The module itself."""
        return self.module(outputs, targets.reshape(outputs.shape).to(outputs.dtype))

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        """As many outputs as target elements."""
        _check_elementwise(self.name, outputs, targets)

    def _float64_targets(self, targets: Tensor) -> Tensor:
        return targets.double()

    def __repr__(self) -> str:
        return f"ElementwiseLoss({self.module!r})"


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


_SHIFTED = ("ForCausalLM", "ForConditionalGeneration")
_UNSHIFTED = ("ForMaskedLM", "ForTokenClassification")
_SEQUENCE = (
    "ForSequenceClassification",
    "ForImageClassification",
    "ForVideoClassification",
    "ForAudioClassification",
)


class ModelLoss(Loss):
    """The loss a Hugging Face model computes from ``labels=``, as a function of its logits.

    Hugging Face models pick their loss by ``model.loss_type`` (``model.loss_function``); this
    object is the same loss written with the losses above, so that its output gradient and
    output Hessian have closed forms and H, G and H_F stay defined:

    * causal language models (``ForCausalLM``): cross-entropy with the labels shifted left by one
      (position t predicts label t + 1; the last position of every row predicts nothing);
      ``-100`` labels are not counted;
    * masked language models and token classification: cross-entropy, unshifted;
    * sequence (image, audio, video) classification: ``config.problem_type``, decided as the
      model does when unset: mse for one label (``regression``), cross-entropy for integer labels
      (``single_label_classification``), bce otherwise (``multi_label_classification``).

    Targets are the ``labels`` the model would get. A model with a ``loss_function`` of its own
    (set by the user) is refused: pass that function as a callable loss instead.
    """

    name = "model"

    def __init__(self, model: nn.Module | None) -> None:
        if model is None:
            raise ValueError("loss 'model' needs the model: as_loss('model', model=...)")
        config = getattr(model, "config", None)
        loss_type = getattr(model, "loss_type", None)
        if config is None or not hasattr(type(model), "loss_function"):
            raise UserError(
                f"loss 'model' needs a Hugging Face model that computes its loss from labels=; "
                f"{type(model).__name__} is not one (use cross_entropy, mse, bce, nll or a callable)"
            )
        if "_loss_function" in vars(model):
            raise UserError(
                "the model has a loss_function of its own: pass it as a callable loss "
                "(outputs, targets) -> mean loss instead of 'model'"
            )
        self.loss_type = loss_type or "ForCausalLM"
        self.config = config
        self.shift = self.loss_type in _SHIFTED
        if not (self.shift or self.loss_type in _UNSHIFTED or self.loss_type in _SEQUENCE):
            raise UserError(
                f"loss 'model' does not know how {self.loss_type} models compute their loss; "
                "pass the loss as a callable (outputs, targets) -> mean loss"
            )
        self._inner: Loss | None = CrossEntropy() if self.loss_type in _SHIFTED + _UNSHIFTED else None

    def inner(self, targets: Tensor | None = None) -> Loss:
        """The loss of the outputs this model's loss is (decided from the targets if needed)."""
        if self._inner is not None:
            return self._inner
        problem = getattr(self.config, "problem_type", None)
        if problem is None:
            labels = int(getattr(self.config, "num_labels", 2))
            if labels == 1:
                problem = "regression"
            elif targets is not None and not targets.is_floating_point():
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        inner = {
            "regression": MeanSquaredError,
            "single_label_classification": CrossEntropy,
            "multi_label_classification": BinaryCrossEntropy,
        }[problem]()
        self._inner = inner
        return inner

    def model_targets(self, labels: Tensor) -> Tensor:
        """The targets of :meth:`inner` for ``labels``: shifted left by one for a causal LM;
        one row per sample for regression (the model squeezes both sides)."""
        if self.shift:
            pad = torch.full_like(labels[..., :1], IGNORE_INDEX)
            return torch.cat([labels[..., 1:], pad], dim=-1)
        if isinstance(self.inner(labels), MeanSquaredError):
            return labels.reshape(labels.shape[0], -1)
        return labels

    def _pair(self, targets: Tensor) -> tuple[Loss, Tensor]:
        return self.inner(targets), self.model_targets(targets)

    def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
        inner, y = self._pair(targets)
        return inner.sum(outputs, y)

    def count(self, targets: Tensor) -> int | float:
        inner, y = self._pair(targets)
        return inner.count(y)

    def mean(self, outputs: Tensor, targets: Tensor) -> Tensor:
        inner, y = self._pair(targets)
        return inner.mean(outputs, y)

    def output_hessian_product(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        inner, y = self._pair(targets)
        return inner.output_hessian_product(outputs, y, U)

    def output_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        inner, y = self._pair(targets)
        return inner.output_gradient(outputs, y)

    def terms(self, outputs: Tensor, targets: Tensor) -> SampleTerms:
        inner, y = self._pair(targets)
        return inner.terms(outputs, y)

    def sample_has_targets(self, targets: Tensor) -> Tensor:
        inner, y = self._pair(targets)
        return inner.sample_has_targets(y)

    def prepare_targets(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        return self.inner(targets).prepare_targets(targets, dtype)

    def check_outputs(self, outputs: Tensor, targets: Sequence[Tensor]) -> None:
        inner = self.inner(targets[0])
        inner.check_outputs(outputs, [self.model_targets(t) for t in targets])

    def correct(self, outputs: Tensor, targets: Tensor) -> int | None:
        inner, y = self._pair(targets)
        return inner.correct(outputs, y)

    def evaluate(self, outputs: Tensor, targets: Tensor) -> EvalSums:
        inner, y = self._pair(targets)
        return inner.evaluate(outputs, y)

    @property
    def classification(self) -> bool:  # type: ignore[override]
        return self.inner().classification if self._inner is not None else True

    def __repr__(self) -> str:
        return f"ModelLoss({self.loss_type})"


LOSSES: dict[str, type[Loss]] = {
    "cross_entropy": CrossEntropy,
    "mse": MeanSquaredError,
    "bce": BinaryCrossEntropy,
    "nll": NegativeLogLikelihood,
    "model": ModelLoss,
}
"""The losses known by name (``--loss``): name -> class (``"model"`` is built with the model)."""

LossLike: TypeAlias = str | Loss | nn.Module | Callable[[Tensor, Tensor], Tensor]
"""A loss: a name of :data:`LOSSES`, a :class:`Loss`, a ``torch.nn`` loss module or a callable
``(outputs, targets) -> mean loss``."""


def _from_module(module: nn.Module) -> Loss:
    """The :class:`Loss` of a ``torch.nn`` loss module (its options kept); others as callables."""
    reduction = getattr(module, "reduction", "mean")
    if reduction != "mean":
        raise UserError(
            f"{type(module).__name__}(reduction={reduction!r}): give the loss with reduction='mean' "
            "(landscape sums and averages over the data set itself)"
        )
    if isinstance(module, nn.CrossEntropyLoss):
        return CrossEntropy(
            weight=module.weight, ignore_index=module.ignore_index, label_smoothing=module.label_smoothing
        )
    if isinstance(module, nn.NLLLoss):
        return NegativeLogLikelihood(weight=module.weight, ignore_index=module.ignore_index)
    if isinstance(module, nn.MSELoss):
        return MeanSquaredError()
    if isinstance(module, nn.BCEWithLogitsLoss):
        return BinaryCrossEntropy(weight=module.weight, pos_weight=module.pos_weight)
    if isinstance(module, (nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)):
        return ElementwiseLoss(module)
    return CallableLoss(module)


def as_loss(loss: LossLike, *, model: nn.Module | None = None) -> Loss:
    """The :class:`Loss` for a name, a :class:`Loss` (returned as it is), a ``torch.nn`` loss
    module or a callable. ``model`` is needed for ``"model"`` (the Hugging Face model's own loss)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss == "model":
            return ModelLoss(model)
        if loss in LOSSES:
            return LOSSES[loss]()
        if is_import_path(loss):
            return as_loss(imported_loss(loss.strip()), model=model)
        names = ", ".join(repr(n) for n in LOSSES)
        raise ValueError(
            f"unknown loss {loss!r}; use {names}, an import path module:callable, a torch.nn loss module or a callable"
        )
    if isinstance(loss, nn.Module):
        return _from_module(loss)
    if callable(loss):
        return CallableLoss(loss)
    raise TypeError(f"loss_fn must be a name or a callable, got {type(loss).__name__}")


def is_import_path(spec: str) -> bool:
    """Whether a loss spec names code to import (``package.module:callable``, ``file.py:fn``):
    not a built-in name, and with a ``:`` or a ``.`` (the rule of :mod:`landscape.trust`)."""
    spec = spec.strip()
    return spec not in LOSSES and (":" in spec or "." in spec)


@functools.lru_cache(maxsize=32)
def imported_loss(spec: str) -> Any:
    """The object an import-path loss spec names, imported once: a function ``(outputs, targets)
    -> mean loss``, a ``torch.nn`` loss module, a :class:`Loss`, or a class of either (built with
    no arguments). Import paths are code: the callers that read specs from files check them with
    :mod:`landscape.trust` first."""
    from landscape.models.zoo import resolve_import_path

    found = resolve_import_path(spec, "loss")
    if isinstance(found, type) and issubclass(found, (nn.Module, Loss)):
        found = found()
    if not callable(found):
        raise UserError(f"loss '{spec}' is a {type(found).__name__}, not a loss or a callable")
    return found


def loss_name(loss: LossLike) -> str:
    """A short name of a loss for records (``analysis.json``, the problem's description)."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, (CallableLoss,)):
        return f"callable {getattr(loss.fn, '__name__', type(loss.fn).__name__)}"
    if isinstance(loss, Loss):
        return repr(loss) if type(loss).__repr__ is not Loss.__repr__ else loss.name
    if isinstance(loss, nn.Module):
        return repr(loss)
    return f"callable {getattr(loss, '__name__', type(loss).__name__)}"


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
