"""``trace``: tr(H) with its standard error.

XTrace by default (Epperly, Tropp & Webber 2024, arXiv 2301.07825: the most accurate per product),
Hutch++ (Meyer, Musco, Musco & Woodruff 2021, arXiv 2010.09649) or Hutchinson's estimator
(Hutchinson 1989), ``trace_samples`` products each (:func:`~landscape.curvature.trace.trace_estimate`);
the standard error comes from the estimator's own samples. With XTrace and the ``ggn`` metric
chosen as well, tr(H) comes from the sketch that tr(G) and tr(H_F) share
(:mod:`landscape.metrics.sketch`), with the same probes. With ``exact=True`` the trace of the
assembled float64 Hessian (standard error 0).

As a training diagnostic: XTrace with 24 products (a few percent standard error on the built-in
models; for trends).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from landscape.metrics import sketch
from landscape.metrics.base import (
    Column,
    Context,
    Curve,
    Diagnostic,
    Headline,
    Metric,
    Outcome,
    Row,
    Settings,
    Status,
)

if TYPE_CHECKING:
    from landscape.curvature.memory import Request
    from landscape.problem import Problem


TRACE = "trace"
STDERR = "trace_stderr"
METHOD = "trace_method"
PRODUCTS = "trace_products"

SEEDS = sketch.SEEDS
"""The trace estimator's probes (the shared sketch's, so that tr(H) is one estimate either way)."""


def compute(ctx: Context) -> Outcome:
    """tr(H) by ``trace_method`` (from the shared sketch when it is formed)."""
    from landscape.curvature.trace import trace_estimate

    settings = ctx.settings
    if sketch.formed(ctx):
        estimate = sketch.traces(ctx).hessian
        assert estimate is not None  # this metric needs sketch.SKETCH_H
    else:
        ctx.report(f"trace of H ({settings.trace_method})")
        estimate = trace_estimate(
            ctx.H,
            method=settings.trace_method,
            num_products=settings.trace_samples,
            seed=next(SEEDS.draw(settings.seed)),
            block_size=ctx.block_size,
        )
    return Outcome(
        {
            TRACE: estimate.estimate,
            STDERR: estimate.stderr,
            METHOD: settings.trace_method,
            PRODUCTS: estimate.num_products,
        }
    )


def exact(ctx: Context) -> Outcome:
    """The trace of the assembled float64 Hessian."""
    import torch

    return Outcome({TRACE: float(torch.trace(ctx.dense_hessian())), STDERR: 0.0, METHOD: "exact"})


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: the trace estimator and its products."""
    from landscape.curvature.memory import Request

    return Request(trace_method=settings.trace_method, trace_samples=settings.trace_samples)


METRIC = Metric(
    name="trace",
    description="tr(H) with a standard error (XTrace by default)",
    order=20,
    keys=(TRACE, STDERR, METHOD, PRODUCTS),
    compute=compute,
    exact=exact,
    needs=frozenset({sketch.SKETCH_H}),
    seeds=SEEDS,
    rows=(Row("tr(H)", TRACE, error=STDERR, note=lambda values: values.get(METHOD) or ""),),
    columns=(
        Column(TRACE, "tr(H)", flatness="lower", error=STDERR),
        Column(STDERR, shown=False),
    ),
    curves=(Curve(TRACE, "tr(H)", "Hessian trace tr(H)", caption="trace of H", error=STDERR),),
    diagnostic=Diagnostic(
        keys=(TRACE, STDERR),
        budget={"trace_samples": 24},
        status=(Status(TRACE, "trH"),),
    ),
    headlines=(Headline(TRACE, "tr(H)"),),
    memory=memory,
)
