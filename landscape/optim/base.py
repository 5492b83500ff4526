"""Shared machinery of the gradient rules: losses, model outputs, perturbations, RNG and BN guards.

A *gradient rule* decides how the training gradient is formed (plain, SAM, Functional-SAM, ...); a
*base optimizer* (``torch.optim.AdamW``, ``torch.optim.SGD``, :class:`landscape.optim.SGLD`) decides
how the parameters move. The rule fills ``p.grad`` of every trained parameter (``requires_grad``)
and returns the batch loss; the base optimizer then steps. This is the optax split of
"gradient transformation" and "update", applied to the gradient's formation.

Notation used throughout (issue 3, seed 002 Sec. 2-3): ``g = grad L(theta)`` on the batch,
``F`` the model outputs (logits), ``r = dL/dF``, ``J = dF/dtheta`` so that ``g = J^T r``, and
``eps* = g / ||g||`` with the global L2 norm over the trained parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape import distributed as _dist
from landscape.models import unwrap_output

LossLike = str | Callable[[Tensor, Tensor], Tensor]
"""A loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(outputs, targets) -> mean loss``."""

RhoSchedule = Callable[[int], float]
"""Maps the rule's step counter (0, 1, 2, ...) to the perturbation radius rho used at that step."""

IGNORE_INDEX = -100
"""Targets equal to this value are left out of the cross-entropy mean (as in ``F.cross_entropy``)."""


# One home for output unwrapping (tensor, tuple, dict, HF-style .logits): the model zoo's.
_outputs = unwrap_output


class BatchLoss:
    """The mean batch loss L(F, y), with the per-sample views that RWSAM and m-sharpness need.

    ``"cross_entropy"``: logits ``[..., C]``, integer targets ``[...]``; the mean over all targets
    that are not ``IGNORE_INDEX`` (exactly ``F.cross_entropy(..., ignore_index=-100)``).
    ``"mse"``: ``F.mse_loss`` with its mean over all elements.
    A callable ``(outputs, targets) -> mean loss`` receives the unwrapped output tensor F.
    The first dimension of outputs and targets is the sample (batch) dimension.
    """

    def __init__(self, loss_fn: LossLike) -> None:
        if isinstance(loss_fn, BatchLoss):
            self.kind, self.fn = loss_fn.kind, loss_fn.fn
        elif isinstance(loss_fn, str):
            if loss_fn not in ("cross_entropy", "mse"):
                raise ValueError(f"unknown loss {loss_fn!r}; use 'cross_entropy', 'mse' or a callable")
            self.kind, self.fn = loss_fn, None
        elif callable(loss_fn):
            self.kind, self.fn = "callable", loss_fn
        else:
            raise TypeError(f"loss_fn must be a name or a callable, got {type(loss_fn).__name__}")

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Return the mean batch loss (a 0-dim tensor)."""
        if self.kind == "cross_entropy":
            return F.cross_entropy(
                outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        if self.kind == "mse":
            return F.mse_loss(outputs, targets)
        return self.fn(outputs, targets)

    def output_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``r = dL/dF`` of the mean batch loss at ``outputs``, detached, shaped like ``outputs``.

        Closed forms for the built-in losses (one pass instead of a loss forward + backward):
        cross-entropy ``r = (softmax(F) - onehot(y)) m / sum(m)`` with ``m`` the mask of counted
        targets; mse ``r = 2 (F - y) / numel``. A callable loss is differentiated by autograd.
        """
        outputs = outputs.detach()
        if self.kind == "cross_entropy":
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
        if self.kind == "mse":
            return (outputs - targets).mul_(2.0 / outputs.numel())
        leaf = outputs.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.fn(leaf, targets), leaf)
        return grad

    def terms(self, outputs: Tensor, targets: Tensor) -> SampleTerms:
        """The per-sample decomposition of this batch's loss (see :class:`SampleTerms`)."""
        if self.kind == "callable":
            return SampleTerms(self, outputs, targets, None, None)
        if self.kind == "cross_entropy":
            elem = F.cross_entropy(
                outputs.reshape(-1, outputs.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).reshape(targets.shape)
            return SampleTerms(self, outputs, targets, elem, (targets != IGNORE_INDEX).to(elem.dtype))
        elem = F.mse_loss(outputs, targets, reduction="none")
        return SampleTerms(self, outputs, targets, elem, None)

    def sample_has_targets(self, targets: Tensor) -> Tensor:
        """Boolean ``[B]``: whether sample i has at least one counted target."""
        if self.kind == "cross_entropy":
            return (targets != IGNORE_INDEX).reshape(targets.shape[0], -1).any(1)
        return torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)


