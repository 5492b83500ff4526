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
gradient fits ``noise_memory_budget`` bytes, otherwise Hutchinson's estimator of tr(V) from
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
    "noise_memory_budget": 1 << 30,  # bytes (landscape.curvature.noise.DEFAULT_MEMORY_BUDGET)
    "noise_probes": 64,  # sketch probes (landscape.curvature.noise.DEFAULT_NUM_PROBES)
}


def _measure(ctx: Context, method: str) -> Outcome:
    from landscape.curvature.noise import gradient_noise_trace

    settings = ctx.settings
    ctx.report(f"gradient-noise trace ({method})")
    result = gradient_noise_trace(
        ctx.problem,
        method=method,  # type: ignore[arg-type]
        memory_budget=int(settings.option("noise_memory_budget")),
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
    name="noise",
    description="gradient-noise trace tr(V) of the per-sample gradients (exact by vmap, else sketched)",
    order=25,
    keys=(NOISE_TRACE, STDERR, METHOD, SAMPLES, PROBES),
    compute=compute,
    exact=exact,
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
