"""Extreme eigenvalues of symmetric curvature operators: Lanczos, power iteration, dense.

Everything here talks to the operator only through ``op.matmat`` on blocks of vectors, and keeps
its own arithmetic (Krylov bases, recurrence coefficients, the small projected eigenproblems) in
float64 whatever the operator's dtype: a float32 Hessian-vector product is rounded once per
product, while the Lanczos recurrence would otherwise accumulate float32 rounding over hundreds
of steps.

``lanczos_tridiagonal`` is the one Lanczos core of the package. It runs ``p`` independent
recurrences in lockstep (one ``matmat`` with ``p * block_size`` columns per step) with full
reorthogonalisation; ``lanczos`` drives it with a single start block and checks the Ritz residuals
after every step, and stochastic Lanczos quadrature (``landscape.curvature.density.slq``) drives it
with one Rademacher probe per recurrence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from landscape.curvature.linear_operator import LinearOperator, as_operator

Which = Literal["LA", "SA", "both"]

# A residual block whose singular value is below this fraction of the running estimate of ||A||
# spans (numerically) nothing new: the Krylov space is invariant. The threshold only has to keep
# the division by a zero norm away; tiny but genuine residuals are harmless because full
# reorthogonalisation keeps the new basis vector orthogonal regardless of its accuracy.
_BREAKDOWN_RTOL = 1e3 * torch.finfo(torch.float64).eps

# Krylov dimension (products, for block_size 1) that ``lanczos`` reaches before it may stop. A
# Ritz value can settle on lambda_2 (with a tiny residual) while the start vector's small
# component along u_1 is still being amplified, by T_m(1 + 2 gap ratio): a few steps more make
# that misconvergence rare at a cost of at most a few products (measured: top outliers of a
# network-like spectrum converge to 1e-3 in 6-10 products anyway).
_DEFAULT_MIN_DIMENSION = 8

# Krylov dimension (products, for block_size 1) that ``lanczos`` allows by default when looking
# for the smallest eigenvalue: on trained networks it sits in a tight cluster around 0 and needs
# 100-250 unrestarted steps.
_DEFAULT_DIMENSION_SMALLEST = 300


# ---------------------------------------------------------------------------------------------
# Small shared helpers (random probes, JSON-friendly floats)
# ---------------------------------------------------------------------------------------------


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``.

    Random vectors are drawn on the CPU and then moved to the operator's device, so a given seed
    gives the same probes (and, up to the operator's rounding, the same results) on every device,
    and the global RNG is never touched.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def gaussian_vectors(
    n: int, k: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """``k`` standard Gaussian vectors of length ``n`` as the columns of a float64 ``[n, k]`` tensor.

    Drawn column by column (``[k, n]`` then transposed), so the first ``j`` columns do not depend
    on ``k``: drawing in chunks gives the same vectors as drawing all at once.
    """
    return torch.randn(k, n, generator=generator, dtype=torch.float64).T.to(device)


def json_float(x: float) -> float | None:
    """``float(x)``, or ``None`` for inf/nan (which strict JSON cannot represent)."""
    x = float(x)
    return x if math.isfinite(x) else None


def matmat_float64(op: LinearOperator, V: Tensor) -> Tensor:
    """``A @ V`` in float64 for a float64 block ``V`` (converted to the operator's dtype first)."""
    return op.matmat(V.to(dtype=op.dtype, device=op.device)).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# The Lanczos core
# ---------------------------------------------------------------------------------------------


class _LanczosRecurrence:
    """``p`` independent block-Lanczos recurrences of block size ``b``, in lockstep.

    Block Lanczos (Golub & Underwood 1977; Golub & Van Loan, *Matrix Computations*, 4th ed.,
    Secs. 10.1 and 10.3) builds an orthonormal basis
    ``Q = [Q_0, Q_1, ...]`` of the block Krylov space ``span{V, AV, A^2 V, ...}`` with the
    three-term recurrence

        A Q_j = Q_{j-1} B_{j-1}^T + Q_j A_j + Q_{j+1} B_j,     A_j = Q_j^T A Q_j,

    so that ``Q^T A Q = T`` is block tridiagonal (tridiagonal for ``b = 1``: ``alpha_j = A_j``,
    ``beta_j = B_j``). In floating point the recurrence alone loses orthogonality as soon as a Ritz
    value converges (Paige 1971), which creates spurious copies of converged eigenvalues; we keep
    every basis vector and orthogonalise each new block against all of them twice (classical
    Gram-Schmidt applied twice is enough for orthogonality to working precision: Giraud, Langou &
    Rozloznik 2005, "twice is enough"). The coefficients of the reorthogonalisation are discarded
    (they are rounding-level), as in Parlett, *The Symmetric Eigenvalue Problem*, Ch. 13.

    Breakdown (a residual block with a zero singular value, i.e. an invariant subspace) zeroes
    that row of ``B_j`` and continues with a random vector orthogonal to the basis, so ``T``
    becomes block diagonal and the Ritz values found so far are exact. A basis that spans all of
    ``R^n`` has residual exactly zero.

    Layout: the basis of recurrence ``i`` is stored as rows ``basis[i, :m*b, :]`` (float64, on the
    operator's device); memory is ``p * m * b * n * 8`` bytes.
    """

    def __init__(
        self, op: LinearOperator, start: Tensor, *, max_blocks: int, generator: torch.Generator
    ) -> None:
        self.op = op
        self.p, self.b, self.n = start.shape
        self.max_blocks = int(max_blocks)
        self.generator = generator
        self.num_blocks = 0
        self._capacity = min(self.max_blocks, 32)
        self._basis = torch.empty(
            self.p, self._capacity * self.b, self.n, dtype=torch.float64, device=op.device
        )
        self._basis[:, : self.b] = start.to(device=op.device, dtype=torch.float64)
        # A_j and B_j (the last stored B_j is the residual block), kept on the CPU for the small
        # eigenproblems; the latest B_j also stays on the device for the next step.
        self._diagonal = torch.zeros(self.p, self.max_blocks, self.b, self.b, dtype=torch.float64)
        self._coupling = torch.zeros(self.p, self.max_blocks, self.b, self.b, dtype=torch.float64)
        self._last_coupling: Tensor | None = None
        self.scale = 0.0  # running estimate of ||A||_2 (for the breakdown test)
        self.breakdown = torch.zeros(self.p, dtype=torch.bool)  # last residual block vanished

    @property
    def num_products(self) -> int:
        """Operator-vector products spent so far."""
        return self.num_blocks * self.p * self.b

    def basis(self) -> Tensor:
        """The Krylov bases as rows, ``[p, m * b, n]`` (a view)."""
        return self._basis[:, : self.num_blocks * self.b]

    def step(self) -> None:
        """Multiply the newest block by ``A`` and extend the recurrence by one block."""
        j, p, b, n = self.num_blocks, self.p, self.b, self.n
        if j >= self.max_blocks:
            raise RuntimeError("Lanczos recurrence is already at its maximum number of blocks")
        current = self._basis[:, j * b : (j + 1) * b]  # [p, b, n]
        products = matmat_float64(self.op, current.reshape(p * b, n).T)  # [n, p * b]
        residual = products.T.reshape(p, b, n).clone()
        alpha = current @ residual.transpose(1, 2)  # [p, b, b]: q_r . A q_c
        alpha = 0.5 * (alpha + alpha.transpose(1, 2))
        residual -= alpha @ current
        if self._last_coupling is not None:
            residual -= self._last_coupling @ self._basis[:, (j - 1) * b : j * b]
        used = self._basis[:, : (j + 1) * b]
        for _ in range(2):  # twice is enough
            residual -= (residual @ used.transpose(1, 2)) @ used
        self._diagonal[:, j] = alpha.cpu()
        self.scale = max(self.scale, float(alpha.abs().sum(dim=-1).max()))

        if (j + 1) * b >= n:
            # The basis spans R^n: the residual is zero in exact arithmetic.
            coupling = torch.zeros(p, b, b, dtype=torch.float64, device=residual.device)
            self.breakdown = torch.ones(p, dtype=torch.bool)
            next_block = None
        else:
            if b == 1:
                singular = residual.norm(dim=2)  # [p, 1]
                next_block = residual / singular.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)
                coupling = singular.unsqueeze(-1).clone()
            else:
                # residual (rows) = U S Vh  =>  next rows Vh and B_j = S U^T (residual = B_j^T Q_{j+1}^T).
                U, singular, next_block = torch.linalg.svd(residual, full_matrices=False)
                coupling = singular.unsqueeze(-1) * U.transpose(1, 2)
            self.scale = max(self.scale, float(singular.max()))
            deficient = singular <= _BREAKDOWN_RTOL * max(self.scale, torch.finfo(torch.float64).tiny)
            if bool(deficient.any()):
                coupling[deficient] = 0.0
                if j + 1 < self.max_blocks:
                    next_block = self._random_orthogonal_rows(next_block, deficient, used)
            self.breakdown = deficient.all(dim=1).cpu()
        self._coupling[:, j] = coupling.cpu()
        self._last_coupling = coupling
        self.num_blocks += 1
        if next_block is not None and self.num_blocks < self.max_blocks:
            self._store(next_block)

    def _store(self, block: Tensor) -> None:
        j, b = self.num_blocks, self.b
        if j >= self._capacity:
            self._capacity = min(2 * self._capacity, self.max_blocks)
            grown = torch.empty(self.p, self._capacity * b, self.n, dtype=torch.float64, device=block.device)
            grown[:, : j * b] = self._basis[:, : j * b]
            self._basis = grown
        self._basis[:, j * b : (j + 1) * b] = block

    def _random_orthogonal_rows(self, block: Tensor, deficient: Tensor, used: Tensor) -> Tensor:
        """Replace the ``deficient`` rows of ``block`` by random unit vectors orthogonal to the rest."""
        block = block.clone()
        for i in range(self.p):
            valid = ~deficient[i]
            for r in torch.nonzero(deficient[i]).flatten().tolist():
                others = torch.cat([used[i], block[i][valid]], dim=0)
                x = gaussian_vectors(self.n, 1, self.generator, block.device)[:, 0]
                for _ in range(2):
                    x = x - others.T @ (others @ x)
                block[i, r] = x / x.norm()
                valid[r] = True
        return block

    def tridiagonal(self) -> tuple[Tensor, Tensor]:
        """For ``b = 1``: diagonals ``[p, m]`` and couplings ``[p, m]`` (the last is the residual norm)."""
        if self.b != 1:
            raise ValueError("tridiagonal() is only defined for block size 1")
        m = self.num_blocks
        return self._diagonal[:, :m, 0, 0], self._coupling[:, :m, 0, 0]

    def block_tridiagonal(self, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Recurrence ``i``'s projected matrix ``T`` (``[m b, m b]``) and residual block ``B_m``."""
        m, b = self.num_blocks, self.b
        diagonal, coupling = self._diagonal[i].numpy(), self._coupling[i].numpy()
        T = np.zeros((m * b, m * b))
        for j in range(m):
            T[j * b : (j + 1) * b, j * b : (j + 1) * b] = diagonal[j]
            if j + 1 < m:
                T[(j + 1) * b : (j + 2) * b, j * b : (j + 1) * b] = coupling[j]
                T[j * b : (j + 1) * b, (j + 1) * b : (j + 2) * b] = coupling[j].T
        return T, coupling[m - 1].copy()


def _tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (ascending) of the symmetric tridiagonal matrix with diagonal ``alphas``
    and off-diagonal ``betas`` (LAPACK ``stemr`` via SciPy: O(m^2) for all pairs)."""
    if len(alphas) == 1:
        return alphas.astype(np.float64).copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(alphas, betas)


def _ritz_pairs(rec: _LanczosRecurrence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz values (ascending), the eigenvectors ``S`` of ``T`` and the Ritz residual norms.

    For the Ritz pair ``(theta_i, Q s_i)`` the residual is
    ``||A Q s_i - theta_i Q s_i|| = ||B_m s_i[last block]||`` (``|beta_m s_i[m]|`` for ``b = 1``;
    Parlett, *The Symmetric Eigenvalue Problem*, Ch. 13), which costs no product.
    """
    if rec.b == 1:
        alphas, betas = rec.tridiagonal()
        a, c = alphas[0].numpy(), betas[0].numpy()
        theta, S = _tridiagonal_eigh(a, c[:-1])
        residuals = np.abs(c[-1] * S[-1, :])
    else:
        T, coupling = rec.block_tridiagonal(0)
        theta, S = np.linalg.eigh(T)
        residuals = np.linalg.norm(coupling @ S[-rec.b :, :], axis=0)
    return theta, S, residuals


def _error_bounds(theta: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """A-posteriori eigenvalue error bounds ``min(r_i, r_i^2 / gap_i)`` for Ritz values ``theta``.

    For a Ritz pair with residual ``r`` there is an eigenvalue within ``r`` of ``theta``, and
    within ``r^2 / gap`` when ``gap`` separates ``theta`` from the rest of the spectrum (the
    Kato-Temple inequality; Parlett, *The Symmetric Eigenvalue Problem*, Ch. 4 and 11). The true
    gap is unknown. The distance to the nearest other Ritz value is the usual stand-in (Parlett
    Ch. 13; ARPACK), but it overestimates the gap while the neighbour is still moving towards
    its eigenvalue (measured: bounds 10% too small on a spectrum with a close second outlier).
    We therefore shrink it by the neighbours' own residuals (each has an eigenvalue within
    ``r_j``): ``gap_i = min_{j != i} (|theta_i - theta_j| - r_j)``; when that is not positive the
    bound falls back to the residual ``r_i``, which is always valid.
    """
    m = len(theta)
    if m == 1:
        return residuals.copy()
    separations = np.abs(theta[:, None] - theta[None, :]) - residuals[None, :]
    np.fill_diagonal(separations, np.inf)
    gaps = separations.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        quadratic = np.where(gaps > 0, residuals**2 / gaps, np.inf)
    return np.minimum(residuals, quadratic)


@dataclass(frozen=True)
class LanczosTridiagonal:
    """The output of ``lanczos_tridiagonal``: ``p`` tridiagonal matrices ``T_i = Q_i^T A Q_i``.

    ``alphas[i]`` is the diagonal (length ``m``), ``off_diagonal[i]`` the off-diagonal (length
    ``m - 1``), ``residual_norms[i]`` the norm ``beta_m`` of the next (unused) Lanczos vector's
    coefficient, ``basis[i]`` the orthonormal Lanczos vectors as rows ``[m, n]`` (if requested).
    """

    alphas: Tensor
    off_diagonal: Tensor
    residual_norms: Tensor
    num_products: int
    basis: Tensor | None = field(default=None, repr=False, compare=False)

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values ``[p, m]`` (ascending per row) and the first and last components
        ``[p, m]`` of the corresponding unit eigenvectors of each ``T_i``."""
        values, firsts, lasts = [], [], []
        for a, c in zip(self.alphas.numpy(), self.off_diagonal.numpy(), strict=True):
            theta, S = _tridiagonal_eigh(a, c)
            values.append(theta)
            firsts.append(S[0])
            lasts.append(S[-1])
        as_tensor = lambda rows: torch.as_tensor(np.stack(rows), dtype=torch.float64)  # noqa: E731
        return as_tensor(values), as_tensor(firsts), as_tensor(lasts)


def lanczos_tridiagonal(
    op: LinearOperator | Tensor | np.ndarray,
    v0: Tensor,
    num_steps: int,
    *,
    seed: int = 0,
    return_basis: bool = False,
) -> LanczosTridiagonal:
    """Run ``p`` Lanczos recurrences with full reorthogonalisation in lockstep.

    Given start vectors ``v0`` (``[n]`` or ``[n, p]``; each column is normalised), recurrence ``i``
    builds an orthonormal basis ``Q_i = [q_1, ..., q_m]`` of the Krylov space
    ``K_m(A, v0_i)`` with ``A q_j = beta_{j-1} q_{j-1} + alpha_j q_j + beta_j q_{j+1}``
    (Lanczos 1950; Golub & Van Loan Sec. 10.1), reorthogonalising each new vector twice
    against all previous ones. Each step costs ONE ``matmat`` with ``p`` columns, which on a
    network is much cheaper than ``p`` separate Hessian-vector products.

    ``num_steps`` is capped at ``n`` (the Krylov space cannot grow further). On breakdown
    (``beta_j = 0``: an invariant subspace) the recurrence continues from a random unit vector
    orthogonal to its basis with ``beta_j = 0``; its later Ritz values then have zero first
    components (zero quadrature weight). ``seed`` only feeds those restart vectors.

    Returns the tridiagonal matrices (float64, CPU) and, with ``return_basis``, the bases
    ``[p, m, n]`` (float64, on the operator's device).
    """
    op = as_operator(op)
    V = v0.to(dtype=torch.float64, device=op.device)
    if V.dim() == 1:
        V = V.unsqueeze(1)
    if V.dim() != 2 or V.shape[0] != op.n:
        raise ValueError(f"v0 must have shape [{op.n}] or [{op.n}, p], got {tuple(v0.shape)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    norms = V.norm(dim=0)
    if bool((norms == 0).any()):
        raise ValueError("start vectors must be nonzero")
    start = (V / norms).T.unsqueeze(1).contiguous()  # [p, 1, n]
    steps = min(int(num_steps), op.n)
    rec = _LanczosRecurrence(op, start, max_blocks=steps, generator=seeded_generator(seed))
    for _ in range(steps):
        rec.step()
    alphas, betas = rec.tridiagonal()
    return LanczosTridiagonal(
        alphas=alphas,
        off_diagonal=betas[:, :-1].contiguous(),
        residual_norms=betas[:, -1].contiguous(),
        num_products=rec.num_products,
        basis=rec.basis().clone() if return_basis else None,
    )


# ---------------------------------------------------------------------------------------------
# Eigenvalue solvers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenResult:
    """Extreme eigenvalues with their Ritz residuals, error bounds and cost.

    ``eigenvalues`` are the ``k`` largest (descending) for ``which="LA"`` and ``"both"``, the ``k``
    smallest (ascending) for ``"SA"``. ``residuals[i]`` is ``||A y_i - theta_i y_i||`` for the unit
    Ritz vector ``y_i``, ``error_bounds[i]`` the a-posteriori bound on ``|theta_i - lambda_i|``
    used for the ``converged`` test. ``products_to_converge[i]`` is the product count from which
    eigenvalue ``i`` stayed converged (``None`` if it did not converge), so one can report e.g.
    that ``lambda_max`` met the tolerance after 7 products even though the run went on for
    ``lambda_min``. The ``lambda_min_*`` fields are set for ``which="both"`` only.
    """

    eigenvalues: list[float]
    residuals: list[float]
    error_bounds: list[float]
    converged: list[bool]
    num_products: int
    num_iterations: int
    products_to_converge: list[int | None]
    method: str
    which: str
    tol: float
    lambda_min: float | None = None
    lambda_min_residual: float | None = None
    lambda_min_error_bound: float | None = None
    lambda_min_converged: bool | None = None
    lambda_min_products_to_converge: int | None = None
    eigenvectors: Tensor | None = field(default=None, repr=False, compare=False)
    lambda_min_eigenvector: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def all_converged(self) -> bool:
        """Whether every returned eigenvalue (and ``lambda_min`` for ``"both"``) converged."""
        return all(self.converged) and self.lambda_min_converged is not False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors; inf/nan as ``None``)."""
        return {
            "method": self.method,
            "which": self.which,
            "tol": float(self.tol),
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "residuals": [json_float(x) for x in self.residuals],
            "error_bounds": [json_float(x) for x in self.error_bounds],
            "converged": [bool(x) for x in self.converged],
            "products_to_converge": list(self.products_to_converge),
            "num_products": int(self.num_products),
            "num_iterations": int(self.num_iterations),
            "lambda_min": None if self.lambda_min is None else float(self.lambda_min),
            "lambda_min_residual": None
            if self.lambda_min_residual is None
            else json_float(self.lambda_min_residual),
            "lambda_min_error_bound": (
                None if self.lambda_min_error_bound is None else json_float(self.lambda_min_error_bound)
            ),
            "lambda_min_converged": self.lambda_min_converged,
            "lambda_min_products_to_converge": self.lambda_min_products_to_converge,
            "all_converged": self.all_converged,
        }


def _default_max_iter(which: str, k: int) -> int:
    """Default Krylov dimension (= products for block size 1); see ``lanczos``."""
    if which == "LA":
        return max(3 * k + 30, 60)
    return max(_DEFAULT_DIMENSION_SMALLEST, 3 * k + 30)


def lanczos(
    op: LinearOperator | Tensor | np.ndarray,
    k: int = 1,
    which: Which = "LA",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    min_iter: int | None = None,
    *,
    block_size: int = 1,
    return_eigenvectors: bool = False,
    v0: Tensor | None = None,
) -> EigenResult:
    """Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

    Method: the Lanczos recurrence (``lanczos_tridiagonal``'s core; Lanczos 1950, Golub & Van Loan
    Sec. 10.1, block version Golub & Underwood 1977) builds an orthonormal basis ``Q_m`` of the
    Krylov space ``K_m(A, v0)`` and ``T_m = Q_m^T A Q_m``; the eigenvalues ``theta_i`` of ``T_m``
    (Ritz values) approximate the extreme eigenvalues of ``A``, the optimal polynomial
    approximation in ``K_m`` (Kaniel-Paige-Saad convergence theory: Saad, *Numerical Methods for
    Large Eigenvalue Problems*, Ch. 6). Every Krylov vector is kept and each new one is
    reorthogonalised against all of them twice, so no spurious (ghost) Ritz values appear.

    Stopping: after every step (an ``m x m`` tridiagonal eigenproblem, negligible next to a
    product) each Ritz pair gets its residual ``r_i = |beta_m y_i[m]|`` (the norm of
    ``A Q y_i - theta_i Q y_i``, free of products; ``||B_m y_i[last block]||`` for blocks) and
    the error bound ``min(r_i, r_i^2 / gap_i)`` (residual and Kato-Temple bounds: Parlett, *The
    Symmetric Eigenvalue Problem*, Ch. 4, 11 and 13), with ``gap_i`` the distance to the nearest
    other Ritz value shrunk by that value's residual (see ``_error_bounds``). A Ritz value counts
    as converged when its bound is ``<= tol * |theta_i|``. Bounds are never reported below the
    operator's rounding level ``10 eps(dtype) max|theta|`` (products in float32 perturb ``A`` by
    about ``eps ||A||``), and a bound at that level counts as converged. The run stops when all
    wanted values have converged and at least ``min_iter`` steps were taken, on breakdown
    (``beta_m ~ 0``: ``K_m`` is invariant and its Ritz values are exact eigenvalues), or after
    ``max_iter`` steps. Stopping on the residual, not on the change between iterates, is what
    makes the ``converged`` flags meaningful: Ritz values can stagnate for many steps and move
    again.

    What no Krylov method can see: an eigenvalue whose eigenvector is (nearly) missing from the
    start vector. The residual bound always holds for SOME eigenvalue, but a Ritz value may settle
    on ``lambda_2`` before ``lambda_1`` appears, and a single start vector sees only one copy of a
    repeated eigenvalue (use ``block_size >=`` the multiplicity). The default ``min_iter`` makes the
    first case rare (the Krylov polynomial amplifies the ``u_1`` component like
    ``T_m(1 + 2 gap ratio)``).

    ``which``: ``"LA"`` the ``k`` largest (descending); ``"SA"`` the ``k`` smallest (ascending);
    ``"both"`` the ``k`` largest and the smallest from ONE Krylov run, which continues until both
    ends have converged (``products_to_converge`` records when each top value converged).

    Why not restarted ARPACK (``scipy.sparse.linalg.eigsh``): the smallest eigenvalue of a trained
    network's Hessian sits in a tiny cluster near 0 and emerges only from a high-degree Krylov
    polynomial. Implicit restarts with ``ncv=20`` throw that polynomial away every 20 steps;
    measured on a trained net, ``eigsh`` needed 511-571 products for ``lambda_min`` where 160
    unrestarted steps reached 1e-5 relative. A spectral shift ``A - sigma I`` does not help
    Lanczos at all (``K_m(A - sigma I, v) = K_m(A, v)``, the Ritz values just shift); it only helps
    power iteration. Storing ``m`` vectors of size ``n`` (``8 m n`` bytes) is the price.

    Defaults: ``max_iter`` (in steps; a step costs ``block_size`` products) caps the Krylov
    dimension at ``min(n, max(3k + 30, 60))`` for ``"LA"`` (top outliers of a network Hessian
    converge in 6-30 products; a run that does not converge stops early enough to be cheap) and at
    ``min(n, max(300, 3k + 30))`` for ``"SA"``/``"both"``, because the smallest eigenvalue needs
    100-250 steps. ``min_iter`` defaults to a Krylov dimension of ``max(wanted + 2, 8)``: every
    wanted Ritz value has neighbours for its gap estimate, and misconvergence to ``lambda_2``
    becomes rare, for at most a few extra products. ``tol`` is relative.

    ``block_size > 1`` runs block Lanczos (``block_size`` columns per ``matmat``: fewer, larger
    calls, and repeated eigenvalues are resolved); it usually needs more products than
    ``block_size=1`` for the same accuracy. ``v0`` (``[n]`` or ``[n, block_size]``) replaces the
    random Gaussian start drawn from ``seed``. With ``return_eigenvectors`` the Ritz vectors are
    returned as an ``[n, k]`` tensor in the operator's dtype (and ``lambda_min_eigenvector`` for
    ``"both"``).
    """
    op = as_operator(op)
    n = op.n
    if which not in ("LA", "SA", "both"):
        raise ValueError(f"which must be 'LA', 'SA' or 'both', got {which!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b = int(block_size)
    if not 1 <= b <= n:
        raise ValueError(f"block_size must be in [1, {n}], got {block_size}")
    num_wanted = k + (1 if which == "both" else 0)
    max_blocks = n // b
    if num_wanted > max_blocks * b:
        raise ValueError(
            f"cannot compute {num_wanted} eigenvalues of a {n} x {n} operator with block size {b}"
        )
    if max_iter is None:
        max_iter = math.ceil(_default_max_iter(which, k) / b)
    max_iter = min(int(max_iter), max_blocks)
    if max_iter * b < num_wanted:
        raise ValueError(f"max_iter={max_iter} steps of block size {b} cannot give {num_wanted} Ritz values")
    if min_iter is None:
        min_iter = math.ceil(max(num_wanted + 2, _DEFAULT_MIN_DIMENSION) / b)
    min_iter = min(int(min_iter), max_iter)

    generator = seeded_generator(seed)
    if v0 is None:
        start = gaussian_vectors(n, b, generator, op.device)
    else:
        start = v0.to(dtype=torch.float64, device=op.device).reshape(n, -1)
        if start.shape[1] != b:
            raise ValueError(f"v0 must have {b} column(s), got {start.shape[1]}")
    start = torch.linalg.qr(start).Q  # orthonormal columns (a normalisation for b = 1)
    rec = _LanczosRecurrence(op, start.T.unsqueeze(0), max_blocks=max_iter, generator=generator)

    # Products in the operator's dtype perturb A by about eps(dtype) ||A||: no bound is reported
    # below that rounding level, and a value whose bound reaches it counts as converged.
    floor = 10.0 * torch.finfo(op.dtype).eps
    top_since: list[int | None] = [None] * k
    min_since: int | None = None
    for step in range(1, max_iter + 1):
        rec.step()
        if step * b < num_wanted:
            continue
        theta, S, residuals = _ritz_pairs(rec)
        rounding = floor * np.abs(theta).max()
        bounds = np.maximum(_error_bounds(theta, residuals), rounding)
        is_converged = bounds <= np.maximum(tol * np.abs(theta), rounding)
        top = np.arange(len(theta))[:k] if which == "SA" else np.arange(len(theta))[::-1][:k]
        for rank, i in enumerate(top):
            if not is_converged[i]:
                top_since[rank] = None
            elif top_since[rank] is None:
                top_since[rank] = rec.num_products
        if which == "both":
            if not is_converged[0]:
                min_since = None
            elif min_since is None:
                min_since = rec.num_products
        wanted_converged = bool(is_converged[top].all()) and (which != "both" or bool(is_converged[0]))
        if bool(rec.breakdown[0]) or (wanted_converged and step >= min_iter):
            break

    eigenvectors = None
    min_vector = None
    if return_eigenvectors:
        basis = rec.basis()[0]  # [m b, n]
        S_t = torch.as_tensor(S, dtype=torch.float64, device=basis.device)
        eigenvectors = (basis.T @ S_t[:, top.copy()]).to(op.dtype)
        if which == "both":
            min_vector = (basis.T @ S_t[:, 0]).to(op.dtype)
    both = which == "both"
    return EigenResult(
        eigenvalues=[float(theta[i]) for i in top],
        residuals=[float(residuals[i]) for i in top],
        error_bounds=[float(bounds[i]) for i in top],
        converged=[bool(is_converged[i]) for i in top],
        num_products=rec.num_products,
        num_iterations=rec.num_blocks,
        products_to_converge=list(top_since),
        method="lanczos" if b == 1 else f"block_lanczos(b={b})",
        which=which,
        tol=float(tol),
        lambda_min=float(theta[0]) if both else None,
        lambda_min_residual=float(residuals[0]) if both else None,
        lambda_min_error_bound=float(bounds[0]) if both else None,
        lambda_min_converged=bool(is_converged[0]) if both else None,
        lambda_min_products_to_converge=min_since if both else None,
        eigenvectors=eigenvectors,
        lambda_min_eigenvector=min_vector,
    )


def power_iteration(
    op: LinearOperator | Tensor | np.ndarray, tol: float = 1e-3, max_iter: int = 100, seed: int = 0
) -> EigenResult:
    """Largest-magnitude eigenvalue by power iteration (a baseline; prefer ``lanczos``).

    ``v_{t+1} = A v_t / ||A v_t||`` (von Mises 1929; Golub & Van Loan Sec. 7.3) with the
    Rayleigh quotient ``rho_t = v_t^T A v_t``. Stops when the residual
    ``r_t = ||A v_t - rho_t v_t|| <= tol * |rho_t|``: some eigenvalue lies within ``r_t`` of
    ``rho_t`` (Parlett, *The Symmetric Eigenvalue Problem*, Ch. 4), which is reported as the error
    bound. The error decays like ``|lambda_2 / lambda_1|^t``, far slower than Lanczos for the
    clustered spectra of networks (PyHessian's ``eigenvalues`` uses power iteration with a
    relative-change stop instead of a residual). One product per iteration.
    """
    op = as_operator(op)
    generator = seeded_generator(seed)
    v = gaussian_vectors(op.n, 1, generator, op.device)[:, 0]
    v = v / v.norm()
    floor = 10.0 * torch.finfo(op.dtype).eps
    rho, residual, converged, since = 0.0, math.inf, False, None
    iterations = 0
    for iterations in range(1, int(max_iter) + 1):
        w = matmat_float64(op, v.unsqueeze(1))[:, 0]
        rho = float(v @ w)
        residual = float((w - rho * v).norm())
        norm_w = float(w.norm())
        if residual <= max(tol * abs(rho), floor * norm_w):
            converged, since = True, iterations
            break
        v = w / norm_w
    return EigenResult(
        eigenvalues=[rho],
        residuals=[residual],
        error_bounds=[residual],
        converged=[converged],
        num_products=iterations,
        num_iterations=iterations,
        products_to_converge=[since],
        method="power_iteration",
        which="LM",
        tol=float(tol),
    )


def dense_eigenvalues(op: LinearOperator | Tensor | np.ndarray) -> Tensor:
    """All eigenvalues, ascending, in float64: the exact path for small models and tests.

    Assembles the matrix (``op.to_dense()``: ``n`` products for an operator), symmetrises it as
    ``(A + A^T) / 2`` (removing the asymmetry that float32 Hessian-vector products leave behind)
    and calls LAPACK ``syevd`` via ``torch.linalg.eigvalsh``. O(n^3) time and O(n^2) memory.
    """
    if isinstance(op, LinearOperator):
        matrix = op.to_dense()
    else:
        matrix = torch.as_tensor(op)
    matrix = matrix.to(torch.float64)
    return torch.linalg.eigvalsh(0.5 * (matrix + matrix.T))
