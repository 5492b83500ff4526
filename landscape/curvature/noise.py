"""The gradient-noise trace ``tr(V)``: the trace of the covariance of the per-sample gradients.

For N samples with losses ``f_i`` (sample i's mean loss over its counted targets) and gradients
``g_i = grad f_i(theta)``, with ``g_bar = (1/N) sum_i g_i``::

    tr(V) = (1/N) sum_i ||g_i - g_bar||^2.

Luo, Harandi, Phung, Le (2025, arXiv 2509.18001) show that the noise of SAM's perturbation
regularises this quantity (the ``(rho / 2b) tr(V)`` term of the drift of their SDE for mini-batch
USAM), report it at the end of training (their Table 6) and argue that near a minimum, where
``V ~`` Fisher ``~ H``, it tracks ``tr(H)``. Samples without a counted target (all ignored) have
no loss and are left out of N. ``g_bar`` is the mean of the per-sample gradients, which equals the
problem's full-data gradient when every sample counts the same number of targets.

Two estimators, chosen by memory (:func:`gradient_noise_trace`):

* ``"exact"``: per-sample gradients by ``torch.func.vmap`` of ``torch.func.grad`` over chunks of
  samples (a chunk of c samples holds c parameter-sized gradients), folded into a running mean and
  sum of squared deviations with Chan, Golub and LeVeque's pairwise update (1979, "Updating
  formulae and a pairwise algorithm for computing sample variances"), in float64: no
  ``E||g||^2 - ||E g||^2`` cancellation. ``stderr = 0``.
* ``"sketch"``: random projections. For probes u with ``E[u u^T] = I`` (Rademacher entries),
  ``E_u[(u^T (g_i - g_bar))^2] = ||g_i - g_bar||^2``, so each probe gives an unbiased sample::

      T_u = (1/N) sum_i (a_i - a_bar)^2,   a_i = u^T g_i,   a_bar = (1/N) sum_i a_i = u^T g_bar,

  and the estimate is the mean of ``T_u`` over K probes, with ``stderr = std(T_u) / sqrt(K)``.
  ``T_u = u^T V u`` is Hutchinson's estimator of ``tr(V)`` (Hutchinson 1989), whose variance with
  Rademacher probes is ``2 (||V||_F^2 - sum_j V_jj^2)``: the relative standard error is about
  ``sqrt(2 / (K r))`` for a V of effective rank ``r = tr(V)^2 / ||V||_F^2``. Every ``a_i`` of a
  chunk comes from one forward-mode pass (``torch.func.jvp`` of the per-sample losses along u), so
  the memory is that of a forward pass plus two parameter-sized vectors, whatever N.

Data-parallel problems: every process folds its own samples; the means, the squared deviations
and the sample counts are combined with all-reduced sums (and the probes are the same on every
process), so the result is the one of a single process holding all the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from landscape.curvature.eigen import json_float, seeded_generator
from landscape.curvature.trace import rademacher_vectors
from landscape.errors import UserError
from landscape.problem import Batch, Problem

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_NUM_PROBES",
    "MSharpness",
    "NoiseTrace",
    "gradient_noise_trace",
    "m_sharpness",
    "noise_trace_memory",
    "partition_order",
]

NoiseMethod = Literal["auto", "exact", "sketch"]

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes the estimator may hold beyond the problem's own forward/backward passes (1 GiB)."""

DEFAULT_NUM_PROBES = 64
"""Probes of the sketched estimate (each one forward-mode pass over the data)."""

MAX_PROBE_BLOCK = 8
"""Probes pushed through the model together (``vmap`` over tangents): fewer, wider passes."""


