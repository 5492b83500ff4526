"""``landscape.analyze``: every curvature diagnostic of a checkpoint in one call.

The metrics are those of the registry (:mod:`landscape.metrics`, one module each; pick with
``metrics=``; each costs only its own products): ``lambda_max`` (the top eigenvalue of H alone),
``eigen`` (top-k eigenvalues of H), ``lambda_min`` (the smallest, its own run), ``trace`` (tr(H) with a standard error), ``ggn`` (lambda_max(G), tr(G) and tr(H_F);
with XTrace the three traces share one sketch), ``tau`` (the split of the sharpness gradient),
``density`` (spectral densities by stochastic Lanczos quadrature) and ``layers`` (per parameter
tensor). ``analyze`` builds the operators the chosen metrics need, runs each metric in the
registry's order and collects what they measured into one :class:`AnalysisResult`.

With ``exact=True`` the matrices are assembled (n products each) and diagonalised in float64: the
reference answer for models of a few thousand parameters.

Memory: before the metrics run, ``analyze`` measures the problem's footprint once
(:func:`~landscape.curvature.memory.measure_footprint`: two probes on one and two samples) and
plans every chosen metric for the budget ``max_memory`` (default: most of the free memory of the
device, :func:`~landscape.curvature.budget.remaining_budget`) with
:func:`~landscape.curvature.memory.plan_metric`: the Hessian and GGN routes (the most frugal
route any metric's plan needs, shared by all), the Krylov basis (full or thick-restart, on the
device or the host), the SLQ mode, the trace estimator, the columns per product and the chunk
size. Each plan is announced (``plan: ...``) before its metric runs and written to
``analysis.json`` (``memory_plans``); when even the smallest plan of a metric does not fit, the
analysis stops before any product with one line naming the metric, the estimate and the budget.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import pandas as pd
import torch
from torch import nn

from landscape import metrics as registry
from landscape.bounds import (
    DENSITY_PROBES,
    DENSITY_STEPS,
    LAYER_MAX_ITER,
    LAYER_SAMPLES,
    MAX_ITER,
    SEED,
    TOL,
    TOP_K,
    TRACE_SAMPLES,
    JobSize,
)
from landscape.curvature.checks import require_deterministic
from landscape.curvature.memory import Footprint, Plan, measure_footprint, plan_metric
from landscape.errors import UserError
from landscape.metrics import Context, Metric, Outcome, Settings
from landscape.preserve import preserved
from landscape.problem import Problem

__all__ = [
    "EXACT_MAX_PARAMS",
    "METRICS",
    "TRACE_METHODS",
    "AnalysisResult",
    "LayerResult",
    "analyze",
    "parse_metrics",
]

METRICS = registry.LiveNames(registry.names)
"""The names of the registered metrics, in order (read from the registry when used)."""
TRACE_METHODS = ("xtrace", "hutchpp", "hutchinson")
EXACT_MAX_PARAMS = 6000

Progress = Callable[[str], None]

_HEAD = (
    "loss",
    "grad_norm",
    "num_params",
    "num_samples",
    "num_targets",
    "dtype",
    "device",
    "mode",
    "metrics",
    "exact",
)
_TAIL = (
    "hvp_count",
    "ggn_count",
    "hvp_method",
    "ggn_method",
    "seconds",
    "seed",
    "processes",
    "memory_budget",
    "memory_plans",
    "notes",
)
# The routes from the fastest to the most frugal (retained graphs hold the most memory).
_HVP_ROUTES = ("reuse", "forward-over-reverse", "double-backward")
_GGN_ROUTES = ("reuse", "stream")

parse_metrics = registry.parse_metrics


class _Values:
    """Attribute access to the metrics' values: ``result.lambda_max`` reads the value under that
    key; a key of a registered metric that did not run reads ``None``."""

    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        if (
            name in registry.output_keys()
            or name in registry.record_keys()
            or name in registry.layer_columns()
        ):
            return None
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


@dataclass(frozen=True)
class LayerResult(_Values):
    """Curvature of one parameter tensor's diagonal Hessian block: its ``name``, ``num_params``
    and the per-layer columns of the metrics that ran (``layer.trace``, ``layer.lambda_max``, ...)."""

    name: str
    num_params: int
    values: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """One row of ``layers.csv``: name, number of parameters, then the columns."""
        return {"name": self.name, "num_params": self.num_params, **self.values}


@dataclass(frozen=True)
class AnalysisResult(_Values):
    """Everything ``analyze`` measured. Each metric's outputs read as attributes
    (``result.lambda_max``, ``result.trace_stderr``; ``None`` for a metric that did not run);
    ``to_dict()`` is JSON-ready (``analysis.json``). ``outcomes`` holds each metric's
    :class:`~landscape.metrics.Outcome` with its cost."""

    loss: float
    grad_norm: float
    num_params: int
    num_samples: int
    num_targets: int
    dtype: str
    mode: str
    metrics: tuple[str, ...]
    exact: bool = False
    device: str = "cpu"
    hvp_count: int = 0
    ggn_count: int = 0
    hvp_method: str | None = None
    ggn_method: str | None = None
    seconds: float = 0.0
    seed: int = 0
    processes: int = 1
    memory_budget: int | None = None
    memory_plans: Mapping[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layers: list[LayerResult] = field(default_factory=list)
    values: Mapping[str, Any] = field(default_factory=dict)
    outcomes: Mapping[str, Outcome] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the contents of ``analysis.json``): the loss and the problem, every
        registered metric's keys (``None`` when it did not run), the cost, the per-layer rows and
        the records (densities)."""
        out: dict[str, Any] = {key: getattr(self, key) for key in _HEAD}
        out |= {key: self.values.get(key) for key in registry.output_keys()}
        out |= {key: getattr(self, key) for key in _TAIL}
        out["layers"] = [layer.to_dict() for layer in self.layers]
        out |= {key: self.values.get(key) for key in registry.record_keys()}
        out |= {key: value for key, value in self.values.items() if key not in out}
        return copy.deepcopy(out)

    def to_frame(self) -> pd.DataFrame:
        """The scalar results as a one-column pandas frame (quantity -> value)."""
        scalars = {k: v for k, v in self.to_dict().items() if not isinstance(v, list | dict | tuple)}
        return pd.DataFrame({"value": pd.Series(scalars, dtype=object)})

    def layers_frame(self) -> pd.DataFrame:
        """Per-layer results as a pandas frame (one row per parameter tensor)."""
        return pd.DataFrame([layer.to_dict() for layer in self.layers])


