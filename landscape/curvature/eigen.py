"""Extreme eigenvalues of symmetric curvature operators: Lanczos, thick restart, power iteration.

Everything here talks to the operator only through ``op.matmat`` on blocks of vectors. Krylov
vectors are stored in the operator's dtype (float32 for a float32 model: a vector of a 100M
parameter model is 400 MB, not 800 MB), while every dot product, the recurrence coefficients and
the small projected eigenproblems are float64: the basis is rounded once when a vector is stored,
but the recurrence does not accumulate float32 rounding over hundreds of steps. Dot products with
the basis run over chunks of the vectors in float64, so no float64 copy of the basis is made.

``lanczos`` keeps every Krylov vector (full reorthogonalisation) when the basis fits the memory
budget, and otherwise runs thick-restart Lanczos (Wu & Simon 2000, SIAM J. Matrix Anal. Appl.
22(2):602-616) in a bounded basis, so ``lambda_max``, the top ``k`` and ``lambda_min`` need
``O(k)`` vectors at any scale. ``lambda_max``, ``lambda_min`` and ``top_eigenvalues`` are the
calls the analysis layer makes: the first is the cheap one (a few products), the last-but-one the
expensive one (the bottom of a network's spectrum is a tight cluster near 0).

``lanczos_tridiagonal`` runs ``p`` independent recurrences in lockstep (one ``matmat`` with ``p``
columns per step) and returns their tridiagonal matrices: the core of stochastic Lanczos
quadrature (:mod:`landscape.curvature.density`). ``lanczos_short_recurrence`` computes the same
tridiagonal matrices without storing a basis (local reorthogonalisation only).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from landscape.curvature.linear_operator import LinearOperator, as_operator
from landscape.errors import UserError

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

# Float64 numbers per chunk when a float32 basis meets a float64 vector: 4 MiB on a CPU (it stays
# in cache while it is used), 128 MiB on an accelerator (fewer, larger kernels).
_CHUNK_NUMBERS = 1 << 19
_CHUNK_NUMBERS_ACCELERATOR = 1 << 24


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device) -> Any:
    """Sweeps over a basis are memory-bound chains of small operations: on a CPU they run on one
    thread (measured: a projection of 10 float32 vectors of 4M numbers took 0.26 s on one thread
    and 0.6-2.6 s on two threads of two cores shared with other jobs, where OpenMP's barriers
    wait for descheduled threads). The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def chunk_numbers(device: torch.device | str) -> int:
    """Float64 numbers of the reusable chunk buffer of a basis on ``device``."""
    return _CHUNK_NUMBERS if torch.device(device).type == "cpu" else _CHUNK_NUMBERS_ACCELERATOR


# Daniel, Gragg, Kaufman & Stewart (1976, Math. Comp. 30:772-795): a second Gram-Schmidt pass is
# needed only when the first removed more than this share of the vector's norm.
_DGKS_ETA = 1.0 / math.sqrt(2.0)


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


def basis_dtype(op: LinearOperator) -> torch.dtype:
    """The dtype Krylov vectors are stored in: the operator's (never below float32)."""
    return op.dtype if op.dtype in (torch.float32, torch.float64) else torch.float32


def _storage_device(op: LinearOperator, basis_device: str) -> torch.device:
    if basis_device == "device":
        return op.device
    if basis_device == "host":
        return torch.device("cpu")
    raise ValueError(f"basis_device must be 'device' or 'host', got {basis_device!r}")


# ---------------------------------------------------------------------------------------------
# A basis of row vectors in a storage dtype, with float64 arithmetic in chunks
# ---------------------------------------------------------------------------------------------


class _ChunkBuffer:
    """One float64 scratch buffer, shared by the bases that take turns using it (the ``p``
    recurrences of lockstep SLQ), grown when a larger chunk is asked for."""

    def __init__(self) -> None:
        self.tensor: Tensor | None = None

    def get(self, needed: int, preferred: int, device: torch.device) -> Tensor:
        """At least ``needed`` numbers (``preferred`` when first allocated)."""
        if self.tensor is None or self.tensor.numel() < needed or self.tensor.device != device:
            self.tensor = torch.empty(max(needed, preferred), dtype=torch.float64, device=device)
        return self.tensor


