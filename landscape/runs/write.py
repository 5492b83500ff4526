"""Writing run, suite and analysis folders: each file of :mod:`landscape.runs.layout`, atomically.

The writers take plain data (dicts, records, results with ``to_dict``) and decide nothing about
its meaning; :mod:`landscape.train` decides what goes into a run folder, ``landscape analyze``,
``surface`` and ``prune-eval`` what goes into theirs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from landscape.errors import UserError
from landscape.runs.files import (
    create_output_dir,
    dumps_json,
    ensure_writable_dir,
    json_line,
    staged_output,
    write_text_atomic,
    writing,
)
from landscape.runs.layout import (
    ANALYSIS_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DENSITY_FILE,
    LAYERS_FILE,
    METRICS_FILE,
    SUITE_FILE,
    SUITE_VERSION,
    SUMMARY_FILE,
    SURFACE_FILE,
    analysis_output,
    holds_run,
    prune_file_names,
    prune_output,
    surface_figure_name,
    surface_output,
)

if TYPE_CHECKING:
    import pandas as pd

    from landscape.analysis import AnalysisResult

__all__ = [
    "append_record",
    "check_fresh_folder",
    "open_metrics",
    "remove_unstarted_run",
    "start_run",
    "truncate_metrics",
    "write_analysis",
    "write_prune_results",
    "write_suite",
    "write_summary",
    "write_surface",
]


def check_fresh_folder(folder: Path) -> None:
    """Check that a fresh run or suite may go to ``folder``: writable, and holding no run yet."""
    folder = ensure_writable_dir(Path(folder))
    if folder.exists() and holds_run(folder):
        raise UserError(
            f"{folder} already holds a run; resume it with --resume {folder} or choose another --out"
        )


def start_run(run_dir: Path, config: Mapping[str, Any]) -> bool:
    """Create the run folder (unless it exists), write ``config.json`` and an empty ``metrics.jsonl``.

    Returns whether the folder was created (see :func:`remove_unstarted_run`).
    """
    run_dir = Path(run_dir)
    created = create_output_dir(run_dir)
    write_text_atomic(run_dir / CONFIG_FILE, dumps_json(dict(config)))
    write_text_atomic(run_dir / METRICS_FILE, "")
    return created


def remove_unstarted_run(run_dir: Path, remove_folder: bool) -> None:
    """Undo :func:`start_run` of a start that failed before its first checkpoint (nothing would be
    resumable, and the folder should not block a corrected retry); the folder itself only when
    ``remove_folder`` (it was created for the run) and it is empty."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, METRICS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (run_dir / CHECKPOINT_DIR, run_dir) if remove_folder else (run_dir / CHECKPOINT_DIR,):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def open_metrics(run_dir: Path) -> TextIO:
    """``metrics.jsonl`` of ``run_dir``, opened for appending records (:func:`append_record`)."""
    return open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8")


def append_record(log: TextIO, record: dict[str, Any]) -> None:
    """Append one record to an open ``metrics.jsonl`` and flush it: a killed process leaves whole
    lines (and at most one torn last line, which :func:`truncate_metrics` drops). A full disk is
    one line naming the file."""
    with writing(Path(getattr(log, "name", METRICS_FILE))):
        log.write(json_line(record))
        log.flush()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the records up to ``step``; drop later ones and a torn last line (killed mid-write).

    Only the last line can be torn; a line that is not a JSON object with an integer ``step``
    (binary bytes, say) with records after it is damage, not a torn write: ``UserError`` naming
    the file and the line, and the file is left as it is.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        write_text_atomic(path, "")
        return
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    lines = path.read_bytes().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    kept = []
    for number, raw in enumerate(lines, start=1):
        record, problem = _parse_record(raw)
        if problem is not None:
            if number == len(lines):
                break  # a torn last line
            raise UserError(f"cannot resume: {path} line {number} {problem}")
        assert record is not None
        if record["step"] > step:
            break
        kept.append(raw.decode("utf-8") + "\n")
    write_text_atomic(path, "".join(kept))


def _parse_record(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A ``metrics.jsonl`` line as a record, or ``(None, what is wrong with it)``."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "holds bytes that are not UTF-8 text"
    except ValueError as exc:
        return None, f"is not JSON ({exc})"
    if not isinstance(record, dict):
        return None, f"is a JSON {type(record).__name__}, not an object"
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return None, "has no integer step"
    return record, None


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` (it marks the run complete); returns its path."""
    path = Path(run_dir) / SUMMARY_FILE
    write_text_atomic(path, dumps_json(dict(summary)))
    return path


def write_suite(suite_dir: Path, runs: Sequence[Mapping[str, Any]]) -> Path:
    """Create the suite folder (unless it exists) and write ``suite.json`` listing ``runs`` (one
    entry per run: name, folder, method, rho, config and, once finished, summary)."""
    suite_dir = Path(suite_dir)
    create_output_dir(suite_dir)
    path = suite_dir / SUITE_FILE
    write_text_atomic(path, dumps_json({"version": SUITE_VERSION, "runs": [dict(r) for r in runs]}))
    return path


def write_analysis(
    result: AnalysisResult, out_dir: Path, context: dict[str, Any] | None = None, *, figures: bool = True
) -> list[Path]:
    """Write ``analysis.json`` (every result plus ``context``: model, data, checkpoint, versions),
    ``layers.csv`` (when per-layer metrics ran) and ``density.png`` (when densities ran and
    ``figures``), atomically. Returns the paths written.
    """
    from landscape.figures import density_figure, save_png
    from landscape.metrics.density import DENSITY

    out_dir = Path(out_dir)
    payload = result.to_dict()
    density = payload.get(DENSITY)
    if context:
        payload["context"] = context
    names = [ANALYSIS_FILE]
    with staged_output(out_dir, analysis_output) as tmp:
        (tmp / ANALYSIS_FILE).write_text(dumps_json(payload))
        if result.layers:
            result.layers_frame().to_csv(tmp / LAYERS_FILE, index=False, float_format="%.8g")
            names.append(LAYERS_FILE)
        if density and figures:
            title = f"{context.get('model', '')} on {context.get('data', '')}" if context else ""
            save_png(density_figure(density, title=title), tmp / DENSITY_FILE)
            names.append(DENSITY_FILE)
    return [out_dir / n for n in names]


def write_surface(surface: Any, out_dir: Path, context: dict[str, Any] | None = None) -> list[Path]:
    """Write ``surface.json`` and ``surface-line.png`` / ``surface-plane.png`` / ``surface-path.png``."""
    from landscape.figures import save_png, surface_figures

    out_dir = Path(out_dir)
    payload = surface.to_dict()
    if context:
        payload["context"] = context
    names = [SURFACE_FILE]
    with staged_output(out_dir, surface_output) as tmp:
        (tmp / SURFACE_FILE).write_text(dumps_json(payload))
        for key, fig in surface_figures(payload).items():
            save_png(fig, tmp / surface_figure_name(key))
            names.append(surface_figure_name(key))
    return [out_dir / n for n in names]


def write_prune_results(out_dir: Path, stem: str, payload: dict[str, Any], rows: pd.DataFrame) -> list[Path]:
    """Write ``prune-<stem>.json`` (``payload``) and ``prune-<stem>.csv`` (``rows``) atomically."""
    out_dir = Path(out_dir)
    names = prune_file_names(stem)
    with staged_output(out_dir, prune_output(stem)) as tmp:
        (tmp / names[0]).write_text(dumps_json(payload))
        rows.to_csv(tmp / names[1], index=False, float_format="%.8g")
    return [out_dir / n for n in names]
