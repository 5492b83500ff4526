"""The report's tables: the comparison of runs (in the style of Table 4 of Functional-SAM: Singh,
Mobahi, Agarwala & Dauphin 2025, arXiv 2502.02407), pruning, rho sweep.

Each table is a pandas frame with machine-readable column names (written to CSV at full
precision) plus a :class:`Table` of display strings (rendered into HTML and Markdown by
:mod:`landscape.report.document`). Which number comes from where:

* eval loss / accuracy: ``summary.json`` (the whole held-out set, final weights);
* train loss / accuracy: the final weights on the training split, measured by the report
  builder (``train_evals``); without it, the mean batch loss of the last logged steps;
* curvature: the comparison columns of the metrics (:func:`landscape.metrics.comparison_columns`),
  from ``analysis.json`` (the final analysis of ``final.pt``); a run without one falls back to its
  last diagnostic record (a small fixed subset, rough budgets), which the ``curvature_source``
  column says;
* step time: training wall-clock per update, diagnostics excluded (``metrics.jsonl``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from landscape import metrics as registry
from landscape.report.runs import RunData, step_time_seconds

__all__ = [
    "Column",
    "Table",
    "comparison_columns",
    "comparison_frame",
    "comparison_table",
    "format_value",
    "pruning_frame",
    "pruning_table",
    "rho_sweep_frame",
    "rho_sweep_table",
    "write_csv",
]


def format_value(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec`` (a format spec such as ``.4f``); ``-`` for missing/NaN."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return value
    if spec == "rho":
        text = repr(float(value))
        return text[:-2] if text.endswith(".0") else text
    return format(value, spec)


@dataclass(frozen=True)
class Column:
    """A column of a display table: frame key, header, format spec, and which end is best.

    ``best`` is ``"min"`` or ``"max"`` when the extreme value is marked in bold (as in the paper's
    Table 4: lower curvature and loss, higher accuracy), else ``None``.
    """

    key: str
    header: str
    spec: str
    best: str | None = None
    note: str = ""


@dataclass
class Table:
    """Display strings of a table: ``rows[i][j]`` is the text of row i, column j."""

    headers: list[str]
    rows: list[list[str]]
    bold: list[list[bool]] = field(default_factory=list)
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    align: list[str] = field(default_factory=list)
    """Per column ``"l"`` (text) or ``"r"`` (numbers); empty: the first column left, the rest right."""


_LEADING = (
    Column("run", "run", "s"),
    Column("method", "method", "s"),
    Column("rho", "rho", "rho"),
    Column("train_loss", "train loss", ".4f", "min"),
    Column("train_accuracy", "train acc", ".4f", "max"),
    Column("eval_loss", "eval loss", ".4f", "min"),
    Column("eval_accuracy", "eval acc", ".4f", "max"),
)
_TRAILING = (Column("step_time_ms", "step time (ms)", ".3g"),)


def comparison_columns() -> list[Column]:
    """The comparison table's columns, in order: run, method, rho, losses and accuracies, the
    metrics' shown columns (from the registry; a lower-is-flatter one marks its lowest value in
    bold) and the step time. The CSV holds these and a few more."""
    measured = [
        Column(c.key, c.label, c.format, "min" if c.flatness == "lower" else None)
        for c in registry.comparison_columns()
        if c.shown
    ]
    return [*_LEADING, *measured, *_TRAILING]


def _curvature_keys() -> tuple[str, ...]:
    """The metrics' columns of ``comparison.csv`` (shown in the table or not), in order."""
    return tuple(dict.fromkeys(c.key for c in registry.comparison_columns()))


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _last(frame: pd.DataFrame, key: str) -> float | None:
    if frame.empty or key not in frame:
        return None
    values = frame[key].dropna()
    return _num(values.iloc[-1]) if not values.empty else None