class SampleTerms:
    """One batch's loss split by sample, computed once and read three ways.

    Built-in losses keep the per-element losses (and the mask of counted targets); a callable
    loss is evaluated on one-sample slices of the outputs.
    """

    def __init__(
        self, loss: BatchLoss, outputs: Tensor, targets: Tensor, elem: Tensor | None, mask: Tensor | None
    ) -> None:
        self.loss, self.outputs, self.targets, self.elem, self.mask = loss, outputs, targets, elem, mask
        self._per_sample_graph: Tensor | None = None

    def _callable_per_sample(self) -> Tensor:
        if self._per_sample_graph is None:
            fn, out, y = self.loss.fn, self.outputs, self.targets
            self._per_sample_graph = torch.stack([fn(out[i : i + 1], y[i : i + 1]) for i in range(len(out))])
        return self._per_sample_graph

    def _count(self) -> Tensor | float:
        return self.mask.sum() if self.mask is not None else float(self.elem.numel())

    def mean(self) -> Tensor:
        """The mean batch loss (with its graph)."""
        if self.elem is None:
            return self.loss.fn(self.outputs, self.targets)
        return self.elem.sum() / self._count()

    def per_sample(self) -> Tensor:
        """Detached per-sample mean losses ``l_i``, shape ``[B]`` (0 for a sample without targets)."""
        if self.elem is None:
            return self._callable_per_sample().detach()
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
            return (sample_weights * self._callable_per_sample()).mean()
        w = sample_weights.to(self.elem.dtype).reshape(-1, *([1] * (self.elem.dim() - 1)))
        return (self.elem * w).sum() / self._count()


def trained_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of ``model`` with ``requires_grad`` (shared tensors once)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def batch_size(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, (tuple, list)):
        return batch_size(batch[0])
    if isinstance(batch, dict):
        return batch_size(next(iter(batch.values())))
    raise TypeError(f"cannot find a batch dimension in {type(batch).__name__}")


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a tensor, or of every tensor in a tuple, list or dict."""
    if isinstance(batch, Tensor):
        return batch[start:stop]
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(b, start, stop) for b in batch)
    if isinstance(batch, dict):
        return {k: slice_batch(v, start, stop) for k, v in batch.items()}
    return batch


def global_norm(tensors: Sequence[Tensor | None]) -> Tensor:
    """The L2 norm of the concatenation of all given tensors (``None`` entries count as zero).

    Returned as a float64 0-dim tensor on the first tensor's device.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return torch.zeros((), dtype=torch.float64)
    device = present[0].device
    # one fused kernel for the per-tensor norms; float64 for the combination so that tensors of
    # different dtypes (and devices) can be mixed
    norms = torch._foreach_norm(present)
    if all(n.device == device and n.dtype == norms[0].dtype for n in norms):
        return torch.linalg.vector_norm(torch.stack(norms).to(torch.float64))
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=torch.float64) for n in norms]))


def scaled(tensors: Sequence[Tensor | None], factor: Tensor) -> list[Tensor | None]:
    """``[t * factor]`` for a 0-dim ``factor`` (computed in each tensor's own dtype)."""
    idx = [i for i, t in enumerate(tensors) if t is not None]
    out: list[Tensor | None] = [None] * len(tensors)
    if not idx:
        return out
    present = [tensors[i] for i in idx]
    dtypes = {t.dtype for t in present}
    if len(dtypes) == 1 and all(t.device == factor.device for t in present):
        products = torch._foreach_mul(present, factor.to(present[0].dtype))
    else:
        products = [t * factor.to(device=t.device, dtype=t.dtype) for t in present]
    for i, t in zip(idx, products, strict=True):
        out[i] = t
    return out