def _noop(_: str) -> None:
    return None


def _settings(chosen: Sequence[Metric], options: Mapping[str, Any], **common: Any) -> Settings:
    """The analysis settings, checked: ``common`` are analyze's own keyword arguments, ``options``
    the metrics' own (declared in their ``options``)."""
    unknown = sorted(set(options) - set(registry.option_defaults()))
    if unknown:
        raise UserError(f"unknown analysis option(s) {', '.join(unknown)}")
    if common["trace_method"] not in TRACE_METHODS:
        raise UserError(
            f"unknown trace method '{common['trace_method']}' (choose from {', '.join(TRACE_METHODS)})"
        )
    for name, bound in (
        ("top_k", TOP_K),
        ("trace_samples", TRACE_SAMPLES),
        ("max_iter", MAX_ITER),
        ("tol", TOL),
        ("seed", SEED),
        ("layer_samples", LAYER_SAMPLES),
        ("layer_max_iter", LAYER_MAX_ITER),
        ("density_probes", DENSITY_PROBES),
        ("density_steps", DENSITY_STEPS),
    ):
        bound.check(common[name], name)
    return Settings(**common, options=registry.option_defaults(chosen) | dict(options))


def _layers(outcomes: Sequence[Outcome], chosen: Sequence[Metric]) -> list[LayerResult]:
    """The metrics' per-layer rows merged by parameter tensor, columns in the declared order."""
    columns = registry.layer_columns(chosen)
    sizes: dict[str, int] = {}
    rows: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        for row in outcome.layers:
            sizes.setdefault(row["name"], row["num_params"])
            merged = rows.setdefault(row["name"], dict.fromkeys(columns))
            merged.update((k, v) for k, v in row.items() if k not in ("name", "num_params"))
    return [LayerResult(name, sizes[name], values) for name, values in rows.items()]