def comparison_frame(runs: Sequence[RunData], train_evals: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per run: method, rho, final losses and accuracies, curvature, tau, step time.

    ``train_evals`` maps a run's label to an object with ``loss`` and ``accuracy`` (an
    ``EvalResult``) and ``num_items``/``num_targets`` where known: the final weights on the
    training split. See the module docstring for every column's source.
    """
    rows = []
    for run in runs:
        summary = run.summary or {}
        analysis = run.analysis
        diag = run.diagnostics()
        train = (train_evals or {}).get(run.label)
        row: dict[str, Any] = {
            "run": run.label,
            "group": run.group,
            "method": run.method_label,
            "method_id": run.method,
            "rho": run.rho,
            "steps": run.steps,
            "seed": run.config.get("seed"),
        }
        if train is not None:
            row["train_loss"] = _num(train.loss)
            row["train_accuracy"] = _num(train.accuracy)
            row["train_source"] = f"final weights on {train.num_targets} training targets"
        else:
            row["train_loss"] = _num(summary.get("train_loss")) or _last(run.metrics, "train_loss")
            row["train_accuracy"] = None
            row["train_source"] = "mean batch loss of the last logged steps"
        row["eval_loss"] = _num(summary.get("eval_loss"))
        row["eval_accuracy"] = _num(summary.get("eval_accuracy"))
        if row["eval_loss"] is None:
            row["eval_loss"] = _last(run.metrics, "eval_loss")
            row["eval_accuracy"] = _last(run.metrics, "eval_accuracy")
        curvature_keys = _curvature_keys()
        if analysis is not None:
            for key in curvature_keys:
                row[key] = _num(analysis.get(key))
            row["curvature_targets"] = analysis.get("num_targets")
            row["curvature_source"] = f"final analysis ({analysis.get('num_targets')} training targets)"
        elif not diag.empty:
            for key in curvature_keys:
                row[key] = _last(diag, key)
            row["curvature_targets"] = None
            row["curvature_source"] = "last training diagnostic (small subset)"
        else:
            for key in curvature_keys:
                row[key] = None
            row["curvature_targets"] = None
            row["curvature_source"] = "none"
        seconds = step_time_seconds(run)
        row["step_time_ms"] = seconds * 1000.0 if seconds is not None else None
        row["unigram_eval_loss"] = _num(summary.get("unigram_eval_loss"))
        rows.append(row)
    return pd.DataFrame(rows)


def _display(
    frame: pd.DataFrame, columns: Sequence[Column], caption: str = "", notes: Sequence[str] = ()
) -> Table:
    """Format ``frame`` for display, marking the best value of each ``best`` column in bold."""
    present = [c for c in columns if c.key in frame]
    rows: list[list[str]] = []
    bold: list[list[bool]] = []
    best_index: dict[str, set[int]] = {}
    for column in present:
        if column.best is None:
            continue
        values = pd.to_numeric(frame[column.key], errors="coerce")
        if values.notna().sum() < 2:
            continue  # one number is no comparison
        target = values.min() if column.best == "min" else values.max()
        shown = format_value(float(target), column.spec)
        # ties at display precision all count as best
        best_index[column.key] = {
            i for i, v in enumerate(values) if pd.notna(v) and format_value(float(v), column.spec) == shown
        }
    for i, (_, record) in enumerate(frame.iterrows()):
        texts, marks = [], []
        for column in present:
            value = record[column.key]
            if isinstance(value, float) and math.isnan(value):
                value = None
            texts.append(format_value(value, column.spec))
            marks.append(i in best_index.get(column.key, set()))
        rows.append(texts)
        bold.append(marks)
    align = ["l" if c.spec == "s" else "r" for c in present]
    return Table([c.header for c in present], rows, bold, caption, list(notes), align)


def comparison_table(frame: pd.DataFrame, caption: str = "") -> Table:
    """The comparison table for display; the notes say where the numbers come from."""
    columns = comparison_columns()
    if "method_id" in frame and (frame["run"] == frame["method_id"]).all():
        columns = [c for c in columns if c.key != "run"]  # the run is named after its method
    if frame["rho"].isna().all():
        columns = [c for c in columns if c.key != "rho"]
    if frame["train_accuracy"].isna().all():
        columns = [c for c in columns if c.key != "train_accuracy"]
    if "eval_accuracy" in frame and frame["eval_accuracy"].isna().all():
        columns = [c for c in columns if c.key != "eval_accuracy"]
    notes = []
    sources = sorted(set(frame.get("curvature_source", pd.Series(dtype=str)).dropna()))
    if sources:
        notes.append("Curvature: " + "; ".join(sources) + ".")
    train_sources = sorted(set(frame.get("train_source", pd.Series(dtype=str)).dropna()))
    if train_sources:
        notes.append("Train loss/accuracy: " + "; ".join(train_sources) + ".")
    notes.append(
        "Eval loss/accuracy: the final weights on the whole held-out set (summary.json). "
        "Bold: the best value of a column (lowest loss and curvature, highest accuracy)."
    )
    return _display(frame, columns, caption, notes)


def pruning_frame(results: dict[str, list[Any]], runs: Sequence[RunData]) -> pd.DataFrame:
    """Long frame of one-shot pruning results: run, method, sparsity, eval loss and accuracy.

    ``results`` maps a run label to its ``PruneResult`` list (:mod:`landscape.prune`).
    """
    by_label = {r.label: r for r in runs}
    rows = []
    for label, items in results.items():
        run = by_label[label]
        for item in items:
            rows.append(
                {
                    "run": label,
                    "group": run.group,
                    "method": run.method_label,
                    "sparsity": item.sparsity,
                    "num_pruned": item.num_pruned,
                    "num_prunable": item.num_prunable,
                    "threshold": item.threshold,
                    "eval_loss": item.eval_loss,
                    "eval_accuracy": item.eval_accuracy,
                }
            )
    return pd.DataFrame(rows)


def pruning_table(frame: pd.DataFrame, caption: str = "", names: dict[str, str] | None = None) -> Table:
    """Eval loss per run (rows, shown as ``names[label]``) and sparsity (columns); bold: the lowest
    loss at each sparsity."""
    wide = frame.pivot_table(index="run", columns="sparsity", values="eval_loss", sort=False)
    wide = wide.reindex(list(dict.fromkeys(frame["run"])))
    columns = [Column("run", "run", "s")]
    flat = pd.DataFrame({"run": [(names or {}).get(label, label) for label in wide.index]})
    for sparsity in wide.columns:
        key = f"s{sparsity}"
        flat[key] = wide[sparsity].to_numpy()
        columns.append(Column(key, f"{sparsity:.0%}", ".4f", "min"))
    note = "Columns: the share of weights set to zero. Bold: the lowest eval loss at each sparsity."
    return _display(flat, columns, caption, [note])


def rho_sweep_frame(runs: Sequence[RunData], eval_loss: Callable[[RunData], float | None]) -> pd.DataFrame:
    """Eval loss against rho for every method with two or more rho values among ``runs``, plus the
    runs without rho (AdamW: rho = 0 reference). Empty when no method was swept."""
    by_method: dict[str, list[RunData]] = {}
    for run in runs:
        if run.rho is not None:
            by_method.setdefault(run.method, []).append(run)
    swept = {m: rs for m, rs in by_method.items() if len({r.rho for r in rs}) >= 2}
    if not swept:
        return pd.DataFrame(columns=["run", "method", "method_id", "rho", "eval_loss", "group"])
    rows = []
    for run in runs:
        if run.method in swept or run.rho is None:
            rows.append(
                {
                    "run": run.label,
                    "group": run.group,
                    "method": run.method_label,
                    "method_id": run.method,
                    "rho": run.rho,
                    "eval_loss": eval_loss(run),
                }
            )
    return pd.DataFrame(rows)


def rho_sweep_table(frame: pd.DataFrame, caption: str = "") -> Table:
    """The rho sweep for display, sorted by method and rho."""
    ordered = frame.sort_values(["method", "rho"], na_position="first", kind="stable")
    columns = [
        Column("method", "method", "s"),
        Column("rho", "rho", "rho"),
        Column("run", "run", "s"),
        Column("eval_loss", "eval loss", ".4f", "min"),
    ]
    return _display(ordered, columns, caption)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as CSV at full float precision (``%.8g``), no index."""
    frame.to_csv(path, index=False, float_format="%.8g")