@dataclass(frozen=True)
class NoiseTrace:
    """``tr(V)`` with its standard error and what it cost.

    ``method``: ``"exact"`` or ``"sketch"``; ``num_samples``: N, the samples with a counted
    target; ``num_probes``: K (0 for exact); ``num_passes``: per-sample gradients (exact, N) or
    forward-mode passes over the data (sketch, K); ``chunk_size``: samples per vectorised chunk;
    ``memory_bytes``: the estimated memory the method holds beyond the model's own passes (see
    :func:`noise_trace_memory`); ``samples``: the per-probe values ``T_u`` of the sketch.
    """

    estimate: float
    stderr: float
    method: str
    num_samples: int
    num_probes: int
    num_passes: int
    chunk_size: int
    memory_bytes: int
    samples: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (inf/nan as ``None``)."""
        return {
            "estimate": json_float(self.estimate),
            "stderr": json_float(self.stderr),
            "method": self.method,
            "num_samples": int(self.num_samples),
            "num_probes": int(self.num_probes),
            "num_passes": int(self.num_passes),
            "chunk_size": int(self.chunk_size),
            "memory_bytes": int(self.memory_bytes),
            "samples": None if self.samples is None else [float(x) for x in self.samples],
        }


# ------------------------------------------------------------------------------- memory model
def _largest_block(problem: Problem) -> int:
    return max(problem.numels)


def _itemsize(problem: Problem) -> int:
    return torch.empty((), dtype=problem.dtype).element_size()


def _exact_bytes(problem: Problem, chunk: int) -> int:
    """A chunk's per-sample gradients in the problem's dtype, two float64 working copies of the
    largest parameter block per sample, and the float64 running mean."""
    P = problem.num_params
    return chunk * (P * _itemsize(problem) + 16 * _largest_block(problem)) + 8 * P


def _sketch_bytes(problem: Problem, block: int) -> int:
    """A block of probes in float64 and in the problem's dtype."""
    return block * problem.num_params * (8 + _itemsize(problem))


def _max_chunk(problem: Problem) -> int:
    return max(b.num_samples for b in problem.batches)


def noise_trace_memory(problem: Problem, method: str = "exact", chunk_size: int | None = None) -> int:
    """Bytes :func:`gradient_noise_trace` holds with ``method`` (``"exact"`` with chunks of
    ``chunk_size`` samples, default 1; ``"sketch"``) beyond the model's own forward and backward
    passes, whose activations the problem's ``batch_size`` bounds."""
    if method == "sketch":
        return _sketch_bytes(problem, 1)
    if method == "exact":
        return _exact_bytes(problem, max(1, int(chunk_size or 1)))
    raise UserError(f"unknown noise-trace method '{method}' (choose from exact, sketch)")