class SavedParameters:
    """Bit-exact copies of the perturbed parameters, for :func:`restore_`."""

    def __init__(self, indices: list[int], values: list[Tensor]) -> None:
        self.indices = indices
        self.values = values


def perturb_(params: Sequence[Tensor], eps: Sequence[Tensor | None], alpha: float = 1.0) -> SavedParameters:
    """Add ``alpha * eps`` to ``params`` in place (``None``: leave that one) and save the old values.

    The update goes through ``.data``, which leaves the parameters' autograd version counters
    alone: a graph recorded at theta (kept by LOGIT-/ANGLE-SAM) is valid again once
    :func:`restore_` has copied theta back bit for bit.
    """
    indices = [i for i, e in enumerate(eps) if e is not None]
    if not indices:
        return SavedParameters([], [])
    data = [params[i].data for i in indices]
    saved = SavedParameters(indices, list(torch._foreach_clone(data)))
    torch._foreach_add_(data, [eps[i] for i in indices], alpha=alpha)
    return saved


def restore_(params: Sequence[Tensor], saved: SavedParameters) -> None:
    """Copy the values saved by :func:`perturb_` back (exact: no ``theta + e - e`` round-off)."""
    if saved.indices:
        torch._foreach_copy_([params[i].data for i in saved.indices], saved.values)


def write_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Set ``p.grad`` (replacing what was there); ``None`` for parameters the loss does not use.

    The gradients come from ``autograd.grad`` without ``create_graph``, so they carry no graph.
    """
    for p, g in zip(params, grads, strict=True):
        p.grad = g


class RngState:
    """Snapshot of the global torch RNG (CPU, and the CUDA device in use) to replay dropout masks.

    SAM-type rules run a second forward pass on the same batch. Restoring this snapshot before it
    makes every random draw of that pass (dropout masks) equal to the first pass's, which both
    Functional-SAM (r of pass 1 paired with J of pass 2) and SAM itself need (google-research/sam
    uses one PRNG key for both passes).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        """Put the global RNG back to the snapshot."""
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@contextmanager
def frozen_norm_statistics(model: nn.Module | None) -> Iterator[None]:
    """Leave BatchNorm/InstanceNorm running statistics as they were before the block.

    The perturbed pass of SAM-type rules must not update ``running_mean``, ``running_var`` or
    ``num_batches_tracked`` (davda54/sam sets BN momentum to 0, which misses ``momentum=None``,
    the cumulative average). Inside the block each norm module works on throw-away copies of its
    buffers; the originals are put back untouched afterwards, so not even their autograd version
    counters move (a kept pass-1 graph that saved them stays valid). Batch statistics are still
    used in the pass, as in training.
    """
    swapped: list[tuple[nn.Module, str, Tensor]] = []
    if model is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    buf = module._buffers.get(name)
                    if buf is not None:
                        swapped.append((module, name, buf))
                        module._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for module, name, buf in swapped:
            module._buffers[name] = buf


