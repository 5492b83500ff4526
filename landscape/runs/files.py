"""Output folders: one writer each, nothing half-written, and one place that creates them.

* :func:`locked_output_dir` creates an output folder (run, suite, analysis, surface, prune or
  report folder) and holds it for this process alone: an exclusive ``flock`` on ``.landscape.lock``
  inside it, which holds the process id. A second writer gets one line, ``<folder> is in use by
  process N``, and touches nothing. Under ``torchrun`` only rank 0 writes, so only rank 0 locks;
  every rank learns whether it could (one all-reduce), so that none waits for a rank that failed.
  On taking the lock it removes what a writer killed mid-write left (staging folders, temporary
  files); on release it removes the folder again if it created it and nothing was written.
* Every writer renders into a temporary file or folder beside the destination and moves each
  finished file into place with ``os.replace`` (atomic on one file system), so an error or a
  Ctrl-C leaves the folder as it was; :func:`staged_output` moves a set of files in and removes the
  previous set's leftovers (see :mod:`landscape.runs.layout` for which names a command owns).
* A write that fails for want of space is one line: the disk is full, and where
  (:func:`landscape.errors.write_error`).

Output folders are created only by :func:`create_output_dir` (directly, or through
:func:`locked_output_dir` and :func:`staged_output`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from landscape.errors import UserError, write_error
from landscape.runs.layout import CHECKPOINT_DIR, LOCK_FILE, STAGING_PREFIX, is_debris

__all__ = [
    "create_output_dir",
    "dumps_json",
    "ensure_writable_dir",
    "holding",
    "json_line",
    "jsonable",
    "locked_output_dir",
    "remove_debris",
    "staged_output",
    "write_atomic",
    "write_text_atomic",
    "writing",
]

TEMP_SUFFIX = ".tmp"  # of write_atomic's temporary files (see layout.is_debris)


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


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a write of ``path`` that fails in the environment (a full disk, a read-only file
    system, permissions) into a one-line ``UserError`` that names it (:func:`~landscape.errors.write_error`)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = write_error(exc, path)
        if error is None:
            raise
        raise error from exc


def ensure_writable_dir(path: Path) -> Path:
    """Check, before long work, that ``path`` is (or can be created as) a writable folder.

    Creates nothing: a failed run leaves no empty folder behind.
    """
    path = Path(path)
    _check_not_dangling(path)
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


def _check_not_dangling(path: Path) -> None:
    """A symbolic link to nothing cannot become a folder: say so (``mkdir`` would say "File exists")."""
    if path.is_symlink() and not path.exists():
        raise UserError(
            f"cannot write to output folder {path}: it is a symbolic link to {os.readlink(path)}, "
            "which does not exist"
        )


def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; returns the folders this call created, outermost first."""
    _check_not_dangling(path)
    missing = []
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it meanwhile: not ours to remove
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"the disk is full: cannot create output folder {path}") from None
            raise UserError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
        created.append(folder)
    if not path.is_dir():
        raise UserError(f"cannot create output folder {path}: it exists and is not a folder")
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders (outermost first in the list) that are empty, innermost first."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder goes


def create_output_dir(path: Path) -> bool:
    """Create the output folder ``path`` (and its parents) unless it exists; ``True`` if it was created."""
    return bool(_make_dirs(Path(path)))


