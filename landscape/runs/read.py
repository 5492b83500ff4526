"""Reading run and suite folders: plain, validated dicts and records; a bad file is a one-line UserError.

What the files mean is their writers' business (:mod:`landscape.train` fills them); here they are
found, parsed and checked for shape, so that every reader (the training loop on resume, the
report, the demo) gets the same errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from landscape.errors import UserError
from landscape.runs.layout import (
    ANALYSIS_FILE,
    CONFIG_FILE,
    CONFIG_VERSION,
    METRICS_FILE,
    SUITE_FILE,
    SUMMARY_FILE,
    TIMING_FIELDS,
    is_run_folder,
    is_suite_folder,
)

__all__ = [
    "find_run_dirs",
    "read_analysis",
    "read_config",
    "read_json_object",
    "read_metrics",
    "read_suite",
    "read_summary",
    "strip_timing",
]


def _check_file(path: Path) -> None:
    """A name of the layout that is there but is no file (a folder named ``config.json``) is an error."""
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a file (a folder or a special file stands where it should be)")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when there is no such file."""
    path = Path(path)
    _check_file(path)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"cannot read {path}: it holds bytes that are not UTF-8 text") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return payload


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict (a JSON object of a version this landscape reads)."""
    path = Path(run_dir) / CONFIG_FILE
    payload = read_json_object(path)
    if payload is None:
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    version = payload.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise UserError(f"{path} has version {version}; this landscape reads {CONFIG_VERSION}")
    _check_config_fields(payload, path)
    return payload


# The fields every reader of config.json relies on, and what each must hold when present
# (the run configuration checks all of them when training; the report reads these directly).
_CONFIG_COUNTS = ("steps", "seed", "batch_size", "seq_len", "log_every", "checkpoint_every", "diagnose_every")
_CONFIG_NUMBERS = ("rho", "lr", "eval_fraction")
_CONFIG_TEXTS = ("name", "method", "model", "data", "eval_data", "loss", "dtype")


def _check_config_fields(payload: dict[str, Any], path: Path) -> None:
    """Counts are non-negative integers, numbers are numbers, names are text (``null`` allowed)."""
    for key in _CONFIG_COUNTS:
        value = payload.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UserError(f"{path}: {key} must be a non-negative integer, got {value!r}")
    for key in _CONFIG_NUMBERS:
        value = payload.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UserError(f"{path}: {key} must be a number, got {value!r}")
    for key in _CONFIG_TEXTS:
        value = payload.get(key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{path}: {key} must be text, got {value!r}")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` (``None`` until the run has finished)."""
    return read_json_object(Path(run_dir) / SUMMARY_FILE)


def read_analysis(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``analysis.json`` (``None`` without a final analysis)."""
    return read_json_object(Path(run_dir) / ANALYSIS_FILE)


def read_suite(suite_dir: Path) -> dict[str, Any]:
    """The suite's ``suite.json``: a JSON object whose ``runs`` is a non-empty list of run entries,
    each a JSON object naming its folder (``folder`` or ``name``); a ``config``, when present, is an
    object."""
    path = Path(suite_dir) / SUITE_FILE
    payload = read_json_object(path)
    if payload is None:
        raise UserError(f"{suite_dir} is not a suite folder (no {SUITE_FILE})")
    runs = payload.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{path} lists no runs")
    for entry in runs:
        folder = (entry.get("folder") or entry.get("name")) if isinstance(entry, dict) else None
        if not folder:
            raise UserError(f"{path} has a run entry without a folder")
        if not isinstance(entry.get("config", {}), dict):
            raise UserError(f"{path}: the config of run {folder} is not a JSON object")
    return payload


def find_run_dirs(path: Path) -> list[tuple[Path, str | None]]:
    """The run folders in ``path``: itself, or a suite's runs in ``suite.json`` order.

    Returns ``(run folder, group)`` pairs; the group is the suite folder's name, ``None`` for a
    loose run.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"run folder not found: {path}")
    if is_suite_folder(path):
        group = path.resolve().name
        return [
            (path / str(entry.get("folder") or entry.get("name")), group)
            for entry in read_suite(path)["runs"]
        ]
    if is_run_folder(path):
        return [(path, path.parent.resolve().name if is_suite_folder(path.parent) else None)]
    raise UserError(f"{path} is neither a run folder ({CONFIG_FILE}) nor a suite folder ({SUITE_FILE})")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a run folder or the file itself): JSON objects, one a
    line, each with an integer ``step``; anything else is a one-line ``UserError`` naming the
    file, the line and the problem."""
    path = Path(path)
    if path.is_dir() and path.name != METRICS_FILE:
        path = path / METRICS_FILE
    _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path} line {number} holds bytes that are not UTF-8 text") from None
        except ValueError as exc:
            raise UserError(f"{path} line {number} is not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number} is a JSON {type(record).__name__}, not an object")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise UserError(f"{path} line {number} has no integer step (got {step!r})")
        records.append(record)
    return records


def strip_timing(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the wall-clock fields (for comparing runs)."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}
