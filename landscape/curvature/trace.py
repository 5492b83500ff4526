"""Stochastic trace and diagonal estimators for symmetric curvature operators.

All estimators see the operator only through ``op.matmat`` on blocks of probe vectors, draw their
probes from a local generator seeded with ``seed`` (on the CPU, then moved to the operator's
device), and do their arithmetic in float64. When the budget ``num_products`` reaches the
dimension ``n``, every estimator returns the exact trace from the ``n`` unit vectors instead
(``stderr = 0``, ``method = "exact"``): at that cost there is nothing left to estimate.

Each result reports ``stderr``, an estimate of the standard deviation of the estimator, computed
from the estimator's own samples (a standard error of a mean), so ``estimate +- 2 stderr`` is an
approximate 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from landscape.curvature.eigen import gaussian_vectors, json_float, matmat_float64, seeded_generator
from landscape.curvature.linear_operator import LinearOperator, as_operator

TraceMethod = Literal["xtrace", "hutchpp", "hutchinson"]

# Columns per matmat when the probes can be applied in independent chunks (Hutchinson): large
# enough to amortise the per-call cost on a network, small enough that an [n, 32] block of
# activations-sized vectors fits in memory.
DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate with its standard error and cost.

    ``samples`` are per-probe values whose mean is ``estimate`` (``None`` for the exact path);
    ``stderr`` is ``inf`` when there are fewer than two samples.
    """

    estimate: float
    stderr: float
    num_products: int
    method: str
    samples: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (inf/nan as ``None``)."""
        return {
            "estimate": float(self.estimate),
            "stderr": json_float(self.stderr),
            "num_products": int(self.num_products),
            "method": self.method,
            "samples": None if self.samples is None else [float(x) for x in self.samples],
        }


def rademacher_vectors(
    n: int, k: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """``k`` Rademacher vectors (entries +-1 with probability 1/2) as columns of a float64 ``[n, k]``.

    Drawn column by column, so chunked draws give the same vectors as one draw.
    """
    bits = torch.randint(0, 2, (k, n), generator=generator, dtype=torch.int8)
    signs = bits.to(torch.float64)
    del bits
    return signs.mul_(2.0).sub_(1.0).T.to(device)  # in place: one float64 block, not three


def _apply(op: LinearOperator, V: Tensor, block_size: int | None) -> Tensor:
    """``A @ V`` in float64, in column chunks of ``block_size`` (``None``: one call)."""
    if block_size is None or V.shape[1] <= block_size:
        return matmat_float64(op, V)
    return torch.cat(
        [matmat_float64(op, V[:, i : i + block_size]) for i in range(0, V.shape[1], block_size)], dim=1
    )


def _mean_and_stderr(samples: Tensor) -> tuple[float, float]:
    """Sample mean and its standard error ``std(ddof=1) / sqrt(m)`` (``inf`` for one sample)."""
    m = samples.numel()
    mean = float(samples.mean())
    if m < 2:
        return mean, math.inf
    return mean, float(samples.std(unbiased=True)) / math.sqrt(m)


def exact_diagonal(op: LinearOperator | Tensor | np.ndarray, block_size: int = 64) -> Tensor:
    """The exact diagonal ``A_ii = e_i^T A e_i`` (float64) from ``n`` products with unit vectors."""
    op = as_operator(op)
    n = op.n
    diagonal = torch.empty(n, dtype=torch.float64, device=op.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        E = torch.zeros(n, stop - start, dtype=torch.float64, device=op.device)
        columns = torch.arange(stop - start, device=op.device)
        E[start + columns, columns] = 1.0
        diagonal[start:stop] = matmat_float64(op, E)[start + columns, columns]
    return diagonal


def _exact_result(op: LinearOperator) -> TraceResult:
    return TraceResult(
        estimate=float(exact_diagonal(op).sum()), stderr=0.0, num_products=op.n, method="exact"
    )


def _check_budget(num_products: int, minimum: int, method: str) -> int:
    m = int(num_products)
    if m < minimum:
        raise ValueError(f"{method} needs num_products >= {minimum}, got {num_products}")
    return m


def hutchinson_trace(
    op: LinearOperator | Tensor | np.ndarray,
    num_products: int,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> TraceResult:
    """Hutchinson's estimator with Rademacher probes.

    ``tr(A) ~ (1/m) sum_j z_j^T A z_j`` with ``z_j`` Rademacher (Hutchinson 1989; Avron & Toledo
    2011): unbiased, with variance ``2 (||A||_F^2 - sum_i A_ii^2) / m``. ``stderr`` is the sample
    standard deviation of the ``z_j^T A z_j`` over ``sqrt(m)``. Probes are applied ``block_size``
    columns per ``matmat``; the result does not depend on ``block_size``. Needs ``m >= 1``
    (``stderr = inf`` for ``m = 1``); ``m >= n`` returns the exact trace.
    """
    op = as_operator(op)
    m = _check_budget(num_products, 1, "hutchinson_trace")
    if m >= op.n:
        return _exact_result(op)
    generator = seeded_generator(seed)
    chunks = []
    for start in range(0, m, block_size):
        Z = rademacher_vectors(op.n, min(block_size, m - start), generator, op.device)
        chunks.append((Z * matmat_float64(op, Z)).sum(dim=0))
    samples = torch.cat(chunks)
    estimate, stderr = _mean_and_stderr(samples)
    return TraceResult(estimate, stderr, m, "hutchinson", samples.cpu().tolist())


def hutchpp_trace(
    op: LinearOperator | Tensor | np.ndarray,
    num_products: int,
    seed: int = 0,
    block_size: int | None = None,
) -> TraceResult:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1).

    With ``k = floor(m/3)`` Rademacher sketch vectors ``S`` and ``l = m - 2k`` Rademacher probes
    ``G``: ``Q = orth(A S)`` (k products), then

        tr(A) ~ tr(Q^T A Q) + (1/l) tr(G^T (I - QQ^T) A (I - QQ^T) G)

    (k products for ``A Q``, l for the probes). The first term captures the top of the spectrum
    exactly; Hutchinson only sees the deflated remainder, so the error falls like ``1/m`` rather
    than ``1/sqrt(m)`` for matrices with decaying spectra. The budget is used exactly: when ``m``
    is not a multiple of 3 the one or two extra products become Hutchinson probes. ``samples``
    are ``tr(Q^T A Q) + g_j^T P A P g_j``; ``stderr`` is their standard deviation over ``sqrt(l)``
    (the sketch part is fixed given ``S``), ``inf`` when ``l = 1`` (``m = 3``). Needs
    ``m >= 3``; ``m >= n`` returns the exact trace. ``block_size`` chunks the ``matmat`` calls
    (``None``: one call per stage).
    """
    op = as_operator(op)
    m = _check_budget(num_products, 3, "hutchpp_trace")
    if m >= op.n:
        return _exact_result(op)
    generator = seeded_generator(seed)
    k = m // 3
    num_probes = m - 2 * k
    S = rademacher_vectors(op.n, k, generator, op.device)
    G = rademacher_vectors(op.n, num_probes, generator, op.device)
    Q = torch.linalg.qr(_apply(op, S, block_size)).Q
    sketch_trace = float(torch.trace(Q.T @ _apply(op, Q, block_size)))
    projected = G - Q @ (Q.T @ G)
    samples = sketch_trace + (projected * _apply(op, projected, block_size)).sum(dim=0)
    estimate, stderr = _mean_and_stderr(samples)
    return TraceResult(estimate, stderr, 2 * k + num_probes, "hutchpp", samples.cpu().tolist())


