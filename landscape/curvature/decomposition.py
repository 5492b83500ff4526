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
"""

from __future__ import annotations

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


def sharpness_decomposition(
    hessian: LinearOperator,
    ggn: LinearOperator,
    gradient: Tensor,
    blocks: list[tuple[str, slice]] | None = None,
) -> SharpnessSplit:
    """Split the sharpness gradient H eps* into its logit (G eps*) and functional (H_F eps*) parts.

    Args:
        hessian: the loss Hessian H (an operator on the flat parameter vector).
        ggn: the generalized Gauss-Newton matrix G of the same problem.
        gradient: the full-data gradient grad L (flat).
        blocks: optional ``(name, slice)`` per parameter tensor for the per-layer split.

    Returns:
        tau_logit, tau_func, tau_cross (Functional-SAM Eq. 9), which sum to 1, and per-layer values.
    """
    g = gradient.to(hessian.dtype)
    gnorm = float(g.double().norm())
    if gnorm == 0.0 or not torch.isfinite(g).all():
        raise UserError("the gradient is zero or not finite, so eps* = grad L / ||grad L|| is undefined")
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
