"""What a metric is made of: its declaration (:class:`Metric`) and what it computes with.

A metric declares, in one place,

* its name, a one-line description and its place in the order of the analysis (``order``);
* what it needs (``needs``: the GGN operator ``G``, the shared trace sketch, ...), so that an
  operator is built only when a chosen metric needs it; ``hessian=False`` for a metric that never
  multiplies by H (the analysis then retains no gradient graphs for H when no chosen metric does);
* its compute function ``compute(ctx) -> Outcome`` (and ``exact(ctx)`` for ``exact=True``, from
  the assembled float64 matrices), which reads the operators and the settings from the
  :class:`Context` and returns its numbers under its output keys;
* its output keys: ``keys`` (numbers and short lists of ``analysis.json``), ``records`` (large
  structured outputs written after the bookkeeping fields) and ``layer_columns`` (columns of the
  per-layer table, ``layers.csv``);
* its probe seeds (:class:`SeedStream`): every random probe it draws comes from one stream of
  seeds, declared once;
* what it asks of memory (``memory``: ``(problem, settings, chosen names) -> Request``, the
  planner's :class:`~landscape.curvature.memory.Request` under the metric's name, or ``None``
  when another chosen metric's run carries it): ``analyze`` plans it for the budget before it
  runs (:func:`~landscape.curvature.memory.plan_metric`); a metric without it is not planned;
* how it is shown: rows of ``landscape analyze``'s summary (:class:`Row`), columns of the report's
  comparison table and ``comparison.csv`` (:class:`Column`, with the direction "lower is
  flatter"), panels of the curves over training (:class:`Curve`), its training diagnostic
  (:class:`Diagnostic`: keys of ``metrics.jsonl``, the smaller budget, the live status) and the
  numbers of a run's final analysis copied into ``summary.json`` (:class:`Headline`).

The package's ``__init__`` finds the modules that define ``METRIC`` and registers them in
``order``; :mod:`landscape.metrics.registry` answers every question the rest of the code asks
(which keys, labels, errors, directions, budgets).
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:  # the declarations load without torch (the command line lists them in its help)
    from torch import Tensor

    from landscape.curvature.linear_operator import LinearOperator
    from landscape.curvature.memory import Plan, Request
    from landscape.curvature.operators import GGNOperator
    from landscape.problem import Problem

__all__ = [
    "GGN",
    "Column",
    "Context",
    "Curve",
    "Diagnostic",
    "Headline",
    "Metric",
    "Outcome",
    "Row",
    "SeedStream",
    "Settings",
    "Status",
    "format_number",
]

GGN = "G"
"""A need: the generalised Gauss-Newton operator G (built once, on the Hessian's retained graphs when
there are any)."""

T = TypeVar("T")
Progress = Callable[[str], None]
Values = Mapping[str, Any]


def format_number(value: Any, error: Any = None) -> str:
    """A value as the summary table shows it: 6 significant digits, ``± error`` (2 digits) when
    given, ``-`` when missing; other types as ``str``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.6g}"
        if error is not None:
            text += f" ± {error:.2g}"
        return text
    return str(value)


# ----------------------------------------------------------------------------------------------
# Computing


@dataclass(frozen=True)
class SeedStream:
    """The probe seeds of one metric: ``seed + start``, ``seed + start + 1``, ... in the order the
    metric draws them (``seed``: the analysis seed). Two metrics draw the same probes only where
    their streams meet, which a metric may want (tr H from the shared sketch uses the trace's own
    probes, so that it is the same estimate shared or not)."""

    start: int

    def draw(self, seed: int) -> Iterator[int]:
        """The stream for the analysis seed ``seed``."""
        return itertools.count(int(seed) + self.start)

    @classmethod
    def named(cls, name: str) -> SeedStream:
        """A stream of its own for a new metric, from its name: it starts above 2**20, clear of the
        small offsets of the built-in metrics and of the per-layer seeds (one per parameter
        tensor)."""
        return cls(2**20 + zlib.crc32(name.encode()))


@dataclass(frozen=True)
class Settings:
    """The options of one analysis (``analyze``'s keyword arguments; ``options`` holds those that a
    metric declares itself, by name)."""

    top_k: int = 5
    trace_method: str = "xtrace"
    trace_samples: int = 96
    layer_samples: int = 48
    layer_max_iter: int = 10
    tol: float = 1e-3
    max_iter: int = 300
    density_probes: int = 2
    density_steps: int = 40
    exact: bool = False
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        """A metric's own option (declared in its ``options``)."""
        return self.options[name]


@dataclass(frozen=True)
class Outcome:
    """What one metric measured: its values by output key (estimates with their standard errors,
    residuals, convergence flags), its per-layer rows (``name``, ``num_params`` and its
    ``layer_columns``) and what it cost (filled in by the analysis: products of H and G, seconds).
    A product of an operator shared with another metric (the trace sketch) counts for the metric
    that asked for it first."""

    values: Mapping[str, Any] = field(default_factory=dict)
    layers: Sequence[Mapping[str, Any]] = ()
    hessian_products: int = 0
    ggn_products: int = 0
    seconds: float = 0.0