def xtrace(
    op: LinearOperator | Tensor | np.ndarray,
    num_products: int,
    seed: int = 0,
    block_size: int | None = None,
) -> TraceResult:
    """XTrace (Epperly, Tropp & Webber 2024, SIMAX, "XTrace: making the most of every sample"):
    the exchangeable Hutch++ estimator.

    Draw ``s = floor(m/2)`` test vectors ``Omega = [omega_1..omega_s]`` uniform on the sphere of
    radius ``sqrt(n)`` (so ``E[omega omega^T] = I``), form ``Y = A Omega = QR`` and ``Z = A Q``
    (``2s`` products; an odd ``m`` leaves one product unused). Each ``omega_i`` plays the Hutch++
    probe for the low-rank approximation built from the OTHER vectors:
    ``range(A Omega_{-i})`` is ``range(Q)`` minus the direction ``Q s_i`` with
    ``s_i = R^{-T} e_i / ||R^{-T} e_i||`` (``s_i^T R e_j = 0`` for ``j != i``), so its projector is
    ``P_i = Q (I - s_i s_i^T) Q^T`` and

        t_i = tr(P_i A) + x_i^T A x_i,     x_i = (I - P_i) omega_i,
            = tr(M) - s_i^T M s_i + x_i^T y_i,

    with ``M = sym(Q^T Z)``, ``w_i = Q^T omega_i``, ``c_i = w_i - s_i (s_i^T w_i)``,
    ``x_i = omega_i - Q c_i`` and ``y_i = A x_i = Y_i - Z c_i`` (no extra products).
    ``tr(A) = tr(P A P) + tr((I-P) A (I-P))`` for any orthogonal projector, and ``omega_i`` is
    independent of ``P_i``, so each ``t_i`` is unbiased. The estimate is the mean of the ``t_i``
    and ``stderr = std(t_i) / sqrt(s)``, the paper's error estimate. It uses every
    product both for the low-rank part and for the residual and is far more accurate than
    Hutchinson and Hutch++ at equal cost on decaying spectra.

    If ``A Omega`` is numerically rank deficient (``min |R_ii| <= rtol max |R_ii|`` with
    ``rtol = max(1e-10, 100 eps(dtype))``; ``rank(A) < s``, e.g. a Gauss-Newton matrix of a small
    batch), ``R`` cannot be inverted, but then the leave-one-out ranges all equal
    ``range(A Omega)``: ``Q`` becomes the basis of that range from the SVD (singular values above
    ``rtol`` times the largest), ``Z = A Q`` costs ``rank`` products, and
    ``t_i = tr(Q^T A Q) + x_i^T A x_i`` with ``x_i = (I - QQ^T) omega_i``. Needs ``m >= 2``
    (``stderr = inf`` for ``s = 1``); ``m >= n`` returns the exact trace.
    """
    op = as_operator(op)
    m = _check_budget(num_products, 2, "xtrace")
    n = op.n
    if m >= n:
        return _exact_result(op)
    generator = seeded_generator(seed)
    s = m // 2
    Omega = gaussian_vectors(n, s, generator, op.device)
    Omega = Omega * (math.sqrt(n) / Omega.norm(dim=0))
    Y = _apply(op, Omega, block_size)
    samples, used = _xtrace_samples(op, Omega, Y, block_size)
    estimate, stderr = _mean_and_stderr(samples)
    return TraceResult(estimate, stderr, used, "xtrace", samples.cpu().tolist())


