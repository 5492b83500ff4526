"""``ggn``: lambda_max(G), tr(G) and tr(H_F), the Gauss-Newton part of H and what is left of it.

G = (1/N) sum_i J_i^T H_out,i J_i is the generalised Gauss-Newton matrix (Schraudolph 2002) and
H_F = H - G the functional Hessian (Singh, Mobahi, Agarwala & Dauphin 2025, arXiv 2502.02407,
Eq. 8). lambda_max(G) by Lanczos (G is positive semi-definite for convex losses: its top is its
largest magnitude); the traces by the trace method, with XTrace from one sketch shared with tr(H)
(:mod:`landscape.metrics.sketch`), otherwise one estimate each. With ``exact=True`` from the
assembled float64 matrices.

As a training diagnostic: lambda_max(G), tr(G) and tr(H_F) with the small budgets of ``eigen`` and
``trace`` (relative tolerance 1e-2, at most 20 Lanczos steps, 24 trace products).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from landscape.metrics import sketch
from landscape.metrics.base import (
    GGN,
    Column,
    Context,
    Curve,
    Diagnostic,
    Headline,
    Metric,
    Outcome,
    Row,
    SeedStream,
    Settings,
    Status,
)

if TYPE_CHECKING:
    from landscape.curvature.memory import Request
    from landscape.problem import Problem


LAMBDA_MAX = "ggn_lambda_max"
LAMBDA_MAX_RESIDUAL = "ggn_lambda_max_residual"
TRACE = "ggn_trace"
TRACE_STDERR = "ggn_trace_stderr"
FUNCTIONAL_TRACE = "functional_trace"
FUNCTIONAL_TRACE_STDERR = "functional_trace_stderr"

SEEDS = SeedStream(2)
"""The Lanczos start vector, then (without the shared sketch) the probes of tr(G) and of tr(H_F)."""


def compute(ctx: Context) -> Outcome:
    """lambda_max(G) by Lanczos; tr(G) and tr(H_F) from the shared sketch or one estimate each."""
    from landscape.curvature.eigen import lanczos
    from landscape.curvature.trace import trace_estimate

    settings = ctx.settings
    seeds = SEEDS.draw(settings.seed)
    ctx.report("GGN lambda_max")
    top = lanczos(
        ctx.G,
        k=1,
        which="LA",
        tol=settings.tol,
        max_iter=settings.max_iter,
        seed=next(seeds),
        **ctx.lanczos_options("ggn"),
    )
    if sketch.formed(ctx):
        shared = sketch.traces(ctx)
        ggn, functional = shared.ggn, shared.functional
    else:
        method, budget = settings.trace_method, settings.trace_samples
        ctx.report(f"GGN trace ({method})")
        ggn = trace_estimate(
            ctx.G, method=method, num_products=budget, seed=next(seeds), block_size=ctx.block_size
        )
        ctx.report(f"functional-Hessian trace ({method})")
        functional = trace_estimate(
            ctx.functional_hessian(),
            method=method,
            num_products=budget,
            seed=next(seeds),
            block_size=ctx.block_size,
        )
    return Outcome(
        {
            LAMBDA_MAX: top.eigenvalues[0],
            LAMBDA_MAX_RESIDUAL: top.residuals[0],
            TRACE: ggn.estimate,
            TRACE_STDERR: ggn.stderr,
            FUNCTIONAL_TRACE: functional.estimate,
            FUNCTIONAL_TRACE_STDERR: functional.stderr,
        }
    )


def exact(ctx: Context) -> Outcome:
    """From the assembled float64 G and H."""
    import torch

    from landscape.curvature.eigen import dense_eigenvalues

    H, G = ctx.dense_hessian(), ctx.dense_ggn()
    return Outcome(
        {
            LAMBDA_MAX: float(dense_eigenvalues(G)[-1]),
            LAMBDA_MAX_RESIDUAL: 0.0,
            TRACE: float(torch.trace(G)),
            TRACE_STDERR: 0.0,
            FUNCTIONAL_TRACE: float(torch.trace(H - G)),
            FUNCTIONAL_TRACE_STDERR: 0.0,
        }
    )


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: lambda_max(G)'s Lanczos run and the traces of G and H_F."""
    from landscape.curvature.memory import Request

    return Request(
        k=1,
        max_iter=settings.max_iter,
        trace_method=settings.trace_method,
        trace_samples=settings.trace_samples,
    )


METRIC = Metric(
    name="ggn",
    description="lambda_max(G), tr(G) and tr(H_F) = tr(H - G) (one shared sketch with XTrace)",
    order=30,
    keys=(LAMBDA_MAX, LAMBDA_MAX_RESIDUAL, TRACE, TRACE_STDERR, FUNCTIONAL_TRACE, FUNCTIONAL_TRACE_STDERR),
    compute=compute,
    exact=exact,
    needs=frozenset({GGN, sketch.SKETCH}),
    seeds=SEEDS,
    rows=(
        Row("lambda_max(G)", LAMBDA_MAX, note="Gauss-Newton"),
        Row("tr(G)", TRACE, error=TRACE_STDERR),
        Row("tr(H_F)", FUNCTIONAL_TRACE, error=FUNCTIONAL_TRACE_STDERR, note="functional Hessian H - G"),
    ),
    columns=(
        Column(LAMBDA_MAX, shown=False),
        Column(TRACE, "tr(G)", flatness="lower", error=TRACE_STDERR),
        Column(TRACE_STDERR, shown=False),
        Column(FUNCTIONAL_TRACE, "tr(H_F)", flatness="ranked", error=FUNCTIONAL_TRACE_STDERR),
        Column(FUNCTIONAL_TRACE_STDERR, shown=False),
    ),
    curves=(
        Curve(TRACE, "tr(G)", "Gauss-Newton trace tr(G)", caption="trace of G", error=TRACE_STDERR),
        Curve(
            FUNCTIONAL_TRACE,
            "tr(H_F)",
            "functional-Hessian trace tr(H_F) = tr(H) - tr(G)",
            caption="trace of H_F",
            error=FUNCTIONAL_TRACE_STDERR,
        ),
    ),
    diagnostic=Diagnostic(
        keys=(LAMBDA_MAX, TRACE, TRACE_STDERR, FUNCTIONAL_TRACE, FUNCTIONAL_TRACE_STDERR),
        budget={"tol": 1e-2, "max_iter": 20, "trace_samples": 24},
        status=(Status(TRACE, "trG"),),
    ),
    headlines=(Headline(TRACE, "tr(G)"),),
    memory=memory,
)
