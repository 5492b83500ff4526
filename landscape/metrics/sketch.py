"""The XTrace sketch that tr(H), tr(G) and tr(H_F) share.

XTrace (Epperly, Tropp & Webber 2024, "XTrace: making the most of every sample in stochastic
trace estimation", SIAM J. Matrix Anal. Appl., arXiv 2301.07825) of H, G and H_F = H - G from one
set of test vectors Omega: (H - G) Omega = H Omega - G Omega is free once the other two are
formed, so the three traces cost 3s products of H and of G instead of 4s
(:func:`~landscape.curvature.trace.xtrace_difference`). The sketch is formed when a chosen metric
needs it (:data:`SKETCH`: the ``ggn`` metric, for tr(G) and tr(H_F)) and the trace method is
XTrace; tr(H)'s own second stage runs only when a chosen metric reads it (:data:`SKETCH_H`: the
``trace`` metric). Its probes are the trace metric's (:data:`SEEDS`), so tr(H) is the same
estimate whether the sketch is shared or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from landscape.metrics.base import Context, SeedStream

if TYPE_CHECKING:
    from landscape.curvature.trace import TraceResult

__all__ = ["SEEDS", "SKETCH", "SKETCH_H", "SharedTraces", "formed", "traces"]

SKETCH = "sketch"
"""A need: tr(G) and tr(H_F) from the shared sketch (when it is formed, see :func:`formed`)."""

SKETCH_H = "sketch:H"
"""A need: tr(H) from the shared sketch, when another metric has it formed."""

SEEDS = SeedStream(1)
"""The sketch's test vectors (the trace metric's stream)."""


@dataclass(frozen=True)
class SharedTraces:
    """The three estimates of one sketch (``hessian`` is ``None`` when no chosen metric reads it)."""

    hessian: TraceResult | None
    ggn: TraceResult
    functional: TraceResult


def formed(ctx: Context) -> bool:
    """Whether this analysis forms the shared sketch: XTrace, not ``exact``, and a chosen metric
    that needs it."""
    settings = ctx.settings
    return not settings.exact and settings.trace_method == "xtrace" and ctx.needed(SKETCH)


def traces(ctx: Context) -> SharedTraces:
    """The shared sketch's estimates, formed by the first metric that asks."""
    return ctx.shared(_sketch)


def _sketch(ctx: Context) -> SharedTraces:
    from landscape.curvature.trace import xtrace_difference

    ctx.report("traces of H, G and H_F (xtrace, one shared sketch)")
    hessian, ggn, functional = xtrace_difference(
        ctx.H,
        ctx.G,
        ctx.settings.trace_samples,
        seed=next(SEEDS.draw(ctx.settings.seed)),
        include_a=ctx.needed(SKETCH_H),
        block_size=ctx.block_size,
    )
    return SharedTraces(hessian, ggn, functional)