def xtrace_difference(
    A: LinearOperator | Tensor | np.ndarray,
    B: LinearOperator | Tensor | np.ndarray,
    num_products: int,
    seed: int = 0,
    block_size: int | None = None,
    include_a: bool = True,
) -> tuple[TraceResult | None, TraceResult, TraceResult]:
    """XTrace of ``A``, ``B`` and ``A - B`` from one shared sketch (e.g. tr H, tr G and tr H_F).

    The three estimates are exactly :func:`xtrace` of each operator with the same ``seed`` (the
    same test vectors ``Omega``), except that ``(A - B) Omega`` is formed as ``A Omega - B Omega``
    from the products the other two need anyway: each operator then costs ``s`` products for the
    sketch, plus ``s`` for its own second stage and ``s`` for ``A - B``'s (``s = m // 2``), so
    ``3s`` products of A and of B instead of ``4s`` (the functional-Hessian trace next to tr H
    and tr G of ``analyze``). With ``include_a=False`` A's own second stage is skipped (its result
    is ``None``). Each result's ``num_products`` counts products of its own operator(s), as
    :func:`xtrace` would. Shared test vectors correlate the three errors, as they would be for
    any three estimates with the same seed.
    """
    A, B = as_operator(A), as_operator(B)
    if A.n != B.n:
        raise ValueError(f"operators of sizes {A.n} and {B.n}")
    difference = A - B
    m = _check_budget(num_products, 2, "xtrace")
    if m >= A.n:
        return (_exact_result(A) if include_a else None), _exact_result(B), _exact_result(difference)
    generator = seeded_generator(seed)
    s = m // 2
    Omega = gaussian_vectors(A.n, s, generator, A.device)
    Omega = Omega * (math.sqrt(A.n) / Omega.norm(dim=0))
    Y_a, Y_b = _apply(A, Omega, block_size), _apply(B, Omega, block_size)
    results: list[TraceResult | None] = []
    for op, Y in ((A, Y_a), (B, Y_b), (difference, Y_a - Y_b)):
        if op is A and not include_a:
            results.append(None)
            continue
        samples, used = _xtrace_samples(op, Omega, Y, block_size)
        estimate, stderr = _mean_and_stderr(samples)
        results.append(TraceResult(estimate, stderr, used, "xtrace", samples.cpu().tolist()))
    trace_a, trace_b, trace_difference = results
    assert trace_b is not None and trace_difference is not None
    return trace_a, trace_b, trace_difference