class _Basis:
    """Orthonormal rows ``Q [m, n]`` stored in ``dtype`` on ``device``, grown in blocks.

    Storage is allocated ``grow`` rows at a time up to ``capacity`` (16 rows, or fewer so that a
    block stays under 64 MiB: a run that converges in 10 steps never allocates more than it uses,
    and growing never copies the rows already stored). All
    products with the basis are float64: ``project`` returns ``W Q^T`` and ``subtract`` forms
    ``W - H Q`` over chunks of the columns, converting one chunk of ``Q`` at a time. On the host
    with CUDA present the rows are pinned, so copies to and from the device can overlap.
    """

    def __init__(
        self,
        n: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
        grow: int | None = None,
        buffer: _ChunkBuffer | None = None,
    ):
        self.n, self.capacity, self.dtype, self.device = int(n), int(capacity), dtype, device
        if grow is None:  # up to 16 rows, but no more than 64 MiB at a time (one row when larger)
            row_bytes = self.n * torch.empty((), dtype=dtype).element_size()
            grow = min(16, (64 << 20) // max(1, row_bytes))
        self.grow = max(1, int(grow))
        self.blocks: list[Tensor] = []
        self.m = 0
        self._buffer = buffer if buffer is not None else _ChunkBuffer()

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the rows."""
        return sum(b.numel() * b.element_size() for b in self.blocks)

    def _allocated(self) -> int:
        return sum(b.shape[0] for b in self.blocks)

    def _new_block(self, rows: int) -> Tensor:
        pin = self.device.type == "cpu" and torch.cuda.is_available()
        return torch.empty(rows, self.n, dtype=self.dtype, device=self.device, pin_memory=pin)

    def _row_views(self, start: int, stop: int) -> list[tuple[int, Tensor]]:
        """``(first_row, view)`` pieces covering rows ``start:stop``."""
        out, offset = [], 0
        for block in self.blocks:
            lo, hi = max(start, offset), min(stop, offset + block.shape[0])
            if lo < hi:
                out.append((lo, block[lo - offset : hi - offset]))
            offset += block.shape[0]
        return out

    def append(self, rows: Tensor) -> None:
        """Store ``rows [r, n]`` (any dtype) after the current rows."""
        r = rows.shape[0]
        for _, view in self._new_row_views(r):
            k = view.shape[0]
            view.copy_(rows[:k].to(device=self.device))
            rows = rows[k:]
        self.m += r

    def _new_row_views(self, r: int) -> list[tuple[int, Tensor]]:
        if self.m + r > self.capacity:
            raise RuntimeError("Krylov basis is full")
        while self._allocated() < self.m + r:
            self.blocks.append(self._new_block(min(self.grow, self.capacity - self._allocated())))
        return self._row_views(self.m, self.m + r)

    def append_residual(self, w: Tensor, correction: Tensor, divisor: float) -> None:
        """Store ``(w - correction Q) / divisor`` as the next row (``w [1, n]`` float64 on the
        basis device, read only; ``correction [1, m]``) in one sweep: the deferred second pass of
        :meth:`project_and_subtract`, the normalisation and the conversion to the storage dtype,
        chunk by chunk while each chunk is in cache."""
        ((_, view),) = self._new_row_views(1)
        target = view[0]
        for start, k, rows in self._chunks(correction.shape[1], extra=1):
            chunk = torch.addmm(w[:, start : start + k], correction, rows, alpha=-1.0)
            target[start : start + k].copy_(chunk.div_(divisor)[0])
        self.m += 1

    def row(self, i: int) -> Tensor:
        """Row ``i`` as stored (a view)."""
        ((_, view),) = self._row_views(i, i + 1)
        return view[0]

    def rows(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Rows ``start:stop`` as one tensor (a copy when they span blocks)."""
        stop = self.m if stop is None else stop
        views = [v for _, v in self._row_views(start, stop)]
        if not views:
            return torch.empty(0, self.n, dtype=self.dtype, device=self.device)
        return views[0] if len(views) == 1 else torch.cat(views)

    def _chunks(self, stop: int, extra: int = 0) -> Any:
        """``(start, width, rows)``: columns ``start:start+width`` of rows ``0:stop`` as a float64
        ``[stop, width]`` tensor, for consecutive column chunks covering ``0:n``.

        The chunks live in one reusable buffer of ``chunk_numbers`` float64 numbers (``extra``
        rows of room are left for the caller's own temporaries), small enough to stay in cache on
        a CPU: converting a float32 basis chunk by chunk into fresh allocations was measured 6x
        slower (page faults and memory traffic) than into this buffer. A float64 basis in a
        single block is read in place.
        """
        numbers = chunk_numbers(self.device)
        width = max(1024, numbers // max(1, stop + extra))
        with _one_thread_on_cpu(self.device):
            yield from self._chunk_sweep(stop, extra, numbers, width)

    def _chunk_sweep(self, stop: int, extra: int, numbers: int, width: int) -> Any:
        views = self._row_views(0, stop)
        in_place = self.dtype == torch.float64 and len(views) == 1
        buffer = None
        if not in_place:
            needed = stop * min(width, self.n)
            buffer = self._buffer.get(needed, min(numbers, self.capacity * self.n), self.device)
        for start in range(0, self.n, width):
            k = min(width, self.n - start)
            if buffer is None:
                yield start, k, views[0][1][:, start : start + k]
                continue
            rows = buffer[: stop * k].view(stop, k)
            for first, view in views:
                rows[first : first + view.shape[0]].copy_(view[:, start : start + k])
            yield start, k, rows

    def project(self, W: Tensor, stop: int | None = None) -> Tensor:
        """``W Q[:stop]^T`` in float64 (``W [b, n]`` float64 on the basis device) -> ``[b, stop]``."""
        stop = self.m if stop is None else stop
        out = torch.zeros(W.shape[0], stop, dtype=torch.float64, device=W.device)
        if stop == 0:
            return out
        for start, k, rows in self._chunks(stop):
            out.addmm_(W[:, start : start + k], rows.T)
        return out

    def subtract(self, W: Tensor, H: Tensor, project_after: bool = False) -> Tensor | None:
        """``W -= H Q[:H.shape[1]]`` in place (float64); with ``project_after`` also return the
        projection of the updated ``W`` (``W Q^T``), computed chunk by chunk in the same sweep."""
        stop = H.shape[1]
        after = torch.zeros_like(H) if project_after else None
        if stop == 0:
            return after
        for start, k, rows in self._chunks(stop):
            Wc = W[:, start : start + k]
            Wc.sub_(H @ rows)
            if after is not None:
                after.addmm_(Wc, rows.T)
        return after

    def orthogonalize(self, W: Tensor) -> Tensor:
        """Classical Gram-Schmidt of ``W [b, n]`` (float64, in place) against all rows, repeated
        once when the DGKS test asks for it; returns the first pass's coefficients ``[b, m]``.

        Two sweeps over the basis (the projection; the subtraction fused with the projection of
        the result), a third only when the first pass cancelled most of ``W``."""
        if self.m == 0:
            return torch.zeros(W.shape[0], 0, dtype=torch.float64, device=W.device)
        before = W.norm(dim=1)
        H = self.project(W)
        again = self.subtract(W, H, project_after=True)
        assert again is not None
        if bool((W.norm(dim=1) < _DGKS_ETA * before).any()):
            self.subtract(W, again)
        return H

    def project_and_subtract(self, W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The first pass of classical Gram-Schmidt twice (CGS2) of ``W [b, n]`` (float64, in
        place) against all rows, and the second pass's coefficients.

        Two sweeps over the basis: ``H = W Q^T``; then ``W -= H Q`` fused with ``E = W Q^T``
        and the squared norms of ``W`` afterwards. Returns ``H [b, m]``, ``E [b, m]`` and the
        norms of ``W - E Q`` ``[b]`` (by Pythagoras, as ``Q`` is orthonormal). The caller
        subtracts ``E Q`` later, in a sweep it makes anyway (:meth:`append_residual`),
        or with :meth:`subtract`. Twice is enough (Giraud, Langou & Rozloznik 2005) and the
        coefficients of both passes add up, as in ARPACK's ``dsaitr`` (Lehoucq, Sorensen & Yang
        1998, *ARPACK Users' Guide*, Sec. 4.5)."""
        b, m = W.shape[0], self.m
        H = self.project(W)
        if m == 0:
            return H, H.clone(), W.norm(dim=1)
        E = torch.zeros_like(H)
        squares = torch.zeros(b, b, dtype=torch.float64, device=W.device)
        for start, k, rows in self._chunks(m):
            Wc = W[:, start : start + k]
            Wc.sub_(H @ rows)
            E.addmm_(Wc, rows.T)
            squares.addmm_(Wc, Wc.T)
        norms = (squares.diagonal() - (E * E).sum(dim=1)).clamp_min(0).sqrt()
        return H, E, norms

    def combine(self, S: Tensor) -> Tensor:
        """``S^T Q[:S.shape[0]]`` as float64 rows ``[k, n]`` on the basis device (Ritz vectors)."""
        S = S.to(device=self.device, dtype=torch.float64)
        out = torch.zeros(S.shape[1], self.n, dtype=torch.float64, device=self.device)
        for start, k, rows in self._chunks(S.shape[0]):
            out[:, start : start + k] = S.T @ rows
        return out

    def rotate(self, S: Tensor) -> None:
        """Replace the rows by ``S^T Q`` (``S [m, k]``, ``k <= m``), chunk by chunk in place."""
        m, k = S.shape
        S = S.to(device=self.device, dtype=torch.float64)
        targets = self._row_views(0, k)
        for start, width, rows in self._chunks(m, extra=k):
            new = S.T @ rows  # computed before any row of this chunk is overwritten
            done = 0
            for _, view in targets:
                view[:, start : start + width] = new[done : done + view.shape[0]]
                done += view.shape[0]
        self.m = k
        # release blocks no longer needed (beyond the kept rows plus one block of room)
        keep = 0
        total = 0
        for block in self.blocks:
            total += block.shape[0]
            keep += 1
            if total >= k + self.grow:
                break
        self.blocks = self.blocks[:keep]


# ---------------------------------------------------------------------------------------------
# The lockstep Lanczos core (SLQ, block Lanczos)
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
    every basis vector and orthogonalise each new block against all of them by classical
    Gram-Schmidt, repeated when the first pass cancelled most of the vector (the DGKS criterion:
    Daniel, Gragg, Kaufman & Stewart 1976; twice is enough: Giraud, Langou & Rozloznik 2005). The
    coefficients of the first pass give ``A_j``; the rest are rounding-level and discarded, as in
    Parlett, *The Symmetric Eigenvalue Problem*, Ch. 13.

    Breakdown (a residual block with a zero singular value, i.e. an invariant subspace) zeroes
    that row of ``B_j`` and continues with a random vector orthogonal to the basis, so ``T``
    becomes block diagonal and the Ritz values found so far are exact. A basis that spans all of
    ``R^n`` has residual exactly zero.

    Storage: recurrence ``i``'s basis is a :class:`_Basis` of rows in the operator's dtype on
    ``basis_device``; memory is ``p * m * b * n`` numbers of that dtype plus a few float64 blocks.
    """

    def __init__(
        self,
        op: LinearOperator,
        start: Tensor,
        *,
        max_blocks: int,
        generator: torch.Generator,
        basis_device: str = "device",
    ) -> None:
        self.op = op
        self.p, self.b, self.n = start.shape
        self.max_blocks = int(max_blocks)
        self.generator = generator
        self.storage = _storage_device(op, basis_device)
        self.num_blocks = 0
        dtype = basis_dtype(op)
        shared = _ChunkBuffer()
        self.bases = [
            _Basis(self.n, self.max_blocks * self.b, dtype, self.storage, buffer=shared)
            for _ in range(self.p)
        ]
        for i in range(self.p):
            self.bases[i].append(start[i].to(device=self.storage, dtype=torch.float64))
        # A_j and B_j (the last stored B_j is the residual block), kept on the CPU for the small
        # eigenproblems.
        self._diagonal = torch.zeros(self.p, self.max_blocks, self.b, self.b, dtype=torch.float64)
        self._coupling = torch.zeros(self.p, self.max_blocks, self.b, self.b, dtype=torch.float64)
        self.scale = 0.0  # running estimate of ||A||_2 (for the breakdown test)
        self.breakdown = torch.zeros(self.p, dtype=torch.bool)  # last residual block vanished

    @property
    def num_products(self) -> int:
        """Operator-vector products spent so far."""
        return self.num_blocks * self.p * self.b

    def basis(self) -> Tensor:
        """The Krylov bases as rows, ``[p, m * b, n]`` (a copy, in the storage dtype)."""
        m = self.num_blocks * self.b
        return torch.stack([basis.rows(0, m) for basis in self.bases])

    def step(self) -> None:
        """Multiply the newest block by ``A`` and extend the recurrence by one block."""
        j, p, b, n = self.num_blocks, self.p, self.b, self.n
        if j >= self.max_blocks:
            raise RuntimeError("Lanczos recurrence is already at its maximum number of blocks")
        blocks = [basis.rows(j * b, (j + 1) * b) for basis in self.bases]
        current = blocks[0] if p == 1 else torch.cat(blocks)  # [p * b, n]; a view for one recurrence
        del blocks
        products = self.op.matmat(current.T.to(device=self.op.device, dtype=self.op.dtype))
        residual = products.T.to(device=self.storage, dtype=torch.float64).reshape(p, b, n).contiguous()
        del products, current
        alpha = torch.empty(p, b, b, dtype=torch.float64)
        for i in range(p):
            H = self.bases[i].orthogonalize(residual[i])  # [b, (j + 1) b]: (A q_r) . q_c
            a = H[:, j * b : (j + 1) * b].cpu()
            alpha[i] = 0.5 * (a + a.T)
        self._diagonal[:, j] = alpha
        self.scale = max(self.scale, float(alpha.abs().sum(dim=-1).max()))

        if (j + 1) * b >= n:
            # The basis spans R^n: the residual is zero in exact arithmetic.
            coupling = torch.zeros(p, b, b, dtype=torch.float64)
            self.breakdown = torch.ones(p, dtype=torch.bool)
            next_block = None
        else:
            if b == 1:
                singular = residual.norm(dim=2)  # [p, 1]
                # in place: the residual is not needed after it (one float64 block, not two)
                next_block = residual.div_(singular.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1))
                coupling = singular.unsqueeze(-1).cpu()
            else:
                # residual (rows) = U S Vh  =>  next rows Vh and B_j = S U^T (residual = B_j^T Q_{j+1}^T).
                U, singular, next_block = torch.linalg.svd(residual, full_matrices=False)
                coupling = (singular.unsqueeze(-1) * U.transpose(1, 2)).cpu()
            singular = singular.cpu()
            self.scale = max(self.scale, float(singular.max()))
            deficient = singular <= _BREAKDOWN_RTOL * max(self.scale, torch.finfo(torch.float64).tiny)
            if bool(deficient.any()):
                coupling[deficient] = 0.0
                if j + 1 < self.max_blocks:
                    next_block = self._random_orthogonal_rows(next_block, deficient)
            self.breakdown = deficient.all(dim=1)
        self._coupling[:, j] = coupling
        self.num_blocks += 1
        if next_block is not None and self.num_blocks < self.max_blocks:
            for i in range(p):
                self.bases[i].append(next_block[i])

    def _random_orthogonal_rows(self, block: Tensor, deficient: Tensor) -> Tensor:
        """Replace the ``deficient`` rows of ``block`` by random unit vectors orthogonal to the rest."""
        block = block.clone()
        for i in range(self.p):
            valid = ~deficient[i]
            for r in torch.nonzero(deficient[i]).flatten().tolist():
                x = gaussian_vectors(self.n, 1, self.generator, block.device).T.contiguous()  # [1, n]
                others = block[i][valid.to(block.device)]
                for _ in range(2):
                    self.bases[i].subtract(x, self.bases[i].project(x))
                    x -= (x @ others.T) @ others
                block[i, r] = x[0] / x.norm()
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

    def ritz_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), eigenvectors ``S`` of recurrence 0's ``T`` and residual norms.

        For the Ritz pair ``(theta_i, Q s_i)`` the residual is
        ``||A Q s_i - theta_i Q s_i|| = ||B_m s_i[last block]||`` (``|beta_m s_i[m]|`` for
        ``b = 1``; Parlett, *The Symmetric Eigenvalue Problem*, Ch. 13), which costs no product.
        """
        if self.b == 1:
            alphas, betas = self.tridiagonal()
            a, c = alphas[0].numpy(), betas[0].numpy()
            theta, S = _tridiagonal_eigh(a, c[:-1])
            return theta, S, np.abs(c[-1] * S[-1, :])
        T, coupling = self.block_tridiagonal(0)
        theta, S = np.linalg.eigh(T)
        return theta, S, np.linalg.norm(coupling @ S[-self.b :, :], axis=0)


# ---------------------------------------------------------------------------------------------
# Thick-restart Lanczos (single vector, bounded basis)
# ---------------------------------------------------------------------------------------------


class _ThickRestartLanczos:
    """Lanczos with full reorthogonalisation in a basis of at most ``capacity`` vectors.

    State (Wu & Simon 2000, Sec. 2; Stewart's Krylov-Schur decomposition, SIAM J. Matrix Anal.
    Appl. 23(3), 2001, for symmetric ``A``): orthonormal rows ``Q [m, n]``, the projected
    matrix ``T = Q A Q^T`` (``[m, m]``), a unit vector ``q`` orthogonal to ``Q`` and a coupling
    vector ``c`` with

        A Q^T = Q^T T + q c^T.

    A step appends ``q`` to ``Q``, multiplies it by ``A``, orthogonalises the product against the
    whole basis (classical Gram-Schmidt twice, the second subtraction deferred to the sweep that
    stores the next ``q``; between steps ``q`` is held as that unnormalised residual, its
    pending correction and ``beta``) and sets ``T[m, m] = alpha``,
    ``T[:m, m] = T[m, :m] = c``, ``c <- beta e_m``, ``q <- r / beta``. Without restarts ``T`` is
    the Lanczos tridiagonal and this is plain Lanczos with full reorthogonalisation. When the
    basis is full, ``restart(keep)`` keeps the Ritz vectors ``Q^T S_keep`` of the chosen Ritz
    values ``Theta_keep``: ``T <- diag(Theta_keep)``, ``c <- S_keep^T c`` (the "arrowhead" of
    Wu & Simon, Eq. 2.4), ``q`` unchanged, so the relation above still holds and the next step
    continues the Krylov space of every kept vector. Ritz residuals are ``|c . s_i|``.
    """

    def __init__(
        self,
        op: LinearOperator,
        start: Tensor,
        *,
        capacity: int,
        basis_device: str = "device",
    ) -> None:
        self.op = op
        self.n = op.n
        self.storage = _storage_device(op, basis_device)
        self.basis = _Basis(self.n, capacity, basis_dtype(op), self.storage)
        self.capacity = int(capacity)
        # One float64 vector for the whole run: between steps it holds the next Lanczos vector
        # times ``_divisor`` (divided on its way into the basis), during a step the product
        # (written straight into it) and then the residual. Writing each product into a fresh
        # allocation re-faulted its pages every step (on the CPU, after the operator had returned
        # the freed ones to the system): 0.3 s per product on an 85M model.
        self._work: Tensor | None = start.reshape(1, -1).to(device=self.storage, dtype=torch.float64)
        self._divisor = float(self._work.norm())
        # the second Gram-Schmidt pass of the last step, subtracted when ``_work`` is stored
        self._correction = torch.zeros(1, 0, dtype=torch.float64, device=self.storage)
        self.c = np.zeros(0)
        self.T = np.zeros((0, 0))
        self.num_products = 0
        self.restarts = 0
        self.scale = 0.0
        self.breakdown = False

    @property
    def full(self) -> bool:
        """Whether the basis holds ``capacity`` vectors (the next step needs a restart)."""
        return self.basis.m >= self.capacity

    def step(self) -> None:
        """One Lanczos step (one product).

        The last residual, less its deferred second Gram-Schmidt pass and divided by its norm,
        goes into the basis as ``q`` (one sweep); ``w = A q`` is written into the float64 working
        vector; classical Gram-Schmidt twice against the whole basis, ``q`` included, removes the
        recurrence's own terms (``alpha q`` and the couplings ``c``) together with the rounding
        error that full reorthogonalisation exists for (two sweeps, the second pass's subtraction
        deferred to the next store). ``alpha = q . A q`` is the sum of both passes' coefficients
        on ``q`` (as ARPACK's ``dsaitr``) and ``beta`` the norm of the result. Three sweeps over
        the basis and the working vector per step, where the recurrence terms and the DGKS test
        took six."""
        assert self._work is not None and not self.full and not self.breakdown
        m = self.basis.m
        w = self._work
        self.basis.append_residual(w, self._correction, self._divisor)
        stored = self.basis.row(m)
        if self.storage == self.op.device:
            self.op.matmat(stored.unsqueeze(1), out=w.T)
        else:
            w[0].copy_(self.op.matmat(stored.to(device=self.op.device).unsqueeze(1)).reshape(-1))
        self.num_products += 1
        H, E, norms = self.basis.project_and_subtract(w)
        self._correction = E
        alpha = float(H[0, m] + E[0, m])
        T = np.zeros((m + 1, m + 1))
        T[:m, :m] = self.T
        T[:m, m] = T[m, :m] = self.c
        T[m, m] = alpha
        self.T = T
        self.scale = max(self.scale, abs(alpha) + float(np.abs(self.c).sum()))
        beta = float(norms[0])
        self.scale = max(self.scale, beta)
        self.c = np.zeros(m + 1)
        if m + 1 >= self.n or beta <= _BREAKDOWN_RTOL * max(self.scale, torch.finfo(torch.float64).tiny):
            # an invariant subspace (or all of R^n): the Ritz values are exact eigenvalues
            self.breakdown = True
            self._work = None
        else:
            self.c[m] = beta
            self._divisor = beta  # w / beta is the next vector, divided when it is stored

    def ritz_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), eigenvectors ``S`` of ``T`` and residual norms ``|c . s_i|``."""
        if self.restarts == 0:  # T is tridiagonal: O(m^2) LAPACK stemr
            theta, S = _tridiagonal_eigh(np.diag(self.T).copy(), np.diag(self.T, 1).copy())
        else:
            theta, S = np.linalg.eigh(0.5 * (self.T + self.T.T))
        return theta, S, np.abs(self.c @ S)

    def restart(self, theta: np.ndarray, S: np.ndarray, keep: np.ndarray) -> None:
        """Keep the Ritz pairs ``keep`` (indices into ``theta``) and drop the rest of the basis."""
        keep = np.sort(np.asarray(keep))
        S_keep = S[:, keep]
        if self._work is not None and self._correction.shape[1]:  # the deferred pass, on the old basis
            self.basis.subtract(self._work, self._correction)
            self._correction = self._correction[:, :0]
        self.basis.rotate(torch.as_tensor(S_keep, dtype=torch.float64))
        self.T = np.diag(theta[keep])
        self.c = S_keep.T @ self.c
        self.restarts += 1

    def vectors(self, S: np.ndarray, columns: np.ndarray) -> Tensor:
        """Ritz vectors ``Q^T S[:, columns]`` as an ``[n, len(columns)]`` float64 tensor."""
        return self.basis.combine(torch.as_tensor(S[:, columns], dtype=torch.float64)).T


def minimum_basis(which: str, k: int) -> int:
    """The smallest thick-restart basis ``lanczos`` accepts: ``2 w + 3`` vectors for ``w`` wanted
    values (``k``, plus one for ``which="both"``), so every restart keeps the wanted Ritz vectors,
    as many again as a buffer, and adds at least two new Krylov directions."""
    wanted = k + (1 if which == "both" else 0)
    return 2 * wanted + 3


# A full basis costs two sweeps with float64 dot products over every stored vector per step: from
# about a million parameters on, that rivals the product itself for the top of the spectrum,
# whose Ritz vectors survive thick restarts. GPT-2 shapes, 8 x 64 tokens, lambda_max at tol 1e-3,
# seeds 0 and 1, 2 threads: a 12-vector basis took 0.71-0.90x the time of a full one at 3.3M
# parameters (19-21 products either way) and 0.76-0.80x at 19M (27-31 products against 27-30).
_SWEEP_BOUND_ROWS = 1 << 20
_TOP_BASIS = 12


def preferred_basis(which: str, k: int, n: int, steps: int) -> int:
    """The Krylov basis ``lanczos`` keeps when memory allows all ``steps`` vectors.

    A full basis, except for the top of the spectrum (``which="LA"``) of an operator of at least
    ``2**20`` rows: there a thick-restart basis of ``max(12, 2 minimum_basis("LA", k))`` vectors
    (Wu & Simon 2000, SIAM J. Matrix Anal. Appl. 22(2)), because reorthogonalising against a
    full basis costs about as much per step as the product (see the measurements above). The
    smallest eigenvalue needs the unrestarted Krylov polynomial and keeps a full basis.
    """
    if which != "LA" or n < _SWEEP_BOUND_ROWS:
        return steps
    return min(steps, max(_TOP_BASIS, 2 * minimum_basis(which, k)))


def _keep_after_restart(theta: np.ndarray, which: str, k: int) -> np.ndarray:
    """Indices (into ascending ``theta``) of the Ritz pairs a thick restart keeps.

    The wanted values plus about half of the remaining room, taken next to the wanted end(s)
    (Wu & Simon 2000, Sec. 4, keep about half of the basis; nearby Ritz vectors carry the
    information about the next eigenvalues and speed up convergence), always leaving at least two
    slots for new directions.
    """
    m = len(theta)
    wanted = k + (1 if which == "both" else 0)
    keep = min(m - 2, max(wanted + 1, wanted + (m - wanted) // 2))
    order = np.arange(m)
    if which == "LA":
        return order[::-1][:keep]
    if which == "SA":
        return order[:keep]
    extra = keep - wanted
    top, bottom = k + (extra + 1) // 2, 1 + extra // 2
    return np.concatenate([order[::-1][:top], order[:bottom]])


# ---------------------------------------------------------------------------------------------
# Small projected problems
# ---------------------------------------------------------------------------------------------


def _tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (ascending) of the symmetric tridiagonal matrix with diagonal ``alphas``
    and off-diagonal ``betas`` (LAPACK ``stemr`` via SciPy: O(m^2) for all pairs)."""
    if len(alphas) == 1:
        return alphas.astype(np.float64).copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(alphas, betas)


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


def _start_rows(op: LinearOperator, v0: Tensor) -> Tensor:
    V = v0.to(dtype=torch.float64, device=op.device)
    if V.dim() == 1:
        V = V.unsqueeze(1)
    if V.dim() != 2 or V.shape[0] != op.n:
        raise ValueError(f"v0 must have shape [{op.n}] or [{op.n}, p], got {tuple(v0.shape)}")
    norms = V.norm(dim=0)
    if bool((norms == 0).any()):
        raise ValueError("start vectors must be nonzero")
    return (V / norms).T.contiguous()  # [p, n]


def lanczos_tridiagonal(
    op: LinearOperator | Tensor | np.ndarray,
    v0: Tensor,
    num_steps: int,
    *,
    seed: int = 0,
    return_basis: bool = False,
    basis_device: str = "device",
) -> LanczosTridiagonal:
    """Run ``p`` Lanczos recurrences with full reorthogonalisation in lockstep.

    Given start vectors ``v0`` (``[n]`` or ``[n, p]``; each column is normalised), recurrence ``i``
    builds an orthonormal basis ``Q_i = [q_1, ..., q_m]`` of the Krylov space
    ``K_m(A, v0_i)`` with ``A q_j = beta_{j-1} q_{j-1} + alpha_j q_j + beta_j q_{j+1}``
    (Lanczos 1950; Golub & Van Loan Sec. 10.1), reorthogonalising each new vector against all
    previous ones. Each step costs ONE ``matmat`` with ``p`` columns, which on a network is much
    cheaper than ``p`` separate Hessian-vector products. Memory: ``p * m`` vectors in the
    operator's dtype (on ``basis_device``: ``"device"`` or ``"host"``).

    ``num_steps`` is capped at ``n`` (the Krylov space cannot grow further). On breakdown
    (``beta_j = 0``: an invariant subspace) the recurrence continues from a random unit vector
    orthogonal to its basis with ``beta_j = 0``; its later Ritz values then have zero first
    components (zero quadrature weight). ``seed`` only feeds those restart vectors.

    Returns the tridiagonal matrices (float64, CPU) and, with ``return_basis``, the bases
    ``[p, m, n]`` (in the storage dtype, on the storage device).
    """
    op = as_operator(op)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    start = _start_rows(op, v0).unsqueeze(1)  # [p, 1, n]
    steps = min(int(num_steps), op.n)
    rec = _LanczosRecurrence(
        op, start, max_blocks=steps, generator=seeded_generator(seed), basis_device=basis_device
    )
    for _ in range(steps):
        rec.step()
    alphas, betas = rec.tridiagonal()
    return LanczosTridiagonal(
        alphas=alphas.clone(),
        off_diagonal=betas[:, :-1].contiguous(),
        residual_norms=betas[:, -1].contiguous(),
        num_products=rec.num_products,
        basis=rec.basis() if return_basis else None,
    )


def _row_dots(W: Tensor, Q: Tensor) -> Tensor:
    """``(W * Q).sum(dim=1)`` in float64 for a float64 ``W`` and ``Q`` in any dtype, row by row in
    chunks (no ``[p, n]`` temporary; a float32 ``Q`` is widened a chunk at a time). On the host."""
    size = chunk_numbers(W.device)
    dots = []
    for w, q in zip(W, Q, strict=True):
        total = torch.zeros((), dtype=torch.float64, device=W.device)
        for start in range(0, w.numel(), size):
            part = q[start : start + size]
            total += torch.dot(w[start : start + size], part.to(torch.float64))
        dots.append(total)
    return torch.stack(dots).cpu()


def _subtract_scaled_rows(W: Tensor, coefficients: Tensor, Q: Tensor) -> None:
    """``W -= coefficients[:, None] * Q`` row by row in chunks, in place (``Q`` in any dtype)."""
    size = chunk_numbers(W.device)
    for w, c, q in zip(W, coefficients.tolist(), Q, strict=True):
        for start in range(0, w.numel(), size):
            w[start : start + size].sub_(q[start : start + size].to(torch.float64), alpha=c)


def lanczos_short_recurrence(
    op: LinearOperator | Tensor | np.ndarray,
    v0: Tensor,
    num_steps: int,
    *,
    seed: int = 0,
) -> LanczosTridiagonal:
    """The tridiagonal matrices of ``lanczos_tridiagonal`` without a stored basis.

    The plain three-term recurrence ``beta_j q_{j+1} = A q_j - alpha_j q_j - beta_{j-1} q_{j-1}``
    with local reorthogonalisation (the new vector is orthogonalised twice against ``q_j`` and
    ``q_{j-1}``), ``p`` columns per ``matmat``. ``q_j`` and ``q_{j-1}`` are kept in the compute
    dtype, as a Krylov basis is (float32 for a float32 operator, whose products carry that rounding
    anyway); the new vector and every dot product are float64: ``2 p`` vectors in the compute dtype
    and ``p`` in float64, whatever ``num_steps``.
    Without full reorthogonalisation the computed vectors lose global orthogonality once a Ritz
    value converges (Paige 1971) and converged outliers reappear as "ghost" copies; what stays
    accurate is what quadrature needs: the Lanczos process in finite precision is exact Lanczos
    on a nearby larger matrix whose eigenvalues cluster within ``O(eps ||A||)`` of those of
    ``A`` (Greenbaum 1989, Linear Algebra Appl. 113:7-63), so the Gauss quadrature nodes and
    weights of ``T_m`` still approximate the spectral measure seen by the probe, the ghosts
    splitting their eigenvalue's weight between them (Golub & Meurant 2010, Ch. 4; Meurant &
    Strakos 2006, Acta Numerica 15:471-542). Chen, Trogdon & Ubaru (2021, ICML, arXiv
    2105.06595) bound the resulting SLQ error for spectrum approximation without
    reorthogonalisation by the same ``O(1/m)`` Wasserstein term as with it, up to rounding
    terms. The individual nodes are not eigenvalue estimates, and ``return_basis`` is not
    available. Breakdown continues from a random vector with ``beta_j = 0`` as in
    ``lanczos_tridiagonal`` (orthogonal to the last two vectors only).
    """
    op = as_operator(op)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    storage = basis_dtype(op)
    Q = _start_rows(op, v0).to(storage)  # [p, n]
    p, n = Q.shape
    steps = min(int(num_steps), n)
    generator = seeded_generator(seed)
    alphas = torch.zeros(p, steps, dtype=torch.float64)
    betas = torch.zeros(p, steps, dtype=torch.float64)
    previous = torch.zeros_like(Q)
    scale = 0.0
    for j in range(steps):
        W = matmat_float64(op, Q.T).T.contiguous()  # [p, n] float64
        # Q and its predecessor in the compute dtype (like a Krylov basis), W in float64, with
        # float64 dot products; row by row, in chunks and in place: no [p, n] temporaries (at
        # 124M parameters a float64 vector is 1 GB).
        alpha = _row_dots(W, Q)
        _subtract_scaled_rows(W, alpha, Q)
        if j > 0:
            _subtract_scaled_rows(W, betas[:, j - 1], previous)
        for _ in range(2):  # local reorthogonalisation against q_j and q_{j-1}
            _subtract_scaled_rows(W, _row_dots(W, Q), Q)
            _subtract_scaled_rows(W, _row_dots(W, previous), previous)
        alphas[:, j] = alpha
        beta = W.norm(dim=1).cpu()
        scale = max(scale, float((alpha.abs() + beta).max()))
        if j + 1 >= n:
            beta = torch.zeros_like(beta)
        betas[:, j] = beta
        W.div_(beta.clamp_min(torch.finfo(torch.float64).tiny).to(W.device).unsqueeze(1))
        previous, Q = Q, W.to(storage)
        del W
        dead = beta <= _BREAKDOWN_RTOL * max(scale, torch.finfo(torch.float64).tiny)
        if j + 1 < steps and bool(dead.any()):
            betas[dead.cpu(), j] = 0.0
            for i in torch.nonzero(dead).flatten().tolist():
                x = gaussian_vectors(n, 1, generator, Q.device)[:, 0]
                last = previous[i].to(torch.float64)
                for _ in range(2):
                    x -= (x @ last) * last
                Q[i] = x / x.norm()
    return LanczosTridiagonal(
        alphas=alphas,
        off_diagonal=betas[:, :-1].contiguous(),
        residual_norms=betas[:, -1].contiguous(),
        num_products=steps * p,
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
    ``basis_vectors`` is the most Krylov vectors the run kept (``None`` for power iteration):
    the number of steps when the basis was full, the thick-restart bound otherwise, with
    ``restarts`` the number of thick restarts.
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
    basis_vectors: int | None = None
    restarts: int = 0
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
            "basis_vectors": self.basis_vectors,
            "restarts": int(self.restarts),
        }


def default_max_iter(which: str, k: int) -> int:
    """Default Krylov dimension (= products for block size 1); see ``lanczos``."""
    if which == "LA":
        return max(3 * k + 30, 60)
    return max(_DEFAULT_DIMENSION_SMALLEST, 3 * k + 30)


def basis_capacity(
    op: LinearOperator,
    steps: int,
    smallest: int,
    *,
    memory_budget: int | None = None,
    basis_device: str = "device",
) -> int:
    """How many Krylov vectors fit: ``steps`` (a full basis) if they fit ``memory_budget`` bytes,
    else as many as fit, not fewer than ``smallest``.

    A vector costs ``n`` numbers of the storage dtype; two float64 working vectors and the
    float64 chunk buffer (4 MiB on a CPU, 128 MiB on an accelerator) are set aside first. ``memory_budget=None``: the
    :func:`~landscape.curvature.memory.default_budget` of the storage device. Raises
    :class:`UserError` (one line: what is needed, the budget) when even ``smallest`` does not fit.
    """
    from landscape.curvature.budget import default_budget, format_bytes

    storage = _storage_device(op, basis_device)
    budget = default_budget(storage) if memory_budget is None else int(memory_budget)
    per_vector = op.n * torch.empty((), dtype=basis_dtype(op)).element_size()
    working = 2 * 8 * op.n + 8 * chunk_numbers(storage)
    fits = max(0, (budget - working) // per_vector)
    if fits >= steps:
        return steps
    if fits >= smallest:
        return int(fits)
    needed = working + smallest * per_vector
    raise UserError(
        f"Lanczos needs at least {smallest} Krylov vectors of {op.n:,} numbers "
        f"({format_bytes(needed)} with its working vectors), more than the memory budget of "
        f"{format_bytes(budget)}; raise --max-memory or keep the basis on the host"
    )


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
    max_basis: int | None = None,
    basis_device: str = "device",
    memory_budget: int | None = None,
) -> EigenResult:
    """Extreme eigenvalues of a symmetric operator by Lanczos, with full or bounded reorthogonalisation.

    Method: the Lanczos recurrence (Lanczos 1950, Golub & Van Loan Sec. 10.1, block version Golub
    & Underwood 1977) builds an orthonormal basis ``Q_m`` of the Krylov space ``K_m(A, v0)`` and
    ``T_m = Q_m^T A Q_m``; the eigenvalues ``theta_i`` of ``T_m`` (Ritz values) approximate the
    extreme eigenvalues of ``A``, the optimal polynomial approximation in ``K_m``
    (Kaniel-Paige-Saad convergence theory: Saad, *Numerical Methods for Large Eigenvalue
    Problems*, Ch. 6). Each new Krylov vector is reorthogonalised against all kept ones, so no
    spurious (ghost) Ritz values appear.

    Memory: when the basis of ``max_iter`` vectors fits (``max_basis`` not smaller, or the memory
    budget allows it), every Krylov vector is kept: plain Lanczos with full reorthogonalisation.
    Otherwise the basis is bounded to ``max_basis`` vectors and the run is thick-restart Lanczos
    (Wu & Simon 2000, SIAM J. Matrix Anal. Appl. 22(2):602-616): when the basis is full, the
    wanted Ritz vectors and about half of the remaining room next to the wanted end are kept
    (``_keep_after_restart``), the projected matrix becomes diagonal with an arrowhead row, and
    the recurrence continues from the last residual vector. The wanted Ritz vectors never leave
    the basis, so converged values stay converged (implicit locking) and the ``converged`` flags
    and bounds below hold unchanged. A bounded run needs more products than an unrestarted one
    for the same accuracy (the Krylov polynomial is rebuilt after every restart; for the
    clustered bottom of a network's spectrum the difference is large, see below), but only
    ``O(max_basis)`` vectors: ``minimum_basis(which, k)`` at the least. ``max_basis=None``:
    as many as ``memory_budget`` bytes allow (default: most of the free memory of the storage
    device, :func:`basis_capacity`), up to :func:`preferred_basis` (a full basis, except for the
    top of the spectrum from ``2**20`` rows on, where a 12-vector thick-restart basis is faster
    than reorthogonalising against all of them). Vectors are stored in the operator's dtype with
    float64 dot products and coefficients; ``basis_device="host"`` keeps them in (pinned) host memory
    when the accelerator is short.

    Stopping: after every step (an ``m x m`` eigenproblem, negligible next to a product) each
    Ritz pair gets its residual ``r_i = |c . s_i|`` (the norm of ``A Q y_i - theta_i Q y_i``,
    free of products; ``|beta_m s_i[m]|`` without restarts, ``||B_m y_i[last block]||`` for
    blocks) and the error bound ``min(r_i, r_i^2 / gap_i)`` (residual and Kato-Temple bounds:
    Parlett, *The Symmetric Eigenvalue Problem*, Ch. 4, 11 and 13), with ``gap_i`` the distance
    to the nearest other Ritz value shrunk by that value's residual (see ``_error_bounds``). A
    Ritz value counts as converged when its bound is ``<= tol * |theta_i|``. Bounds are never
    reported below the operator's rounding level ``10 eps(dtype) max|theta|`` (products in
    float32 perturb ``A`` by about ``eps ||A||``), and a bound at that level counts as converged.
    The run stops when all wanted values have converged and at least ``min_iter`` steps were
    taken, on breakdown (``beta_m ~ 0``: ``K_m`` is invariant and its Ritz values are exact
    eigenvalues), or after ``max_iter`` steps. Stopping on the residual, not on the change between
    iterates, is what makes the ``converged`` flags meaningful: Ritz values can stagnate for many
    steps and move again.

    What no Krylov method can see: an eigenvalue whose eigenvector is (nearly) missing from the
    start vector. The residual bound always holds for SOME eigenvalue, but a Ritz value may settle
    on ``lambda_2`` before ``lambda_1`` appears, and a single start vector sees only one copy of a
    repeated eigenvalue (use ``block_size >=`` the multiplicity). The default ``min_iter`` makes the
    first case rare (the Krylov polynomial amplifies the ``u_1`` component like
    ``T_m(1 + 2 gap ratio)``). Measured on a trained 2-layer transformer LM whose top two
    eigenvalues are 3.9 % apart, ``k=1, tol=1e-3`` over 50 start vectors: a minimum Krylov
    dimension of 3-5 returned a value more than ``tol`` from ``lambda_1`` as converged for 6 of
    them, 6 for 4, 8 for none; on a matrix with the same top eigenvalues over a bulk near 0, 400
    start vectors: 3 for 22 %, 6 for 9 %, 8 for 0.5 %, 10 for none.

    ``which``: ``"LA"`` the ``k`` largest (descending); ``"SA"`` the ``k`` smallest (ascending);
    ``"both"`` the ``k`` largest and the smallest from ONE Krylov run, which continues until both
    ends have converged (``products_to_converge`` records when each top value converged). Prefer
    :func:`lambda_max` and :func:`lambda_min` as separate calls where only one end is wanted.

    Why not ARPACK (``scipy.sparse.linalg.eigsh``) by default: the smallest eigenvalue of a
    trained network's Hessian sits in a tiny cluster near 0 and emerges only from a high-degree
    Krylov polynomial. Implicit restarts with ``ncv=20`` throw that polynomial away every 20
    steps; measured on a trained net, ``eigsh`` needed 511-571 products for ``lambda_min`` where
    160 unrestarted steps reached 1e-5 relative. A spectral shift ``A - sigma I`` does not help
    Lanczos at all (``K_m(A - sigma I, v) = K_m(A, v)``); it only helps power iteration. So a full
    basis is used whenever it fits, and a bounded one only when it does not.

    Defaults: ``max_iter`` (in steps; a step costs ``block_size`` products) caps the run at
    ``max(3k + 30, 60)`` products for ``"LA"`` (top outliers of a network Hessian converge in
    6-30 products) and ``max(300, 3k + 30)`` for ``"SA"``/``"both"``, because the smallest
    eigenvalue needs 100-250 unrestarted steps; with a full basis also at ``n``. ``min_iter``
    defaults to a Krylov dimension of ``max(wanted + 2, 8)``: every wanted Ritz value has
    neighbours for its gap estimate, and misconvergence to ``lambda_2`` becomes rare, for at most
    a few extra products. ``tol`` is relative.

    ``block_size > 1`` runs block Lanczos (``block_size`` columns per ``matmat``: fewer, larger
    calls, and repeated eigenvalues are resolved) with a full basis only; it usually needs more
    products than ``block_size=1`` for the same accuracy. ``v0`` (``[n]`` or ``[n, block_size]``)
    replaces the random Gaussian start drawn from ``seed``. With ``return_eigenvectors`` the Ritz
    vectors are returned as an ``[n, k]`` tensor in the operator's dtype (and
    ``lambda_min_eigenvector`` for ``"both"``).
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
        max_iter = math.ceil(default_max_iter(which, k) / b)
    max_iter = int(max_iter)
    full_steps = min(max_iter, max_blocks)
    if full_steps * b < num_wanted:
        raise ValueError(f"max_iter={max_iter} steps of block size {b} cannot give {num_wanted} Ritz values")
    smallest = min(minimum_basis(which, k), full_steps)
    if max_basis is not None:
        if int(max_basis) < smallest:
            raise ValueError(
                f"max_basis must be at least {smallest} for {num_wanted} wanted values, got {max_basis}"
            )
        capacity = min(int(max_basis), full_steps)
    elif b == 1:
        preferred = preferred_basis(which, k, n, full_steps)
        capacity = basis_capacity(
            op, preferred, smallest, memory_budget=memory_budget, basis_device=basis_device
        )
    else:
        capacity = full_steps
    if b > 1 and capacity < full_steps:
        raise ValueError(
            f"block Lanczos needs a full basis of {full_steps * b} vectors (max_basis={max_basis})"
        )
    bounded = capacity < full_steps
    max_iter = max_iter if bounded else full_steps
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
    if b == 1:  # normalised when it is stored (a QR of one column cost 2.5 s at 85M)
        if v0 is not None and start.data_ptr() == v0.data_ptr():
            start = start.clone()  # the recurrence writes into its start vector: never the caller's
        if float(start.norm()) == 0.0:
            raise ValueError("v0 must be nonzero")
    else:
        start = torch.linalg.qr(start).Q  # orthonormal columns
    if b == 1:
        rec: Any = _ThickRestartLanczos(op, start[:, 0], capacity=capacity, basis_device=basis_device)
    else:
        rec = _LanczosRecurrence(
            op, start.T.unsqueeze(0), max_blocks=full_steps, generator=generator, basis_device=basis_device
        )
    del start  # the recurrence holds its own copy: one float64 vector less for the whole run

    # Products in the operator's dtype perturb A by about eps(dtype) ||A||: no bound is reported
    # below that rounding level, and a value whose bound reaches it counts as converged.
    floor = 10.0 * torch.finfo(op.dtype).eps
    top_since: list[int | None] = [None] * k
    min_since: int | None = None
    for step in range(1, max_iter + 1):
        if b == 1 and rec.full:
            ritz_values, ritz_vectors, _ = rec.ritz_pairs()
            rec.restart(ritz_values, ritz_vectors, _keep_after_restart(ritz_values, which, k))
        rec.step()
        if step * b < num_wanted:
            continue
        theta, S, residuals = rec.ritz_pairs()
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
        if bool(rec.breakdown if b == 1 else rec.breakdown[0]) or (wanted_converged and step >= min_iter):
            break

    eigenvectors = None
    min_vector = None
    if return_eigenvectors:
        columns = top.copy() if which != "both" else np.concatenate([top, [0]])
        if b == 1:
            vectors = rec.vectors(S, columns)
        else:
            basis = rec.basis()[0].to(torch.float64)  # [m b, n]
            vectors = basis.T @ torch.as_tensor(S[:, columns], dtype=torch.float64, device=basis.device)
        vectors = vectors.to(device=op.device, dtype=op.dtype)
        eigenvectors = vectors[:, : len(top)]
        if which == "both":
            min_vector = vectors[:, -1]
    both = which == "both"
    method = "lanczos" if b > 1 or not bounded else "thick_restart_lanczos"
    return EigenResult(
        eigenvalues=[float(theta[i]) for i in top],
        residuals=[float(residuals[i]) for i in top],
        error_bounds=[float(bounds[i]) for i in top],
        converged=[bool(is_converged[i]) for i in top],
        num_products=rec.num_products,
        num_iterations=rec.num_products // b if b == 1 else rec.num_blocks,
        products_to_converge=list(top_since),
        method=method if b == 1 else f"block_lanczos(b={b})",
        which=which,
        tol=float(tol),
        lambda_min=float(theta[0]) if both else None,
        lambda_min_residual=float(residuals[0]) if both else None,
        lambda_min_error_bound=float(bounds[0]) if both else None,
        lambda_min_converged=bool(is_converged[0]) if both else None,
        lambda_min_products_to_converge=min_since if both else None,
        basis_vectors=capacity * b,
        restarts=rec.restarts if b == 1 else 0,
        eigenvectors=eigenvectors,
        lambda_min_eigenvector=min_vector,
    )


def lambda_max(
    op: LinearOperator | Tensor | np.ndarray,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    **options: Any,
) -> EigenResult:
    """The largest eigenvalue alone (the sharpness), with its residual and error bound.

    ``lanczos(op, k=1, which="LA")``: the cheap call. The top outlier of a network Hessian
    converges in 6-10 products at ``tol=1e-3``, with a basis of at most ``max_iter`` (60)
    vectors, bounded by the memory budget (thick restart) where even that does not fit. Options
    are those of :func:`lanczos` (``min_iter``, ``max_basis``, ``basis_device``,
    ``memory_budget``, ``v0``, ``return_eigenvectors``).
    """
    return lanczos(op, k=1, which="LA", tol=tol, max_iter=max_iter, seed=seed, **options)


def lambda_min(
    op: LinearOperator | Tensor | np.ndarray,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    **options: Any,
) -> EigenResult:
    """The smallest eigenvalue alone, as its own call (the expensive one: up to 300 products by default).

    ``lanczos(op, k=1, which="SA")``. On a trained network it is a small negative value at the
    edge of a dense cluster around 0: converged or not, the result carries its residual and
    error bound. A bounded (thick-restart) basis needs more products than a full one here.
    """
    return lanczos(op, k=1, which="SA", tol=tol, max_iter=max_iter, seed=seed, **options)


def top_eigenvalues(
    op: LinearOperator | Tensor | np.ndarray,
    k: int,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    **options: Any,
) -> EigenResult:
    """The ``k`` largest eigenvalues (descending), each with its residual and error bound.

    ``lanczos(op, k, which="LA")``; ``k=1`` is :func:`lambda_max`.
    """
    return lanczos(op, k=k, which="LA", tol=tol, max_iter=max_iter, seed=seed, **options)


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
