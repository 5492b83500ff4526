"""Exceptions shared across landscape.

``UserError`` marks a problem with what the user asked for (a missing file, an unknown model name,
labels out of range, ...). Its message is a single line that names the problem; the CLI prints it
as ``error: <message>`` and exits with status 1, without a traceback. Every other exception is a
bug in landscape (or in user code it calls) and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = ["UserError", "one_line", "write_error"]


class UserError(Exception):
    """Bad input from the user; the message is one line that names the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: object, limit: int = 600) -> str:
    """Collapse ``text`` to a single line (whitespace runs become one space), cut at ``limit`` chars."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 3].rstrip() + "..."
    return s


# errno values of a write that failed for want of space: ENOSPC (the disk is full), EDQUOT (quota)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch.save's C++ writer reports a short write (a full disk, mostly) as a RuntimeError
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")
_LOW_SPACE = 1 << 20  # bytes: less than this free after a failed write means the disk is full


def _free_bytes(path: Path) -> int | None:
    """Bytes free for this user on the file system of ``path`` (its nearest existing ancestor)."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _size(n: int) -> str:
    """``n`` bytes for a message: ``0 bytes``, ``12.0 KiB``, ``3.4 GiB``."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def write_error(exc: BaseException, path: str | os.PathLike[str]) -> UserError | None:
    """A one-line ``UserError`` for a write of ``path`` that failed in the environment, else ``None``.

    A full disk (``ENOSPC``, a quota's ``EDQUOT``, or torch.save's ``RuntimeError`` about an
    "unexpected pos" on a file system with almost nothing left) says so and where; any other
    ``OSError`` (read-only file system, permissions, I/O error) names the file and the reason.
    Call it while the partial file still exists: the free space it reports is the full disk's.
    """
    path = Path(path)
    free = _free_bytes(path)
    where = f"({_size(free)} free there)" if free is not None else ""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return UserError(f"the disk is full: cannot write {path} {where}")
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
        if free is not None and free < _LOW_SPACE:
            return UserError(f"the disk is full: cannot write {path} {where}")
        return UserError(f"cannot write {path}: the write failed ({one_line(exc, 120)})")
    if isinstance(exc, OSError):
        return UserError(f"cannot write {path}: {exc.strerror or exc}")
    return None
