"""Memory budgets, peak-memory estimates and plans for the curvature metrics.

A metric's peak memory is, on top of what the :class:`~landscape.problem.Problem` already holds
(the model and one copy of the analysed parameters), the sum of

* the **operator's state**: retained autograd graphs of the ``reuse`` routes (measured with a
  saved-tensor probe on one or two samples and extrapolated linearly to all samples);
* the **product's transient**: what one operator-vector product allocates while it runs (the
  backward through a retained graph, a streamed graph per chunk, the vmapped tangents of
  forward-over-reverse), proportional to the chunk size;
* the **estimator's vectors**: the Krylov basis of Lanczos, the probes and sketches of the trace
  estimators, the SLQ bases, each a multiple of ``n`` numbers (``n`` = parameters).

:func:`measure_footprint` takes the per-sample and fixed sizes from a problem (two cheap probes),
:func:`estimate` adds up one metric's peak for one :class:`Plan`, and :func:`plan_metric` picks the
fastest plan that fits a byte budget, in this order of preference: retained graphs over streaming
(a Hessian-vector product through a retained graph is one backward of the gradient graph, about
2x a gradient; streaming routes rebuild it, about 3x), a full Lanczos basis over a bounded
(thick-restart) one, SLQ probes in lockstep over one at a time over a short recurrence without a
basis, XTrace over Hutch++ over Hutchinson in blocks, larger chunks over smaller. When even the
smallest plan does not fit, :func:`plan_metric` raises a one-line :class:`~landscape.errors.UserError`
naming the metric, the estimate and the budget.

:func:`default_budget` is most of the memory free on the device now (CUDA: ``mem_get_info``; CPU:
``MemAvailable`` and the cgroup limit), :func:`remaining_budget` turns a whole-process limit
(``--max-memory``) into what a metric may still add, :func:`parse_memory` reads ``"12GB"``-style
strings, and
:func:`torch_peak_bytes` measures what torch allocated at the peak of a call (CUDA: the allocator's
peak statistics; CPU: the profiler's allocation events), which is what the estimates are tested
against.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from landscape.curvature.budget import (
    available_memory,
    default_budget,
    format_bytes,
    parse_memory,
    remaining_budget,
    used_memory,
)
from landscape.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from landscape.problem import Problem

__all__ = [
    "METRICS",
    "Footprint",
    "Plan",
    "available_memory",
    "default_budget",
    "estimate",
    "format_bytes",
    "measure_footprint",
    "parse_memory",
    "plan_metric",
    "remaining_budget",
    "torch_peak_bytes",
    "used_memory",
]

# The metrics the planner knows (the analysis layer's names).
METRICS = (
    "lambda_max",
    "eigen",
    "lambda_min",
    "trace",
    "ggn",
    "tau",
    "density",
    "layers",
    "noise",
)

# Calibration of the transient of one product, in units of the probed graph sizes of one chunk
# (measured with torch_peak_bytes on MLPs, CNNs and transformers from 10k to 3M parameters: with
# the margin below, the estimates lie between 1x and 2x the measured peaks, tested). The backward
# through a gradient graph allocates about its saved tensors again (intermediate cotangents, the
# double-backward formulas' temporaries); forward-over-reverse holds primal and tangent
# activations per column; a streamed GGN product holds the forward graph and its tangent.
# Forward-over-reverse is the exception at scale: on the 85M GPT-2 body (8 x 64 tokens, one
# chunk) one product allocated 2.6x the gradient graph in torch's own count and raised the
# resident size by 4.2x it (the C heap does not reuse the many mid-sized freed tangents), against
# 1.1x for the product through a retained graph; its factor is set from the resident size.
_REVERSE_TRANSIENT = 1.0
_STREAM_HVP_EXTRA = 0.0
_FOR_TANGENT = 3.0
_GGN_TANGENT = 1.0
# Allocator rounding and the small temporaries the model leaves out (measured 0-44 % of the peak
# above the sum of the parts on MLPs and transformers): the estimate is the sum times this.
MARGIN = 1.15


def torch_peak_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """``(fn(), peak)``: the most bytes torch had allocated during the call, above what it held before.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak statistics. CPU: the
    profiler's allocation events (each op's net allocation and the frees outside ops) summed in
    time order; memory held before the call (a retained graph, the model) does not count.
    Interpreter and allocator overheads are not tensors and are not counted (RSS sees them).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = []
    for e in prof.events():
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if delta:
            events.append((e.time_range.start, delta))
    events.sort()
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return out, int(best)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Reset :func:`peak_rss_bytes` to the current RSS (Linux ``clear_refs``); False where unsupported."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# What a problem costs: sizes measured once
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """Sizes (bytes) that the estimates are built from, for one problem.

    ``*_per_sample`` and ``*_fixed`` give a linear model ``fixed + per_sample * samples`` of the
    tensors autograd saves for one chunk of ``samples`` samples: ``grad_graph`` for the gradient
    graph with ``create_graph=True`` (what ``reuse`` retains and the Hessian routes rebuild),
    ``forward`` for the forward graph alone (streamed GGN products), ``linear`` for the GGN's
    forward plus ``J^T u`` graph (what the GGN's ``reuse`` retains). ``output_per_sample`` is the
    model output's size. ``num_params`` and ``itemsize`` give a vector's size.
    """

    num_params: int
    itemsize: int
    num_samples: int
    chunk_samples: int
    num_chunks: int
    grad_graph_fixed: int
    grad_graph_per_sample: int
    forward_fixed: int
    forward_per_sample: int
    linear_fixed: int
    linear_per_sample: int
    output_per_sample: int
    device: str = "cpu"

    @property
    def vector_bytes(self) -> int:
        """One vector of ``n`` numbers in the compute dtype."""
        return self.num_params * self.itemsize

    def grad_graph(self, samples: int) -> int:
        """Saved tensors of one chunk's gradient graph."""
        return self.grad_graph_fixed + self.grad_graph_per_sample * samples

    def forward(self, samples: int) -> int:
        """Saved tensors of one chunk's forward graph."""
        return self.forward_fixed + self.forward_per_sample * samples

    def linear(self, samples: int) -> int:
        """Saved tensors of one chunk's forward plus ``J^T u`` graph."""
        return self.linear_fixed + self.linear_per_sample * samples

    def all_chunks(self, per_chunk: Callable[[int], int], chunk_samples: int | None = None) -> int:
        """``per_chunk`` summed over the chunks of ``chunk_samples`` samples (retained graphs)."""
        c = self.chunk_samples if chunk_samples is None else chunk_samples
        full, rest = divmod(self.num_samples, c)
        return full * per_chunk(c) + (per_chunk(rest) if rest else 0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


class _SavedBytes:
    """Counts the bytes of the tensors autograd saves for backward inside the context.

    Each storage counts once, with the size of the first tensor saved from it; storages in
    ``exclude`` (data pointers: e.g. the parameters, which a graph shares rather than copies)
    do not count.
    """

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.bytes = 0
        self._ptrs: set[int] = set(exclude or ())

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            key = id(t)
        if key not in self._ptrs:
            self._ptrs.add(key)
            self.bytes += t.numel() * t.element_size()
        return t

    def __enter__(self) -> _SavedBytes:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def shared_storages(problem: Problem) -> set[int]:
    """Data pointers of the problem's parameters and buffers: graphs save them without copying."""
    out = {p.untyped_storage().data_ptr() for p in problem.params.values()}
    out |= {t.untyped_storage().data_ptr() for t in problem.fixed.values()}
    return out


def _probe_graphs(problem: Problem, samples: int) -> tuple[int, int, int, int]:
    """Saved bytes of the forward, gradient and linearised graphs of the first ``samples`` samples,
    and the output bytes (the leaves share the problem's parameters, so they count as fixed)."""
    from landscape.problem import loss_sum

    batch = problem.device_batch(problem.batches[0])
    inputs = _first(batch.inputs, samples)
    targets = batch.targets[:samples]
    names = problem.param_names
    leaves = {n: p.detach().requires_grad_(True) for n, p in problem.params.items()}
    shared = shared_storages(problem)
    probe = _SavedBytes(shared)
    with probe:
        z = problem.outputs(leaves, inputs)
        forward = probe.bytes
        loss = loss_sum(z, targets, problem.loss)
        torch.autograd.grad(loss, [leaves[n] for n in names], create_graph=True, allow_unused=True)
        grad_graph = probe.bytes
    lin = _SavedBytes(shared)
    with lin:
        z2 = problem.outputs(leaves, inputs)
        u = torch.zeros_like(z2, requires_grad=True)
        torch.autograd.grad(z2, [leaves[n] for n in names], u, create_graph=True, allow_unused=True)
    output = z.numel() * z.element_size()
    return forward, grad_graph, lin.bytes, output


def _first(inputs: Any, k: int) -> Any:
    if isinstance(inputs, dict):
        return {key: v[:k] for key, v in inputs.items()}
    return inputs[:k]


def measure_footprint(problem: Problem) -> Footprint:
    """Probe the problem's graphs on one and on two samples and fit ``fixed + per_sample * s``.

    Costs two forward and backward passes on one and two samples (a small fraction of one
    gradient). With a single sample in the first chunk the per-sample size is taken as the whole.
    """
    first = problem.batches[0]
    one = _probe_graphs(problem, 1)
    if first.num_samples >= 2:
        two = _probe_graphs(problem, 2)
        per = [max(0, b - a) for a, b in zip(one, two, strict=True)]
        fixed = [max(0, a - p) for a, p in zip(one, per, strict=True)]
    else:
        per, fixed = list(one), [0, 0, 0, 0]
    return Footprint(
        num_params=problem.num_params,
        itemsize=torch.empty((), dtype=problem.dtype).element_size(),
        num_samples=problem.local_num_samples,
        chunk_samples=max(b.num_samples for b in problem.batches),
        num_chunks=len(problem.batches),
        grad_graph_fixed=fixed[1],
        grad_graph_per_sample=per[1],
        forward_fixed=fixed[0],
        forward_per_sample=per[0],
        linear_fixed=fixed[2],
        linear_per_sample=per[2],
        output_per_sample=per[3] if first.num_samples >= 2 else one[3],
        device=str(problem.device),
    )


# ---------------------------------------------------------------------------------------------
# Plans and estimates
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How one metric runs, as far as memory is concerned.

    ``hvp_route``: ``"reuse"`` (retained graphs), ``"forward-over-reverse"`` or
    ``"double-backward"`` (streaming); ``ggn_route``: ``"reuse"`` or ``"stream"``.
    ``basis_vectors``: Krylov vectors Lanczos keeps (``None``: no Lanczos), ``full_basis``
    whether that covers every step (full reorthogonalisation) or bounds a thick-restart basis;
    ``basis_device``: where they live (``"device"`` or ``"host"``). ``slq_mode``: ``"lockstep"``,
    ``"sequential"`` or ``"recurrence"`` (no stored basis). ``trace_method`` and ``block_size``:
    the trace estimator and columns per product call. ``chunk_samples``: samples per chunk.
    ``estimate``: the peak bytes this plan needs, ``budget`` what it had, ``parts`` the breakdown.
    """

    metric: str
    hvp_route: str | None = None
    ggn_route: str | None = None
    basis_vectors: int | None = None
    full_basis: bool = True
    basis_device: str = "device"
    slq_mode: str | None = None
    trace_method: str | None = None
    block_size: int = 1
    chunk_samples: int | None = None
    estimate: int = 0
    budget: int = 0
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        """Whether the estimate is within the budget."""
        return self.estimate <= self.budget

    def describe(self) -> str:
        """One line for logs: the choices and the estimate against the budget."""
        bits = [self.metric]
        if self.hvp_route:
            bits.append(f"H {self.hvp_route}")
        if self.ggn_route:
            bits.append(f"G {self.ggn_route}")
        if self.basis_vectors is not None:
            kind = "full" if self.full_basis else "thick-restart"
            bits.append(f"{kind} basis of {self.basis_vectors} vectors on the {self.basis_device}")
        if self.slq_mode:
            bits.append(f"SLQ {self.slq_mode}")
        if self.trace_method:
            bits.append(f"{self.trace_method} in blocks of {self.block_size}")
        if self.chunk_samples:
            bits.append(f"chunks of {self.chunk_samples} samples")
        return (
            ", ".join(bits) + f": estimated peak {format_bytes(self.estimate)} of {format_bytes(self.budget)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (with ``fits``)."""
        return {**asdict(self), "fits": self.fits}


@dataclass(frozen=True)
class Request:
    """What the metric is asked to do (the knobs that change its memory)."""

    k: int = 1
    max_iter: int | None = None
    trace_method: str = "xtrace"
    trace_samples: int = 100
    density_probes: int = 8
    density_steps: int = 64
    block_size: int = 16
    largest_block: int | None = None  # layers: the largest parameter tensor (n of its block)
    per_sample_chunk: int = 16  # noise: samples whose gradients are held at once


def _lanczos_steps(metric: str, request: Request) -> int:
    from landscape.curvature.eigen import default_max_iter

    if request.max_iter is not None:
        return int(request.max_iter)
    which = "SA" if metric == "lambda_min" else "LA"  # eigen: the top-k run (lambda_min is its own)
    return default_max_iter(which, request.k)


def _krylov_run(metric: str, request: Request) -> tuple[str, int]:
    """``(which, k)`` of the metric's Lanczos run (eigen: the top-k run; lambda_min is its own;
    ggn and layers: lambda_max of G and of each block)."""
    which = "SA" if metric == "lambda_min" else "LA"
    return which, 1 if metric in ("ggn", "layers") else request.k


def _min_basis(metric: str, request: Request) -> int:
    """The smallest thick-restart basis the eigen solvers accept for this metric."""
    from landscape.curvature.eigen import minimum_basis

    return minimum_basis(*_krylov_run(metric, request))


def _preferred_basis(metric: str, request: Request, num_params: int, full: int) -> int:
    """The basis the planner offers first when memory allows: the full one, except for a top-of-
    spectrum run on a large model, where the thick-restart basis of
    :func:`~landscape.curvature.eigen.preferred_basis` is faster (layers: its runs are over
    blocks smaller than ``num_params``, planned as they are)."""
    from landscape.curvature.eigen import preferred_basis

    if metric == "layers":
        return full
    which, k = _krylov_run(metric, request)
    return preferred_basis(which, k, num_params, full)


# Parts of an estimate: what stays allocated for the whole metric ("resident"), what one product
# allocates while it runs ("product") and what the estimator allocates between products
# ("between": float64 chunks of a basis). The peak is resident + max(product, between).
RESIDENT, PRODUCT, BETWEEN, HOST = "resident", "product", "between", "host"


def _operator_parts(
    fp: Footprint, plan: Plan, needs_h: bool, needs_g: bool, columns: int, converts: bool = True
) -> list[tuple[str, str, int]]:
    """Retained graphs and one product's transient for the plan's routes, ``columns`` at a time.

    A product's own vectors: its output, one chunk's part of it when the data come in several
    chunks, and (``converts``) its input converted to the compute dtype, which the float64 probes
    of the trace and density estimators need and a Krylov basis row in that dtype does not.
    """
    c = plan.chunk_samples or fp.chunk_samples
    vec = fp.vector_bytes
    copies = 1 + (1 if math.ceil(fp.num_samples / c) > 1 else 0) + (1 if converts else 0)
    parts = [("product vectors", PRODUCT, copies * columns * vec)]
    transient = 0
    if needs_h:
        if plan.hvp_route == "reuse":
            # the saved tensors, plus each chunk's outputs and gradient, which the operator keeps
            kept = fp.all_chunks(fp.grad_graph, c) + fp.output_per_sample * fp.num_samples
            kept += math.ceil(fp.num_samples / c) * vec
            parts.append(("retained gradient graphs", RESIDENT, kept))
            transient = max(transient, int(_REVERSE_TRANSIENT * fp.grad_graph(c)))
        elif plan.hvp_route == "double-backward":
            transient = max(transient, int((1.0 + _REVERSE_TRANSIENT + _STREAM_HVP_EXTRA) * fp.grad_graph(c)))
        else:
            block = min(columns, plan.block_size)
            transient = max(transient, int((1.0 + _FOR_TANGENT * block) * fp.grad_graph(c)))
    if needs_g:
        shared = needs_h and plan.hvp_route == "reuse" and plan.ggn_route == "reuse"
        if plan.ggn_route == "reuse":
            graphs = fp.all_chunks(fp.linear, c)
            if shared:  # the forward part is the Hessian's own graph
                graphs = max(0, graphs - fp.all_chunks(fp.forward, c))
            parts.append(("retained GGN graphs", RESIDENT, graphs))
            transient = max(transient, int(_REVERSE_TRANSIENT * fp.linear(c)))
        else:
            block = min(columns, plan.block_size)
            tangents = _GGN_TANGENT * block * (fp.forward(c) + fp.output_per_sample * c)
            transient = max(transient, int(fp.forward(c) + tangents))
    parts.append(("product transient", PRODUCT, transient))
    return parts


def forward_over_reverse_bytes(graph_bytes: int, vector_bytes: int) -> int:
    """The estimated peak of one single-column forward-over-reverse product over a chunk whose
    gradient graph saves ``graph_bytes``: its transient and its output, with the planner's margin
    (what ``HessianOperator(method="auto")`` must have free to time that route)."""
    return int(MARGIN * ((1.0 + _FOR_TANGENT) * graph_bytes + vector_bytes))


def _chunk_temporaries(fp: Footprint, rows: int) -> int:
    """The float64 chunk buffer of a basis of ``rows`` vectors and its products with a chunk."""
    from landscape.curvature.eigen import chunk_numbers

    numbers = min(chunk_numbers(fp.device), rows * fp.num_params)
    return 2 * 8 * numbers


def _lanczos_parts(fp: Footprint, plan: Plan, n: int | None = None) -> list[tuple[str, str, int]]:
    """Krylov basis in the compute dtype, two float64 working vectors, float64 chunk temporaries
    (its float64 chunk buffer); vectors of ``n`` numbers (default: every parameter)."""
    basis = int(plan.basis_vectors or 0)
    size = fp.num_params if n is None else int(n)
    return [
        (
            f"Krylov basis ({basis} vectors)",
            HOST if plan.basis_device == "host" else RESIDENT,
            basis * size * fp.itemsize,
        ),
        # the float64 residual between products (the product's output while it is converted to
        # float64 is the operator's; a thick-restart step holds no other float64 vector: measured
        # on the 85M GPT-2 body, 5.5 GiB resident above the problem for a 5.7 GiB estimate)
        ("Lanczos working vector", RESIDENT, 8 * size),
        ("basis chunks in float64", BETWEEN, _chunk_temporaries(replace(fp, num_params=size), basis)),
    ]


def _peak(phases: list[list[tuple[str, str, int]]]) -> int:
    """``resident + max(product, between)`` of the costliest phase (phase 0, the operators, is
    part of every other phase)."""
    shared, rest = phases[0], [p for p in phases[1:] if p] or [[]]
    best = 0
    for phase in rest:
        parts = shared + phase
        total = {kind: sum(v for _, k, v in parts if k == kind) for kind in (RESIDENT, PRODUCT, BETWEEN)}
        best = max(best, total[RESIDENT] + max(total[PRODUCT], total[BETWEEN]))
    return best


def estimate(fp: Footprint, plan: Plan, request: Request | None = None) -> Plan:
    """The plan with its ``estimate`` (peak bytes above the problem) and ``parts`` filled in.

    Peak = 1.15 x (resident (retained graphs, stored bases and probes, working vectors) + the
    larger of one product's transient and the estimator's temporaries between products); a basis
    kept on the host does not count against a device budget. A metric that runs its estimators
    one after the other (``ggn``: Lanczos on G, then the traces; ``layers``: the block traces,
    then each block's Lanczos run on vectors of that block's size) peaks in the costlier of its
    phases, not in their sum. Measured against the peak of torch's allocations on MLPs and
    transformers, the estimate lies between 1x and 2x of it.
    """
    request = request or Request()
    m = plan.metric
    n8 = 8 * fp.num_params
    vec = fp.vector_bytes
    needs_h = m not in ("ggn", "noise")
    needs_g = m in ("ggn", "tau", "density", "layers")
    lanczos: list[tuple[str, str, int]] = []  # the phases of the estimators, run one after the other
    traces: list[tuple[str, str, int]] = []
    other: list[tuple[str, str, int]] = []
    columns = 1
    if m in ("lambda_max", "eigen", "lambda_min", "ggn", "layers"):
        assert plan.basis_vectors is not None
        block = request.largest_block if m == "layers" else None
        lanczos += _lanczos_parts(fp, plan, block)
    if m in ("trace", "ggn"):
        s = request.trace_samples
        method = plan.trace_method or request.trace_method
        b = plan.block_size
        if method == "xtrace":
            # Omega, Y, Q, Z (and the leave-one-out temporaries) as float64 [n, s/2]
            vectors = 5 * (s // 2) * n8
            columns = max(columns, min(b, s // 2))
        elif method == "hutchpp":
            vectors = 4 * (s // 3) * n8
            columns = max(columns, min(b, s // 3))
        else:  # a block of probes, its product in float64 and their elementwise product
            vectors = 3 * min(b, s) * n8
            columns = max(columns, min(b, s))
        traces.append((f"{method} vectors", RESIDENT, vectors))
        if m == "ggn":  # tr G and tr H_F by the same sketch also need H
            needs_h = True
    if m == "tau":
        other.append(("tau vectors", RESIDENT, 6 * n8))
    if m == "density":
        p, steps = request.density_probes, min(request.density_steps, fp.num_params)
        where = HOST if plan.basis_device == "host" else RESIDENT
        if plan.slq_mode == "lockstep":
            other.append((f"SLQ bases ({p} x {steps} vectors)", where, p * steps * vec))
            other.append(("SLQ working vectors", RESIDENT, 3 * p * n8))
            other.append(("basis chunks in float64", BETWEEN, _chunk_temporaries(fp, steps)))
            columns = p
        elif plan.slq_mode == "sequential":
            other.append((f"SLQ basis ({steps} vectors)", where, steps * vec))
            other.append(("SLQ working vectors", RESIDENT, 3 * n8))
            other.append(("basis chunks in float64", BETWEEN, _chunk_temporaries(fp, steps)))
        else:
            from landscape.curvature.density import slq_memory

            vectors = slq_memory(fp.num_params, p, steps, fp.itemsize, "recurrence")
            other.append(("SLQ recurrence (3 vectors, 1 in float64)", RESIDENT, vectors))
    if m == "layers":
        block = min(plan.block_size, request.trace_samples)
        traces.append(("block trace probes", RESIDENT, 3 * block * n8))
        columns = max(columns, block)
    operators: list[tuple[str, str, int]] = []
    if m == "noise":
        chunk = max(1, min(request.per_sample_chunk, fp.num_samples))
        other.append(("per-sample gradients", RESIDENT, chunk * vec + 4 * n8))
        c = min(chunk, plan.chunk_samples or fp.chunk_samples)
        other.append(("per-sample graphs", PRODUCT, fp.grad_graph(c)))
    else:
        krylov_only = m in ("lambda_max", "eigen", "lambda_min")
        # a Krylov row or a recurrence vector arrives in the compute dtype; float64 probes do not
        converts = not (krylov_only or plan.slq_mode == "recurrence")
        operators = _operator_parts(fp, plan, needs_h, needs_g, columns, converts=converts)
        if m == "density":  # a product of H_F = H - G holds H's product while G's is computed
            operators.append(("H_F's first product", PRODUCT, columns * vec))
    peak = MARGIN * _peak([operators, lanczos, traces, other])
    parts = operators + lanczos + traces + other
    named = {(f"host: {name}" if kind == HOST else name): value for name, kind, value in parts}
    return replace(plan, estimate=int(peak), parts=named)


def _candidates(metric: str, fp: Footprint, request: Request, on_cuda: bool) -> list[Plan]:
    """Plans in order of preference (fastest first)."""
    hvp_routes = ["reuse", "forward-over-reverse", "double-backward"]
    ggn_routes = ["reuse", "stream"]
    steps = _lanczos_steps(metric, request)
    chunk_options = [fp.chunk_samples]
    c = fp.chunk_samples
    while c > 1:
        c = max(1, c // 2)
        chunk_options.append(c)
    lanczos_metrics = ("lambda_max", "eigen", "lambda_min", "ggn", "layers")
    plans = []
    for route_pair in _route_pairs(metric, hvp_routes, ggn_routes):
        for chunk in chunk_options:
            hvp, ggn = route_pair
            base = Plan(metric, hvp_route=hvp, ggn_route=ggn, chunk_samples=chunk)
            if metric in lanczos_metrics:
                full = min(steps, fp.num_params)
                smallest = min(_min_basis(metric, request), full)
                preferred = _preferred_basis(metric, request, fp.num_params, full)
                # the preferred basis (full, or bounded for the top of a large model's spectrum),
                # then the smallest bounded one (plan_metric grows it to the budget)
                for size in dict.fromkeys((preferred, smallest)):
                    for storage in ("device", "host") if on_cuda else ("device",):
                        plans.append(
                            replace(base, basis_vectors=size, full_basis=size >= full, basis_device=storage)
                        )
            elif metric == "density":
                for mode in ("lockstep", "sequential", "recurrence"):
                    plans.append(replace(base, slq_mode=mode))
            elif metric == "trace":
                for method in _trace_methods(request.trace_method):
                    for b in _block_options(request.block_size):
                        plans.append(replace(base, trace_method=method, block_size=b))
            else:
                plans.append(base)
    if metric == "ggn":  # trace part of the ggn metric: method fallbacks inside each Lanczos plan
        expanded = []
        for plan in plans:
            for method in _trace_methods(request.trace_method):
                expanded.append(replace(plan, trace_method=method))
        plans = expanded
    if metric == "layers":
        plans = [replace(p, block_size=b) for p in plans for b in _block_options(request.block_size)]
    return plans


def _route_pairs(metric: str, hvp: list[str], ggn: list[str]) -> list[tuple[str | None, str | None]]:
    needs_h = metric not in ("ggn", "noise")
    needs_g = metric in ("ggn", "tau", "density", "layers")
    if metric == "ggn":
        return [(h, g) for h in hvp for g in ggn]
    if needs_h and needs_g:
        return [(h, g) for h in hvp for g in ggn]
    if needs_h:
        return [(h, None) for h in hvp]
    if needs_g:  # pragma: no cover - every GGN metric also needs H
        return [(None, g) for g in ggn]
    return [(None, None)]


def _trace_methods(first: str) -> list[str]:
    order = ["xtrace", "hutchpp", "hutchinson"]
    return order[order.index(first) :] if first in order else order


def _block_options(block_size: int) -> list[int]:
    out = [max(1, block_size)]
    while out[-1] > 1:
        out.append(max(1, out[-1] // 2))
    return out


def _largest_basis(fp: Footprint, plan: Plan, request: Request, budget: int) -> Plan:
    """The bounded plan with the most Krylov vectors that still fits (bisection: the estimate
    grows with the basis), below the full basis."""
    full = min(_lanczos_steps(plan.metric, request), fp.num_params)
    preferred = _preferred_basis(plan.metric, request, fp.num_params, full)
    low, high = int(plan.basis_vectors or 1), min(full - 1, preferred)
    best = plan
    while low < high:
        mid = (low + high + 1) // 2
        trial = replace(estimate(fp, replace(plan, basis_vectors=mid), request), budget=budget)
        if trial.fits:
            low, best = mid, trial
        else:
            high = mid - 1
    return best


def plan_metric(
    metric: str,
    footprint: Footprint,
    budget: int,
    request: Request | None = None,
    *,
    hvp_route: str = "auto",
    ggn_route: str = "auto",
) -> Plan:
    """The fastest plan for ``metric`` whose estimated peak fits ``budget`` bytes.

    Preference (fastest first): retained graphs (``reuse``: about 2x a gradient per product)
    over forward-over-reverse (3x) over double-backward; then bigger chunks over smaller (halving
    down to one sample); a full Lanczos basis over a bounded thick-restart one (the most vectors
    that fit, not fewer than the solver accepts; for the top of the spectrum of a model of 2**20
    parameters or more, at most :func:`~landscape.curvature.eigen.preferred_basis`), on the
    device over the host (CUDA only); SLQ in lockstep over sequential over the short recurrence;
    XTrace over Hutch++ over Hutchinson, in halving blocks. ``hvp_route``/``ggn_route`` other
    than ``"auto"`` pin the route. Raises :class:`UserError` naming the metric, the smallest estimate and the budget when
    nothing fits.
    """
    if metric not in METRICS:
        raise UserError(
            f"unknown metric '{metric}' for the memory planner (choose from {', '.join(METRICS)})"
        )
    request = request or Request()
    on_cuda = footprint.device.startswith("cuda")
    best: Plan | None = None
    for candidate in _candidates(metric, footprint, request, on_cuda):
        if hvp_route != "auto" and candidate.hvp_route not in (None, hvp_route):
            continue
        if ggn_route != "auto" and candidate.ggn_route not in (None, ggn_route):
            continue
        plan = replace(estimate(footprint, candidate, request), budget=int(budget))
        if plan.fits:
            if plan.basis_vectors is not None and not plan.full_basis:
                plan = _largest_basis(footprint, plan, request, int(budget))
            return plan
        if best is None or plan.estimate < best.estimate:
            best = plan
    assert best is not None
    raise UserError(
        f"{metric} needs about {format_bytes(best.estimate)} even with its smallest plan "
        f"({best.describe().split(': ')[0]}), more than the memory budget of {format_bytes(budget)}; "
        "raise --max-memory, analyse fewer parameters (--params) or fewer samples"
    )
