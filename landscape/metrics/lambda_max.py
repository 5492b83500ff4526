"""``lambda_max``: the top eigenvalue of H alone (the sharpness), with its residual and error bound.

The Lanczos recurrence (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1)
for the largest eigenvalue only (:func:`~landscape.curvature.eigen.lambda_max`): it stops when the
top Ritz value's error bound ``min(r, r^2 / gap)`` (Parlett, *The Symmetric Eigenvalue Problem*,
1998, Ch. 11 and 13) is below ``tol`` relative to it, which on a trained network takes 6-10
products at ``tol=1e-3``. The run keeps a full Krylov basis where it fits the memory plan, else a
bounded thick-restart one (Wu & Simon 2000, SIAM J. Matrix Anal. Appl. 22(2):602-616).

With ``eigen`` chosen as well, one Lanczos run for the top ``top_k`` eigenvalues gives both (its
top value is lambda_max): this metric writes the lambda_max keys and ``eigen`` the top-k list,
each key written once. With ``exact=True`` the top eigenvalue of the assembled float64 Hessian.

As a training diagnostic it runs with relative tolerance 1e-2 and at most 20 steps
(``lambda_max_residual`` says how far it is from converged).
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
    Settings,
    Status,
    Values,
    format_number,
)

if TYPE_CHECKING:
    from landscape.curvature.eigen import EigenResult
    from landscape.curvature.memory import Request
    from landscape.problem import Problem

NAME = "lambda_max"
LAMBDA_MAX = "lambda_max"
LAMBDA_MAX_RESIDUAL = "lambda_max_residual"
LAMBDA_MAX_ERROR_BOUND = "lambda_max_error_bound"
LAMBDA_MAX_CONVERGED = "lambda_max_converged"
LAMBDA_MAX_PRODUCTS = "lambda_max_products"

SEEDS = SeedStream(0)
"""The Lanczos start vector (the same as ``eigen``'s and ``lambda_min``'s: one Krylov space)."""


EIGEN = "eigen"
"""The metric of the top-k eigenvalues, whose run this one shares."""


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: the Lanczos run for the largest ``top_k`` eigenvalues (``eigen``
    chosen) or the largest one."""
    from landscape.curvature.memory import Request

    return Request(k=settings.top_k if EIGEN in chosen else 1, max_iter=settings.max_iter)


def top_run(ctx: Context) -> EigenResult:
    """The Lanczos run for the largest eigenvalues, once per analysis: ``top_k`` of them when the
    ``eigen`` metric is chosen (its plan), else the top one alone (this metric's plan)."""
    from landscape.curvature.eigen import lanczos

    settings = ctx.settings
    with_eigen = any(metric.name == EIGEN for metric in ctx.chosen)
    k = settings.top_k if with_eigen else 1
    ctx.report("eigenvalues (Lanczos)" if with_eigen else "lambda_max (Lanczos)")
    return lanczos(
        ctx.H,
        k=k,
        which="LA",
        tol=settings.tol,
        max_iter=settings.max_iter,
        seed=next(SEEDS.draw(settings.seed)),
        **(ctx.lanczos_options(NAME) or ctx.lanczos_options(EIGEN)),
    )


def values(res: EigenResult) -> dict[str, object]:
    """The lambda_max keys of a run whose first eigenvalue is the largest."""
    return {
        LAMBDA_MAX: res.eigenvalues[0],
        LAMBDA_MAX_RESIDUAL: res.residuals[0],
        LAMBDA_MAX_ERROR_BOUND: res.error_bounds[0],
        LAMBDA_MAX_CONVERGED: res.converged[0],
        LAMBDA_MAX_PRODUCTS: res.products_to_converge[0],
    }


def compute(ctx: Context) -> Outcome:
    """The top eigenvalue of H by Lanczos (the run shared with ``eigen`` when it is chosen)."""
    return Outcome(values(ctx.shared(top_run)))


def exact(ctx: Context) -> Outcome:
    """The largest eigenvalue of the assembled float64 Hessian (residual 0, converged)."""
    from landscape.curvature.eigen import dense_eigenvalues

    eig = dense_eigenvalues(ctx.dense_hessian())
    return Outcome(
        {
            LAMBDA_MAX: float(eig[-1]),
            LAMBDA_MAX_RESIDUAL: 0.0,
            LAMBDA_MAX_ERROR_BOUND: 0.0,
            LAMBDA_MAX_CONVERGED: True,
        }
    )


def _note(values: Values) -> str:
    if values.get(LAMBDA_MAX) is None:
        return ""
    residual = format_number(values.get(LAMBDA_MAX_RESIDUAL))
    products = values.get(LAMBDA_MAX_PRODUCTS)
    if values.get(LAMBDA_MAX_CONVERGED) is False:
        return f"residual {residual}, NOT converged"
    if products is None:
        return f"residual {residual}"
    return f"residual {residual}, {products} products to tol"


METRIC = Metric(
    name=NAME,
    description="the top eigenvalue of H alone (Lanczos, residual-based stop; the cheap sharpness)",
    order=5,
    keys=(LAMBDA_MAX, LAMBDA_MAX_RESIDUAL, LAMBDA_MAX_ERROR_BOUND, LAMBDA_MAX_CONVERGED, LAMBDA_MAX_PRODUCTS),
    compute=compute,
    exact=exact,
    seeds=SEEDS,
    rows=(Row("lambda_max(H)", LAMBDA_MAX, note=_note),),
    columns=(
        Column(LAMBDA_MAX, "λmax(H)", flatness="lower"),
        Column(LAMBDA_MAX_RESIDUAL, shown=False),
    ),
    curves=(
        Curve(LAMBDA_MAX, "λmax(H)", "top Hessian eigenvalue λmax(H)", caption="top Hessian eigenvalue"),
    ),
    diagnostic=Diagnostic(
        keys=(LAMBDA_MAX, LAMBDA_MAX_RESIDUAL),
        budget={"tol": 1e-2, "max_iter": 20},
        status=(Status(LAMBDA_MAX, "lmax"),),
    ),
    headlines=(Headline(LAMBDA_MAX, "lmax(H)"),),
    memory=memory,
)
