"""``eigen``: the top-k eigenvalues of H and lambda_min, from one Lanczos run.

The Lanczos recurrence (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1)
with full reorthogonalisation, run for both ends of the spectrum at once; it stops when every
wanted Ritz value's error bound is below ``tol`` relative to it (Parlett, *The Symmetric Eigenvalue
Problem*, 1998, Ch. 11 and 13), and reports each value's residual ``||H y - theta y||``, whether it
converged, and the products it took (:func:`~landscape.curvature.eigen.lanczos`). lambda_min sits
in a tight cluster around 0 on trained networks and takes the most steps (``max_iter``). With
``exact=True`` the eigenvalues of the assembled float64 Hessian.

As a training diagnostic it measures lambda_max only (``top_k=1``, relative tolerance 1e-2, at most
20 steps; ``lambda_max_residual`` says how far it is from converged).
"""

from __future__ import annotations

from typing import Any

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
    format_number,
)

LAMBDA_MAX = "lambda_max"
LAMBDA_MAX_RESIDUAL = "lambda_max_residual"
LAMBDA_MAX_CONVERGED = "lambda_max_converged"
LAMBDA_MAX_PRODUCTS = "lambda_max_products"
TOP_EIGENVALUES = "top_eigenvalues"
TOP_RESIDUALS = "top_residuals"
TOP_CONVERGED = "top_converged"
LAMBDA_MIN = "lambda_min"
LAMBDA_MIN_RESIDUAL = "lambda_min_residual"
LAMBDA_MIN_ERROR_BOUND = "lambda_min_error_bound"
LAMBDA_MIN_CONVERGED = "lambda_min_converged"
PRODUCTS = "eigen_products"

SEEDS = SeedStream(0)
"""The Lanczos start vector."""


def compute(ctx: Context) -> Outcome:
    """One Lanczos run on H for the top ``top_k`` eigenvalues and lambda_min."""
    from landscape.curvature.eigen import lanczos

    settings = ctx.settings
    ctx.report("eigenvalues (Lanczos)")
    res = lanczos(
        ctx.H,
        k=settings.top_k,
        which="both",
        tol=settings.tol,
        max_iter=settings.max_iter,
        seed=next(SEEDS.draw(settings.seed)),
    )
    return Outcome(
        {
            LAMBDA_MAX: res.eigenvalues[0],
            LAMBDA_MAX_RESIDUAL: res.residuals[0],
            LAMBDA_MAX_CONVERGED: res.converged[0],
            LAMBDA_MAX_PRODUCTS: res.products_to_converge[0],
            TOP_EIGENVALUES: list(res.eigenvalues),
            TOP_RESIDUALS: list(res.residuals),
            TOP_CONVERGED: list(res.converged),
            LAMBDA_MIN: res.lambda_min,
            LAMBDA_MIN_RESIDUAL: res.lambda_min_residual,
            LAMBDA_MIN_ERROR_BOUND: res.lambda_min_error_bound,
            LAMBDA_MIN_CONVERGED: res.lambda_min_converged,
            PRODUCTS: res.num_products,
        }
    )


def exact(ctx: Context) -> Outcome:
    """The eigenvalues of the assembled float64 Hessian (residuals 0, all converged)."""
    from landscape.curvature.eigen import dense_eigenvalues

    eig = dense_eigenvalues(ctx.dense_hessian())
    top = sorted((float(x) for x in eig[-ctx.settings.top_k :]), reverse=True)
    return Outcome(
        {
            LAMBDA_MAX: top[0],
            LAMBDA_MAX_RESIDUAL: 0.0,
            LAMBDA_MAX_CONVERGED: True,
            TOP_EIGENVALUES: top,
            TOP_RESIDUALS: [0.0] * len(top),
            TOP_CONVERGED: [True] * len(top),
            LAMBDA_MIN: float(eig[0]),
            LAMBDA_MIN_RESIDUAL: 0.0,
            LAMBDA_MIN_ERROR_BOUND: 0.0,
            LAMBDA_MIN_CONVERGED: True,
        }
    )


def _lambda_max_note(values: Values) -> str:
    if values.get(LAMBDA_MAX) is None:
        return ""
    residual = format_number(values.get(LAMBDA_MAX_RESIDUAL))
    return f"residual {residual}, {values.get(LAMBDA_MAX_PRODUCTS)} products to tol"


def _lambda_min_note(values: Values) -> str:
    if values.get(LAMBDA_MIN) is None:
        return ""
    converged = "converged" if values.get(LAMBDA_MIN_CONVERGED) else "NOT converged"
    return f"error bound {format_number(values.get(LAMBDA_MIN_ERROR_BOUND))}, {converged}"


def _eigenvalues(values: Any) -> str:
    return ", ".join(f"{x:.4g}" for x in values) or "-"


METRIC = Metric(
    name="eigen",
    description="top-k eigenvalues of H and lambda_min (one Lanczos run, residual-based stop)",
    order=10,
    keys=(
        LAMBDA_MAX,
        LAMBDA_MAX_RESIDUAL,
        LAMBDA_MAX_CONVERGED,
        LAMBDA_MAX_PRODUCTS,
        TOP_EIGENVALUES,
        TOP_RESIDUALS,
        TOP_CONVERGED,
        LAMBDA_MIN,
        LAMBDA_MIN_RESIDUAL,
        LAMBDA_MIN_ERROR_BOUND,
        LAMBDA_MIN_CONVERGED,
        PRODUCTS,
    ),
    compute=compute,
    exact=exact,
    seeds=SEEDS,
    rows=(
        Row("lambda_max(H)", LAMBDA_MAX, note=_lambda_max_note),
        Row("top eigenvalues", TOP_EIGENVALUES, text=_eigenvalues),
        Row("lambda_min(H)", LAMBDA_MIN, note=_lambda_min_note),
    ),
    columns=(
        Column(LAMBDA_MAX, "λmax(H)", flatness="lower"),
        Column(LAMBDA_MAX_RESIDUAL, shown=False),
        Column(LAMBDA_MIN, "λmin(H)"),
    ),
    curves=(
        Curve(LAMBDA_MAX, "λmax(H)", "top Hessian eigenvalue λmax(H)", caption="top Hessian eigenvalue"),
    ),
    diagnostic=Diagnostic(
        keys=(LAMBDA_MAX, LAMBDA_MAX_RESIDUAL),
        budget={"top_k": 1, "tol": 1e-2, "max_iter": 20},
        status=(Status(LAMBDA_MAX, "lmax"),),
    ),
    headlines=(Headline(LAMBDA_MAX, "lmax(H)"),),
)