def _problem(
    model: nn.Module | Problem,
    data: Any,
    loss: str,
    params: str | Sequence[str] | None,
    batch_size: int | None,
    dtype: torch.dtype | None,
    device: str | torch.device | None = None,
) -> tuple[Problem, list[str]]:
    """The problem to analyse and the notes about it. Parameter tensors that the model's outputs
    do not depend on (a dead layer: no gradient, no curvature) are left out of a problem built
    here, with a note naming them; a ready :class:`Problem` that holds any is refused."""
    if isinstance(model, Problem):
        problem = model
    else:
        problem = Problem(model, data, loss, params=params, batch_size=batch_size, dtype=dtype, device=device)
    unused = list(problem.unused_params)
    if not unused:
        return problem, []
    names = ", ".join(unused[:4]) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
    if isinstance(model, Problem):
        raise UserError(
            f"the model's outputs do not depend on parameter(s) {names}: their derivatives do not "
            "exist; build the Problem with params= naming the others"
        )
    kept = [n for n in problem.param_names if n not in set(unused)]
    note = (
        f"left out {len(unused)} parameter tensor(s) that the outputs do not depend on ({names}): "
        "their gradient and curvature are zero; --params selects parameters explicitly"
    )
    rebuilt = Problem(model, data, loss, params=kept, batch_size=batch_size, dtype=dtype, device=device)
    return rebuilt, [note]


def _check_sizes(problem: Problem, chosen: Sequence[Metric], settings: Settings) -> None:
    """The settings fit the problem: ``--exact`` on a small model, ``top_k`` within the parameters
    and the Lanczos steps."""
    n = problem.num_params
    if settings.exact and n > EXACT_MAX_PARAMS:
        raise UserError(f"--exact assembles a {n}x{n} matrix; allowed up to {EXACT_MAX_PARAMS} parameters")
    if not any(metric.name == "eigen" for metric in chosen):
        return
    if settings.exact:
        if settings.top_k > n:
            raise UserError(f"--top-k {settings.top_k} exceeds the {n} analysed parameters")
        return
    room = min(settings.max_iter, n)
    if settings.top_k > room:
        raise UserError(
            f"--top-k {settings.top_k} needs {settings.top_k} Ritz values, more than "
            f"min(--max-iter, parameters) = {room}: lower --top-k"
            + (" or raise --max-iter" if settings.max_iter < n else "")
        )


def _plan(problem: Problem, chosen: Sequence[Metric], settings: Settings) -> str:
    """The size of the analysis, stated before it starts."""
    described = problem.describe()
    work = f"{', '.join(m.name for m in chosen)} on {problem.num_samples} samples ({problem.num_targets} "
    work += f"targets, {described['num_batches']} chunk(s)) and {problem.num_params} parameters: "
    if settings.exact:
        return work + f"{problem.num_params} products per assembled matrix"
    return work + (
        f"up to {settings.max_iter} Lanczos steps per eigenvalue run, "
        f"{settings.trace_samples} products per trace (one product: about 2 passes over the data)"
    )


def _frugal(routes: Sequence[str | None], order: Sequence[str]) -> str | None:
    """The most frugal of the routes the plans chose (``None`` when no plan chose one)."""
    chosen = [order.index(r) for r in routes if r in order]
    return order[max(chosen)] if chosen else None


@dataclass(frozen=True)
class _Plans:
    """The memory plans of one analysis and the choices they make together."""

    by_metric: dict[str, Plan]
    budget: int | None
    hvp_route: str | None
    ggn_route: str | None
    chunk_samples: int | None
    block_size: int
    trace_method: str | None


def _agreed(problem: Problem, footprint: Footprint, budget: int) -> tuple[Footprint, int]:
    """With several processes: the largest footprint and the smallest budget of all ranks, so that
    every rank makes the same plans (the Krylov basis, the SLQ mode and the trace estimator decide
    which collective products the iterations make; ranks that planned apart would deadlock)."""
    if problem.describe()["processes"] <= 1:
        return footprint, budget
    from landscape.distributed import all_reduce_max_

    names = [f.name for f in fields(footprint) if isinstance(getattr(footprint, f.name), int)]
    sizes = torch.tensor(
        [float(getattr(footprint, n)) for n in names] + [-float(budget)], dtype=torch.float64
    )
    all_reduce_max_(sizes)
    agreed = replace(footprint, **{n: int(v) for n, v in zip(names, sizes[:-1].tolist(), strict=True)})
    return agreed, int(-sizes[-1].item())


