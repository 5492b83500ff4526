"""Adapters for the peer libraries: PyHessian, curvlinops and hessian-eigenthings.

Every adapter builds the peer's own objects exactly as its documentation shows and calls its
algorithms with their documented defaults; the only additions are transparent *counters* around
the operator products (so that every method reports how many Hessian-vector products it used)
and, for PyHessian, the default dtype set to the workload's dtype while it runs (it draws its
random vectors with ``torch.randn(p.size())``, i.e. in the default dtype) and ``cuda=False``
(there is no GPU here).

A peer that is not installed raises :class:`PeerMissing`; the benchmark reports it as such.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse.linalg
import torch
from torch import Tensor, nn

from benchmarks.workloads import Workload

PEERS = {
    "pyhessian": "pyhessian",
    "curvlinops": "curvlinops-for-pytorch",
    "eigenthings": "hessian-eigenthings",
}


class PeerMissing(RuntimeError):
    """The peer package is not importable in this environment."""


def peer_versions() -> dict[str, str | None]:
    """Installed version of each peer distribution (``None`` when not installed)."""
    out: dict[str, str | None] = {}
    for key, dist in PEERS.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerMissing(f"{module} is not installed ({exc})") from None


class Counter:
    """Counts operator-vector products (columns) made through a wrapped callable."""

    def __init__(self) -> None:
        self.count = 0

    def reset(self) -> None:
        """Set the count back to zero."""
        self.count = 0


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default dtype (PyHessian draws vectors in it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _params(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------ PyHessian
class PyHessian:
    """PyHessian 0.1: ``hessian(model, criterion, data=(x, y))`` (single batch: the gradient graph is
    built once and reused) or ``dataloader=[(x, y)]`` (forward + double-backward per product)."""

    def __init__(self, w: Workload, dataloader: bool = False) -> None:
        self.module = _import("pyhessian.hessian")
        self.w = w
        self.counter = Counter()
        criterion = nn.CrossEntropyLoss()
        with default_dtype(w.dtype):
            if dataloader:
                self.h = self.module.hessian(
                    w.peer_model, criterion, dataloader=[(w.x, w.peer_targets)], cuda=False
                )
            else:
                self.h = self.module.hessian(w.peer_model, criterion, data=(w.x, w.peer_targets), cuda=False)
        self.dataloader = dataloader
        counter = self.counter
        original_hvp = self.module.hessian_vector_product
        original_loader = self.h.dataloader_hv_product

        def counted_hvp(gradsH: Any, params: Any, v: Any) -> Any:
            counter.count += 1
            return original_hvp(gradsH, params, v)

        def counted_loader(v: Any) -> Any:
            counter.count += 1
            return original_loader(v)

        self._original_hvp = original_hvp
        self.module.hessian_vector_product = counted_hvp
        self.h.dataloader_hv_product = counted_loader

    def close(self) -> None:
        """Undo the counting patch and drop the retained graph PyHessian leaves in ``.grad``."""
        self.module.hessian_vector_product = self._original_hvp
        self.w.peer_model.zero_grad(set_to_none=True)
        del self.h

    def random_vector(self, seed: int) -> list[Tensor]:
        """A Gaussian vector in PyHessian's list format."""
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(p.shape, generator=g, dtype=self.w.dtype) for p in self.h.params]

    def hvp(self, v: list[Tensor]) -> Any:
        """One Hessian-vector product the way PyHessian's own algorithms make it."""
        if self.dataloader:
            return self.h.dataloader_hv_product(v)[1]
        return self.module.hessian_vector_product(self.h.gradsH, self.h.params, v)

    def eigenvalues(self, top_n: int = 1, seed: int = 0) -> tuple[list[float], int]:
        """``eigenvalues(maxIter=100, tol=1e-3, top_n)`` (defaults); returns values and HVPs."""
        torch.manual_seed(seed)  # PyHessian draws from the global RNG and has no seed argument
        self.counter.reset()
        with default_dtype(self.w.dtype):
            values, _ = self.h.eigenvalues(top_n=top_n)
        return [float(v) for v in values], self.counter.count

    def trace(self, seed: int = 0) -> tuple[float, int]:
        """``trace(maxIter=100, tol=1e-3)`` (defaults); returns the mean of its samples and HVPs."""
        torch.manual_seed(seed)
        self.counter.reset()
        with default_dtype(self.w.dtype):
            samples = self.h.trace()
        return float(np.mean(samples)), self.counter.count

    def density(self) -> Any:
        """``density(iter=100, n_v=1)`` (defaults)."""
        with default_dtype(self.w.dtype):
            return self.h.density()


