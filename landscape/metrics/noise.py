"""``noise``: the gradient-noise trace tr(V), the trace of the per-sample gradient covariance.

For the N samples of the analysis (those with a counted target), ``g_i`` the gradient of sample i's
mean loss over its targets and ``g_bar`` their mean::

    tr(V) = (1/N) sum_i ||g_i - g_bar||^2.

Luo, Harandi, Phung & Le (2025, "Unveiling m-Sharpness Through the Structure of Stochastic Gradient
Noise", arXiv 2509.18001) show that the noise of SAM's perturbation regularises this quantity (the
``(rho / 2b) tr(V)`` drift term of their SDE for mini-batch SAM), report it at the end of training
(their Table 6: SGD 572, SAM 198, RW-SAM 178) and argue that near a minimum it tracks tr(H); the
report shows the two side by side. Lower is read as flatter, as in that table.

Exact per-sample gradients by ``torch.func.vmap`` in chunks (standard error 0) when one sample's
gradient fits ``noise_memory_budget`` bytes (default: what ``analyze``'s memory plan leaves beside
the per-sample graphs; 1 GiB without a plan), otherwise Hutchinson's estimator of tr(V) from
``noise_probes`` Rademacher projections of the per-sample gradients, with its standard error
(:func:`landscape.curvature.noise.gradient_noise_trace`); ``noise_method`` forces either
(``exact``, ``sketch``; default ``auto``). The sketch's probes come from this metric's own seed
stream. With ``exact=True`` the exact per-sample covariance trace whatever the budget.

Output keys: ``gradient_noise_trace`` and ``gradient_noise_trace_stderr``, with
``gradient_noise_method`` (``exact`` or ``sketch``), ``gradient_noise_samples`` (N) and
``gradient_noise_probes`` (0 when exact).

As a training diagnostic: the same keys, with 16 probes and a 256 MiB budget (the built-in models
fit it: exact).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from landscape.metrics.base import (
    Column,
    Context,
    Curve,
    Diagnostic,
    Headline,
    Metric,
    Outcome,
    Row,
    SeedStream,
    Status,
    Values,
)

if TYPE_CHECKING:
    from landscape.curvature.memory import Request
    from landscape.metrics.base import Settings
    from landscape.problem import Problem

METRIC_NAME = "noise"
NOISE_TRACE = "gradient_noise_trace"
STDERR = "gradient_noise_trace_stderr"
METHOD = "gradient_noise_method"
SAMPLES = "gradient_noise_samples"
PROBES = "gradient_noise_probes"

UNIT = "loss² / param²"
"""tr(V) is a sum of squared gradient entries."""

SEEDS = SeedStream.named("noise")
"""The sketch's Rademacher probes (the exact method draws none)."""

OPTIONS = {
    "noise_method": "auto",  # auto, exact or sketch
    # bytes; 0: what the analysis's memory plan leaves beside the per-sample graphs, or, unplanned,
    # landscape.curvature.noise.DEFAULT_MEMORY_BUDGET (1 GiB)
    "noise_memory_budget": 0,
    "noise_probes": 64,  # sketch probes (landscape.curvature.noise.DEFAULT_NUM_PROBES)
}


def _budget(ctx: Context) -> tuple[int, int | None]:
    """``(memory budget, samples per chunk)`` of the exact per-sample gradients.

    ``noise_memory_budget`` when set; otherwise (0) the analysis's planned budget, with chunks of
    as many samples as fit beside their per-sample graphs (at 124M parameters one sample's
    gradient and its float64 working copies take 2.1 GB, over the fixed 1 GiB, which sent the
    estimate to the sketch: 64 forward-mode passes instead of one gradient per sample).
    """
    from landscape.curvature.memory import MARGIN
    from landscape.curvature.noise import DEFAULT_MEMORY_BUDGET, noise_trace_memory

    asked = int(ctx.settings.option("noise_memory_budget"))
    if asked:
        return asked, None
    plan = ctx.plan(METRIC_NAME)
    if plan is None or not plan.budget:
        return DEFAULT_MEMORY_BUDGET, None
    graph = int(plan.parts.get("per-sample graphs", 0))  # one sample's
    room = int(plan.budget / MARGIN)
    largest = max(b.num_samples for b in ctx.problem.batches)
    chunk = 1
    while (
        chunk < largest and noise_trace_memory(ctx.problem, "exact", chunk + 1) + (chunk + 1) * graph <= room
    ):
        chunk += 1
    return max(1, int(plan.budget) - graph), chunk


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: one sample's gradient at a time at the least."""
    from landscape.curvature.memory import Request

    return Request(per_sample_chunk=1)


def _measure(ctx: Context, method: str) -> Outcome:
    from landscape.curvature.noise import gradient_noise_trace

    settings = ctx.settings
    budget, chunk = _budget(ctx)
    ctx.report(f"gradient-noise trace ({method})")
    result = gradient_noise_trace(
        ctx.problem,
        method=method,  # type: ignore[arg-type]
        memory_budget=budget,
        chunk_size=chunk,
        num_probes=int(settings.option("noise_probes")),
        seed=next(SEEDS.draw(settings.seed)),
    )
    return Outcome(
        {
            NOISE_TRACE: result.estimate,
            STDERR: result.stderr,
            METHOD: result.method,
            SAMPLES: result.num_samples,
            PROBES: result.num_probes,
        }
    )


def compute(ctx: Context) -> Outcome:
    """tr(V) by ``noise_method`` (``auto``: exact when it fits ``noise_memory_budget``)."""
    return _measure(ctx, str(ctx.settings.option("noise_method")))


def exact(ctx: Context) -> Outcome:
    """tr(V) from the exact per-sample gradients (standard error 0)."""
    return _measure(ctx, "exact")


def _note(values: Values) -> str:
    method = values.get(METHOD)
    if method is None:
        return ""
    probes = f", {values.get(PROBES)} probes" if method == "sketch" else ""
    return f"gradient-noise trace, {method} over {values.get(SAMPLES)} samples{probes}"


METRIC = Metric(
    name=METRIC_NAME,
    description="gradient-noise trace tr(V) of the per-sample gradients (exact by vmap, else sketched)",
    order=25,
    hessian=False,
    keys=(NOISE_TRACE, STDERR, METHOD, SAMPLES, PROBES),
    compute=compute,
    exact=exact,
    memory=memory,
    seeds=SEEDS,
    options=OPTIONS,
    rows=(Row("tr(V)", NOISE_TRACE, error=STDERR, note=_note),),
    columns=(
        Column(NOISE_TRACE, "tr(V)", flatness="lower", error=STDERR),
        Column(STDERR, shown=False),
    ),
    curves=(
        Curve(
            NOISE_TRACE, "tr(V)", "gradient-noise trace tr(V)", caption="gradient-noise trace", error=STDERR
        ),
    ),
    diagnostic=Diagnostic(
        keys=(NOISE_TRACE, STDERR),
        budget={"noise_probes": 16, "noise_memory_budget": 1 << 28},
        status=(Status(NOISE_TRACE, "trV"),),
    ),
    headlines=(Headline(NOISE_TRACE, "tr(V)"),),
)