def _memory_plans(
    problem: Problem,
    chosen: Sequence[Metric],
    settings: Settings,
    hvp_method: str,
    max_memory: int | None,
) -> _Plans:
    """Plan every chosen metric the planner knows for the budget (two passes: each metric's own
    fastest plan, then all of them again on the most frugal routes any of them needs, since the
    operators are built once and shared)."""
    from landscape.curvature.budget import remaining_budget

    names = tuple(m.name for m in chosen)
    asked = {m.name: m.memory(problem, settings, names) for m in chosen if m.memory is not None}
    requests = {name: request for name, request in asked.items() if request is not None}
    if settings.exact or not requests:
        return _Plans({}, None, None, None, None, 16, None)
    footprint, budget = _agreed(
        problem, measure_footprint(problem), remaining_budget(max_memory, problem.device)
    )
    first = {
        name: plan_metric(name, footprint, budget, request, hvp_route=hvp_method)
        for name, request in requests.items()
    }
    hvp = _frugal([p.hvp_route for p in first.values()], _HVP_ROUTES)
    ggn = _frugal([p.ggn_route for p in first.values()], _GGN_ROUTES)
    plans = {
        name: plan_metric(name, footprint, budget, request, hvp_route=hvp or "auto", ggn_route=ggn or "auto")
        for name, request in requests.items()
    }
    traces = [p.trace_method for p in plans.values() if p.trace_method]
    # the planners of the trace estimators and the per-layer probes choose the columns per call
    # every plan with a trace estimator sets it, ggn's too (a plan that also holds a Lanczos basis)
    blocks = [p.block_size for p in plans.values() if p.trace_method or p.metric == "layers"]
    chunks = [p.chunk_samples for p in plans.values() if p.chunk_samples]
    return _Plans(
        plans,
        budget,
        hvp,
        ggn,
        min(chunks) if chunks else None,
        min(blocks) if blocks else 16,
        _frugal(traces, TRACE_METHODS),
    )