class SeededGenerator:
    """A ``torch.Generator`` seeded once and created on the device of the tensors it draws for.

    Its state goes into ``state_dict()`` so that a run resumed from a checkpoint draws the same
    numbers as the uninterrupted run.
    """

    def __init__(self, seed: int = 0, generator: torch.Generator | None = None) -> None:
        self.seed = int(seed)
        self._generator = generator

    def get(self, device: torch.device) -> torch.Generator:
        """The generator on ``device`` (created from the seed on first use)."""
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generator = gen
        return gen

    def state_dict(self) -> dict[str, Any]:
        """Seed, device and generator state (``None`` before the first draw)."""
        gen = self._generator
        return {
            "seed": self.seed,
            "device": None if gen is None else str(gen.device),
            "state": None if gen is None else gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.seed = int(state["seed"])
        if state["state"] is None:
            self._generator = None
            return
        gen = torch.Generator(device=torch.device(state["device"]))
        gen.set_state(state["state"].clone())
        self._generator = gen


class GaussianNoise:
    """Reusable storage for Gaussian draws shaped like a list of tensors (a step's noise).

    ``draw`` fills one flat buffer per (device, dtype) with ``N(0, std^2)`` from the generator and
    returns views of it shaped like the tensors. The buffers and views are kept between calls, so
    a training step pays for the random numbers only: no allocation, no per-tensor split or view
    (on a small model those cost as much as the draw). The returned views are overwritten by the
    next ``draw``: use them before drawing again. Same generator state, same numbers as
    ``torch.randn`` of the flat size.
    """

    def __init__(self) -> None:
        self._key: tuple[tuple[torch.Size, torch.dtype, torch.device], ...] | None = None
        self._flats: list[Tensor] = []
        self._views: list[Tensor] = []

    def _build(self, tensors: Sequence[Tensor]) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.device, t.dtype), []).append(i)
        views: list[Tensor] = [torch.empty(0)] * len(tensors)
        flats: list[Tensor] = []
        for (device, dtype), idx in groups.items():
            numels = [tensors[i].numel() for i in idx]
            flat = torch.empty(sum(numels), device=device, dtype=dtype)
            flats.append(flat)
            for i, chunk in zip(idx, flat.split(numels), strict=True):
                views[i] = chunk.view(tensors[i].shape)
        self._flats, self._views = flats, views

    @property
    def layout(self) -> object:
        """The shapes the buffers were built for; a new object whenever they are rebuilt."""
        return self._key

    def draw(self, tensors: Sequence[Tensor], generator: SeededGenerator, std: float = 1.0) -> list[Tensor]:
        """``N(0, std^2)`` tensors shaped like ``tensors`` (views of this object's buffers)."""
        key = tuple((t.shape, t.dtype, t.device) for t in tensors)
        if key != self._key:
            self._build(tensors)
            self._key = key
        for flat in self._flats:
            flat.normal_(0.0, std, generator=generator.get(flat.device))
        return self._views


class GaussianPerturbation:
    """``theta <- theta + std xi`` in place, ``xi ~ N(0, I)``, and back bit for bit (fSGLD's e).

    :meth:`apply_` draws xi into reused storage (:class:`GaussianNoise`), copies theta into a
    reused stash and adds the noise; :meth:`restore_` copies theta back. Three memory passes and
    no allocation per step: on a small model the Python and allocation overhead of the generic
    :func:`perturb_` is as large as the draw itself. Like :func:`perturb_` it writes through
    ``.data``, so autograd version counters do not move.
    """

    def __init__(self) -> None:
        self._noise = GaussianNoise()
        self._stash: list[Tensor] = []
        self._stash_layout: object = None
        self._applied: list[Tensor] | None = None

    def apply_(self, params: Sequence[Tensor], generator: SeededGenerator, std: float) -> None:
        """Perturb ``params`` by ``N(0, std^2 I)`` drawn from ``generator``; remember theta."""
        if self._applied is not None:
            raise RuntimeError("GaussianPerturbation.apply_ called twice without restore_")
        noise = self._noise.draw(params, generator, std=std)
        data = [p.data for p in params]
        if self._stash_layout is not self._noise.layout:  # first call, or the shapes changed
            self._stash = list(torch._foreach_clone(data))
            self._stash_layout = self._noise.layout
        else:
            torch._foreach_copy_(self._stash, data)
        torch._foreach_add_(data, noise)
        self._applied = data

    def restore_(self) -> None:
        """Copy the theta saved by :meth:`apply_` back (exact)."""
        if self._applied is not None:
            torch._foreach_copy_(self._applied, self._stash)
            self._applied = None


GradientOracle = Callable[[], tuple[Tensor, list[Tensor | None]]]
"""Returns ``(loss, grads)`` of the batch loss at the current parameter values."""


