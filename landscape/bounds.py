"""The allowed range of every numeric setting, declared once, and the size of a long job.

A :class:`Bound` is the range of one number: an integer or a finite real in an interval. The
library checks its arguments against these bounds (``Bound.check`` raises a one-line
``UserError`` naming the argument) and the command line declares each numeric option with the
same bound (``cli/options.py`` turns it into a usage error, exit status 2, before any work). A
range names the largest value that still describes a job this tool can finish, not the largest
the types can hold: a 2D slice of 201 x 201 points is 40,401 full-data loss evaluations.

Seeds are integers in ``[0, 2**63 - 1]``: ``torch.manual_seed`` takes an unsigned 64-bit seed,
and every probe stream adds an offset below ``2**34`` to the analysis seed
(:class:`landscape.metrics.SeedStream`), which stays below ``2**64``.

:class:`JobSize` is a progress message that states the size of a job before it starts (points,
loss evaluations, forward passes, operator products); the command line prints it as a line of
its own, where other progress messages only label a transient spinner.

This module imports nothing but :mod:`landscape.errors`: the command line reads it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from landscape.errors import UserError

__all__ = [
    "BATCH_SIZE",
    "INT64_MAX",
    "MAX_ITER",
    "SAMPLES",
    "SEED",
    "SEQ_LEN",
    "SLICE_DISTANCE",
    "SLICE_GRID",
    "SLICE_STEPS",
    "THREADS",
    "TOL",
    "TOP_K",
    "LAYER_SAMPLES",
    "LAYER_MAX_ITER",
    "DENSITY_PROBES",
    "DENSITY_STEPS",
    "TRACE_SAMPLES",
    "TRAIN_STEPS",
    "Bound",
    "JobSize",
]

INT64_MAX = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(x: float) -> str:
    if isinstance(x, int) or float(x).is_integer():
        n = int(x)
        if n == INT64_MAX:
            return "2**63-1"
        return f"{n:_}" if n >= 100_000 else str(n)
    return f"{x:g}"


@dataclass(frozen=True)
class Bound:
    """The range of one numeric setting: an integer (``integer=True``) or a finite real number in
    ``low .. high`` (either end open with ``open_low`` / ``open_high``; ``None``: unbounded on
    that side). NaN and infinities are never in a range."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    open_low: bool = False
    open_high: bool = False

    @classmethod
    def ints(cls, low: int, high: int) -> Bound:
        """An integer in ``[low, high]``."""
        return cls(low, high, integer=True)

    @classmethod
    def reals(
        cls, low: float | None, high: float | None, *, open_low: bool = False, open_high: bool = False
    ) -> Bound:
        """A finite real number between ``low`` and ``high``."""
        return cls(low, high, integer=False, open_low=open_low, open_high=open_high)

    def describe(self) -> str:
        """``an integer in [2, 201]``, ``a finite number in (0, 1)``, ``a finite number > 0``."""
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{kind} in {left}{_shown(self.low)}, {_shown(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.open_low else '>='} {_shown(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.open_high else '<='} {_shown(self.high)}"
        return kind

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is in the range (of the right type, finite)."""
        if self.integer:
            if not _is_int(value):
                return False
        elif not (_is_number(value) and math.isfinite(value)):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))

    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` is in range, else ``must be <range>, got <value>``."""
        return None if self.contains(value) else f"must be {self.describe()}, got {value!r}"

    def check(self, value: Any, name: str) -> Any:
        """``value`` when in range, else ``UserError("<name> must be <range>, got <value>")``.
        ``name`` is the argument or the flag (``--grid``)."""
        problem = self.problem(value)
        if problem is not None:
            raise UserError(f"{name} {problem}")
        return value


class JobSize(str):
    """A progress message that states the size of the job about to start (the command line prints
    it as a line; other progress messages label a transient spinner)."""

    __slots__ = ()


# ---------------------------------------------------------------------------------------- seeds
SEED = Bound.ints(0, INT64_MAX)
"""Every ``--seed``: ``torch.manual_seed`` takes it with every probe stream's offset added."""

# -------------------------------------------------------------------------------- sizes of data
SAMPLES = Bound.ints(1, INT64_MAX)
"""``--samples``: the first N samples (more than the data holds: all of them)."""
BATCH_SIZE = Bound.ints(1, INT64_MAX)
"""``--batch-size``: samples per chunk or per training step (larger than the data: all of it)."""
SEQ_LEN = Bound.ints(1, 65_536)
"""``--seq-len``: tokens per sequence of the text data."""
THREADS = Bound.ints(1, 1024)
"""``--threads``: torch's CPU threads."""

# ---------------------------------------------------------------------------------- the analysis
TOP_K = Bound.ints(1, 1000)
"""``--top-k``: top eigenvalues of H (also below the number of parameters and ``--max-iter``)."""
MAX_ITER = Bound.ints(2, 10_000)
"""``--max-iter``: Lanczos steps; each keeps one vector of the parameters' size."""
TRACE_SAMPLES = Bound.ints(2, 10_000)
"""``--trace-samples``: operator products per trace estimate (XTrace keeps half of them)."""
TOL = Bound.reals(0.0, 1.0, open_low=True, open_high=True)
"""``--tol``: relative accuracy of the Lanczos eigenvalues."""
LAYER_SAMPLES = Bound.ints(1, 10_000)
"""``--layer-samples``: products of H and of G shared by every per-layer trace."""
LAYER_MAX_ITER = Bound.ints(1, 10_000)
"""``--layer-max-iter``: Lanczos steps per parameter tensor's lambda_max (one product each)."""
DENSITY_PROBES = Bound.ints(1, 1_000)
"""``--density-probes``: SLQ probes (independent Lanczos runs) of each spectral density."""
DENSITY_STEPS = Bound.ints(2, 10_000)
"""``--density-steps``: Lanczos steps per SLQ probe."""

# ------------------------------------------------------------------------------------ the slices
SLICE_STEPS = Bound.ints(2, 2001)
"""Points along a 1D slice or path (each a full-data loss evaluation)."""
SLICE_GRID = Bound.ints(2, 201)
"""Points per axis of a 2D slice (the grid has its square: 201 x 201 = 40,401 evaluations)."""
SLICE_DISTANCE = Bound.reals(0.0, 100.0, open_low=True)
"""Half-width of a slice in filter norms (Li et al. 2018 use 1; 100 filter norms away from the
weights the slice no longer describes their neighbourhood)."""

# ------------------------------------------------------------------------------------- training
TRAIN_STEPS = Bound.ints(1, 10**9)
"""``landscape train --steps``: optimizer updates."""
