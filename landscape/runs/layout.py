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

Every output folder is held by one writer at a time: ``.landscape.lock`` (:data:`LOCK_FILE`)
holds the writer's process id while it works (:func:`landscape.runs.files.locked_output_dir`).
Each command owns a set of names in its folder (:func:`analysis_output`, :func:`surface_output`,
:func:`prune_output`, :func:`report_output`): a new set of outputs replaces exactly the previous
set, so files of an earlier, larger run of the same command do not stay beside the new ones, and
anything else in the folder stays. Writers leave only :data:`STAGING_PREFIX` folders and
``.NAME.XXXXXXXX.tmp`` files when killed mid-write (:func:`is_debris`); the next writer of the
folder removes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "ANALYSIS_FILE",
    "ANALYSIS_OUTPUTS",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "CONFIG_VERSION",
    "DENSITY_FILE",
    "FINAL_FILE",
    "LAYERS_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "REPORT_HTML",
    "REPORT_CSV_FILES",
    "REPORT_FIGURE_KINDS",
    "REPORT_MARKDOWN",
    "STAGING_PREFIX",
    "SUITE_FILE",
    "SUITE_VERSION",
    "SUMMARY_FILE",
    "SURFACE_FILE",
    "SURFACE_KINDS",
    "TIMING_FIELDS",
    "analysis_output",
    "checkpoint_path",
    "checkpoint_step",
    "holds_run",
    "is_debris",
    "is_run_folder",
    "is_suite_folder",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_file_names",
    "prune_output",
    "report_output",
    "run_files",
    "surface_figure_name",
    "surface_output",
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
LOCK_FILE = ".landscape.lock"
STAGING_PREFIX = ".staging-"

CONFIG_VERSION = 1
"""The version of ``config.json`` (and of the run configuration stored in checkpoints)."""
SUITE_VERSION = 1
"""The version of ``suite.json``."""

TIMING_FIELDS = ("time_s", "diag_time_s")
"""The wall-clock fields of a ``metrics.jsonl`` record: the only ones that differ between two runs
of the same configuration."""

_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
# what a writer killed mid-write leaves: a staging folder (staged_output) or a temporary file
# (write_atomic, save_atomic: "." + the file's name + "." + tempfile's 8 random characters + ".tmp")
_DEBRIS = re.compile(r"^(?:" + re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}|\..+\.[a-z0-9_]{8}\.tmp)$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """``run_dir/checkpoints/step-<step>.pt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{int(step)}.pt"


def checkpoint_step(path: Path) -> int | None:
    """The step in a checkpoint's file name (``step-N.pt`` -> ``N``), ``None`` for other names."""
    match = _STEP_FILE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_debris(name: str) -> bool:
    """Whether ``name`` is what a killed writer leaves (a staging folder or a temporary file)."""
    return bool(_DEBRIS.match(name))


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


# ----------------------------------------------------------------------------------------------
# The outputs each command owns in its folder (a new set replaces exactly the previous one)

ANALYSIS_OUTPUTS = frozenset({ANALYSIS_FILE, LAYERS_FILE, DENSITY_FILE})
"""What ``landscape analyze`` (and a run's final analysis) writes: ``layers.csv`` and
``density.png`` only when those metrics ran."""

SURFACE_KINDS = ("line", "plane", "path")
"""The figures of ``landscape surface``: ``surface-line.png``, ``surface-plane.png``, ``surface-path.png``."""

REPORT_CSV_FILES = frozenset(
    {"comparison.csv", "training_curves.csv", "pruning.csv", "rho_sweep.csv", "slices.csv"}
)
"""The CSV tables a report may write (the report's composer names them)."""

# A report's figures: per group "<group>-<kind>.png", the rho sweep "rho-<model>-<data>-<steps>.png"
# and the vision/language contrast; groups are slugs of letters, digits and dashes.
REPORT_FIGURE_KINDS = (
    "loss",
    "curvature",
    "tau",
    "noise",
    "m-sharpness",
    "density",
    "slice-1d",
    "slice-2d",
    "path",
    "pruning",
)
"""The kinds of a report group's figures, ``<group>-<kind>.png``."""

_REPORT_FIGURE = re.compile(
    r"^(?:[\w-]+-(?:" + "|".join(map(re.escape, REPORT_FIGURE_KINDS)) + r")"
    r"|rho-[\w-]+|tau-vision-vs-language)\.png$"
)


def analysis_output(name: str) -> bool:
    """Whether ``name`` is an output of an analysis (:data:`ANALYSIS_OUTPUTS`)."""
    return name in ANALYSIS_OUTPUTS


def surface_output(name: str) -> bool:
    """Whether ``name`` is an output of ``landscape surface``."""
    return name == SURFACE_FILE or name in {surface_figure_name(k) for k in SURFACE_KINDS}


def prune_output(stem: str) -> Callable[[str], bool]:
    """Whether a name is an output of pruning checkpoint ``<stem>.pt`` (its JSON and CSV)."""
    names = set(prune_file_names(stem))
    return lambda name: name in names


def report_output(name: str) -> bool:
    """Whether ``name`` is an output of ``landscape report``: the page, the Markdown, its CSV tables
    and figures (other PNGs in the folder, a screenshot say, are not the report's)."""
    if surface_output(name):
        return False
    return (
        name in (REPORT_HTML, REPORT_MARKDOWN) or name in REPORT_CSV_FILES or bool(_REPORT_FIGURE.match(name))
    )