def model_oracle(
    model: nn.Module, params: Sequence[Tensor], inputs: Any, targets: Any, loss: BatchLoss
) -> GradientOracle:
    """Oracle that runs ``model(inputs)`` and differentiates the mean loss with ``autograd.grad``."""

    def oracle() -> tuple[Tensor, list[Tensor | None]]:
        with torch.enable_grad():
            value = loss(_outputs(model(inputs)), targets)
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


class GradientRule:
    """Base class of gradient rules: fill ``p.grad`` of the trained parameters, return the loss.

    Subclasses implement ``_compute``. ``step`` counts completed calls (it drives rho warm-up);
    ``generator`` holds the seeded random stream of rules that draw noise. Both are saved by
    :meth:`state_dict` for bit-exact resumption.
    """

    name: ClassVar[str] = "rule"
    cost: ClassVar[str] = "1F+1B"
    supports_closure: ClassVar[bool] = False
    data_parallel: ClassVar[bool] = True
    """Whether the rule runs data-parallel under ``torch.distributed`` (see :meth:`compute_gradient`)."""

    def __init__(self, *, seed: int = 0) -> None:
        self.step = 0
        self.generator = SeededGenerator(seed)
        # this process's share n_r / N of the global batch while a data-parallel call runs
        self._share: float | None = None

    def _local_count(self, loss: BatchLoss, targets: Any) -> float:
        """What this rule's batch mean divides by: counted targets (cross-entropy), elements (mse),
        samples (a callable loss). The data-parallel weight of a process is its count over the sum."""
        if loss.kind == "cross_entropy":
            return float((targets != IGNORE_INDEX).sum())
        if loss.kind == "mse":
            return float(targets.numel())
        return float(batch_size(targets))

    def _begin_data_parallel(self, count: float | None) -> None:
        if not _dist.is_distributed():
            self._share = None
            return
        if not self.data_parallel:
            raise NotImplementedError(
                f"rule {self.name!r} does not run data-parallel (torch.distributed) yet"
            )
        if count is None:  # a closure: the batch is unknown, so the processes' batches count alike
            self._share = 1.0 / _dist.world_size()
            return
        total = _dist.all_reduce_sum_(torch.tensor([count], dtype=torch.float64))
        self._share = count / float(total) if float(total) > 0 else 0.0

    def _finish_data_parallel(self, params: Sequence[Tensor], value: Tensor) -> Tensor:
        """``sum_r (n_r / N) x_r`` of the gradients and the loss: the global-batch mean."""
        if self._share is None:
            return value
        # one collective for every gradient and the loss
        *grads, total = self.global_mean([p.grad for p in params] + [value.detach().reshape(1)])
        self._share = None
        write_grads(params, grads)
        assert total is not None
        return total.reshape(()).to(value.dtype)

    def global_mean(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Data-parallel: ``sum_r (n_r / N) t_r`` of per-process batch means (the global-batch mean);
        otherwise ``tensors`` as they are. What a rule needs mid-step, e.g. ``g`` for eps*."""
        if self._share is None:
            return list(tensors)
        present = [t for t in tensors if t is not None]
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in present]).mul_(self._share)
        _dist.all_reduce_sum_(flat)
        pieces = iter(flat.split([t.numel() for t in present]))
        return [None if t is None else next(pieces).view_as(t).to(t.dtype) for t in tensors]

    def compute_gradient(
        self,
        model: nn.Module,
        inputs: Any,
        targets: Any,
        loss_fn: LossLike = "cross_entropy",
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Tensor:
        """Fill ``p.grad`` of ``model``'s trained parameters with this rule's gradient.

        ``optimizer`` is the base optimizer; only rules that read its state (``precond-*``) need
        it. Returns the detached mean batch loss at the unperturbed parameters (``fsgld``: at
        its perturbed point, the only point it evaluates).

        Data-parallel: when ``torch.distributed`` runs with more than one process, each process
        passes its own part of the batch and every process ends with the gradient and loss of the
        whole (global) batch: per-process means are combined with weights ``n_r / N`` (counted
        targets; all-reduced), and what a rule needs mid-step is global too (``g`` and so eps*
        for the SAM family; RW-SAM's softmax normaliser). m-SAM keeps its micro-batches, and
        their perturbations, inside each process. Every process must build the rule with the same
        seed (fSGLD then draws the same e everywhere) and call it at the same steps.
        """
        named = trained_parameters(model)
        if not named:
            raise ValueError("the model has no parameter with requires_grad=True")
        loss = BatchLoss(loss_fn)
        self._begin_data_parallel(self._local_count(loss, targets) if _dist.is_distributed() else None)
        try:
            value = self._compute(model, named, inputs, targets, loss, optimizer)
            value = self._finish_data_parallel([p for _, p in named], value)
        finally:
            self._share = None
        self.step += 1
        return value

    def compute_gradient_from_closure(
        self,
        closure: Callable[[], Tensor],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Tensor:
        """As :meth:`compute_gradient`, with a closure that runs forward + ``backward()``.

        Only rules whose gradient is a plain gradient at some parameter point support this
        (``supports_closure``): plain, SAM, ASAM, precond-SAM, fSGLD.
        """
        if not self.supports_closure:
            raise NotImplementedError(
                f"rule {self.name!r} needs the model outputs; call compute_gradient(model, inputs, targets)"
            )
        named = trained_parameters(model)
        params = [p for _, p in named]
        self._begin_data_parallel(None)
        try:
            value = self._compute_with_oracle(closure_oracle(closure, params), model, named, optimizer)
            value = self._finish_data_parallel(params, value)
        finally:
            self._share = None
        self.step += 1
        return value

    def _compute(
        self,
        model: nn.Module,
        named: list[tuple[str, nn.Parameter]],
        inputs: Any,
        targets: Any,
        loss: BatchLoss,
        optimizer: torch.optim.Optimizer | None,
    ) -> Tensor:
        params = [p for _, p in named]
        return self._compute_with_oracle(
            model_oracle(model, params, inputs, targets, loss), model, named, optimizer
        )

    def _compute_with_oracle(
        self,
        oracle: GradientOracle,
        model: nn.Module,
        named: list[tuple[str, nn.Parameter]],
        optimizer: torch.optim.Optimizer | None,
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The rule's mutable state: step counter and generator state."""
        return {"name": self.name, "step": self.step, "generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the rule's options are not part of it)."""
        if state.get("name", self.name) != self.name:
            raise ValueError(f"state of rule {state['name']!r} loaded into rule {self.name!r}")
        self.step = int(state["step"])
        self.generator.load_state_dict(state["generator"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, step={self.step})"


GEOMETRIES = ("euclidean", "adaptive", "adam")


def adam_denominator(optimizer: torch.optim.Optimizer, param: Tensor) -> Tensor | None:
    """Adam's own denominator ``M = sqrt(v_hat) + eps`` for ``param``, or ``None`` before step 1.

    ``v_hat = exp_avg_sq / (1 - beta2^t)`` after the last completed step t (``max_exp_avg_sq``
    when ``amsgrad``), ``beta2`` and ``eps`` from the parameter's group: exactly the tensor that
    ``torch.optim.Adam``/``AdamW`` divide the first moment by (seed 002 Eq. 12: "its own
    preconditioner"). ``None`` means M = 1.
    """
    return adam_denominators(optimizer, [param])[0]


def adam_denominators(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> list[Tensor | None]:
    """:func:`adam_denominator` for several parameters (one pass over the param groups)."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    out: list[Tensor | None] = []
    for p in params:
        state = optimizer.state.get(p)
        t = float(state["step"]) if state and "exp_avg_sq" in state else 0.0
        if t == 0 or id(p) not in group_of:
            out.append(None)
            continue
        group = group_of[id(p)]
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        out.append((v / (1.0 - group["betas"][1] ** t)).sqrt() + group["eps"])
    return out


def _adam_optimizer(optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
    base = getattr(optimizer, "base_optimizer", optimizer)
    if base is None:
        raise ValueError("the 'adam' perturbation geometry (precond-*) needs optimizer=<the base AdamW>")
    if not all("betas" in g and "eps" in g for g in base.param_groups):
        raise TypeError(f"precond-* rules read Adam's second moments; got {type(base).__name__}")
    return base


class PerturbationRule(GradientRule):
    """A rule that evaluates something at ``theta + e`` with a SAM-type ascent perturbation e.

    The radius at step t is ``rho_schedule(t)`` when given, otherwise ``rho`` times the linear
    warm-up factor ``min(1, (t + 1) / rho_warmup)`` (no warm-up when ``rho_warmup = 0``).

    Geometries of e (all with ``eps* = g / ||g||``):

    - ``"euclidean"``: ``e = rho eps*`` (SAM, Foret et al. 2021; seed 002 Eq. 2).
    - ``"adaptive"``: ``e = rho T^2 g / ||T g||``, ``T = |w| + eta`` elementwise on tensors whose
      name contains "weight", ``T = 1`` elsewhere (ASAM, Kwon et al. 2021, Eq. 11 there; the
      official SamsungLabs/ASAM selects tensors by name in the same way).
    - ``"adam"``: ``e = rho M^{-1} eps*`` with Adam's denominator M (seed 002 Eq. 12): eps* is
      normalised first, then preconditioned, so ``||e|| != rho`` and rho lives on another scale.
    """

    local_perturbation: ClassVar[bool] = False
    """True: data-parallel calls keep e per process (m-SAM's micro-batch perturbations)."""

    def __init__(
        self,
        rho: float = 0.05,
        *,
        geometry: str = "euclidean",
        eta: float = 0.01,
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if rho < 0 or rho_warmup < 0:
            raise ValueError("rho and rho_warmup must be non-negative")
        self.rho = float(rho)
        self.geometry = geometry
        self.eta = float(eta)
        self.rho_warmup = int(rho_warmup)
        self.rho_schedule = rho_schedule

    def current_rho(self) -> float:
        """The radius used by the next call (step ``self.step``)."""
        if self.rho_schedule is not None:
            return float(self.rho_schedule(self.step))
        if self.rho_warmup > 0:
            return self.rho * min(1.0, (self.step + 1) / self.rho_warmup)
        return self.rho

    def perturbation(
        self,
        named: Sequence[tuple[str, Tensor]],
        grads: Sequence[Tensor | None],
        rho: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> list[Tensor | None]:
        """The perturbation e (one tensor per parameter; ``None`` where the gradient is ``None``).

        Data-parallel, ``grads`` are this process's and e is built from the global-batch ``g``
        (``local_perturbation`` rules, m-SAM, keep theirs)."""
        if not self.local_perturbation:
            grads = self.global_mean(grads)
        # clamp instead of adding 1e-12: e is exactly rho g/||g|| for any non-zero g, and 0 for g = 0
        tiny = torch.finfo(torch.float64).tiny
        if self.geometry == "adaptive":
            scales = [
                p.detach().abs().add(self.eta) if ("weight" in name and g is not None) else None
                for (name, p), g in zip(named, grads, strict=True)
            ]
            scaled_grads = [g if s is None else g * s for g, s in zip(grads, scales, strict=True)]
            factor = rho / global_norm(scaled_grads).clamp_min(tiny)
            twice = [g if s is None else g * s for g, s in zip(scaled_grads, scales, strict=True)]
            return scaled(twice, factor)
        eps = scaled(grads, rho / global_norm(grads).clamp_min(tiny))
        if self.geometry == "adam":
            base = _adam_optimizer(optimizer)
            denominators = adam_denominators(base, [p for _, p in named])
            eps = [e if (e is None or m is None) else e / m for e, m in zip(eps, denominators, strict=True)]
        return eps


def check_finite_positive(value: float, what: str) -> float:
    """Return ``value`` as float after checking it is a positive real number (``inf`` allowed)."""
    value = float(value)
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{what} must be positive, got {value}")
    return value