class Context:
    """What the metrics of one analysis compute with: the problem, the settings, the Hessian
    operator ``H``, the loss and the gradient (always there: the loss and ``||grad L||`` are part
    of every analysis), ``G`` when a chosen metric needs it, and pieces shared between metrics
    (:meth:`shared`: built by the first metric that asks, reused by the others). ``loss``: the
    full-data loss when the caller has it already (else it is computed).

    ``plans``: each metric's memory plan (:class:`~landscape.curvature.memory.Plan`, by metric
    name; none for a metric the planner does not know): the routes of ``H`` and ``G``
    (``hvp_method``, ``ggn_method``; ``memory_budget``: the operators' own budget for ``"auto"``),
    the columns per product call (``block_size``), and what
    :meth:`lanczos_options` and :meth:`plan` hand to the estimators (Krylov basis, SLQ mode).
    """

    def __init__(
        self,
        problem: Problem,
        settings: Settings,
        chosen: Sequence[Metric],
        *,
        hvp_method: str = "auto",
        ggn_method: str = "auto",
        block_size: int = 16,
        memory_budget: int | None = None,
        plans: Mapping[str, Plan] | None = None,
        progress: Progress | None = None,
        loss: float | None = None,
    ) -> None:
        from landscape.curvature.operators import GGNOperator, HessianOperator

        self.problem = problem
        self.settings = settings
        self.chosen = tuple(chosen)
        self.plans: dict[str, Plan] = dict(plans or {})
        self.block_size = max(1, int(block_size))
        self.report: Progress = progress or (lambda _label: None)
        self.H = HessianOperator(
            problem, method=hvp_method, block_size=block_size, memory_budget=memory_budget
        )
        # With retained graphs the loss, the gradient and the GGN's linearisation come off H's
        # graphs for free.
        self.loss: float = self.H.loss_value() if loss is None else float(loss)
        self.gradient: Tensor = self.H.gradient()
        self._ggn = (
            GGNOperator(
                problem, method=ggn_method, block_size=block_size, memory_budget=memory_budget, hessian=self.H
            )
            if self.needed(GGN)
            else None
        )
        self._shared: dict[Callable[..., Any], Any] = {}

    def plan(self, name: str) -> Plan | None:
        """The memory plan of the metric ``name`` (``None``: not planned)."""
        return self.plans.get(name)

    def lanczos_options(self, name: str) -> dict[str, Any]:
        """The Krylov basis of the metric ``name``'s plan as options of
        :func:`~landscape.curvature.eigen.lanczos` (``max_basis``, ``basis_device``); none without
        a plan (Lanczos then sizes its basis to the free memory itself)."""
        plan = self.plan(name)
        if plan is None or plan.basis_vectors is None:
            return {}
        return {"max_basis": int(plan.basis_vectors), "basis_device": plan.basis_device}

    @property
    def G(self) -> GGNOperator:  # noqa: N802 - the matrix's name
        """The GGN operator (a metric that reads it declares the need ``GGN``)."""
        if self._ggn is None:
            raise RuntimeError("the GGN operator was not built: declare needs={GGN} in the metric")
        return self._ggn

    @property
    def ggn_built(self) -> bool:
        """Whether G was built (a chosen metric needs it)."""
        return self._ggn is not None

    def needed(self, need: str) -> bool:
        """Whether a chosen metric declares ``need``."""
        return any(need in metric.needs for metric in self.chosen)

    def shared(self, build: Callable[[Context], T]) -> T:
        """``build(self)``, once per analysis: a piece that several metrics read."""
        if build not in self._shared:
            self._shared[build] = build(self)
        return self._shared[build]

    def functional_hessian(self) -> LinearOperator:
        """The functional Hessian H_F = H - G (Singh, Mobahi, Agarwala & Dauphin 2025, arXiv
        2502.02407, Eq. 8), built once; its products are counted on H and G."""
        return self.shared(_functional_hessian)

    def dense_hessian(self) -> Tensor:
        """H assembled from n products, in float64 and symmetrised (``exact=True``)."""
        return self.shared(_dense_hessian)

    def dense_ggn(self) -> Tensor:
        """G assembled from n products, in float64 and symmetrised (``exact=True``)."""
        return self.shared(_dense_ggn)

    def measure(self, metric: Metric) -> Outcome:
        """Run ``metric`` (its exact form when ``exact`` is set and it has one) and count its cost."""
        compute = metric.exact if self.settings.exact and metric.exact is not None else metric.compute
        hvps, ggns = self.H.products, self._ggn.products if self._ggn is not None else 0
        started = time.perf_counter()
        outcome = compute(self)
        return replace(
            outcome,
            hessian_products=self.H.products - hvps,
            ggn_products=(self._ggn.products - ggns) if self._ggn is not None else 0,
            seconds=time.perf_counter() - started,
        )


def _dense(op: LinearOperator) -> Tensor:
    matrix = op.to_dense().double()
    return (matrix + matrix.T) / 2


def _dense_hessian(ctx: Context) -> Tensor:
    ctx.report("exact spectra")
    return _dense(ctx.H)


def _dense_ggn(ctx: Context) -> Tensor:
    return _dense(ctx.G)


def _functional_hessian(ctx: Context) -> LinearOperator:
    from landscape.curvature.operators import functional_hessian_operator

    return functional_hessian_operator(ctx.problem, ctx.H, ctx.G)


# ----------------------------------------------------------------------------------------------
# Showing


Note = str | Callable[[Values], str]


@dataclass(frozen=True)
class Row:
    """A row of ``landscape analyze``'s summary table: ``label``, the value under ``key`` (with
    ``± error`` when ``error`` names its standard error) and a note (text, or a function of all the
    values). ``text`` writes the value when 6 significant digits do not fit (a list). The table
    leaves out a row whose value is missing."""

    label: str
    key: str
    error: str | None = None
    note: Note = ""
    text: Callable[[Any], str] | None = None

    def render(self, values: Values) -> tuple[str, str, str]:
        """``(label, value, note)`` as printed."""
        value = values.get(self.key)
        if self.text is not None and value is not None:
            shown = self.text(value)
        else:
            shown = format_number(value, values.get(self.error) if self.error else None)
        note = self.note(values) if callable(self.note) else self.note
        return self.label, shown, note


@dataclass(frozen=True)
class Column:
    """A quantity of the report's comparison of runs: ``key`` (a column of ``comparison.csv``),
    its header ``label`` and number format, and ``shown`` (False: in the CSV only).

    ``flatness``: ``"lower"`` when a lower value means a flatter minimum (the table marks the
    lowest in bold; the summary names the flattest and sharpest run, says whether the first place
    is resolved by ``error``, the key of its standard error, and correlates it with the eval
    loss); ``"ranked"`` when the summary names the lowest and highest run but lower is not claimed
    to be flatter (the trace of an indefinite matrix); ``None``: shown only.
    """

    key: str
    label: str = ""
    format: str = ".4g"
    flatness: Literal["lower", "ranked"] | None = None
    error: str | None = None
    shown: bool = True


@dataclass(frozen=True)
class Curve:
    """A quantity drawn over training from the diagnostic records.

    ``figure="curvature"``: a panel of its own in the curvature figure (``label`` on the axis,
    ``title`` above it, one line per run); the figure's caption names it by ``caption``
    (consecutive panels "trace of H", "trace of G" read "traces of H, G"). ``figure="split"``: a
    line (``label``, ``color``, ``linestyle``) in each run's panel of the split figure, for shares
    that add up (the tau split). ``error``: the key of the standard error of each point (a
    diagnostic key too), drawn as a band around the line. ``unit``: the unit on the axis (``None``:
    the figure's own, loss per squared parameter unit for the curvature figure).
    """

    key: str
    label: str
    title: str = ""
    figure: Literal["curvature", "split"] = "curvature"
    color: str | None = None
    linestyle: str = "-"
    caption: str = ""
    error: str | None = None
    unit: str | None = None


@dataclass(frozen=True)
class Status:
    """A number of the last diagnostic record in ``landscape train``'s live status line."""

    key: str
    label: str
    digits: int = 3


@dataclass(frozen=True)
class Diagnostic:
    """How a metric runs as a training diagnostic: the ``keys`` it adds to every diagnostic record
    of ``metrics.jsonl``, its ``budget`` (``analyze`` options, smaller than the defaults: the
    diagnostics run every few steps and are for trends), and what the live status line shows."""

    keys: tuple[str, ...]
    budget: Mapping[str, Any] = field(default_factory=dict)
    status: tuple[Status, ...] = ()


@dataclass(frozen=True)
class Headline:
    """A number of a run's final analysis copied into the run's ``summary.json``; ``column`` is its
    header in ``landscape train``'s summary table (``None``: not shown there), ``digits`` its
    significant digits there."""

    key: str
    column: str | None = None
    digits: int = 4


# ----------------------------------------------------------------------------------------------
# The declaration


@dataclass(frozen=True, eq=False)
class Metric:
    """One metric, declared once (see the module docstring for every part)."""

    name: str
    description: str
    order: int
    keys: tuple[str, ...]
    compute: Callable[[Context], Outcome]
    needs: frozenset[str] = frozenset()
    exact: Callable[[Context], Outcome] | None = None
    seeds: SeedStream | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    records: tuple[str, ...] = ()
    layer_columns: tuple[str, ...] = ()
    rows: tuple[Row, ...] = ()
    columns: tuple[Column, ...] = ()
    curves: tuple[Curve, ...] = ()
    diagnostic: Diagnostic | None = None
    headlines: tuple[Headline, ...] = ()
    memory: Callable[[Problem, Settings, tuple[str, ...]], Request | None] | None = None
    hessian: bool = True

    def outputs(self) -> tuple[str, ...]:
        """Every key it writes to ``analysis.json`` (numbers, then records)."""
        return (*self.keys, *self.records)