def _choose(problem: Problem, method: str, budget: int, chunk_size: int | None) -> tuple[str, int]:
    if method not in ("auto", "exact", "sketch"):
        raise UserError(f"unknown noise-trace method '{method}' (choose from auto, exact, sketch)")
    largest = _max_chunk(problem)
    if chunk_size is not None:
        if chunk_size < 1:
            raise UserError(f"the chunk size must be positive, got {chunk_size}")
        chunk = min(int(chunk_size), largest)
    else:
        per_sample = _exact_bytes(problem, 1) - 8 * problem.num_params
        chunk = max(1, min(largest, (budget - 8 * problem.num_params) // max(1, per_sample)))
    if method == "auto":
        method = "exact" if _exact_bytes(problem, 1) <= budget else "sketch"
    return method, chunk


# ------------------------------------------------------------------------------ per-sample losses
def _stacked(outs: list[Any]) -> Any:
    if isinstance(outs[0], dict):
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}
    return torch.stack(outs)


def _vmap_or_loop(fn: Callable[..., Any], in_dims: tuple[int | None, ...]) -> Callable[..., Any]:
    """``torch.func.vmap(fn, in_dims)`` (dimension 0 of the mapped arguments), or the same map as a
    Python loop over that dimension for models whose forward branches on the data, which vmap
    refuses (Hugging Face GPT-2 tests its attention mask with ``.item()``-like control flow): the
    first refusal switches to the loop for good. Same values either way; the loop costs one
    forward per item."""
    from torch.func import vmap

    batched = vmap(fn, in_dims=in_dims)
    state = {"loop": False}

    def loop(*args: Any) -> Any:
        size = next(
            len(next(iter(a.values()))) if isinstance(a, dict) else len(a)
            for a, d in zip(args, in_dims, strict=True)
            if d is not None
        )
        outs = [
            fn(*[a if d is None else _take(a, i) for a, d in zip(args, in_dims, strict=True)])
            for i in range(size)
        ]
        return _stacked(outs)

    def call(*args: Any) -> Any:
        if not state["loop"]:
            try:
                return batched(*args)
            except RuntimeError as exc:
                if "vmap" not in str(exc):
                    raise
                state["loop"] = True
        return loop(*args)

    return call


def _unsqueezed(inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return {k: v.unsqueeze(0) for k, v in inputs.items()}
    return inputs.unsqueeze(0)


def _sample_loss_sum(problem: Problem) -> Callable[[dict[str, Tensor], Any, Tensor], Tensor]:
    """``(params, x_i, y_i) -> `` sample i's summed loss over its targets (one sample, no batch
    dimension: the function that ``torch.func.vmap`` maps over a chunk)."""

    def loss_sum(params: dict[str, Tensor], x: Any, y: Tensor) -> Tensor:
        outputs = problem.outputs(params, _unsqueezed(x))
        return problem.loss_function.sum(outputs, y.unsqueeze(0))

    return loss_sum


def _slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, dict):
        return {k: v[start:stop] for k, v in inputs.items()}
    return inputs[start:stop]


def _chunks(problem: Problem, size: int) -> list[tuple[Any, Tensor, Tensor]]:
    """``(inputs, targets, counts)`` of chunks of at most ``size`` samples that count a target;
    ``counts`` (float64) is each sample's number of counted targets."""
    loss = problem.loss_function
    out = []
    for batch in problem.batches:
        counts = _sample_counts(batch, loss)
        keep = torch.nonzero(counts > 0).reshape(-1)
        if keep.numel() == 0:
            continue
        if keep.numel() < batch.num_samples:
            index = keep.to(batch.targets.device)
            inputs = _take(batch.inputs, index)
            targets, counts = batch.targets[index], counts[keep]
        else:
            inputs, targets = batch.inputs, batch.targets
        for start in range(0, len(targets), size):
            stop = min(start + size, len(targets))
            out.append((_slice_inputs(inputs, start, stop), targets[start:stop], counts[start:stop]))
    return out


def _take(inputs: Any, index: Tensor | int) -> Any:
    """Inputs (a tensor or a dict of tensors) at ``index`` along the sample dimension."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def _sample_counts(batch: Batch, loss: Any) -> Tensor:
    targets = batch.targets
    return torch.tensor(
        [float(loss.count(targets[i : i + 1])) for i in range(batch.num_samples)], dtype=torch.float64
    )


# ---------------------------------------------------------------------------------- running moments
class _Moments:
    """Running count, mean and sum of squared deviations of vectors given as dicts of float64
    tensors (a parameter's block each) or as plain float64 tensors (one entry per probe).

    Chan, Golub, LeVeque (1979): merging (n_a, m_a, M_a) and (n_b, m_b, M_b) gives
    ``n = n_a + n_b``, ``m = m_a + (m_b - m_a) n_b / n``, ``M = M_a + M_b + ||m_b - m_a||^2 n_a n_b / n``
    (the squared norm summed over the blocks; elementwise for probes).
    """

    def __init__(self) -> None:
        self.count = 0.0
        self.mean: dict[str, Tensor] | Tensor | None = None
        self.m2: Tensor | float = 0.0

    def add(self, count: float, mean: dict[str, Tensor] | Tensor, m2: Tensor | float) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        factor = self.count * count / total
        if isinstance(mean, dict):
            assert isinstance(self.mean, dict)
            gap = 0.0
            for name, block in mean.items():
                step = block - self.mean[name]
                gap = gap + float(step.pow(2).sum())
                self.mean[name] = self.mean[name] + step * (count / total)
            self.m2 = self.m2 + m2 + gap * factor
        else:
            assert isinstance(self.mean, Tensor)
            step = mean - self.mean
            self.m2 = self.m2 + m2 + step.pow(2) * factor
            self.mean = self.mean + step * (count / total)
        self.count = total


def _merge_processes(problem: Problem, moments: _Moments) -> tuple[float, Tensor | float]:
    """``(N, M)`` over every process of a data-parallel problem (this process's otherwise)."""
    if not problem.distributed:
        return moments.count, moments.m2
    count = problem.all_reduce_(torch.tensor([moments.count], dtype=torch.float64))
    total = float(count[0])
    mean = moments.mean
    if isinstance(mean, dict) or mean is None:
        # the global mean of the parameter blocks, then each process's deviation from it
        names = problem.param_names
        local = (
            torch.cat([mean[n].reshape(-1) for n in names])
            if mean is not None
            else torch.zeros(problem.num_params, dtype=torch.float64, device=problem.device)
        )
        global_mean = problem.all_reduce_(local * moments.count) / total
        gap = float((local - global_mean).pow(2).sum()) * moments.count
        m2 = problem.all_reduce_(torch.tensor([float(moments.m2) + gap], dtype=torch.float64))
        return total, float(m2[0])
    global_mean = problem.all_reduce_(mean * moments.count) / total
    m2 = moments.m2 + (mean - global_mean).pow(2) * moments.count
    return total, problem.all_reduce_(m2.clone())


# ----------------------------------------------------------------------------------- estimators
def _fold(problem: Problem, moments: _Moments, grads: dict[str, Tensor], counts: Tensor) -> None:
    """Fold a chunk's per-sample gradients (summed losses; ``[c, *shape]`` each) into ``moments``."""
    scale = (1.0 / counts).to(problem.device)
    mean: dict[str, Tensor] = {}
    m2 = 0.0
    for name in problem.param_names:
        block = grads.pop(name).to(torch.float64).reshape(len(counts), -1).mul_(scale.unsqueeze(1))
        mean[name] = block.mean(0)
        m2 += float(block.sub_(mean[name]).pow_(2).sum())
    moments.add(float(len(counts)), mean, m2)


def _exact(problem: Problem, chunk_size: int) -> tuple[float, int]:
    from torch.func import grad, vmap

    params = {n: p.detach() for n, p in problem.params.items()}
    sample_grad = grad(_sample_loss_sum(problem))
    per_sample_grad = vmap(sample_grad, in_dims=(None, 0, 0))
    looping = False  # a model whose forward branches on its data: one sample at a time
    moments = _Moments()
    for inputs, targets, counts in _chunks(problem, chunk_size):
        if not looping:
            try:
                _fold(problem, moments, per_sample_grad(params, inputs, targets), counts)
                continue
            except RuntimeError as exc:
                if "vmap" not in str(exc):
                    raise
                looping = True
        # each sample's gradient folded as it comes: one parameter-sized gradient alive at a time
        for i in range(len(counts)):
            one = sample_grad(params, _take(inputs, i), targets[i])
            _fold(problem, moments, {n: g.unsqueeze(0) for n, g in one.items()}, counts[i : i + 1])
            del one
    total, m2 = _merge_processes(problem, moments)
    if total == 0:
        raise UserError("no sample has a counted target: the gradient noise is undefined")
    return float(m2) / total, int(total)


def _sketch(problem: Problem, num_probes: int, block: int, seed: int) -> tuple[Tensor, int]:
    from torch.func import jvp, vmap

    params = {n: p.detach() for n, p in problem.params.items()}
    per_sample_sum = _vmap_or_loop(_sample_loss_sum(problem), (None, 0, 0))
    chunks = _chunks(problem, _max_chunk(problem))
    generator = seeded_generator(seed)
    values = []
    total = 0.0
    for start in range(0, num_probes, block):
        width = min(block, num_probes - start)
        # drawn column by column: the probes do not depend on the block size
        U = rademacher_vectors(problem.num_params, width, generator, problem.device)
        tangents = problem.unflatten(U.T.to(problem.dtype))
        moments = _Moments()
        for inputs, targets, counts in chunks:

            def directional(t: dict[str, Tensor], inputs: Any = inputs, targets: Tensor = targets) -> Tensor:
                return jvp(lambda p: per_sample_sum(p, inputs, targets), (params,), (t,))[1]

            a = vmap(directional)(tangents).to(torch.float64) / counts.to(problem.device)  # [width, c]
            mean = a.mean(1)
            moments.add(float(a.shape[1]), mean, (a - mean.unsqueeze(1)).pow(2).sum(1))
        total, m2 = _merge_processes(problem, moments)
        if total == 0:
            raise UserError("no sample has a counted target: the gradient noise is undefined")
        values.append(torch.as_tensor(m2, dtype=torch.float64).reshape(-1) / total)
    return torch.cat(values), int(total)


def gradient_noise_trace(
    problem: Problem,
    *,
    method: NoiseMethod = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    num_probes: int = DEFAULT_NUM_PROBES,
    chunk_size: int | None = None,
    seed: int = 0,
) -> NoiseTrace:
    """``tr(V)``, the trace of the per-sample gradient covariance, on ``problem`` (module docstring).

    ``method="auto"`` takes the exact per-sample gradients when one sample's fit in
    ``memory_budget`` bytes (:func:`noise_trace_memory`), otherwise the sketch with
    ``num_probes`` Rademacher projections (seeded with ``seed``). The exact method works in chunks
    of ``chunk_size`` samples (default: as many as the budget allows, at most one of the problem's
    batches). The problem's parameters, dtype, parameter subset, inputs (dict inputs included),
    ignored targets and data-parallel sharding are those of ``problem``; the model is not touched.
    """
    if memory_budget <= 0:
        raise UserError(f"the memory budget must be positive, got {memory_budget}")
    chosen, chunk = _choose(problem, method, int(memory_budget), chunk_size)
    if chosen == "exact":
        estimate, total = _exact(problem, chunk)
        return NoiseTrace(
            estimate=estimate,
            stderr=0.0,
            method="exact",
            num_samples=total,
            num_probes=0,
            num_passes=total,
            chunk_size=chunk,
            memory_bytes=_exact_bytes(problem, chunk),
        )
    if num_probes < 1:
        raise UserError(f"the sketched noise trace needs at least one probe, got {num_probes}")
    block = max(1, min(MAX_PROBE_BLOCK, int(num_probes), int(memory_budget) // _sketch_bytes(problem, 1)))
    samples, total = _sketch(problem, int(num_probes), block, seed)
    estimate = float(samples.mean())
    stderr = float(samples.std()) / math.sqrt(len(samples)) if len(samples) > 1 else math.inf
    return NoiseTrace(
        estimate=estimate,
        stderr=stderr,
        method="sketch",
        num_samples=total,
        num_probes=int(num_probes),
        num_passes=int(num_probes),
        chunk_size=_max_chunk(problem),
        memory_bytes=_sketch_bytes(problem, block),
        samples=[float(v) for v in samples],
    )


# ------------------------------------------------------------------------------------ m-sharpness
@dataclass(frozen=True)
class MSharpness:
    """``S_m`` for each micro-batch size m (:func:`m_sharpness`): ``m_values``, ``estimates`` and
    ``stderrs`` in the same order, the radius ``rho``, the random partitions averaged per m
    (``draws``; 1 where the partition is not random: m = 1 or m >= N) and N (``num_samples``)."""

    m_values: tuple[int, ...]
    estimates: tuple[float, ...]
    stderrs: tuple[float, ...]
    rho: float
    draws: tuple[int, ...]
    num_samples: int


def partition_order(num_samples: int, seed: int) -> Tensor:
    """The order of the samples in one random partition of :func:`m_sharpness`: a permutation drawn
    with a CPU generator seeded with ``seed``; micro-batch c holds ``order[c m : (c + 1) m]``."""
    return torch.randperm(int(num_samples), generator=seeded_generator(seed))


def _cat_inputs(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def _micro_batch_gap(
    problem: Problem, rho: float
) -> Callable[[dict[str, Tensor], Any, Tensor, Tensor], Tensor]:
    """``(params, x_c, y_c, count_c) -> L_c(theta + rho g_c / ||g_c||) - L_c(theta)`` for one
    micro-batch (the function ``torch.func.vmap`` maps over micro-batches of equal size)."""
    from torch.func import grad_and_value

    def mean_loss(params: dict[str, Tensor], x: Any, y: Tensor, count: Tensor) -> Tensor:
        return problem.loss_function.sum(problem.outputs(params, x), y) / count

    gradient = grad_and_value(mean_loss)

    def gap(params: dict[str, Tensor], x: Any, y: Tensor, count: Tensor) -> Tensor:
        grads, clean = gradient(params, x, y, count)
        norm_sq = sum(g.to(torch.float64).pow(2).sum() for g in grads.values())
        scale = (rho / torch.sqrt(norm_sq).clamp_min(torch.finfo(torch.float64).tiny)).to(problem.dtype)
        moved = {n: p + scale * grads[n] for n, p in params.items()}
        return (mean_loss(moved, x, y, count) - clean).to(torch.float64)

    return gap


def m_sharpness(
    problem: Problem,
    m_values: tuple[int, ...] | list[int],
    *,
    rho: float = 0.05,
    draws: int = 4,
    seed: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> MSharpness:
    """The m-sharpness ``S_m`` of ``problem`` for each micro-batch size m in ``m_values``.

    For a partition of the N samples (those with a counted target) into micro-batches c of
    ``n_c = m`` samples (the last one may be smaller)::

        S_m = sum_c (n_c / N) [L_c(theta + rho g_c / ||g_c||) - L_c(theta)],   g_c = grad L_c(theta),

    ``L_c`` the mean loss over micro-batch c's counted targets: the worst-case loss increase within
    radius ``rho`` of each micro-batch, taken to first order (one normalised-gradient ascent step,
    as SAM does), averaged over the data. Andriushchenko & Flammarion (2022, arXiv 2206.06232,
    Sec. 3) define m-sharpness as the expectation of that increase over random training subsets of
    size m; Foret, Kleiner, Mobahi & Neyshabur (2021, arXiv 2010.01412, Sec. 4) minimise it with
    m-SAM; Luo, Harandi, Phung & Le (2025, arXiv 2509.18001) explain why it grows as m shrinks
    (smaller micro-batches have noisier, longer gradients: to first order the gap is
    ``rho ||g_c||``). The expectation is estimated by ``draws`` random partitions (the samples in
    the order :func:`partition_order` draws with seeds ``seed``, ``seed + 1``, ...; the same
    partitions for every m), with the standard error of their mean; m = 1 and m >= N have one
    partition only (standard error 0). It is the quantity :func:`landscape.optim.sharpness.m_sharpness`
    computes for consecutive micro-batches of a module, here on the problem's function of the
    parameters (eval mode, its dtype and parameter subset), vectorised over micro-batches by
    ``torch.func.vmap`` in chunks whose per-micro-batch gradients fit ``memory_budget`` bytes.
    Data-parallel problems: each process partitions its own samples; the sums are all-reduced.
    """

    ms = tuple(int(m) for m in m_values)
    if not ms or any(m < 1 for m in ms):
        raise UserError(f"the micro-batch sizes of m-sharpness must be positive integers, got {list(ms)}")
    if not (rho > 0 and math.isfinite(rho)):
        raise UserError(f"the m-sharpness radius rho must be positive, got {rho}")
    if draws < 1:
        raise UserError(f"m-sharpness needs at least one random partition, got {draws}")
    if memory_budget <= 0:
        raise UserError(f"the memory budget must be positive, got {memory_budget}")
    chunks = _chunks(problem, _max_chunk(problem))
    if not chunks:
        raise UserError("no sample has a counted target: m-sharpness is undefined")
    inputs = _cat_inputs([c[0] for c in chunks])
    targets = torch.cat([c[1] for c in chunks])
    counts = torch.cat([c[2] for c in chunks]).to(device=problem.device, dtype=problem.dtype)
    n = len(targets)
    params = {k: p.detach() for k, p in problem.params.items()}
    gap = _micro_batch_gap(problem, float(rho))
    batched = _vmap_or_loop(gap, (None, 0, 0, 0))
    per_group = 3 * problem.num_params * _itemsize(problem) + 16 * _largest_block(problem)
    largest = _max_chunk(problem)

    def grouped(x: Any, size: int, groups: int) -> Any:
        if isinstance(x, dict):
            return {k: v.reshape(groups, size, *v.shape[1:]) for k, v in x.items()}
        return x.reshape(groups, size, *x.shape[1:])

    def one_partition(order: Tensor, m: int) -> tuple[float, float]:
        order = order.to(targets.device)
        xs, ys, cs = _take(inputs, order), targets[order], counts[order]
        full = (n // m) * m
        total = torch.zeros((), dtype=torch.float64, device=problem.device)
        step = max(1, min(largest // m if m <= largest else 1, int(memory_budget) // per_group))
        for start in range(0, full, step * m):
            stop = min(start + step * m, full)
            groups = (stop - start) // m
            x = grouped(_slice_inputs(xs, start, stop), m, groups)
            y = ys[start:stop].reshape(groups, m, *ys.shape[1:])
            c = cs[start:stop].reshape(groups, m).sum(1)
            total += float(m) * batched(params, x, y, c).sum()
        if full < n:
            total += float(n - full) * gap(params, _slice_inputs(xs, full, n), ys[full:], cs[full:].sum())
        both = problem.all_reduce_(
            torch.stack([total, torch.tensor(float(n), dtype=torch.float64, device=problem.device)])
        )
        return float(both[0]), float(both[1])

    estimates, stderrs, used = [], [], []
    orders: list[Tensor] = []
    for m in ms:
        random = 1 < m < n
        count = int(draws) if random else 1
        while len(orders) < count:
            orders.append(partition_order(n, seed + len(orders)))
        values = []
        for r in range(count):
            weighted, total = one_partition(orders[r] if random else torch.arange(n), m)
            values.append(weighted / total)
        sample = torch.tensor(values, dtype=torch.float64)
        estimates.append(float(sample.mean()))
        stderrs.append(float(sample.std()) / math.sqrt(count) if count > 1 else 0.0)
        used.append(count)
    return MSharpness(
        m_values=ms,
        estimates=tuple(estimates),
        stderrs=tuple(stderrs),
        rho=float(rho),
        draws=tuple(used),
        num_samples=n,
    )
