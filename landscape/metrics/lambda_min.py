"""``lambda_min``: the smallest eigenvalue of H, as its own metric (the expensive one).

The Lanczos recurrence (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1)
for the smallest eigenvalue alone (:func:`~landscape.curvature.eigen.lambda_min`). On a trained
network lambda_min is a small negative value at the edge of a dense cluster around 0 and emerges
only from a high-degree Krylov polynomial: it takes the most steps (up to ``max_iter``), so it
is a metric of its own and asking for the sharpness (``lambda_max``) does not pay for it. The
result carries its residual and error bound ``min(r, r^2 / gap)`` (Parlett, *The Symmetric
Eigenvalue Problem*, 1998, Ch. 11 and 13), converged or not. Where a full basis does not fit the
memory plan, the basis is bounded (thick-restart Lanczos: Wu & Simon 2000, SIAM J. Matrix Anal.
Appl. 22(2):602-616), which takes more products for the same accuracy. With ``exact=True`` the
smallest eigenvalue of the assembled float64 Hessian.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from landscape.metrics.base import (
    Column,
    Context,
    Metric,
    Outcome,
    Row,
    SeedStream,
    Settings,
    Values,
    format_number,
)

if TYPE_CHECKING:
    from landscape.curvature.memory import Request
    from landscape.problem import Problem

NAME = "lambda_min"
LAMBDA_MIN = "lambda_min"
LAMBDA_MIN_RESIDUAL = "lambda_min_residual"
LAMBDA_MIN_ERROR_BOUND = "lambda_min_error_bound"
LAMBDA_MIN_CONVERGED = "lambda_min_converged"
LAMBDA_MIN_PRODUCTS = "lambda_min_products"

SEEDS = SeedStream(0)
"""The Lanczos start vector (the same as ``lambda_max``'s: the same Krylov space)."""


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: one Lanczos run for the smallest eigenvalue."""
    from landscape.curvature.memory import Request

    return Request(k=1, max_iter=settings.max_iter)


def compute(ctx: Context) -> Outcome:
    """The smallest eigenvalue of H by its own Lanczos run."""
    from landscape.curvature.eigen import lambda_min

    settings = ctx.settings
    ctx.report("lambda_min (Lanczos)")
    res = lambda_min(
        ctx.H,
        tol=settings.tol,
        max_iter=settings.max_iter,
        seed=next(SEEDS.draw(settings.seed)),
        **ctx.lanczos_options(NAME),
    )
    return Outcome(
        {
            LAMBDA_MIN: res.eigenvalues[0],
            LAMBDA_MIN_RESIDUAL: res.residuals[0],
            LAMBDA_MIN_ERROR_BOUND: res.error_bounds[0],
            LAMBDA_MIN_CONVERGED: res.converged[0],
            LAMBDA_MIN_PRODUCTS: res.products_to_converge[0],
        }
    )


def exact(ctx: Context) -> Outcome:
    """The smallest eigenvalue of the assembled float64 Hessian (residual 0, converged)."""
    from landscape.curvature.eigen import dense_eigenvalues

    eig = dense_eigenvalues(ctx.dense_hessian())
    return Outcome(
        {
            LAMBDA_MIN: float(eig[0]),
            LAMBDA_MIN_RESIDUAL: 0.0,
            LAMBDA_MIN_ERROR_BOUND: 0.0,
            LAMBDA_MIN_CONVERGED: True,
        }
    )


def _note(values: Values) -> str:
    if values.get(LAMBDA_MIN) is None:
        return ""
    converged = "converged" if values.get(LAMBDA_MIN_CONVERGED) else "NOT converged"
    return f"error bound {format_number(values.get(LAMBDA_MIN_ERROR_BOUND))}, {converged}"


METRIC = Metric(
    name=NAME,
    description="the smallest eigenvalue of H (its own Lanczos run: the most products)",
    order=15,
    keys=(LAMBDA_MIN, LAMBDA_MIN_RESIDUAL, LAMBDA_MIN_ERROR_BOUND, LAMBDA_MIN_CONVERGED, LAMBDA_MIN_PRODUCTS),
    compute=compute,
    exact=exact,
    seeds=SEEDS,
    rows=(Row("lambda_min(H)", LAMBDA_MIN, note=_note),),
    columns=(Column(LAMBDA_MIN, "λmin(H)"),),
    memory=memory,
)