# ----------------------------------------------------------------------------- curvlinops
class Curvlinops:
    """curvlinops-for-pytorch 3.x: ``HessianLinearOperator`` / ``GGNLinearOperator`` with their
    defaults (``check_deterministic=True``), scipy ``eigsh`` on ``.to_scipy()`` (the documented
    eigenvalue route) and the library's trace estimators."""

    def __init__(self, w: Workload, kind: str = "hessian") -> None:
        self.lib = _import("curvlinops")
        self.w = w
        cls = self.lib.HessianLinearOperator if kind == "hessian" else self.lib.GGNLinearOperator
        self.op = cls(w.peer_model, nn.CrossEntropyLoss(), _params(w.peer_model), [(w.x, w.peer_targets)])
        self.counter = Counter()
        original = self.op._matmat
        counter = self.counter

        def counted(X: list[Tensor]) -> list[Tensor]:
            counter.count += int(X[0].shape[-1])
            return original(X)

        self.op._matmat = counted  # instance attribute: every product path goes through it

    def matmat(self, V: Tensor) -> Tensor:
        """``op @ V`` for ``V`` of shape ``[P]`` or ``[P, k]``."""
        return self.op @ V

    def eigsh(self, k: int = 1, which: str = "LA") -> tuple[np.ndarray, int]:
        """``scipy.sparse.linalg.eigsh(op.to_scipy(), k, which)`` with scipy's defaults."""
        self.counter.reset()
        values = scipy.sparse.linalg.eigsh(self.op.to_scipy(), k=k, which=which, return_eigenvectors=False)
        return np.sort(values)[::-1], self.counter.count

    def trace(self, method: str, num_matvecs: int, seed: int) -> float:
        """``hutchinson_trace`` / ``hutchpp_trace`` / ``xtrace`` (global RNG, seeded here)."""
        torch.manual_seed(seed)
        fn = {"hutchinson": "hutchinson_trace", "hutchpp": "hutchpp_trace", "xtrace": "xtrace"}[method]
        return float(getattr(self.lib, fn)(self.op, num_matvecs))

    def spectrum(self, ncv: int) -> Any:
        """``lanczos_approximate_spectrum(op, ncv)`` (Papyan 2020; other arguments default)."""
        torch.manual_seed(0)
        return self.lib.lanczos_approximate_spectrum(self.op, ncv)


def curvlinops_wrap(n: int, dtype: torch.dtype, matmat: Callable[[Tensor], Tensor]) -> Any:
    """An arbitrary ``[n, k] -> [n, k]`` product as a curvlinops ``PyTorchLinearOperator`` (so its
    trace estimators can run on the same operator as everybody else's)."""
    base = _import("curvlinops._torch_base").PyTorchLinearOperator

    class Wrapped(base):  # type: ignore[misc, valid-type]
        SELF_ADJOINT = True

        def __init__(self) -> None:
            super().__init__([(n,)], [(n,)])

        def _matmat(self, X: list[Tensor]) -> list[Tensor]:
            return [matmat(X[0])]

        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

        @property
        def dtype(self) -> torch.dtype:
            return dtype

    return Wrapped()


# ---------------------------------------------------------------------- hessian-eigenthings
class Eigenthings:
    """hessian-eigenthings 1.x: ``HessianOperator`` (double-backward, full data set) and
    ``GGNOperator`` with the supervised helpers, and its algorithms with their defaults."""

    def __init__(self, w: Workload, kind: str = "hessian") -> None:
        self.lib = _import("hessian_eigenthings")
        self.w = w
        data = [(w.x, w.peer_targets)]
        loss = torch.nn.functional.cross_entropy
        if kind == "hessian":
            self.op = self.lib.HessianOperator(w.peer_model, data, self.lib.supervised_loss(loss))
        else:
            self.op = self.lib.GGNOperator(
                w.peer_model, data, self.lib.supervised_forward, self.lib.supervised_loss_of_output(loss)
            )
        self.counter = Counter()
        original = self.op.matvec
        counter = self.counter

        def counted(v: Tensor) -> Tensor:
            counter.count += 1
            return original(v)

        self.op.matvec = counted

    def matvec(self, v: Tensor) -> Tensor:
        """One operator-vector product."""
        return self.op.matvec(v)

    def lanczos(self, k: int = 1, seed: int = 0, **kwargs: Any) -> tuple[list[float], int]:
        """``lanczos(op, k=k)`` (defaults: ``max_iter = min(2k, n-1)``, ``which="LM"``)."""
        self.counter.reset()
        result = self.lib.lanczos(self.op, k=k, seed=seed, **kwargs)
        return sorted((float(x) for x in result.eigenvalues), reverse=True), self.counter.count

    def power_iteration(self, seed: int = 0) -> tuple[float, int]:
        """``power_iteration_one(op)`` (defaults: ``tol=1e-4``, ``max_iter=100``)."""
        self.counter.reset()
        value = self.lib.power_iteration_one(self.op, seed=seed)[0]
        return float(value), self.counter.count

    def trace(self, method: str, num_matvecs: int, seed: int) -> float:
        """``trace(op, num_matvecs, method)`` (``"hutch++"`` or ``"hutchinson"``)."""
        return float(self.lib.trace(self.op, num_matvecs=num_matvecs, method=method, seed=seed).estimate)

    def spectral_density(self, seed: int = 0) -> Any:
        """``spectral_density(op)`` (defaults: 10 runs x 80 Lanczos steps)."""
        return self.lib.spectral_density(self.op, seed=seed)


def eigenthings_wrap(n: int, dtype: torch.dtype, matvec: Callable[[Tensor], Tensor]) -> Any:
    """An arbitrary product as an eigenthings ``LambdaOperator`` (same operator for everybody)."""
    lib = _import("hessian_eigenthings")
    return lib.LambdaOperator(matvec, n, "cpu", dtype)
