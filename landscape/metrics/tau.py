"""``tau``: how the sharpness gradient splits between the logit and the functional path.

The gradient of the sharpness penalty, per unit radius, is H eps* = G eps* + H_F eps* with
eps* = grad L / ||grad L|| (Singh, Mobahi, Agarwala & Dauphin 2025, "Avoiding spurious sharpness
minimization broadens applicability of SAM", arXiv 2502.02407, Eq. 7); its normalised parts
(Eq. 9)

    tau_logit = ||G eps*||^2 / ||H eps*||^2,   tau_func = ||H_F eps*||^2 / ||H eps*||^2,
    tau_cross = 2 <G eps*, H_F eps*> / ||H eps*||^2

sum to 1 (:func:`~landscape.curvature.decomposition.sharpness_decomposition`: one gradient, one H
product and one G product). tau_logit near 1: sharpness-aware training would reduce sharpness
mostly through the logits, the path that paper calls spurious. The split is shared with the
per-layer metric (:func:`split`), which reports it per parameter tensor (:func:`layer_values`).

Where ``||grad L||`` is at or below its rounding floor ``4 eps(dtype) sqrt(P) max(|L|, tiny)``
(:func:`~landscape.curvature.decomposition.gradient_norm_floor`: the error of a computed sum of
P components, each of the size of the loss, Higham 2002 Sec. 4.2) eps* is rounding noise and the
split is undefined: the shares are ``None`` (null in ``analysis.json`` and ``metrics.jsonl``) and
``tau_note`` says why; the summary shows the note in their place.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from landscape.metrics.base import (
    GGN,
    Column,
    Context,
    Curve,
    Diagnostic,
    Headline,
    Metric,
    Outcome,
    Row,
    Settings,
    Status,
)

if TYPE_CHECKING:
    from landscape.curvature.decomposition import LayerSplit, SharpnessSplit
    from landscape.curvature.memory import Request
    from landscape.problem import Problem

LOGIT = "tau_logit"
FUNC = "tau_func"
CROSS = "tau_cross"
SHARPNESS_GRADIENT_NORM = "sharpness_gradient_norm"
NOTE = "tau_note"


def split(ctx: Context) -> SharpnessSplit:
    """The split of H eps* over the whole model and per parameter tensor, computed once."""
    return ctx.shared(_split)


def _split(ctx: Context) -> SharpnessSplit:
    from landscape.curvature.decomposition import gradient_norm_floor, sharpness_decomposition

    ctx.report("sharpness split (tau)")
    problem = ctx.problem
    floor = gradient_norm_floor(ctx.loss, problem.num_params, problem.dtype)
    return sharpness_decomposition(ctx.H, ctx.G, ctx.gradient, problem.blocks(), min_grad_norm=floor)


def compute(ctx: Context) -> Outcome:
    """tau_logit, tau_func, tau_cross and ||H eps*|| of the whole model (``None`` with the reason
    in ``tau_note`` where the gradient is below its rounding floor)."""
    whole = split(ctx)
    return Outcome(
        {
            LOGIT: _finite(whole.tau_logit),
            FUNC: _finite(whole.tau_func),
            CROSS: _finite(whole.tau_cross),
            SHARPNESS_GRADIENT_NORM: _finite(whole.sharpness_gradient_norm),
            NOTE: whole.note,
        }
    )


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def _undefined(value: Any) -> str:
    return "undefined"


def _note(values: Any) -> str:
    return str(values.get(NOTE) or "")


def layer_values(layer: LayerSplit) -> dict[str, Any]:
    """The split of one parameter tensor under the tau keys (``None`` where its block of H eps*
    is zero and the shares are undefined)."""
    return {LOGIT: _finite(layer.tau_logit), FUNC: _finite(layer.tau_func), CROSS: _finite(layer.tau_cross)}


def _cross_note(values: Any) -> str:
    cross = values.get(CROSS)
    if cross is None:
        return ""
    return "negative: the two paths oppose" if cross < 0 else "positive: the paths point the same way"


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: the split (H and G, a few vectors)."""
    from landscape.curvature.memory import Request

    return Request()


METRIC = Metric(
    name="tau",
    description="tau_logit / tau_func / tau_cross of the sharpness gradient (Functional-SAM Eq. 9)",
    order=40,
    keys=(LOGIT, FUNC, CROSS, SHARPNESS_GRADIENT_NORM, NOTE),
    compute=compute,
    needs=frozenset({GGN}),
    rows=(
        Row("tau_logit", LOGIT, note="share of the sharpness gradient through the logits"),
        Row("tau_func", FUNC, note="share through the function's Jacobian"),
        Row("tau_cross", CROSS, note=_cross_note),
        Row("tau", NOTE, note=_note, text=_undefined),
    ),
    columns=(
        Column(LOGIT, "τ_logit", ".3f"),
        Column(FUNC, "τ_func", ".3f"),
        Column(CROSS, "τ_cross", ".3f"),
    ),
    curves=(
        Curve(LOGIT, "τ_logit (logit path, via G)", figure="split", color="C3"),
        Curve(FUNC, "τ_func (functional path, via H_F)", figure="split", color="C0"),
        Curve(
            CROSS, "τ_cross (cross term; < 0: the paths oppose)", figure="split", color="0.45", linestyle="--"
        ),
    ),
    diagnostic=Diagnostic(
        keys=(LOGIT, FUNC, CROSS, NOTE),
        status=(Status(LOGIT, "tau_logit", 2), Status(FUNC, "tau_func", 2)),
    ),
    headlines=(Headline(LOGIT, "tau_logit", 3), Headline(FUNC), Headline(CROSS)),
    memory=memory,
)
