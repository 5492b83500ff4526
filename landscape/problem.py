"""A *problem*: model + loss + data as a pure function of the parameters.

The loss is the mean of the per-target loss over the whole data set,

    L(theta) = (1/N) sum_b sum_{i in b} l(f_theta(x_i), y_i),

where N counts targets: one per sample for classification, one per token for ``[B, T, V]``
language-model logits, one per output element for mean-squared error (torch's ``mse_loss``
convention). Every batch contributes its *sum* of per-target losses and the total is divided by N
once, so gradients and curvature products are exact full-data quantities that do not depend on
how the data is chunked (``batch_size`` only bounds memory).

The model runs through ``torch.func.functional_call`` with the selected parameters passed in
explicitly, in eval mode (dropout off, BatchNorm running statistics; switched on for each call and
back to the caller's modes after it), so the same problem object serves reverse-mode, forward-mode
and double-backward differentiation.

Devices: the parameters and buffers are copied to the compute device once; the data stays on
the host and moves to the device one chunk at a time (:meth:`Problem.device_batch`: pinned host
memory and non-blocking copies with CUDA), so the device holds the model, one chunk and what the
estimators need, whatever the size of the data.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape import distributed as _dist
from landscape.errors import UserError
from landscape.losses import IGNORE_INDEX, LOSSES, Loss, LossLike, as_loss, is_import_path, loss_name
from landscape.models import unwrap_output
from landscape.preserve import eval_mode

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "Batch",
    "Problem",
    "loss_sum",
    "named_loss",
    "output_hessian_product",
    "select_parameters",
]

# Default chunking: keep about this many model-output elements per batch (memory bound only).
DEFAULT_OUTPUT_ELEMENTS_PER_BATCH = 1 << 21


def _math_attention() -> contextlib.AbstractContextManager[Any]:
    """Force scaled_dot_product_attention onto its differentiable math path (no-op on old torch)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@dataclass
class Batch:
    """One chunk of the data: model inputs, targets and the number of targets it contributes."""

    inputs: Any
    targets: Tensor
    count: int | float
    num_samples: int


def named_loss(loss: LossLike, model: nn.Module | None = None) -> Loss:
    """The :class:`landscape.losses.Loss` of a problem's loss: a name of
    :data:`landscape.losses.LOSSES` (``"model"`` with the ``model``), a ``Loss`` (passed through),
    a ``torch.nn`` loss module or a callable; an unknown name is a ``UserError``."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss not in LOSSES and not is_import_path(loss):
        raise UserError(
            f"unknown loss '{loss}' (choose from {', '.join(LOSSES)}, or an import path module:callable)"
        )
    try:
        return as_loss(loss, model=model)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None


def loss_sum(outputs: Tensor, targets: Tensor, loss: str | Loss) -> Tensor:
    """Sum of per-target losses of one batch (divide by the data set's target count for the mean);
    :meth:`landscape.losses.Loss.sum` of the named loss."""
    return named_loss(loss).sum(outputs, targets)


def output_hessian_product(outputs: Tensor, targets: Tensor, U: Tensor, loss: str | Loss) -> Tensor:
    """The per-target Hessian of the loss w.r.t. the outputs applied to ``U`` (shaped like the
    outputs, optionally with leading column dims), summed over targets like :func:`loss_sum`;
    :meth:`landscape.losses.Loss.output_hessian_product` of the named loss."""
    return named_loss(loss).output_hessian_product(outputs, targets, U)


def select_parameters(model: nn.Module, params: str | Sequence[str] | None) -> list[str]:
    """Names of the trainable parameters to analyse.

    ``None``: every parameter with ``requires_grad``. A string: comma-separated regular expressions
    matched anywhere in the name (``"lora_"``, ``"blocks.0,head"``). A sequence: exact names.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        chosen = names
    elif isinstance(params, str):
        patterns = [p.strip() for p in params.split(",") if p.strip()]
        try:
            regexes = [re.compile(p) for p in patterns]
        except re.error as exc:
            raise UserError(f"invalid --params pattern '{params}': {exc}") from None
        chosen = [n for n in names if any(r.search(n) for r in regexes)]
        if not chosen:
            raise UserError(f"--params '{params}' matches no parameter (names look like '{names[0]}')")
    else:
        all_names = dict(model.named_parameters())
        missing = [n for n in params if n not in all_names]
        if missing:
            raise UserError(f"unknown parameter name(s): {', '.join(missing[:5])}")
        chosen = list(params)
    if not chosen:
        raise UserError("the model has no trainable parameters")
    return chosen


def _as_pair(data: Any) -> tuple[Any, Tensor] | None:
    """(x, y) tensors from a pair, an object with ``.x``/``.y`` or an indexable Dataset."""
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[1], Tensor):
        return data[0], data[1]
    if hasattr(data, "x") and hasattr(data, "y") and isinstance(data.y, Tensor):
        return data.x, data.y
    if isinstance(data, torch.utils.data.TensorDataset):
        return data.tensors[0], data.tensors[1]
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, Tensor):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise UserError("the data set is empty")
        xs, ys = zip(*items, strict=True)
        return torch.stack([torch.as_tensor(x) for x in xs]), torch.stack([torch.as_tensor(y) for y in ys])
    return None


