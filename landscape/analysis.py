"""``landscape.analyze``: every curvature diagnostic of a checkpoint in one call.

The metrics (pick with ``metrics=``; each costs only its own products):

* ``eigen``  - top-k eigenvalues of H and lambda_min (one Lanczos run, residual-based stop).
* ``trace``  - tr(H) with a standard error (XTrace by default).
* ``ggn``    - lambda_max(G), tr(G) and tr(H_F) = tr(H - G) (Functional-SAM Eq. 8); with XTrace the
  three traces share one sketch (:func:`~landscape.curvature.trace.xtrace_difference`).
* ``tau``    - tau_logit / tau_func / tau_cross of the sharpness gradient (Functional-SAM Eq. 9).
* ``density``- spectral densities of H, G and H_F by stochastic Lanczos quadrature.
* ``layers`` - per parameter tensor: tr(H_bb), tr(G_bb) (Hutchinson, shared probes), lambda_max(H_bb)
  and the per-layer tau split.

With ``exact=True`` the matrices are assembled (n products each) and diagonalised in float64: the
reference answer for models of a few thousand parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from landscape.curvature.decomposition import SharpnessSplit, sharpness_decomposition
from landscape.curvature.density import SpectralDensity, slq
from landscape.curvature.eigen import dense_eigenvalues, lanczos
from landscape.curvature.linear_operator import LinearOperator
from landscape.curvature.operators import (
    BlockOperator,
    GGNOperator,
    HessianOperator,
    functional_hessian_operator,
)
from landscape.curvature.trace import TraceResult, block_traces, trace_estimate, xtrace_difference
from landscape.errors import UserError
from landscape.problem import Problem

METRICS = ("eigen", "trace", "ggn", "tau", "density", "layers")
TRACE_METHODS = ("xtrace", "hutchpp", "hutchinson")
EXACT_MAX_PARAMS = 6000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LayerResult:
    """Curvature of one parameter tensor's diagonal Hessian block."""

    name: str
    num_params: int
    trace: float | None = None
    trace_stderr: float | None = None
    ggn_trace: float | None = None
    ggn_trace_stderr: float | None = None
    functional_trace: float | None = None
    lambda_max: float | None = None
    lambda_max_residual: float | None = None
    tau_logit: float | None = None
    tau_func: float | None = None
    tau_cross: float | None = None


