"""Checks that the loss is a function of the parameters, made before an analysis spends products.

Every estimator here assumes one fixed, twice-differentiable loss L(theta): Lanczos and the trace
estimators need a symmetric operator, and ``<u, H v> = <H u, v>`` holds only when every product
differentiates the same function. A model whose forward pass is random in eval mode (dropout
applied regardless of ``model.eval()``, as ``F.dropout(x, p, training=True)`` does) gives a
different function at every call: each product is one sample of a random operator, the operator
is not symmetric, and the eigenvalues, traces and tau split it yields are noise.

:func:`forward_variation` measures it for two forward passes: the largest difference between two
evaluations of the same inputs at the same parameters, relative to the largest output,

    delta = max |f_1 - f_2| / max |f_1|.

A deterministic model gives 0 on the CPU and a few eps(dtype) where GPU kernels reduce in a
varying order (atomic additions); dropout at rate p gives an O(1) difference.
:func:`require_deterministic` refuses the analysis (one-line ``UserError`` with the measured
difference) when ``delta > sqrt(eps(dtype))``, a threshold far above reduction-order noise and far
below a random mask's effect. Cost: two forward passes of one chunk, no products; the global
random state is left as it was (the probe's dropout draws are undone).
"""

from __future__ import annotations

import math

import torch

from landscape.errors import UserError
from landscape.problem import Problem

__all__ = ["forward_variation", "require_deterministic"]


def forward_variation(problem: Problem) -> float:
    """``max |f_1 - f_2| / max |f_1|`` of two forward passes of the problem's first chunk at its
    parameters (summed over the processes of a distributed problem, so every rank decides alike)."""
    batch = problem.batches[0]
    with torch.no_grad(), torch.random.fork_rng(devices=_devices(problem)):
        first = problem.outputs(problem.params, batch.inputs).double()
        second = problem.outputs(problem.params, batch.inputs).double()
    scale = float(first.abs().max()) if first.numel() else 0.0
    change = float((first - second).abs().max()) if first.numel() else 0.0
    value = torch.tensor(change / scale if scale > 0 else change, dtype=torch.float64)
    return float(problem.all_reduce_(value))


def require_deterministic(problem: Problem) -> None:
    """``UserError`` when two forward passes at the same parameters differ by more than
    ``sqrt(eps(dtype))`` (relative): the loss is then not a function of the parameters."""
    delta = forward_variation(problem)
    limit = math.sqrt(torch.finfo(problem.dtype).eps)
    if not delta <= limit:  # NaN too
        raise UserError(
            f"the model is not deterministic in eval mode: two forward passes of the same inputs at "
            f"the same parameters differ by {delta:.2g} (relative; allowed {limit:.1g}), so the "
            "Hessian is a random, non-symmetric operator and its eigenvalues, traces and tau are noise; "
            "is dropout applied regardless of model.eval() (F.dropout(..., training=True))?"
        )


def _devices(problem: Problem) -> list[int]:
    """The CUDA device whose random state the probe must restore (none on the CPU)."""
    device = problem.device
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []
