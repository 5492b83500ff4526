"""The metric registry: the registered metrics in their order, and every question the rest of the
code asks about them, answered from their declarations (:class:`~landscape.metrics.base.Metric`).

``analyze`` reads which metrics exist, what they need and compute and which keys they write;
the training diagnostics read the diagnostic metrics, their keys and budgets; the command line
reads the summary rows, the ``summary.json`` headlines and the live status; the report reads the
comparison columns (labels, formats, errors, directions) and the curves. Nothing outside a
metric's module names its keys.

The package registers its built-in metrics on import; :func:`register` adds another (a user's
metric, or a test's throw-away one) and :func:`registered` adds one for the length of a
``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, overload

from landscape.errors import UserError
from landscape.metrics.base import Column, Curve, Diagnostic, Headline, Metric, Settings, Status, Values

__all__ = [
    "LiveNames",
    "comparison_columns",
    "curves",
    "diagnostic_budget",
    "diagnostic_keys",
    "diagnostic_metrics",
    "get",
    "headlines",
    "layer_columns",
    "metrics",
    "names",
    "option_defaults",
    "output_keys",
    "parse_metrics",
    "parse_options",
    "record_keys",
    "register",
    "registered",
    "select",
    "status_items",
    "summary_rows",
    "unregister",
]

_METRICS: dict[str, Metric] = {}
_SETTINGS = {f.name for f in fields(Settings)} - {"options"}


# ----------------------------------------------------------------------------------------------
# Registering


def _check(metric: Metric) -> None:
    """The declaration is consistent: every key it shows is one it writes, its diagnostic budget
    names options that exist and agrees with the other diagnostics."""
    if not metric.name or "," in metric.name or metric.name != metric.name.strip() or metric.name == "all":
        raise ValueError(f"bad metric name {metric.name!r}")
    if metric.name in _METRICS:
        raise ValueError(f"a metric named {metric.name!r} is registered already")
    clash = [m.name for m in _METRICS.values() if m.order == metric.order]
    if clash:
        raise ValueError(f"metric {metric.name!r} has the order {metric.order} of {clash[0]!r}")
    written = set(metric.outputs())
    shown = [
        *(k for row in metric.rows for k in (row.key, row.error) if k),
        *(k for col in metric.columns for k in (col.key, col.error) if k),
        *(k for curve in metric.curves for k in (curve.key, curve.error) if k),
        *(h.key for h in metric.headlines),
        *(metric.diagnostic.keys if metric.diagnostic else ()),
        *(s.key for s in (metric.diagnostic.status if metric.diagnostic else ())),
    ]
    unknown = sorted({k for k in shown if k not in written})
    if unknown:
        raise ValueError(f"metric {metric.name!r} shows keys it does not write: {', '.join(unknown)}")
    if metric.diagnostic is not None:
        options = _SETTINGS | set(metric.options)
        bad = sorted(set(metric.diagnostic.budget) - options)
        if bad:
            raise ValueError(
                f"metric {metric.name!r}: unknown options in its diagnostic budget: {', '.join(bad)}"
            )
        _merge_budgets([*diagnostic_metrics(), metric])
    taken = set(_SETTINGS) | {o for m in _METRICS.values() for o in m.options}
    if set(metric.options) & taken:
        raise ValueError(
            f"metric {metric.name!r} declares options that exist: {sorted(set(metric.options) & taken)}"
        )


def register(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (in its ``order``); returns it. ``ValueError`` when its name
    or order is taken or its declaration is inconsistent."""
    _check(metric)
    _METRICS[metric.name] = metric
    ordered = sorted(_METRICS.values(), key=lambda m: m.order)
    _METRICS.clear()
    _METRICS.update((m.name, m) for m in ordered)
    return metric


def unregister(name: str) -> None:
    """Remove the metric ``name`` (``KeyError`` when there is none)."""
    del _METRICS[name]


@contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """``metric`` registered for the length of a ``with`` block."""
    register(metric)
    try:
        yield metric
    finally:
        unregister(metric.name)


# ----------------------------------------------------------------------------------------------
# Which metrics


def metrics() -> tuple[Metric, ...]:
    """The registered metrics, in order."""
    return tuple(_METRICS.values())


def names() -> tuple[str, ...]:
    """Their names, in order (``--metrics`` chooses from these)."""
    return tuple(_METRICS)


def get(name: str) -> Metric:
    """The metric ``name`` (``UserError`` when there is none)."""
    if name not in _METRICS:
        raise UserError(f"unknown metric '{name}': choose from {', '.join(_METRICS)}")
    return _METRICS[name]


def parse_metrics(selection: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise a selection (``"eigen,trace"`` or a list; ``None`` or ``"all"``: every metric) to
    names in the registry's order."""
    if selection is None:
        return names()
    items = [
        m.strip() for m in (selection.split(",") if isinstance(selection, str) else selection) if m.strip()
    ]
    if items == ["all"]:
        return names()
    bad = [m for m in items if m not in _METRICS]
    if bad or not items:
        raise UserError(f"unknown metric(s) {', '.join(bad) or '(none)'}: choose from {', '.join(_METRICS)}")
    return tuple(m for m in _METRICS if m in items)


def select(selection: str | Sequence[str] | None) -> tuple[Metric, ...]:
    """The metrics of a selection (see :func:`parse_metrics`), in order."""
    return tuple(_METRICS[name] for name in parse_metrics(selection))


def option_defaults(chosen: Sequence[Metric] | None = None) -> dict[str, Any]:
    """The metrics' own options and their defaults (of ``chosen``; default: every metric)."""
    return {k: v for m in (metrics() if chosen is None else chosen) for k, v in m.options.items()}


def _convert(name: str, text: str, default: Any) -> Any:
    """``text`` as the type of the option's ``default`` (a tuple or list: comma-separated items of
    the type of its first item)."""
    if isinstance(default, tuple | list):
        kind = type(default[0]) if default else str
        items = [item.strip() for item in text.split(",") if item.strip()]
        return tuple(_convert(name, item, kind()) for item in items)
    try:
        if isinstance(default, bool):
            if text.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.strip().lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise UserError(f"option {name}: {text!r} is not a {type(default).__name__}") from None
    return text


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """Metric options given as ``NAME=VALUE`` strings (the command line's ``--option``) -> keyword
    arguments of ``analyze``, each converted to the type of its declared default (a tuple:
    ``1,4,16``). ``UserError`` for a malformed pair or an option no metric declares."""
    defaults = option_defaults()
    out: dict[str, Any] = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--option takes NAME=VALUE, got {pair!r}")
        if name not in defaults:
            known = ", ".join(defaults) or "none"
            raise UserError(f"unknown metric option '{name}' (the metrics' options: {known})")
        out[name] = _convert(name, text, defaults[name])
    return out


# ----------------------------------------------------------------------------------------------
# Keys


def _unique(keys: Iterator[str] | Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(keys))


def output_keys() -> tuple[str, ...]:
    """The numbers and short lists of ``analysis.json``, in order (a key written by two metrics
    appears once, where the first declares it)."""
    return _unique(k for m in metrics() for k in m.keys)


def record_keys() -> tuple[str, ...]:
    """The large structured outputs of ``analysis.json`` (densities), in order."""
    return _unique(k for m in metrics() for k in m.records)


def layer_columns(chosen: Sequence[Metric] | None = None) -> tuple[str, ...]:
    """The per-layer columns (after ``name`` and ``num_params``) of ``chosen`` (default: all)."""
    return _unique(k for m in (metrics() if chosen is None else chosen) for k in m.layer_columns)


# ----------------------------------------------------------------------------------------------
# Showing


def summary_rows(values: Values) -> list[tuple[str, str, str]]:
    """``(label, value, note)`` of every metric's rows of ``landscape analyze``'s summary, for the
    values of one analysis (``AnalysisResult.to_dict()``); rows without a value are left out."""
    rows = [row.render(values) for m in metrics() for row in m.rows]
    return [row for row in rows if row[1] != "-"]


def comparison_columns() -> tuple[Column, ...]:
    """The report's comparison columns (``comparison.csv``; ``shown`` ones also in the table)."""
    return tuple(c for m in metrics() for c in m.columns)


def flatness_columns(*kinds: str) -> tuple[Column, ...]:
    """The comparison columns whose ``flatness`` is one of ``kinds`` (default: ``lower``, ``ranked``)."""
    wanted = kinds or ("lower", "ranked")
    return tuple(c for c in comparison_columns() if c.flatness in wanted)


def curves(figure: str) -> tuple[Curve, ...]:
    """The curves over training drawn in ``figure`` (``curvature`` or ``split``)."""
    return tuple(c for m in metrics() for c in m.curves if c.figure == figure)


def headlines() -> tuple[Headline, ...]:
    """The numbers of a run's final analysis copied into ``summary.json``."""
    return tuple(h for m in metrics() for h in m.headlines)


# ----------------------------------------------------------------------------------------------
# Training diagnostics


def diagnostic_metrics() -> tuple[Metric, ...]:
    """The metrics that run as training diagnostics, in order."""
    return tuple(m for m in metrics() if m.diagnostic is not None)


def _diagnostics() -> list[Diagnostic]:
    return [m.diagnostic for m in metrics() if m.diagnostic is not None]


def diagnostic_keys() -> tuple[str, ...]:
    """The keys they add to a diagnostic record of ``metrics.jsonl``, in order."""
    return _unique(k for d in _diagnostics() for k in d.keys)


def _merge_budgets(chosen: Sequence[Metric]) -> dict[str, Any]:
    budget: dict[str, Any] = {}
    for metric in chosen:
        for key, value in metric.diagnostic.budget.items() if metric.diagnostic else ():
            if key in budget and budget[key] != value:
                raise ValueError(
                    f"diagnostic budgets disagree on {key}: {budget[key]!r} and {value!r} ({metric.name})"
                )
            budget[key] = value
    return budget


def diagnostic_budget(chosen: Sequence[Metric] | None = None) -> dict[str, Any]:
    """The ``analyze`` options of a training diagnostic: the budgets of the ``chosen`` diagnostic
    metrics (default: every one), merged."""
    return _merge_budgets(diagnostic_metrics() if chosen is None else chosen)


def status_items() -> tuple[Status, ...]:
    """What ``landscape train``'s live status line shows of the last diagnostic record."""
    return tuple(s for d in _diagnostics() for s in d.status)


# ----------------------------------------------------------------------------------------------
# Live views


class LiveNames(Sequence[str]):
    """A sequence of names read from the registry each time it is used (so that a module-level
    constant such as ``METRICS`` includes a metric registered later)."""

    def __init__(self, read: Callable[[], tuple[str, ...]]) -> None:
        self._read = read

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self._read()[index]

    def __len__(self) -> int:
        return len(self._read())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._read())

    def __repr__(self) -> str:
        return repr(self._read())