@dataclass(frozen=True)
class AnalysisResult:
    """Everything ``analyze`` measured. Missing metrics are ``None``; ``to_dict()`` is JSON-ready."""

    loss: float
    grad_norm: float
    num_params: int
    num_samples: int
    num_targets: int
    dtype: str
    mode: str
    metrics: tuple[str, ...]
    exact: bool = False
    lambda_max: float | None = None
    lambda_max_residual: float | None = None
    lambda_max_converged: bool | None = None
    lambda_max_products: int | None = None
    top_eigenvalues: list[float] | None = None
    top_residuals: list[float] | None = None
    top_converged: list[bool] | None = None
    lambda_min: float | None = None
    lambda_min_residual: float | None = None
    lambda_min_error_bound: float | None = None
    lambda_min_converged: bool | None = None
    eigen_products: int | None = None
    trace: float | None = None
    trace_stderr: float | None = None
    trace_method: str | None = None
    trace_products: int | None = None
    ggn_lambda_max: float | None = None
    ggn_lambda_max_residual: float | None = None
    ggn_trace: float | None = None
    ggn_trace_stderr: float | None = None
    functional_trace: float | None = None
    functional_trace_stderr: float | None = None
    tau_logit: float | None = None
    tau_func: float | None = None
    tau_cross: float | None = None
    sharpness_gradient_norm: float | None = None
    hvp_count: int = 0
    ggn_count: int = 0
    hvp_method: str | None = None
    ggn_method: str | None = None
    seconds: float = 0.0
    seed: int = 0
    processes: int = 1
    layers: list[LayerResult] = field(default_factory=list)
    density: dict[str, dict[str, list[float]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the contents of ``analysis.json``)."""
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        """The scalar results as a one-column pandas frame (quantity -> value)."""
        scalars = {k: v for k, v in self.to_dict().items() if not isinstance(v, list | dict | tuple)}
        return pd.DataFrame({"value": pd.Series(scalars, dtype=object)})

    def layers_frame(self) -> pd.DataFrame:
        """Per-layer results as a pandas frame (one row per parameter tensor)."""
        return pd.DataFrame([asdict(layer) for layer in self.layers])


def _noop(_: str) -> None:
    return None


def parse_metrics(metrics: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise a metrics selection ("eigen,trace" or a list; None or "all" = every metric)."""
    if metrics is None:
        return METRICS
    items = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if items == ["all"]:
        return METRICS
    bad = [m for m in items if m not in METRICS]
    if bad or not items:
        raise UserError(f"unknown metric(s) {', '.join(bad) or '(none)'}: choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in items)


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
    progress: Progress | None = None,
) -> AnalysisResult:
    """Measure the curvature of ``model`` on ``data`` (see the module docstring for the metrics).

    Args:
        model: an ``nn.Module`` (with ``data`` and ``loss``) or a ready :class:`Problem`.
        data: ``(x, y)``, a Dataset or a DataLoader (see :class:`Problem`).
        loss: ``"cross_entropy"`` (logits ``[..., C]``) or ``"mse"``.
        metrics: subset of ``eigen, trace, ggn, tau, density, layers`` (default: all).
        params: restrict to parameters whose names match (comma-separated regexes).
        top_k: number of top eigenvalues of H.
        trace_method: ``xtrace`` (default; Epperly et al. 2024), ``hutchpp`` or ``hutchinson``.
        trace_samples: operator products per trace estimate.
        layer_samples: Hutchinson probes for the per-layer traces.
        layer_max_iter: Lanczos steps at most for each layer's lambda_max (its residual is reported).
        tol: relative accuracy for Lanczos (Ritz error bound <= tol * |theta|).
        max_iter: Lanczos steps at most (lambda_min needs many; see ``landscape.curvature.eigen``).
        exact: assemble dense H and G and diagonalise (small models only).
        hvp_method: ``auto``, ``reuse``, ``forward-over-reverse`` or ``double-backward``.
        seed: seeds every random probe: the same seed gives the same numbers.
        progress: called with a short label before each stage (the CLI draws a progress bar).
    """
    started = time.perf_counter()
    chosen = parse_metrics(metrics)
    if trace_method not in TRACE_METHODS:
        raise UserError(f"unknown trace method '{trace_method}' (choose from {', '.join(TRACE_METHODS)})")
    for name, value, low in (
        ("top-k", top_k, 1),
        ("trace samples", trace_samples, 2),
        ("max-iter", max_iter, 2),
    ):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    if not (0 < tol < 1):
        raise UserError(f"tol must be in (0, 1), got {tol}")
    report = progress or _noop
    problem = (
        model
        if isinstance(model, Problem)
        else Problem(model, data, loss, params=params, batch_size=batch_size, dtype=dtype)
    )
    if exact and problem.num_params > EXACT_MAX_PARAMS:
        raise UserError(
            f"--exact assembles a {problem.num_params}x{problem.num_params} matrix; "
            f"allowed up to {EXACT_MAX_PARAMS} parameters"
        )

    report("building operators")
    loss_value = problem.loss_value()
    H = HessianOperator(problem, method=hvp_method)
    # With retained graphs the gradient and the GGN's linearisation come off H's graphs for free.
    gradient = H.gradient()
    grad_norm = float(gradient.double().norm())
    needs_ggn = any(m in chosen for m in ("ggn", "tau", "density", "layers"))
    G = GGNOperator(problem, hessian=H) if needs_ggn else None
    out: dict[str, Any] = {}

    if exact:
        report("exact spectra")
        _exact_metrics(problem, H, G, chosen, top_k, out)
    else:
        if "eigen" in chosen:
            report("eigenvalues (Lanczos)")
            res = lanczos(H, k=top_k, which="both", tol=tol, max_iter=max_iter, seed=seed)
            out.update(
                lambda_max=res.eigenvalues[0],
                lambda_max_residual=res.residuals[0],
                lambda_max_converged=res.converged[0],
                lambda_max_products=res.products_to_converge[0],
                top_eigenvalues=list(res.eigenvalues),
                top_residuals=list(res.residuals),
                top_converged=list(res.converged),
                lambda_min=res.lambda_min,
                lambda_min_residual=res.lambda_min_residual,
                lambda_min_error_bound=res.lambda_min_error_bound,
                lambda_min_converged=res.lambda_min_converged,
                eigen_products=res.num_products,
            )
        # XTrace of H, G and H_F from one sketch: (H - G) Omega = H Omega - G Omega is free once
        # the other two are formed (xtrace_difference), a quarter of the trace products saved
        shared_sketch = trace_method == "xtrace" and "ggn" in chosen
        tr: TraceResult | None = None
        if "trace" in chosen and not shared_sketch:
            report(f"trace of H ({trace_method})")
            tr = trace_estimate(H, method=trace_method, num_products=trace_samples, seed=seed + 1)
        if "ggn" in chosen:
            assert G is not None
            report("GGN lambda_max")
            gres = lanczos(G, k=1, which="LA", tol=tol, max_iter=max_iter, seed=seed + 2)
            if shared_sketch:
                report("traces of H, G and H_F (xtrace, one shared sketch)")
                tr, gtr, ftr = xtrace_difference(
                    H, G, trace_samples, seed=seed + 1, include_a="trace" in chosen
                )
            else:
                report(f"GGN trace ({trace_method})")
                gtr = trace_estimate(G, method=trace_method, num_products=trace_samples, seed=seed + 3)
                report(f"functional-Hessian trace ({trace_method})")
                ftr = trace_estimate(
                    functional_hessian_operator(problem, H, G),
                    method=trace_method,
                    num_products=trace_samples,
                    seed=seed + 4,
                )
            out.update(
                ggn_lambda_max=gres.eigenvalues[0],
                ggn_lambda_max_residual=gres.residuals[0],
                ggn_trace=gtr.estimate,
                ggn_trace_stderr=gtr.stderr,
                functional_trace=ftr.estimate,
                functional_trace_stderr=ftr.stderr,
            )
        if tr is not None:
            out.update(
                trace=tr.estimate,
                trace_stderr=tr.stderr,
                trace_method=trace_method,
                trace_products=tr.num_products,
            )

    split: SharpnessSplit | None = None
    if "tau" in chosen or "layers" in chosen:
        assert G is not None
        report("sharpness split (tau)")
        split = sharpness_decomposition(H, G, gradient, problem.blocks())
        if "tau" in chosen:
            out.update(
                tau_logit=split.tau_logit,
                tau_func=split.tau_func,
                tau_cross=split.tau_cross,
                sharpness_gradient_norm=split.sharpness_gradient_norm,
            )

    density = None
    if "density" in chosen:
        assert G is not None
        density = {}
        for label, op in (("H", H), ("G", G), ("H_F", functional_hessian_operator(problem, H, G))):
            report(f"spectral density of {label} (SLQ)")
            dens = slq(op, num_probes=density_probes, num_steps=density_steps, seed=seed + 5)
            density[label] = _density_payload(dens)

    layers: list[LayerResult] = []
    if "layers" in chosen:
        assert G is not None and split is not None
        layers = _layer_metrics(problem, H, G, split, layer_samples, layer_max_iter, tol, seed, report)

    report("done")
    return AnalysisResult(
        loss=loss_value,
        grad_norm=grad_norm,
        num_params=problem.num_params,
        num_samples=problem.num_samples,
        num_targets=problem.num_targets,
        dtype=str(problem.dtype).replace("torch.", ""),
        mode=problem.describe()["mode"],
        metrics=chosen,
        exact=exact,
        hvp_count=H.products,
        ggn_count=G.products if G is not None else 0,
        hvp_method=H.method,
        ggn_method=G.method if G is not None else None,
        seconds=time.perf_counter() - started,
        seed=seed,
        processes=problem.describe()["processes"],
        layers=layers,
        density=density,
        **out,
    )


def _density_payload(dens: SpectralDensity, num_points: int = 400) -> dict[str, list[float]]:
    grid = dens.default_grid(num_points)
    return {
        "grid": [float(x) for x in grid],
        "density": [float(x) for x in dens.density(grid)],
        "nodes": [float(x) for x in torch.as_tensor(dens.nodes).reshape(-1)],
        "weights": [float(x) for x in torch.as_tensor(dens.weights).reshape(-1)],
    }


def _exact_metrics(
    problem: Problem,
    H: LinearOperator,
    G: LinearOperator | None,
    chosen: tuple[str, ...],
    top_k: int,
    out: dict[str, Any],
) -> None:
    Hd = H.to_dense().double()
    Hd = (Hd + Hd.T) / 2
    eig = dense_eigenvalues(Hd)
    if "eigen" in chosen:
        top = sorted((float(x) for x in eig[-top_k:]), reverse=True)
        out.update(
            lambda_max=top[0],
            lambda_max_residual=0.0,
            lambda_max_converged=True,
            top_eigenvalues=top,
            top_residuals=[0.0] * len(top),
            top_converged=[True] * len(top),
            lambda_min=float(eig[0]),
            lambda_min_residual=0.0,
            lambda_min_error_bound=0.0,
            lambda_min_converged=True,
        )
    if "trace" in chosen:
        out.update(trace=float(torch.trace(Hd)), trace_stderr=0.0, trace_method="exact")
    if "ggn" in chosen and G is not None:
        Gd = G.to_dense().double()
        Gd = (Gd + Gd.T) / 2
        out.update(
            ggn_lambda_max=float(dense_eigenvalues(Gd)[-1]),
            ggn_lambda_max_residual=0.0,
            ggn_trace=float(torch.trace(Gd)),
            ggn_trace_stderr=0.0,
            functional_trace=float(torch.trace(Hd - Gd)),
            functional_trace_stderr=0.0,
        )


def _layer_metrics(
    problem: Problem,
    H: LinearOperator,
    G: LinearOperator,
    split: SharpnessSplit,
    samples: int,
    max_iter: int,
    tol: float,
    seed: int,
    report: Progress,
) -> list[LayerResult]:
    blocks = problem.blocks()
    slices = [sl for _, sl in blocks]
    report("per-layer traces")
    htr = block_traces(H, slices, num_products=samples, seed=seed + 6)
    gtr = block_traces(G, slices, num_products=samples, seed=seed + 6)
    results = []
    for i, (name, sl) in enumerate(blocks):
        report(f"per-layer lambda_max: {name}")
        size = sl.stop - sl.start
        lres = lanczos(
            BlockOperator(H, sl), k=1, which="LA", tol=tol, max_iter=min(size, max_iter), seed=seed + 7 + i
        )
        lsplit = split.layers[i]
        results.append(
            LayerResult(
                name=name,
                num_params=size,
                trace=htr[i].estimate,
                trace_stderr=htr[i].stderr,
                ggn_trace=gtr[i].estimate,
                ggn_trace_stderr=gtr[i].stderr,
                functional_trace=htr[i].estimate - gtr[i].estimate,
                lambda_max=lres.eigenvalues[0],
                lambda_max_residual=lres.residuals[0],
                tau_logit=_finite(lsplit.tau_logit),
                tau_func=_finite(lsplit.tau_func),
                tau_cross=_finite(lsplit.tau_cross),
            )
        )
    return results


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x
