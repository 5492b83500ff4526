"""The names of a run folder's files and where they lie: spelled here once.

A run folder (``landscape train``)::

    config.json            the resolved run configuration (rebuilds model, data and optimizer)
    metrics.jsonl          one JSON object per logged step
    checkpoints/step-N.pt  the training state after N updates (every checkpoint_every steps, at the end)
    final.pt               {"model": state_dict, "config": ...}: `landscape analyze final.pt` needs nothing else
    summary.json           final losses, accuracy, baseline, curvature; marks the run complete
    analysis.json          the final analysis of final.pt (with layers.csv and density.png when they ran)

A suite folder holds ``suite.json`` and one run folder per run. The output folder of
``landscape analyze`` holds ``analysis.json``, ``layers.csv`` and ``density.png``; that of
``landscape surface`` ``surface.json`` and ``surface-<kind>.png``; ``landscape prune-eval``
writes ``prune-<checkpoint>.json`` and ``.csv``; a report folder (``landscape report``) holds
``index.html`` and ``report.md`` with their PNGs and CSVs.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "ANALYSIS_FILE",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "CONFIG_VERSION",
    "DENSITY_FILE",
    "FINAL_FILE",
    "LAYERS_FILE",
    "METRICS_FILE",
    "REPORT_HTML",
    "REPORT_MARKDOWN",
    "SUITE_FILE",
    "SUITE_VERSION",
    "SUMMARY_FILE",
    "SURFACE_FILE",
    "TIMING_FIELDS",
    "checkpoint_path",
    "holds_run",
    "is_run_folder",
    "is_suite_folder",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_file_names",
    "run_files",
    "surface_figure_name",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
FINAL_FILE = "final.pt"
SUMMARY_FILE = "summary.json"
ANALYSIS_FILE = "analysis.json"
LAYERS_FILE = "layers.csv"
DENSITY_FILE = "density.png"
SUITE_FILE = "suite.json"
SURFACE_FILE = "surface.json"
REPORT_HTML = "index.html"
REPORT_MARKDOWN = "report.md"

CONFIG_VERSION = 1
"""The version of ``config.json`` (and of the run configuration stored in checkpoints)."""
SUITE_VERSION = 1
"""The version of ``suite.json``."""

TIMING_FIELDS = ("time_s", "diag_time_s")
"""The wall-clock fields of a ``metrics.jsonl`` record: the only ones that differ between two runs
of the same configuration."""

_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """``run_dir/checkpoints/step-<step>.pt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{int(step)}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the run's step checkpoints, in step order (temporary files ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """The step checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a run (its ``config.json``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def is_suite_folder(path: Path) -> bool:
    """Whether ``path`` holds a suite (its ``suite.json``)."""
    return (Path(path) / SUITE_FILE).is_file()


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds (part of) a run or a suite: a fresh one may not go there."""
    return any(
        (Path(folder) / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR, SUITE_FILE)
    )


def run_files(run_dir: Path) -> list[Path]:
    """The files every finished run has, besides the final analysis's: config, metrics, checkpoints, final."""
    run_dir = Path(run_dir)
    return [run_dir / CONFIG_FILE, run_dir / METRICS_FILE, run_dir / CHECKPOINT_DIR, run_dir / FINAL_FILE]


def surface_figure_name(kind: str) -> str:
    """``surface-<kind>.png`` (``line``, ``plane`` or ``path``)."""
    return f"surface-{kind}.png"


def prune_file_names(stem: str) -> tuple[str, str]:
    """``prune-<stem>.json`` and ``prune-<stem>.csv``: the results of pruning checkpoint ``<stem>.pt``."""
    return f"prune-{stem}.json", f"prune-{stem}.csv"
