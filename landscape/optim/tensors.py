"""Maths on lists of tensors (one per trained parameter): norms, scaling, in-place perturbation.

The rules handle the trained parameters of a model as one vector split into tensors. These helpers
work on such lists with torch's fused ``_foreach`` kernels (one launch per list, not per tensor);
``None`` stands for a parameter the loss does not use (its gradient is ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SavedParameters", "global_norm", "perturb_", "restore_", "scaled", "write_grads"]


def global_norm(tensors: Sequence[Tensor | None]) -> Tensor:
    """The L2 norm of the concatenation of all given tensors (``None`` entries count as zero).

    Returned as a float64 0-dim tensor on the first tensor's device.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return torch.zeros((), dtype=torch.float64)
    device = present[0].device
    # one fused kernel for the per-tensor norms; float64 for the combination so that tensors of
    # different dtypes (and devices) can be mixed
    norms = torch._foreach_norm(present)
    if all(n.device == device and n.dtype == norms[0].dtype for n in norms):
        return torch.linalg.vector_norm(torch.stack(norms).to(torch.float64))
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=torch.float64) for n in norms]))


def scaled(tensors: Sequence[Tensor | None], factor: Tensor) -> list[Tensor | None]:
    """``[t * factor]`` for a 0-dim ``factor`` (computed in each tensor's own dtype)."""
    idx = [i for i, t in enumerate(tensors) if t is not None]
    out: list[Tensor | None] = [None] * len(tensors)
    if not idx:
        return out
    present = [tensors[i] for i in idx]
    dtypes = {t.dtype for t in present}
    if len(dtypes) == 1 and all(t.device == factor.device for t in present):
        products = torch._foreach_mul(present, factor.to(present[0].dtype))
    else:
        products = [t * factor.to(device=t.device, dtype=t.dtype) for t in present]
    for i, t in zip(idx, products, strict=True):
        out[i] = t
    return out


class SavedParameters:
    """Bit-exact copies of the perturbed parameters, for :func:`restore_`."""

    def __init__(self, indices: list[int], values: list[Tensor]) -> None:
        self.indices = indices
        self.values = values


def perturb_(params: Sequence[Tensor], eps: Sequence[Tensor | None], alpha: float = 1.0) -> SavedParameters:
    """Add ``alpha * eps`` to ``params`` in place (``None``: leave that one) and save the old values.

    The update goes through ``.data``, which leaves the parameters' autograd version counters
    alone: a graph recorded at theta (kept by LOGIT-/ANGLE-SAM) is valid again once
    :func:`restore_` has copied theta back bit for bit.
    """
    indices = [i for i, e in enumerate(eps) if e is not None]
    if not indices:
        return SavedParameters([], [])
    data = [params[i].data for i in indices]
    saved = SavedParameters(indices, list(torch._foreach_clone(data)))
    torch._foreach_add_(data, [eps[i] for i in indices], alpha=alpha)
    return saved


def restore_(params: Sequence[Tensor], saved: SavedParameters) -> None:
    """Copy the values saved by :func:`perturb_` back (exact: no ``theta + e - e`` round-off)."""
    if saved.indices:
        torch._foreach_copy_([params[i].data for i in saved.indices], saved.values)


def write_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Set ``p.grad`` (replacing what was there); ``None`` for parameters the loss does not use.

    The gradients come from ``autograd.grad`` without ``create_graph``, so they carry no graph.
    """
    for p, g in zip(params, grads, strict=True):
        p.grad = g
