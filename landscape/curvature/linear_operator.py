"""Symmetric linear operators on flat parameter vectors.

Every curvature matrix in landscape (Hessian H, generalized Gauss-Newton G, functional Hessian
H_F = H - G, their restrictions to parameter blocks, dense test matrices) is a ``LinearOperator``:
it knows its ``shape``, ``dtype`` and ``device`` and multiplies a block of column vectors
``V`` of shape ``[n, k]`` with ``matmat``. Estimators (Lanczos, traces, SLQ) only ever call
``matmat``, so they run unchanged on a dense float64 matrix in the tests and on a real network.

Operators compose like matrices (``H - G``, ``2.0 * H``, ``H + G``), in the spirit of curvlinops'
``PyTorchLinearOperator``; ``to_scipy()`` gives a ``scipy.sparse.linalg.LinearOperator`` view.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg
import torch
from torch import Tensor


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, an unindexed one (``cuda``, ``mps``) matching any index
    of its type: a tensor reports ``mps:0`` or ``cuda:0`` where an operator may hold ``mps``."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class LinearOperator:
    """A square linear map on R^n applied to blocks of column vectors.

    Subclasses implement ``_matmat(V)`` for ``V`` of shape ``[n, k]`` (already on the operator's
    device and dtype). ``products`` counts operator-vector products (``k`` per ``matmat``), which
    is how every estimator reports its cost.
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.n = int(n)
        self.dtype = dtype
        self.device = torch.device(device)
        self.products = 0

    @property
    def shape(self) -> tuple[int, int]:
        """The matrix shape ``(n, n)``."""
        return (self.n, self.n)

    def _matmat(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _matmat_into(self, V: Tensor, out: Tensor) -> None:
        """Write ``A @ V`` into ``out``; operators that can write their result in place (no
        temporary of the product's size) override this."""
        out.copy_(self._matmat(V))

    def matmat(self, V: Tensor, out: Tensor | None = None) -> Tensor:
        """Return ``A @ V`` for ``V`` of shape ``[n, k]`` (or ``[n]``, returned as ``[n]``).

        ``out``: a tensor of ``V``'s shape on the operator's device, of any floating dtype, that
        receives the product (returned). A Krylov method passes its float64 working vector, so
        the product is converted while it is written, with no product-sized temporary."""
        squeeze = V.dim() == 1
        if squeeze:
            V = V.unsqueeze(1)
        if V.shape[0] != self.n:
            raise ValueError(f"operator of size {self.n} applied to vectors of size {V.shape[0]}")
        V = V.to(device=self.device, dtype=self.dtype)
        if out is None:
            result = self._matmat(V)
        else:
            result = out.unsqueeze(1) if out.dim() == 1 else out
            if tuple(result.shape) != tuple(V.shape) or not same_device(result.device, self.device):
                raise ValueError(
                    f"out must have shape {tuple(V.shape)} on {self.device}, got {tuple(out.shape)} on {out.device}"
                )
            self._matmat_into(V, result)
        self.products += V.shape[1]
        return result.squeeze(1) if squeeze else result

    def matvec(self, v: Tensor) -> Tensor:
        """Return ``A @ v`` for a single vector ``v`` of shape ``[n]``."""
        return self.matmat(v.reshape(-1))

    def __matmul__(self, other: Tensor) -> Tensor:
        return self.matmat(other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        return SumOperator([(1.0, self), (1.0, other)])

    def __sub__(self, other: LinearOperator) -> LinearOperator:
        return SumOperator([(1.0, self), (-1.0, other)])

    def __neg__(self) -> LinearOperator:
        return SumOperator([(-1.0, self)])

    def __mul__(self, scalar: float) -> LinearOperator:
        return SumOperator([(float(scalar), self)])

    __rmul__ = __mul__

    def to_dense(self, block_size: int = 64) -> Tensor:
        """Assemble the full ``[n, n]`` matrix with ``n`` products (columns of the identity)."""
        cols = []
        for start in range(0, self.n, block_size):
            stop = min(start + block_size, self.n)
            E = torch.zeros(self.n, stop - start, dtype=self.dtype, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
            cols.append(self.matmat(E))
        return torch.cat(cols, dim=1)

    def to_scipy(self) -> scipy.sparse.linalg.LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` view (numpy in, numpy out; float64)."""
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def mm(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X)
            vec = X.ndim == 1
            T = torch.as_tensor(X.reshape(self.n, -1).copy(), dtype=self.dtype, device=self.device)
            out = self.matmat(T).detach().cpu().numpy().astype(np_dtype)
            return out.reshape(-1) if vec else out

        return scipy.sparse.linalg.LinearOperator(
            shape=self.shape, matvec=mm, matmat=mm, rmatvec=mm, rmatmat=mm, dtype=np_dtype
        )


class DenseOperator(LinearOperator):
    """A dense symmetric matrix as an operator (tests, ``--exact``, small models)."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V


class SumOperator(LinearOperator):
    """A linear combination ``sum_i c_i A_i`` of operators of equal shape (e.g. ``H_F = H - G``)."""

    def __init__(self, terms: list[tuple[float, LinearOperator]]) -> None:
        first = terms[0][1]
        for _, op in terms:
            if op.shape != first.shape:
                raise ValueError(f"cannot combine operators of shapes {first.shape} and {op.shape}")
        super().__init__(first.n, first.dtype, first.device)
        self.terms = [(c, op) for c, op in terms]

    def _matmat(self, V: Tensor) -> Tensor:
        # Summed in place into the first term's product: at most two products of size ``V`` are
        # alive at once (for H_F = H - G of a 124M model, one float32 vector is 0.5 GB).
        out: Tensor | None = None
        for c, op in self.terms:
            term = op.matmat(V)
            if out is None:
                owned = term.data_ptr() != V.data_ptr()  # an operator's own result, not V itself
                out = term if owned else term.clone()
                if c != 1.0:
                    out.mul_(c)
            else:
                out.add_(term, alpha=c)
            del term
        assert out is not None
        return out

    def _matmat_into(self, V: Tensor, out: Tensor) -> None:
        # the first term writes into ``out`` itself (an operator that can, with no temporary)
        for index, (c, op) in enumerate(self.terms):
            if index == 0:
                op.matmat(V, out=out)
                if c != 1.0:
                    out.mul_(c)
            else:
                term = op.matmat(V)
                out.add_(term, alpha=c)
                del term


def as_operator(A: LinearOperator | Tensor | np.ndarray) -> LinearOperator:
    """Wrap a dense matrix (torch or numpy) as a ``LinearOperator``; pass operators through."""
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, np.ndarray):
        A = torch.from_numpy(A)
    if isinstance(A, Tensor):
        return DenseOperator(A)
    raise TypeError(f"cannot use {type(A).__name__} as a linear operator")
