"""Read training run folders (``landscape train``) into plain Python and pandas for the report.

A run folder holds ``config.json``, ``metrics.jsonl``, ``final.pt`` and, when the run finished,
``summary.json`` and (with a final analysis) ``analysis.json``; see :mod:`landscape.runs`, whose
readers this module uses. A suite folder holds ``suite.json`` and one run folder per run.
:func:`load_runs` accepts either and keeps the order it is given (a suite's runs in ``suite.json``
order).

Runs are grouped for the report: the runs of one suite folder form a group (the comparison a
suite was trained for: same seed, same data), loose run folders are grouped by model and data.
Nothing here computes curvature or touches a model; the report builder does that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from landscape import metrics as registry
from landscape import runs as run_files
from landscape.errors import UserError
from landscape.optim.rules import RULES

__all__ = [
    "RunData",
    "baseline_run",
    "group_runs",
    "load_run",
    "load_runs",
    "run_domain",
    "step_time_seconds",
]

BASELINES = ("adamw", "sgd")
"""The baseline optimizers: the reference of a group (paths, the tau contrast, the rho = 0 point)."""

METHOD_LABELS = {name: spec.label for name, spec in RULES.items()}
"""Display names of the gradient rules, from their specs (``func-sam`` -> ``Functional-SAM``)."""


def method_label(method: str) -> str:
    """The display name of a gradient rule (``func-sam`` -> ``Functional-SAM``)."""
    return METHOD_LABELS.get(method, method)


@dataclass
class RunData:
    """Everything the report reads from one run folder.

    ``label`` is unique within a report (the run name, prefixed with its group when two groups
    hold runs of the same name); ``metrics`` has one row per ``metrics.jsonl`` record (columns are
    the union of the records' keys; steps without diagnostics hold NaN there).
    """

    path: Path
    name: str
    config: dict[str, Any]
    metrics: pd.DataFrame
    summary: dict[str, Any] | None
    analysis: dict[str, Any] | None
    group: str
    label: str = ""

    @property
    def method(self) -> str:
        """The gradient rule's name (``config.json`` ``method``)."""
        return str(self.config.get("method") or "?")

    @property
    def method_label(self) -> str:
        """The display name of the method (``Functional-SAM``)."""
        return method_label(self.method)

    @property
    def rho(self) -> float | None:
        """The perturbation radius (``None`` for methods without one)."""
        value = self.config.get("rho")
        return float(value) if value is not None else None

    @property
    def steps(self) -> int:
        """Number of optimizer updates of the run."""
        return int(self.config.get("steps") or 0)

    @property
    def final_checkpoint(self) -> Path:
        """``final.pt`` of the run."""
        return self.path / run_files.FINAL_FILE

    @property
    def domain(self) -> str:
        """``language`` or ``vision`` (see :func:`run_domain`)."""
        return run_domain(self.config)

    def diagnostics(self) -> pd.DataFrame:
        """The records that carry curvature diagnostics (a diagnostic metric's key present; see
        :func:`landscape.metrics.diagnostic_keys`), by step."""
        keys = [k for k in registry.diagnostic_keys() if k in self.metrics]
        if self.metrics.empty or not keys:
            return self.metrics.iloc[0:0]
        return self.metrics[self.metrics[keys].notna().any(axis=1)].reset_index(drop=True)


def run_domain(config: dict[str, Any]) -> str:
    """``language`` for a language model (the built-in transformer, text data, or a run whose config
    says ``task: language_model``), else ``vision``.

    The Functional-SAM contrast is between language modelling and classification; a classifier
    of the built-in digits is the vision side.
    """
    model = str(config.get("model") or "")
    data = str(config.get("data") or "")
    if config.get("task") == "language_model":
        return "language"
    try:
        from landscape.models import model_info

        if model_info(model).task == "language_model":
            return "language"
    except UserError:
        pass
    return "language" if data.startswith("text") else "vision"


def _read_metrics(run_dir: Path) -> pd.DataFrame:
    path = run_dir / run_files.METRICS_FILE
    if not path.is_file():
        return pd.DataFrame({"step": pd.Series(dtype=float)})
    try:
        records = run_files.read_metrics(path)
    except ValueError as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not records:
        return pd.DataFrame({"step": pd.Series(dtype=float)})
    frame = pd.DataFrame.from_records(records)
    # JSON null (a NaN estimate) arrives as None: make the numeric columns numeric.
    for column in frame.columns:
        if frame[column].dtype == object:
            converted = pd.to_numeric(frame[column], errors="coerce")
            if converted.notna().sum() == frame[column].notna().sum():
                frame[column] = converted
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def load_run(run_dir: Path, group: str | None = None) -> RunData:
    """Read one run folder. ``UserError`` if it is not one (no ``config.json``) or lacks ``final.pt``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    if not run_files.is_run_folder(run_dir):
        raise UserError(
            f"{run_dir} is not a run folder (no {run_files.CONFIG_FILE}; a suite folder has {run_files.SUITE_FILE})"
        )
    config = run_files.read_config(run_dir)
    final = run_dir / run_files.FINAL_FILE
    if final.exists() and not final.is_file():
        raise UserError(f"{final} is not a file (a folder or a special file has its name)")
    if not final.is_file():
        raise UserError(
            f"run {run_dir} has not finished (no final.pt): continue it with landscape train --resume {run_dir}"
        )
    name = str(config.get("name") or run_dir.name)
    return RunData(
        path=run_dir,
        name=name,
        config=config,
        metrics=_read_metrics(run_dir),
        summary=run_files.read_summary(run_dir),
        analysis=run_files.read_analysis(run_dir),
        group=group or _loose_group(config),
    )


def _loose_group(config: dict[str, Any]) -> str:
    """A run's own ``group`` (runs of a user's training loop: model class and probe batch), else
    its model and data."""
    return str(config.get("group") or f"{config.get('model') or 'model'} on {config.get('data') or 'data'}")


def load_runs(paths: list[Path] | tuple[Path, ...]) -> list[RunData]:
    """Read run and suite folders (see :func:`landscape.runs.find_run_dirs`); each run once, labels
    unique."""
    if not paths:
        raise UserError("give at least one run folder (or suite folder) to report on")
    seen: set[Path] = set()
    runs: list[RunData] = []
    for path in paths:
        for run_dir, group in run_files.find_run_dirs(Path(path)):
            key = run_dir.resolve()
            if key in seen:
                continue
            seen.add(key)
            runs.append(load_run(run_dir, group))
    _assign_labels(runs)
    return runs


def _assign_labels(runs: list[RunData]) -> None:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    used: set[str] = set()
    for run in runs:
        label = run.name if counts[run.name] == 1 else f"{run.group}/{run.name}"
        base, i = label, 2
        while label in used:
            label, i = f"{base}#{i}", i + 1
        used.add(label)
        run.label = label


def baseline_run(runs: Sequence[RunData]) -> RunData:
    """AdamW (or SGD) when present, else the first run: the reference for paths and the contrast."""
    for run in runs:
        if run.method in BASELINES:
            return run
    return runs[0]


def group_runs(runs: list[RunData]) -> dict[str, list[RunData]]:
    """Runs by group, groups in order of first appearance."""
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def step_time_seconds(run: RunData) -> float | None:
    """Mean wall-clock seconds of one training update, diagnostics excluded.

    ``time_s`` of the last record counts training since the start, including the diagnostics
    run in between; their own ``diag_time_s`` is subtracted. Checkpoint writes stay in (small).
    """
    frame = run.metrics
    if frame.empty or "time_s" not in frame or run.steps <= 0:
        return None
    total = frame["time_s"].dropna()
    if total.empty:
        return None
    diag = float(frame["diag_time_s"].fillna(0.0).sum()) if "diag_time_s" in frame else 0.0
    value = (float(total.iloc[-1]) - diag) / run.steps
    return value if math.isfinite(value) and value > 0 else None