def _whole(count: Tensor) -> int | float:
    """A count as ``int`` when it is a whole number (target counts), else ``float`` (summed weights)."""
    value = float(count)
    return int(value) if value.is_integer() else value


def _num_items(inputs: Any) -> int:
    if isinstance(inputs, dict):
        return len(next(iter(inputs.values())))
    return len(inputs)


def _slice(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, dict):
        return {k: v[start:stop] for k, v in inputs.items()}
    return inputs[start:stop]


def _take(inputs: Any, index: Tensor) -> Any:
    if isinstance(inputs, dict):
        return {k: torch.as_tensor(v)[index] for k, v in inputs.items()}
    return torch.as_tensor(inputs)[index]


class Problem:
    """Model + loss + data, with the parameters as explicit function arguments.

    Args:
        model: any ``nn.Module``; it runs in eval mode (dropout off, BatchNorm running stats) for
            each evaluation, and its own modes, flags and parameters are left as they are.
        data: ``(x, y)`` tensors, an object with ``.x``/``.y``, a ``Dataset`` or an iterable of
            ``(x, y)`` batches (e.g. a ``DataLoader``). ``x`` may be a dict of tensors (keyword inputs).
        loss: a name of :data:`landscape.losses.LOSSES` (``"cross_entropy"``, ``"mse"``, ``"bce"``,
            ``"nll"``, ``"model"``: a Hugging Face model's own loss from ``labels``), a
            ``torch.nn`` loss module (``reduction="mean"``), a :class:`landscape.losses.Loss` or a
            callable ``(outputs, targets) -> mean loss`` (see :mod:`landscape.losses`).
        params: which parameters to analyse (see :func:`select_parameters`); the others are fixed.
        batch_size: chunk size in samples (memory only; results do not depend on it). Default:
            about 2M model-output elements per chunk.
        dtype: compute dtype for parameters, float buffers and float inputs (default: the model's).
        device: where to compute: ``"auto"`` (CUDA when available, this process's ``LOCAL_RANK``
            GPU under ``torchrun``), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
            ``torch.device`` (see :func:`landscape.distributed.resolve_device`). Default: the
            device of the model's parameters. The model itself is not moved: the problem holds
            its own copies of the parameters and buffers there. Data given on another device is
            kept on the host (pinned with CUDA) and copied one chunk at a time.
        distributed: sum over the processes of ``torch.distributed`` (see
            :mod:`landscape.distributed`). ``None`` (default): when it is initialised with more than
            one process. Then data given as ``(x, y)`` (or ``.x``/``.y``, a ``Dataset``) is sharded:
            this process keeps samples ``rank, rank + P, ...``; an iterable of batches (a
            ``DataLoader``) is taken as this process's own share, so give each rank different,
            non-overlapping batches (``DistributedSampler`` pads with repeated samples unless the
            data divides evenly). Loss, gradient and every curvature product are then all-reduced
            full-data means, identical on all ranks; every rank must make the same calls.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss: LossLike = "cross_entropy",
        *,
        params: str | Sequence[str] | None = None,
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        distributed: bool | None = None,
    ) -> None:
        if distributed is None:
            distributed = _dist.is_distributed()
        elif distributed and not _dist.is_distributed():
            raise UserError("distributed=True needs torch.distributed initialised with more than one process")
        self.distributed = bool(distributed)
        self.loss_function = named_loss(loss, model)
        if batch_size is not None and batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.model = model
        self.was_training = model.training  # the model's modes are untouched: outputs() runs in eval mode
        # a plain name is kept (reports show it); anything else is the loss object itself
        self.loss: str | Loss = loss if isinstance(loss, str) and loss != "model" else self.loss_function
        first = next(iter(model.parameters()), None)
        if first is None:
            raise UserError("the model has no parameters")
        self.dtype = dtype or first.dtype
        self.device = _dist.resolve_device(device) if device is not None else first.device
        self.param_names = select_parameters(model, params)
        named = dict(model.named_parameters())
        self.params: dict[str, Tensor] = {
            n: named[n].detach().to(device=self.device, dtype=self.dtype).clone() for n in self.param_names
        }
        chosen = set(self.param_names)
        fixed: dict[str, Tensor] = {}
        for n, p in model.named_parameters():
            if n not in chosen:
                fixed[n] = p.detach().to(device=self.device, dtype=self.dtype)
        for n, b in model.named_buffers():
            fixed[n] = (
                b.to(device=self.device, dtype=self.dtype) if b.is_floating_point() else b.to(self.device)
            )
        self.fixed = fixed
        self.shapes = [self.params[n].shape for n in self.param_names]
        self.numels = [int(math.prod(s)) for s in self.shapes]
        self.offsets = [0]
        for k in self.numels:
            self.offsets.append(self.offsets[-1] + k)
        self.num_params = self.offsets[-1]
        self.batches = self._make_batches(data, batch_size)
        counts = torch.tensor(
            [sum(b.count for b in self.batches), sum(b.num_samples for b in self.batches)],
            dtype=torch.float64,
        )
        self.local_num_targets, self.local_num_samples = _whole(counts[0]), int(counts[1])
        self.all_reduce_(counts)
        # what the full-data mean divides by: targets counted (class-weighted losses: their weights)
        self.num_targets, self.num_samples = _whole(counts[0]), int(counts[1])
        if self.num_targets == 0:
            raise UserError("the data has no targets to compute a loss on (all ignored?)")
        self._check_outputs()

    # ----------------------------------------------------------------------------------- data
    def _stage(self, x: Tensor) -> Tensor:
        """Keep ``x`` where the data lives: on the compute device if it is already there, else on
        the host (pinned when the compute device is a CUDA GPU, for asynchronous copies)."""
        if x.device == self.device:
            return x
        x = x.cpu()
        if self.device.type == "cuda" and not x.is_pinned():
            x = x.pin_memory()
        return x

    def _convert_inputs(self, x: Any) -> Any:
        if isinstance(x, dict):
            return {k: self._convert_inputs(v) for k, v in x.items()}
        x = torch.as_tensor(x)
        if x.is_floating_point():
            x = x.to(dtype=self.dtype)
            if not torch.isfinite(x).all():
                raise UserError("the inputs contain NaN or infinite values")
        return self._stage(x)

    def _to_device(self, x: Any) -> Any:
        if isinstance(x, dict):
            return {k: self._to_device(v) for k, v in x.items()}
        if isinstance(x, Tensor) and x.device != self.device:
            return x.to(self.device, non_blocking=x.is_pinned())
        return x

    def device_batch(self, batch: Batch) -> Batch:
        """``batch`` with its inputs and targets on the compute device (the same object when they
        already are; otherwise a copy, non-blocking from pinned host memory)."""
        if batch.targets.device == self.device and all(
            t.device == self.device
            for t in (batch.inputs.values() if isinstance(batch.inputs, dict) else [batch.inputs])
            if isinstance(t, Tensor)
        ):
            return batch
        return Batch(
            self._to_device(batch.inputs), self._to_device(batch.targets), batch.count, batch.num_samples
        )

    def _convert_targets(self, y: Tensor) -> Tensor:
        return self._stage(self.loss_function.prepare_targets(torch.as_tensor(y), self.dtype))

    def _count(self, y: Tensor) -> int:
        return self.loss_function.count(y)

    def _make_batches(self, data: Any, batch_size: int | None) -> list[Batch]:
        pair = _as_pair(data)
        if pair is None:
            if not isinstance(data, Iterable):
                raise UserError(
                    f"cannot use {type(data).__name__} as data: give (x, y), a Dataset or a DataLoader"
                )
            chunks = []
            for item in data:
                if not (isinstance(item, tuple | list) and len(item) == 2):
                    raise UserError("each batch of the data loader must be an (inputs, targets) pair")
                chunks.append((item[0], item[1]))
        else:
            x, y = pair
            n = _num_items(x)
            if n != len(y):
                raise UserError(f"inputs and targets differ in length ({n} vs {len(y)})")
            if self.distributed:
                index = _dist.shard_indices(n, _dist.rank(), _dist.world_size())
                x, y, n = _take(x, index), torch.as_tensor(y)[index], len(index)
            if batch_size is None:
                per_item = max(1, int(y[:1].numel())) * 64
                batch_size = max(1, DEFAULT_OUTPUT_ELEMENTS_PER_BATCH // per_item)
            chunks = [
                (_slice(x, s, min(s + batch_size, n)), y[s : s + batch_size]) for s in range(0, n, batch_size)
            ]
        batches = []
        for x, y in chunks:
            xb, yb = self._convert_inputs(x), self._convert_targets(y)
            batches.append(Batch(xb, yb, self._count(yb), _num_items(xb)))
        if not batches or sum(b.num_samples for b in batches) == 0:
            raise UserError("the data set is empty")
        return batches

    def _check_outputs(self) -> None:
        b = self.device_batch(self.batches[0])
        with torch.enable_grad():  # also when built under no_grad: the check needs the graph
            leaves = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
            out = self.outputs(leaves, b.inputs)
            self.loss_function.check_outputs(out.detach(), [batch.targets for batch in self.batches])
            if not torch.isfinite(out).all():
                raise UserError("the model produces NaN or infinite outputs on the data")
            self._check_dependence(out, leaves)

    def _check_dependence(self, out: Tensor, leaves: dict[str, Tensor]) -> None:
        """Outputs that depend on none of the selected parameters (structurally, through autograd)
        have no gradient and no curvature: ``UserError``. Parameters the outputs do not depend on
        are listed in ``unused_params`` (loss values and slices are fine; derivatives need them
        left out with ``params``)."""
        names = self.param_names
        unused = list(names)
        if out.requires_grad:
            grads = torch.autograd.grad(out.sum(), [leaves[n] for n in names], allow_unused=True)
            unused = [n for n, g in zip(names, grads, strict=True) if g is None]
        if len(unused) == len(names):
            raise UserError(
                f"the model's outputs do not depend on its parameters ({len(names)} selected): "
                "the gradient and every curvature of the loss are zero, there is nothing to measure"
            )
        self.unused_params = unused

    # ------------------------------------------------------------------------------ function
    def outputs(self, params: dict[str, Tensor], inputs: Any) -> Tensor:
        """Model predictions at ``params`` (a dict name -> tensor) for one batch of inputs (moved to
        the compute device if they are elsewhere)."""
        inputs = self._to_device(inputs)
        state = {**self.fixed, **params}
        # The fused CPU SDPA kernels (Hugging Face's default attention) have neither double-backward
        # nor forward-mode derivatives; the math path computes the same attention and has both.
        # Eval mode for the call only: the caller's model keeps its own modes.
        with _math_attention(), eval_mode(self.model):
            if isinstance(inputs, dict):
                out = torch.func.functional_call(self.model, state, (), inputs)
            else:
                out = torch.func.functional_call(self.model, state, (inputs,))
        return unwrap_output(out)

    def batch_loss_sum(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        """Sum of per-target losses of one batch at ``params``."""
        batch = self.device_batch(batch)
        return self.loss_function.sum(self.outputs(params, batch.inputs), batch.targets)

    def loss_value(self, params: dict[str, Tensor] | None = None) -> float:
        """The full-data mean loss L(theta)."""
        params = self.params if params is None else params
        with torch.no_grad():
            return self.mean_loss(self.batch_loss_sum(params, b) for b in self.batches)

    def mean_loss(self, batch_sums: Iterable[Tensor]) -> float:
        """The full-data mean loss from each batch's summed loss (in the order of ``batches``):
        accumulated in float64, summed over the processes, divided by the target count."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch_sum in batch_sums:
            total += batch_sum.detach().to(torch.float64)
        return float(self.all_reduce_(total.cpu())) / self.num_targets

    def gradient(self, params: dict[str, Tensor] | None = None) -> Tensor:
        """The full-data gradient grad L(theta) as a flat vector."""
        params = self.params if params is None else params
        total = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        for b in self.batches:
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            grads = torch.autograd.grad(self.batch_loss_sum(leaves, b), [leaves[n] for n in self.param_names])
            total += self.flatten(grads)
        return self.all_reduce_(total) / self.num_targets

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes in place when the problem is distributed; returns it.

        The one place where per-shard sums become full-data sums (loss, gradient, products).
        """
        if self.distributed:
            _dist.all_reduce_sum_(tensor)
        return tensor

    # ------------------------------------------------------------------------------ vectors
    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """Concatenate per-parameter tensors (dict or list in ``param_names`` order) to a flat vector.

        Leading batch dimensions are kept: tensors of shape ``[k, *shape]`` give ``[k, P]``.
        """
        seq = [tensors[n] for n in self.param_names] if isinstance(tensors, dict) else list(tensors)
        lead = seq[0].shape[: seq[0].dim() - len(self.shapes[0])]
        return torch.cat([t.reshape(*lead, -1) for t in seq], dim=-1)

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Split a flat vector ``[P]`` (or ``[k, P]``) into a dict of parameter-shaped tensors."""
        lead = vec.shape[:-1]
        return {
            n: vec[..., self.offsets[i] : self.offsets[i + 1]].reshape(*lead, *self.shapes[i])
            for i, n in enumerate(self.param_names)
        }

    def blocks(self) -> list[tuple[str, slice]]:
        """Per-parameter-tensor slices of the flat vector (the 'layers' of per-layer diagnostics)."""
        return [(n, slice(self.offsets[i], self.offsets[i + 1])) for i, n in enumerate(self.param_names)]

    def parameter_vector(self) -> Tensor:
        """The current parameters theta as a flat vector."""
        return self.flatten(self.params)

    def with_parameters(self, vec: Tensor) -> dict[str, Tensor]:
        """A parameter dict for the flat vector ``vec`` (for evaluating the loss elsewhere)."""
        return {n: t.clone() for n, t in self.unflatten(vec.to(self.dtype)).items()}

    def describe(self) -> dict[str, Any]:
        """Facts about the problem for reports (sizes, loss, dtype, mode)."""
        return {
            "num_params": self.num_params,
            "num_samples": self.num_samples,
            "num_targets": self.num_targets,
            "num_batches": len(self.batches),
            "processes": _dist.world_size() if self.distributed else 1,
            "loss_function": loss_name(self.loss),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "mode": "eval (dropout off, BatchNorm running statistics)",
        }
