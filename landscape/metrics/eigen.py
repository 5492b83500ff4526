"""``eigen``: the top-k eigenvalues of H, from one Lanczos run.

The Lanczos recurrence (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1)
with full reorthogonalisation (or a bounded thick-restart basis where the memory plan says so:
Wu & Simon 2000, SIAM J. Matrix Anal. Appl. 22(2):602-616), for the largest ``top_k``
eigenvalues; it stops when every wanted Ritz value's error bound is below ``tol`` relative to it
(Parlett, *The Symmetric Eigenvalue Problem*, 1998, Ch. 11 and 13), and reports each value's
residual ``||H y - theta y||`` and whether it converged
(:func:`~landscape.curvature.eigen.lanczos`). The smallest eigenvalue is the ``lambda_min``
metric's (its own run: it takes the most products) and the largest alone is ``lambda_max``'s:
this metric's run is shared with ``lambda_max`` (one run gives both), and with ``lambda_max``
not chosen it writes the lambda_max keys from its top value itself. With ``exact=True`` the
eigenvalues of the assembled float64 Hessian.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from landscape.metrics import lambda_max
from landscape.metrics.base import Context, Metric, Outcome, Row, SeedStream, Settings

if TYPE_CHECKING:
    from landscape.curvature.memory import Request
    from landscape.problem import Problem

TOP_EIGENVALUES = "top_eigenvalues"
TOP_RESIDUALS = "top_residuals"
TOP_CONVERGED = "top_converged"
PRODUCTS = "eigen_products"

SEEDS = SeedStream(0)
"""The Lanczos start vector (shared with ``lambda_max``: one run)."""


def _carries_lambda_max(ctx: Context) -> bool:
    """Whether this metric writes the lambda_max keys (the ``lambda_max`` metric is not chosen)."""
    return not any(metric.name == lambda_max.NAME for metric in ctx.chosen)


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request | None:
    """The planner's request for the top-k run; none when ``lambda_max`` is chosen (its plan
    covers the shared run)."""
    from landscape.curvature.memory import Request

    if lambda_max.NAME in chosen:
        return None
    return Request(k=settings.top_k, max_iter=settings.max_iter)


def compute(ctx: Context) -> Outcome:
    """One Lanczos run on H for the top ``top_k`` eigenvalues (shared with ``lambda_max``)."""
    res = ctx.shared(lambda_max.top_run)
    values: dict[str, Any] = {
        TOP_EIGENVALUES: list(res.eigenvalues),
        TOP_RESIDUALS: list(res.residuals),
        TOP_CONVERGED: list(res.converged),
        PRODUCTS: res.num_products,
    }
    if _carries_lambda_max(ctx):
        values |= lambda_max.values(res)
    return Outcome(values)


def exact(ctx: Context) -> Outcome:
    """The eigenvalues of the assembled float64 Hessian (residuals 0, all converged)."""
    from landscape.curvature.eigen import dense_eigenvalues

    eig = dense_eigenvalues(ctx.dense_hessian())
    top = sorted((float(x) for x in eig[-ctx.settings.top_k :]), reverse=True)
    values: dict[str, Any] = {
        TOP_EIGENVALUES: top,
        TOP_RESIDUALS: [0.0] * len(top),
        TOP_CONVERGED: [True] * len(top),
    }
    if _carries_lambda_max(ctx):
        values |= lambda_max.exact(ctx).values
    return Outcome(values)


def _eigenvalues(values: Any) -> str:
    return ", ".join(f"{x:.4g}" for x in values) or "-"


METRIC = Metric(
    name="eigen",
    description="top-k eigenvalues of H (one Lanczos run, residual-based stop)",
    order=10,
    keys=(TOP_EIGENVALUES, TOP_RESIDUALS, TOP_CONVERGED, PRODUCTS),
    compute=compute,
    exact=exact,
    seeds=SEEDS,
    rows=(Row("top eigenvalues", TOP_EIGENVALUES, text=_eigenvalues),),
    memory=memory,
)
