"""The sharpness-gradient split of Functional-SAM (Singh et al., ICML 2025), Sec. 3.2.

The gradient of the sharpness penalty SP = rho ||grad L|| (Eq. 3-4) is, per unit rho,

    grad SP = H eps* = G eps* + H_F eps* = delta_logit + delta_func          (Eq. 7)

with eps* = grad L / ||grad L|| (Eq. 2), G the generalized Gauss-Newton matrix and H_F = H - G the
functional Hessian (Eq. 8). The normalised contributions (Eq. 9)

    tau_logit = ||delta_logit||^2 / ||grad SP||^2,
    tau_func  = ||delta_func||^2  / ||grad SP||^2,
    tau_cross = 2 <delta_logit, delta_func> / ||grad SP||^2

sum to one. tau_logit near 1 means sharpness-aware training would mostly reduce sharpness through
the logits (over-confidence, the "spurious" path); tau_func through the function's Jacobian.
Cost: one gradient, one Hessian-vector product and one GGN-vector product.

The split is undefined where the computed gradient is rounding noise: eps* is then a direction
chosen by rounding errors, and the shares of H eps* describe that direction, not the loss (a
model at a stationary point printed tau_logit = 1.0 in float32 and tau_func = 1.0 in float64).
:func:`gradient_norm_floor` is the floor below which ``||grad L||`` cannot be told from rounding
noise: each of the P components of grad L = (1/N) sum_i grad l_i is a sum of per-target terms
whose size is that of the per-target loss derivative, so with unit roundoff eps/2 and a few
roundings per term (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed. 2002,
Sec. 4.2: the error of a computed sum is at most gamma_n sum |x_i|) each component carries an
error of order eps |L| and the vector one of order sqrt(P) eps |L|; the floor takes four times
that, ``4 eps(dtype) sqrt(P) max(|L|, tiny)``. Below it (or at a zero gradient)
:func:`sharpness_decomposition` returns NaN shares with the reason in ``SharpnessSplit.note``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from landscape.curvature.linear_operator import LinearOperator
from landscape.errors import UserError


@dataclass(frozen=True)
class LayerSplit:
    """tau_logit / tau_func / tau_cross of one parameter tensor (the block of delta_logit and
    delta_func belonging to it, normalised by that block of grad SP)."""

    name: str
    tau_logit: float
    tau_func: float
    tau_cross: float
    sharpness_gradient_norm: float


@dataclass(frozen=True)
class SharpnessSplit:
    """Result of :func:`sharpness_decomposition` (Functional-SAM Eq. 9)."""

    tau_logit: float
    tau_func: float
    tau_cross: float
    grad_norm: float
    sharpness_gradient_norm: float
    logit_norm: float
    func_norm: float
    num_products: int
    layers: list[LayerSplit] = field(default_factory=list)
    note: str | None = None
    """Why the split is undefined (NaN shares): the gradient is zero or below the rounding floor."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


def split_fractions(delta_logit: Tensor, delta_func: Tensor) -> tuple[float, float, float, float]:
    """(tau_logit, tau_func, tau_cross, ||delta_logit + delta_func||) of Eq. 9, in float64."""
    a = delta_logit.double()
    b = delta_func.double()
    total = a + b
    denom = float(total @ total)
    if denom == 0.0:
        return float("nan"), float("nan"), float("nan"), 0.0
    return float(a @ a) / denom, float(b @ b) / denom, 2.0 * float(a @ b) / denom, denom**0.5


GRADIENT_FLOOR_FACTOR = 4.0
"""Safety factor of :func:`gradient_norm_floor` over the sqrt(P) eps |L| error scale."""


def gradient_norm_floor(loss: float, num_params: int, dtype: torch.dtype) -> float:
    """The gradient norm below which grad L is rounding noise (see the module docstring):
    ``4 eps(dtype) sqrt(P) max(|L|, tiny(dtype))`` for the loss ``L`` of ``P`` parameters."""
    info = torch.finfo(dtype)
    scale = max(abs(float(loss)), info.tiny)
    return GRADIENT_FLOOR_FACTOR * info.eps * math.sqrt(max(int(num_params), 1)) * scale


def sharpness_decomposition(
    hessian: LinearOperator,
    ggn: LinearOperator,
    gradient: Tensor,
    blocks: list[tuple[str, slice]] | None = None,
    *,
    min_grad_norm: float = 0.0,
) -> SharpnessSplit:
    """Split the sharpness gradient H eps* into its logit (G eps*) and functional (H_F eps*) parts.

    Args:
        hessian: the loss Hessian H (an operator on the flat parameter vector).
        ggn: the generalized Gauss-Newton matrix G of the same problem.
        gradient: the full-data gradient grad L (flat).
        blocks: optional ``(name, slice)`` per parameter tensor for the per-layer split.
        min_grad_norm: the rounding floor of ``||grad L||`` (:func:`gradient_norm_floor`); at or
            below it, and at a zero gradient, the split is undefined: NaN shares (every layer's
            too), no products, and ``note`` says why.

    Returns:
        tau_logit, tau_func, tau_cross (Functional-SAM Eq. 9), which sum to 1, and per-layer values.
    """
    g = gradient.to(hessian.dtype)
    if not torch.isfinite(g).all():
        raise UserError("the gradient is not finite, so eps* = grad L / ||grad L|| is undefined")
    gnorm = float(g.double().norm())
    if gnorm == 0.0 or gnorm <= min_grad_norm:
        note = (
            "the gradient is zero"
            if gnorm == 0.0
            else f"||grad L|| = {gnorm:.2g} is below the rounding floor {min_grad_norm:.2g} of "
            f"{str(hessian.dtype).replace('torch.', '')} at this loss"
        )
        return _undefined(gnorm, blocks, f"{note}: eps* = grad L / ||grad L|| is rounding noise")
    eps = g / gnorm
    h_eps = hessian.matvec(eps)
    delta_logit = ggn.matvec(eps)
    delta_func = h_eps - delta_logit
    tl, tf, tc, sp_norm = split_fractions(delta_logit, delta_func)
    layers = []
    for name, sl in blocks or []:
        ltl, ltf, ltc, lnorm = split_fractions(delta_logit[sl], delta_func[sl])
        layers.append(LayerSplit(name, ltl, ltf, ltc, lnorm))
    return SharpnessSplit(
        tau_logit=tl,
        tau_func=tf,
        tau_cross=tc,
        grad_norm=gnorm,
        sharpness_gradient_norm=sp_norm,
        logit_norm=float(delta_logit.double().norm()),
        func_norm=float(delta_func.double().norm()),
        num_products=2,
        layers=layers,
    )


def _undefined(gnorm: float, blocks: list[tuple[str, slice]] | None, note: str) -> SharpnessSplit:
    nan = float("nan")
    return SharpnessSplit(
        tau_logit=nan,
        tau_func=nan,
        tau_cross=nan,
        grad_norm=gnorm,
        sharpness_gradient_norm=nan,
        logit_norm=nan,
        func_norm=nan,
        num_products=0,
        layers=[LayerSplit(name, nan, nan, nan, nan) for name, _ in blocks or []],
        note=note,
    )