def _xtrace_samples(
    op: LinearOperator, Omega: Tensor, Y: Tensor, block_size: int | None
) -> tuple[Tensor, int]:
    """XTrace's per-vector estimates ``t_i`` from the test vectors and their products ``Y = A Omega``,
    and the number of products used in all (see :func:`xtrace`)."""
    s = Omega.shape[1]
    Q, R = torch.linalg.qr(Y)
    diag_R = R.diagonal().abs()
    rank_rtol = max(1e-10, 100.0 * torch.finfo(op.dtype).eps)
    if float(diag_R.min()) > rank_rtol * float(diag_R.max()):
        Z = _apply(op, Q, block_size)
        M = Q.T @ Z
        M = 0.5 * (M + M.T)
        identity = torch.eye(s, dtype=torch.float64, device=R.device)
        S = torch.linalg.solve_triangular(R, identity, upper=True).T  # column i: R^{-T} e_i
        S = S / S.norm(dim=0)
        W = Q.T @ Omega
        C = W - S * (S * W).sum(dim=0)
        X = Omega - Q @ C
        residual_terms = (X * (Y - Z @ C)).sum(dim=0)
        samples = torch.trace(M) - (S * (M @ S)).sum(dim=0) + residual_terms
        used = 2 * s
    else:
        U, singular, _ = torch.linalg.svd(Y, full_matrices=False)
        Q = U[:, singular > rank_rtol * singular[0]]
        Z = _apply(op, Q, block_size)
        C = Q.T @ Omega
        X = Omega - Q @ C
        samples = torch.trace(Q.T @ Z) + (X * (Y - Z @ C)).sum(dim=0)
        used = s + Q.shape[1]
    return samples, used


def trace_estimate(
    op: LinearOperator | Tensor | np.ndarray,
    method: TraceMethod = "xtrace",
    num_products: int = 100,
    seed: int = 0,
    block_size: int | None = None,
) -> TraceResult:
    """Dispatch to ``xtrace`` (default: most accurate per product), ``hutchpp`` or ``hutchinson``.

    ``block_size`` bounds the probe columns handled at once (a memory plan's choice; the estimate
    does not depend on it): Hutchinson draws and applies its probes that many at a time (default
    32), XTrace and Hutch++ apply their sketches in column chunks of that size (default: one call).
    """
    estimators = {"xtrace": xtrace, "hutchpp": hutchpp_trace, "hutchinson": hutchinson_trace}
    if method not in estimators:
        raise ValueError(f"unknown trace method {method!r} (choose from {', '.join(estimators)})")
    if method == "hutchinson":
        return hutchinson_trace(op, num_products, seed=seed, block_size=block_size or DEFAULT_BLOCK_SIZE)
    return estimators[method](op, num_products, seed=seed, block_size=block_size)


