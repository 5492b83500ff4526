"""Atomic file output: nothing half-written, and one place that creates output folders.

Every writer renders into a temporary file or folder beside the destination and moves each
finished file into place with ``os.replace`` (atomic on one file system), so an error or a Ctrl-C
leaves the output folder as it was. Output folders (run, suite, report, analysis folders) are
created only by :func:`create_output_dir` (directly or through :func:`staged_output`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from landscape.errors import UserError


def jsonable(value: Any) -> Any:
    """Convert NaN/inf floats to ``None`` (strict JSON has no NaN) and tuples to lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps_json(value: Any) -> str:
    """Strict, indented JSON text of ``value``."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n"


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one line of strict JSON (a ``metrics.jsonl`` record), newline included."""
    return json.dumps(jsonable(record), allow_nan=False) + "\n"


def ensure_writable_dir(path: Path) -> Path:
    """Check, before long work, that ``path`` is (or can be created as) a writable folder.

    Creates nothing: a failed run leaves no empty folder behind.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write to output folder {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output folder {path}: {probe} is not writable")
    return path


def create_output_dir(path: Path) -> bool:
    """Create the output folder ``path`` (and its parents) unless it exists; ``True`` if it was created.

    The one place that creates output folders (later: where a folder is locked for one writer).
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    return not existed


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success move every file in it into ``out_dir`` atomically."""
    out_dir = ensure_writable_dir(Path(out_dir))
    create_output_dir(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield tmp
        for src in sorted(tmp.rglob("*")):
            if src.is_file():
                dest = out_dir / src.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_atomic(path: Path, render: Callable[[Path], Any]) -> None:
    """Call ``render(tmp_path)`` and rename the result to ``path`` (same folder, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        render(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