def remove_debris(folder: Path) -> list[Path]:
    """Remove what a writer killed mid-write left in ``folder`` and its ``checkpoints/``: staging
    folders and temporary files (:func:`landscape.runs.layout.is_debris`). Call it only while
    holding the folder (:func:`locked_output_dir`). Returns what it removed."""
    removed = []
    for where in (Path(folder), Path(folder) / CHECKPOINT_DIR):
        if not where.is_dir():
            continue
        for path in where.iterdir():
            if not is_debris(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------------
# One writer per folder

# folders this process holds: resolved path -> [lock file descriptor, depth, folders created]
_HELD: dict[Path, list[Any]] = {}


def _holder(lock: Path) -> str:
    """The process id written in a held lock file (or a phrase when it is not there yet)."""
    try:
        text = lock.read_text().strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def _take(folder: Path) -> int:
    """Open and lock ``folder/.landscape.lock`` without waiting; returns its descriptor.

    A lock file is removed when its holder lets go; one locked after that removal (the old,
    unlinked file) is not the folder's lock, so the identity of the file is checked and the
    lock taken again on the new one.
    """
    lock = folder / LOCK_FILE
    for _ in range(100):
        with writing(lock):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{folder} is in use by {_holder(lock)}") from None
        try:
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                with writing(lock):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed it meanwhile: lock the new one
    raise UserError(f"cannot lock {folder}: its lock file keeps changing")  # pragma: no cover


def _acquire(folder: Path) -> tuple[Path, bool]:
    """Hold ``folder`` for this process (created if needed); ``(key, newly held)``."""
    ensure_writable_dir(folder)
    created = _make_dirs(folder)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        return key, False
    try:
        fd = _take(folder)
    except BaseException:
        _remove_if_empty(created)
        raise
    _HELD[key] = [fd, 1, created]
    if not _held_elsewhere(folder.parent):  # its writer may be mid-write in here (a run's checkpoints/)
        remove_debris(folder)
    return key, True


def _held_elsewhere(folder: Path) -> bool:
    """Whether another process holds ``folder`` (its lock file is locked, and not by us)."""
    if folder.resolve() in _HELD:
        return False
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing lets go of a shared lock taken just to look
    return False


def _release(key: Path, folder: Path) -> None:
    held = _HELD[key]
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    fd, _, created = held
    with contextlib.suppress(OSError):
        (folder / LOCK_FILE).unlink()  # before letting go: a newcomer then locks a new file
    os.close(fd)
    _remove_if_empty(created)


def _leader_agrees(failure: BaseException | None, folder: Path) -> None:
    """Under ``torchrun``: tell every rank whether rank 0 could take the folder (one all-reduce),
    so that no rank goes on to wait for one that stopped."""
    from landscape import distributed

    if not distributed.is_distributed():
        return
    import torch

    flag = distributed.all_reduce_max_(torch.tensor([0 if failure is None else 1]))
    if int(flag[0]) and failure is None:
        raise UserError(f"the leading process could not take {folder} for writing (see its error)")


@contextmanager
def locked_output_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create the output folder ``path`` (with its parents) if needed and hold it for this process.

    Another process holding it: ``UserError("<path> is in use by process N")`` before anything
    is written. On entry, staging folders and temporary files a killed writer left are removed
    (:func:`remove_debris`; not while another process holds the folder above, whose writer may
    be writing in this one: a run's ``checkpoints/``); on exit the lock file goes, and so do the folders this call
    created if nothing was written in them (a failed first write leaves no empty folder). The
    same process may hold a folder again (nested calls). Under ``torchrun`` rank 0 holds the
    folder and the other ranks only learn whether it could (every rank must call this).
    """
    from landscape import distributed

    folder = Path(path)
    if distributed.rank() != 0:
        _leader_agrees(None, folder)
        yield folder
        return
    try:
        key, _ = _acquire(folder)
    except BaseException as exc:
        _leader_agrees(exc, folder)
        raise
    try:
        _leader_agrees(None, folder)
        yield folder
    finally:
        _release(key, folder)


# ----------------------------------------------------------------------------------------------
# Atomic writing


@contextmanager
def staged_output(out_dir: Path, owned: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success move every file in it into ``out_dir`` atomically.

    ``owned`` names the files of ``out_dir`` that belong to this kind of output (see
    :mod:`landscape.runs.layout`): once the new files are in place, the owned files that the new
    set does not hold (an earlier run's ``layers.csv`` when this one measured no layers) are
    removed, so the folder holds one set. On an error the folder is left as it was (and a folder
    this call created is removed again); a full disk is one line (:func:`writing`).
    """
    out_dir = ensure_writable_dir(Path(out_dir))
    created = _make_dirs(out_dir)
    done = False
    try:
        tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as exc:
        _remove_if_empty(created)
        raise write_error(exc, out_dir) or exc from None
    try:
        with writing(out_dir):
            yield tmp
        new = [src for src in sorted(tmp.rglob("*")) if src.is_file()]
        with writing(out_dir):
            for src in new:
                dest = out_dir / src.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
        if owned is not None:
            names = {src.relative_to(tmp).as_posix() for src in new}
            for path in out_dir.iterdir():
                if path.is_file() and owned(path.name) and path.name not in names:
                    path.unlink(missing_ok=True)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_if_empty(created)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_atomic(path: Path, render: Callable[[Path], Any]) -> None:
    """Call ``render(tmp_path)`` and rename the result to ``path`` (same folder, so atomic).

    The file gets the permissions a new file gets (``0o666`` less the umask), not the
    owner-only ones of a temporary file; a full disk is one line (:func:`writing`).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with writing(path):
            render(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


F = TypeVar("F", bound=Callable[..., Any])


def holding(folder: str | Callable[[Mapping[str, Any]], str | os.PathLike[str]]) -> Callable[[F], F]:
    """Decorate a function that writes one output folder so that it holds that folder throughout
    (:func:`locked_output_dir`): ``folder`` names the parameter that gives it, or computes it from
    the call's arguments (by name, defaults filled in)."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def held(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            where = bound.arguments[folder] if isinstance(folder, str) else folder(bound.arguments)
            with locked_output_dir(where):
                return function(*args, **kwargs)

        return held  # type: ignore[return-value]

    return decorate