def _block_bounds(blocks: list[slice] | list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    bounds = []
    for block in blocks:
        if isinstance(block, slice):
            start, stop, step = block.indices(n)
            if step != 1:
                raise ValueError(f"blocks must be contiguous, got {block}")
        else:
            start, stop = (int(x) for x in block)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"block ({start}, {stop}) is outside [0, {n}]")
        bounds.append((start, stop))
    return bounds


def block_traces(
    op: LinearOperator | Tensor | np.ndarray,
    blocks: list[slice] | list[tuple[int, int]],
    num_products: int,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[TraceResult]:
    """Traces of the diagonal blocks ``A_bb`` (e.g. per-layer Hessian traces) from ONE set of products.

    Hutchinson with shared Rademacher probes: since ``E[z z^T] = I``,
    ``tr(A_bb) = E[z_b^T (A z)_b]``, so ``tr(A_bb) ~ (1/m) sum_j z_j[b] . (A z_j)[b]`` for every
    block at once (Bekas, Kokiopoulou & Saad 2007, the diagonal estimator summed over the block).
    Each result's ``stderr`` is its own sample standard error. ``num_products`` of every result
    is the shared budget ``m`` (the products are not additive over blocks). ``m >= n`` gives the
    exact block traces from the exact diagonal.
    """
    op = as_operator(op)
    bounds = _block_bounds(blocks, op.n)
    m = _check_budget(num_products, 1, "block_traces")
    if m >= op.n:
        diagonal = exact_diagonal(op)
        return [TraceResult(float(diagonal[a:b].sum()), 0.0, op.n, "exact") for a, b in bounds]
    generator = seeded_generator(seed)
    chunks = []
    for start in range(0, m, block_size):
        Z = rademacher_vectors(op.n, min(block_size, m - start), generator, op.device)
        elementwise = Z * matmat_float64(op, Z)  # [n, k]
        chunks.append(torch.stack([elementwise[a:b].sum(dim=0) for a, b in bounds]))
    per_block = torch.cat(chunks, dim=1).cpu()  # [num_blocks, m]
    results = []
    for samples in per_block:
        estimate, stderr = _mean_and_stderr(samples)
        results.append(TraceResult(estimate, stderr, m, "hutchinson", samples.tolist()))
    return results


def hutchinson_diagonal(
    op: LinearOperator | Tensor | np.ndarray,
    num_products: int,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Diagonal estimate ``diag(A) ~ (1/m) sum_j z_j * (A z_j)`` and its per-entry standard error.

    Bekas, Kokiopoulou & Saad 2007 ("An estimator for the diagonal of a matrix") with Rademacher
    ``z_j`` (so the normalising ``z_j * z_j`` is 1): entry ``i`` is unbiased with variance
    ``sum_{k != i} A_ik^2 / m``. The standard error is the per-entry sample standard deviation
    over ``sqrt(m)`` (``inf`` for ``m = 1``). ``m >= n`` returns the exact diagonal with zero
    error. Both tensors are float64 on the operator's device.
    """
    op = as_operator(op)
    m = _check_budget(num_products, 1, "hutchinson_diagonal")
    if m >= op.n:
        diagonal = exact_diagonal(op)
        return diagonal, torch.zeros_like(diagonal)
    generator = seeded_generator(seed)
    total = torch.zeros(op.n, dtype=torch.float64, device=op.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, m, block_size):
        Z = rademacher_vectors(op.n, min(block_size, m - start), generator, op.device)
        elementwise = Z * matmat_float64(op, Z)
        total += elementwise.sum(dim=1)
        total_sq += (elementwise**2).sum(dim=1)
    mean = total / m
    if m < 2:
        return mean, torch.full_like(mean, math.inf)
    variance = ((total_sq - m * mean**2) / (m - 1)).clamp_min(0.0)
    return mean, (variance / m).sqrt()
