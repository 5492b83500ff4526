"""``m_sharpness``: SAM's sharpness S_m measured on micro-batches of m samples, for a list of m.

For a partition of the N samples into micro-batches c of ``n_c = m`` samples (the last may be
smaller), ``L_c`` the mean loss of micro-batch c and ``g_c = grad L_c(theta)``::

    S_m = sum_c (n_c / N) [L_c(theta + rho g_c / ||g_c||) - L_c(theta)].

Andriushchenko & Flammarion (2022, "Towards Understanding Sharpness-Aware Minimization", arXiv
2206.06232, Sec. 3) define m-sharpness as the expected worst-case loss increase within radius rho
of a random training subset of size m (here its first-order maximiser, SAM's ascent step); m-SAM
(Foret, Kleiner, Mobahi & Neyshabur 2021, arXiv 2010.01412, Sec. 4) minimises it, and Luo, Harandi,
Phung & Le (2025, arXiv 2509.18001) explain why it grows as m shrinks: to first order the gap is
``rho ||g_c||``, and smaller micro-batches carry more of the gradient noise tr(V) (the ``noise``
metric). The expectation over subsets is estimated by ``m_draws`` random partitions of the data,
drawn from this metric's seed stream (the same partitions for every m), with the standard error
of their mean; m = 1 and m >= N have a single partition (standard error 0)
(:func:`landscape.curvature.noise.m_sharpness`).

Options: ``m_values`` (the micro-batch sizes; default 1, 4, 16; on the command line
``--option m_values=1,4,16``), ``m_rho`` (the radius, default 0.05, SAM's usual value) and
``m_draws`` (random partitions per m, default 4).

Output keys, lists in the order of ``m_sharpness_m``: ``m_sharpness_m`` (the micro-batch sizes m),
``m_sharpness_values`` (S_m) and ``m_sharpness_stderr`` (its standard error over the partitions); and
``m_sharpness_rho``, ``m_sharpness_draws`` (partitions per m). Lists rather than one key per m,
because the m are an option: ``m_sharpness_values[i]`` is ``S_m`` for ``m = m_sharpness_m[i]``.

As a training diagnostic: the three lists for m = 4 and 16 (m = 1, one weight set per sample, is
the costly one and is left to the final analysis), with 2 partitions per m.
"""

from __future__ import annotations

from typing import Any

from landscape.metrics.base import (
    Context,
    Diagnostic,
    Metric,
    Outcome,
    Row,
    SeedStream,
    Values,
    format_number,
)

M_VALUES = "m_sharpness_m"
M_SHARPNESS = "m_sharpness_values"
STDERR = "m_sharpness_stderr"
RHO = "m_sharpness_rho"
DRAWS = "m_sharpness_draws"

SEEDS = SeedStream.named("m_sharpness")
"""The random partitions: partition r of every m comes from the stream's r-th seed."""

OPTIONS: dict[str, Any] = {"m_values": (1, 4, 16), "m_rho": 0.05, "m_draws": 4}


def parse_m_values(value: Any) -> tuple[int, ...]:
    """``m_values`` as given (``"1,4,16"``, an int or a sequence) -> positive ints, in order."""
    from landscape.errors import UserError

    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else value
    try:
        ms = tuple(int(str(m).strip()) for m in items if str(m).strip())
    except ValueError:
        raise UserError(f"m_values must be positive integers (e.g. 1,4,16), got {value!r}") from None
    if not ms or any(m < 1 for m in ms):
        raise UserError(f"m_values must be positive integers (e.g. 1,4,16), got {value!r}")
    return ms


def compute(ctx: Context) -> Outcome:
    """S_m for every m of ``m_values`` (see the module docstring)."""
    from landscape.curvature.noise import m_sharpness

    settings = ctx.settings
    ms = parse_m_values(settings.option("m_values"))
    ctx.report(f"m-sharpness (m = {', '.join(map(str, ms))})")
    result = m_sharpness(
        ctx.problem,
        ms,
        rho=float(settings.option("m_rho")),
        draws=int(settings.option("m_draws")),
        seed=next(SEEDS.draw(settings.seed)),
    )
    return Outcome(
        {
            M_VALUES: list(result.m_values),
            M_SHARPNESS: list(result.estimates),
            STDERR: list(result.stderrs),
            RHO: result.rho,
            DRAWS: list(result.draws),
        }
    )


def _values(values: Any) -> str:
    return ", ".join(format_number(float(v)) for v in values) or "-"


def _note(values: Values) -> str:
    ms, errors = values.get(M_VALUES), values.get(STDERR)
    if not ms:
        return ""
    spread = ", ".join(f"{e:.2g}" for e in errors or ())
    return f"m = {', '.join(map(str, ms))}; rho {format_number(values.get(RHO))}; ± {spread}"


METRIC = Metric(
    name="m_sharpness",
    description="m-sharpness S_m, SAM's sharpness on micro-batches of m samples, for each m of m_values",
    order=27,
    hessian=False,
    keys=(M_VALUES, M_SHARPNESS, STDERR, RHO, DRAWS),
    compute=compute,
    seeds=SEEDS,
    options=OPTIONS,
    rows=(Row("S_m", M_SHARPNESS, note=_note, text=_values),),
    diagnostic=Diagnostic(keys=(M_VALUES, M_SHARPNESS, STDERR), budget={"m_draws": 2, "m_values": (4, 16)}),
)