def analyze(
    model: nn.Module | Problem,
    data: Any = None,
    loss: str = "cross_entropy",
    metrics: str | Sequence[str] | None = None,
    *,
    params: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    top_k: int = 5,
    trace_method: str = "xtrace",
    trace_samples: int = 96,
    layer_samples: int = 48,
    layer_max_iter: int = 10,
    tol: float = 1e-3,
    max_iter: int = 300,
    density_probes: int = 2,
    density_steps: int = 40,
    exact: bool = False,
    hvp_method: str = "auto",
    seed: int = 0,
    device: str | torch.device | None = None,
    max_memory: int | str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> AnalysisResult:
    """Measure the curvature of ``model`` on ``data`` (see the module docstring for the metrics).

    Args:
        model: an ``nn.Module`` (with ``data`` and ``loss``) or a ready :class:`Problem`.
        data: ``(x, y)``, a Dataset or a DataLoader (see :class:`Problem`).
        loss: ``"cross_entropy"`` (logits ``[..., C]``) or ``"mse"``.
        metrics: names of registered metrics (``lambda_max, eigen, lambda_min, trace, ggn, tau,
            density, layers``; comma-separated or a list; default: all).
        params: restrict to parameters whose names match (comma-separated regexes).
        top_k: number of top eigenvalues of H.
        trace_method: ``xtrace`` (default; Epperly, Tropp & Webber 2024, arXiv 2301.07825),
            ``hutchpp`` or ``hutchinson``.
        trace_samples: operator products per trace estimate.
        layer_samples: Hutchinson probes for the per-layer traces.
        layer_max_iter: Lanczos steps at most for each layer's lambda_max (its residual is reported).
        tol: relative accuracy for Lanczos (Ritz error bound <= tol * |theta|).
        max_iter: Lanczos steps at most (lambda_min needs many; see ``landscape.curvature.eigen``).
        density_probes, density_steps: SLQ probes and Lanczos steps per probe.
        exact: assemble dense H and G and diagonalise (small models only).
        hvp_method: ``auto``, ``reuse``, ``forward-over-reverse`` or ``double-backward``.
        seed: seeds every random probe: the same seed gives the same numbers.
        device: where to compute: ``"auto"`` (CUDA when available; under ``torchrun`` this
            process's ``LOCAL_RANK`` GPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
            ``torch.device`` (:func:`landscape.distributed.resolve_device`). Default: the device
            of the model's parameters (of a ready :class:`Problem`: its own).
        max_memory: the memory limit of the whole process on the device (bytes, or ``"12GB"``);
            each metric is planned to stay within it (see the module docstring). Default: most of
            the memory free on the device.
        progress: called with a short label before each stage (the CLI draws a progress bar).
        options: options that a metric declares itself (its ``options``), by name.
    """
    started = time.perf_counter()
    chosen = registry.select(metrics)
    settings = _settings(
        chosen,
        options,
        top_k=top_k,
        trace_method=trace_method,
        trace_samples=trace_samples,
        layer_samples=layer_samples,
        layer_max_iter=layer_max_iter,
        tol=tol,
        max_iter=max_iter,
        density_probes=density_probes,
        density_steps=density_steps,
        exact=exact,
        seed=seed,
    )
    limit = _memory_limit(max_memory)
    if isinstance(model, Problem) and device is not None:
        raise UserError("device= is the ready Problem's own: build the Problem with device=")
    report = progress or _noop
    module = model.model if isinstance(model, Problem) else model
    with preserved(module, rng=False):  # the problem evaluates in eval mode; each module's mode stays
        problem, notes = _problem(model, data, loss, params, batch_size, dtype, device)
        _check_sizes(problem, chosen, settings)
        require_deterministic(problem)
        plans = _memory_plans(problem, chosen, settings, hvp_method, limit)
        if plans.chunk_samples is not None and plans.chunk_samples < max(
            b.num_samples for b in problem.batches
        ):
            if isinstance(model, Problem):
                notes.append(
                    f"the memory plan wants chunks of {plans.chunk_samples} samples; the ready Problem "
                    "keeps its own (build it with batch_size=)"
                )
            else:
                problem, _ = _problem(model, data, loss, params, plans.chunk_samples, dtype, device)
        if plans.trace_method is not None and plans.trace_method != settings.trace_method:
            notes.append(
                f"the memory plan estimates traces by {plans.trace_method} instead of "
                f"{settings.trace_method} (its vectors do not fit the budget)"
            )
            settings = replace(settings, trace_method=plans.trace_method)
        report(JobSize(_plan(problem, chosen, settings)))
        report("building operators")
        hvp_route, streaming = hvp_method, None
        if hvp_method == "auto" and not any(metric.hessian for metric in chosen):
            # nothing multiplies by H (noise, m_sharpness): no graphs to retain, no route to time
            # (at 124M parameters the retained graphs and the timing held 2-4 GB for nothing)
            hvp_route = "double-backward"
        elif hvp_method == "auto" and plans.hvp_route == "forward-over-reverse":
            # a streaming route: the operator times forward-over-reverse and double-backward on the
            # first chunk and keeps the faster that works (same memory for one column at a time)
            streaming = 0
        elif hvp_method == "auto" and plans.hvp_route not in (None, "reuse"):
            hvp_route = plans.hvp_route
        elif hvp_method == "auto" and plans.hvp_route == "reuse" and plans.budget is not None:
            streaming = plans.budget  # the timing of forward-over-reverse must fit it too
        # a plan of retained graphs stays "auto": the operator keeps them unless forward-over-reverse
        # is measured clearly faster on the first chunk (large models; see curvature.operators)
        ctx = Context(
            problem,
            settings,
            chosen,
            hvp_method=hvp_route,
            ggn_method=plans.ggn_route or "auto",
            block_size=plans.block_size,
            memory_budget=streaming,
            plans=plans.by_metric,
            progress=report,
        )
        loss_value = ctx.loss
        outcomes: dict[str, Outcome] = {}
        for metric in chosen:
            plan = plans.by_metric.get(metric.name)
            if plan is not None:
                report(JobSize(plan.describe()))
            outcomes[metric.name] = ctx.measure(metric)
    report("done")
    values: dict[str, Any] = {}
    for outcome in outcomes.values():
        values.update(outcome.values)
    described = problem.describe()
    return AnalysisResult(
        loss=loss_value,
        grad_norm=float(ctx.gradient.double().norm()),
        num_params=problem.num_params,
        num_samples=problem.num_samples,
        num_targets=problem.num_targets,
        dtype=str(problem.dtype).replace("torch.", ""),
        mode=described["mode"],
        metrics=tuple(metric.name for metric in chosen),
        exact=exact,
        device=str(problem.device),
        hvp_count=ctx.H.products,
        ggn_count=ctx.G.products if ctx.ggn_built else 0,
        hvp_method=ctx.H.method,
        ggn_method=ctx.G.method if ctx.ggn_built else None,
        seconds=time.perf_counter() - started,
        seed=seed,
        processes=described["processes"],
        memory_budget=plans.budget,
        memory_plans={name: plan.to_dict() for name, plan in plans.by_metric.items()},
        notes=notes,
        layers=_layers(list(outcomes.values()), chosen),
        values=values,
        outcomes=outcomes,
    )


def _memory_limit(max_memory: int | str | None) -> int | None:
    """``max_memory`` in bytes (``None``: no limit but the free memory)."""
    from landscape.curvature.budget import parse_memory

    return None if max_memory is None else parse_memory(max_memory)
