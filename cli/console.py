"""Shared plumbing of the commands: the two consoles, how a command prints (live on a terminal,
plain lines in a log, JSON lines for pipelines, quiet), tables printed whole, threads and the
leading rank.

Where output goes:

* stdout: the result (summary table, summary sentences, the paths written; with ``--json`` or
  ``--log-format json`` machine-readable text only);
* stderr: progress and notes. On an interactive terminal a live spinner or bar that redraws in
  place; anywhere else (SLURM, nohup, CI, ``| cat``, ``| tee``) plain lines at a steady pace: at
  every tenth of the work, or after :data:`PACE_SECONDS` without a line, whichever comes first.
  Errors are one ``error: ...`` line on stderr (``cli.main.main``).

``--quiet`` prints errors and the final paths only; ``--log-format json`` prints one JSON object
per line on stdout: ``progress``, ``stage``, ``still`` and ``note`` events at the same pace, then
one ``summary`` event.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

LOSS_HELP = (
    "the loss: cross_entropy, mse, bce (with logits), nll (log-probabilities in), model (a Hugging Face "
    "model's own loss from its labels), or an import path module:callable naming a function "
    "(outputs, targets) -> mean loss or a torch.nn loss module [default: the model's]"
)
"""``--loss`` of every command (tests check it names every loss of ``landscape.losses.LOSSES``)."""

out_console = Console()
err_console = Console(stderr=True)  # progress and notes: stdout stays machine-readable (--json)

PACE_SECONDS = 30.0
"""A plain progress line at least this often (when there is progress to report)."""
PACE_FRACTION = 0.1
"""... and at every this fraction of the work."""

Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="print errors and the final paths only (no progress, no tables)")
]
LogFormat = Annotated[
    str,
    typer.Option(
        help="text, or json: one JSON object per line on stdout (progress events, then the summary)"
    ),
]


# ----------------------------------------------------------------------------------------------
# How a command prints


@dataclass(frozen=True)
class Output:
    """How one command prints: ``quiet`` (errors and the final paths only), ``json_lines``
    (``--log-format json``), ``document`` (``--json``: one JSON document on stdout and no
    progress) and ``leader`` (False on the other ranks under torchrun: they print nothing)."""

    quiet: bool = False
    json_lines: bool = False
    leader: bool = True
    document: bool = False

    @classmethod
    def parse(cls, quiet: bool, log_format: str, leader: bool = True, json_output: bool = False) -> Output:
        """From the flags; ``UserError`` for an unknown format, or ``--json`` with json lines."""
        from landscape.errors import UserError

        fmt = log_format.strip().lower()
        if fmt not in ("text", "json"):
            raise UserError(f"--log-format must be text or json, got '{log_format}'")
        if fmt == "json" and json_output:
            raise UserError("--json prints one JSON document, --log-format json JSON lines: give one of them")
        return cls(quiet=quiet, json_lines=fmt == "json", leader=leader, document=json_output)

    def progress_kind(self, console: Console | None = None) -> Literal["live", "lines", "json", "off"]:
        """``live`` (a spinner or bar on an interactive stderr), ``lines`` (plain text lines on
        stderr), ``json`` (JSON lines on stdout) or ``off`` (quiet, ``--json``, or not the
        leading rank)."""
        if not self.leader or self.quiet or self.document:
            return "off"
        if self.json_lines:
            return "json"
        return "live" if interactive(console or err_console) else "lines"

    @property
    def text(self) -> bool:
        """Whether the human-readable result (tables, sentences, notes) is printed."""
        return self.leader and not self.quiet and not self.json_lines and not self.document


def interactive(console: Console) -> bool:
    """Whether a live display may redraw in place on ``console``: a terminal that is not dumb
    (``TTY_INTERACTIVE=0/1`` decides, as in rich). Not a terminal: a file, a pipe, a log."""
    flag = os.environ.get("TTY_INTERACTIVE")
    if flag in ("0", "1"):
        return flag == "1"
    return console.is_terminal and not console.is_dumb_terminal


def print_line(text: str, console: Console | None = None) -> None:
    """One line as it is: no markup, no highlighting, never wrapped or cut (paths, sentences)."""
    (console or out_console).print(text, markup=False, highlight=False, soft_wrap=True)


def note(text: str, output: Output) -> None:
    """A note for the user (``note: ...`` on stderr; a ``note`` event in JSON lines; nothing when quiet)."""
    if output.json_lines and output.leader and not output.quiet:
        emit_json({"event": "note", "message": text})
    elif output.text:
        print_line(f"note: {text}", err_console)


def json_text(record: Mapping[str, Any]) -> str:
    """``record`` as one line of strict JSON (NaN and inf as ``null``; paths as text)."""
    from landscape.runs import jsonable

    return json.dumps(jsonable(dict(record)), allow_nan=False, default=str)


def emit_json(record: Mapping[str, Any], stream: TextIO | None = None) -> None:
    """Write one JSON line (to stdout by default) and flush it: a pipeline reads it at once."""
    target = stream or out_console.file
    target.write(json_text(record) + "\n")
    target.flush()


def summary_event(command: str, output: Output, **fields: Any) -> None:
    """The last JSON line of a command: ``{"event": "summary", "command": ..., **fields}``."""
    if output.leader:
        emit_json({"event": "summary", "command": command, **fields})


def print_paths(paths: list[Any]) -> None:
    """``--quiet``'s output: the paths written, one per line."""
    for path in paths:
        print_line(str(path))


# ----------------------------------------------------------------------------------------------
# Tables printed whole


def _cells(table: Table) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows and justification (``left``/``right``) of a rich table, as plain text."""
    headers = [str(c.header) for c in table.columns]
    columns = [[str(cell) for cell in c.cells] for c in table.columns]
    rows = [list(row) for row in zip(*columns, strict=True)] if columns else []
    justify = ["right" if c.justify == "right" else "left" for c in table.columns]
    return headers, rows, justify


def plain_table(table: Table) -> str:
    """A rich table as plain aligned text: its title, the headers, one line per row, every cell
    whole (columns as wide as their widest cell, two spaces between them)."""
    headers, rows, justify = _cells(table)
    widths = [max(len(text) for text in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(width) if how == "right" else cell.ljust(width)
            for cell, width, how in zip(cells, widths, justify, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [str(table.title)] if table.title else []
    out += [line(headers), *(line(row) for row in rows)]
    return "\n".join(out)


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` whole: boxed on a terminal wide enough for it, else as plain aligned text
    (a log, a pipe or a narrow terminal, where a boxed table would cut its cells with "…")."""
    from rich.measure import Measurement

    console = console or out_console
    unbounded = console.options.update_width(1_000_000)  # the width the table wants, not the one it gets
    if console.is_terminal and Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
    else:
        print_line(plain_table(table), console)


# ----------------------------------------------------------------------------------------------
# Plain progress lines


def format_seconds(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``1h02m``."""
    if round(seconds, 1) < 10:
        return f"{max(seconds, 0.0):.1f}s"
    if round(seconds) < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(elapsed: float, done: float, total: float) -> float | None:
    """Time left at the rate so far (``None`` before any work is done)."""
    if done <= 0 or total <= done:
        return 0.0 if total and done >= total else None
    return elapsed / done * (total - done)


def tenth(done: float, total: float) -> int:
    """Which tenth of the work ``done`` of ``total`` has reached (0..10)."""
    if total <= 0:
        return 10
    return int(min(max(done / total, 0.0), 1.0) / PACE_FRACTION + 1e-9)


class ProgressLog:
    """Progress as plain lines (text on stderr, or JSON objects on stdout) at a steady pace.

    The caller decides when a line is due (:meth:`due`: after :data:`PACE_SECONDS` without one);
    :meth:`line` writes it with the elapsed time. A line asked for with ``hold=True`` before the
    work is under way is held back until the next line, a heartbeat or a successful end (a command
    that fails on bad input in its first stage prints its one error line and nothing else). A
    heartbeat thread writes ``still: <what is running>`` after :data:`PACE_SECONDS` without a line
    (long stages report nothing in between); ``clock`` and ``heartbeat=False`` are for tests.
    """

    def __init__(
        self,
        command: str,
        json_lines: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.command = command
        self.json_lines = json_lines
        self.clock = clock
        self.stream = stream
        self.started = clock()
        self.last_line = self.started
        self.current = ""  # what is running now (the heartbeat names it)
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name="landscape-progress", daemon=True)
            self._thread.start()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def due(self) -> bool:
        """Whether :data:`PACE_SECONDS` have passed since the last line."""
        return self.clock() - self.last_line >= PACE_SECONDS

    def line(
        self, text: str, event: Mapping[str, Any], *, eta: float | None = None, hold: bool = False
    ) -> None:
        """Write a progress line: ``text  elapsed 12s  eta 18s`` (text; ``eta``: the seconds
        left, when known) or the ``event`` with ``command``, ``elapsed_s`` and ``eta_s`` (JSON)."""
        elapsed = self.elapsed()
        record = {
            "event": event.get("event"),
            "command": self.command,
            **event,
            "elapsed_s": round(elapsed, 3),
        }
        rendered = f"{text}  elapsed {format_seconds(elapsed)}"
        if eta is not None:
            record["eta_s"] = round(eta, 3)
            rendered += f"  eta {format_seconds(eta)}"
        with self._lock:
            self.last_line = self.clock()
            if hold:
                self._held.append((rendered, record))
                return
            self._flush_held()
            self._write(rendered, record)

    def tick(self) -> None:
        """The heartbeat: ``still: <current>`` when a line is due (called by the thread)."""
        if not self.current or not self.due():
            return
        self.line(f"still: {self.current}", {"event": "still", "stage": self.current})

    def close(self, success: bool) -> None:
        """Stop the heartbeat; on success write what was held back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._lock:
            if success:
                self._flush_held()
            self._held.clear()

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick()
            except Exception:  # a closed stream at exit: the heartbeat is not worth a traceback
                return

    def _flush_held(self) -> None:
        for rendered, record in self._held:
            self._write(rendered, record)
        self._held.clear()

    def _write(self, rendered: str, record: dict[str, Any]) -> None:
        if self.json_lines:
            emit_json(record, self.stream)
            return
        target = self.stream or sys.stderr
        target.write(rendered + "\n")
        target.flush()


_COUNTED = re.compile(r"(\d+)\s*/\s*(\d+)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class StageLines:
    """The stage labels of a library call (``progress=`` callbacks) as paced plain lines.

    A label is written when its kind is new (its numbers aside: ``per-layer lambda_max: net.0.weight``
    and ``net.2.weight`` are one kind); a counted label (``step 12/60``, ``row 3/21``) at each
    new tenth of its count, with its share and an ETA; any label when :data:`PACE_SECONDS` have
    passed. The first line is held back until the work is under way (see :class:`ProgressLog`).
    """

    def __init__(self, log: ProgressLog, hold_first: bool = True) -> None:
        self.log = log
        self._seen: set[str] = set()
        self._tenths: dict[str, int] = {}
        self._since: dict[str, float] = {}
        self._first = hold_first

    def __call__(self, label: str) -> None:
        log = self.log
        log.current = label
        counted = _COUNTED.search(label)
        event: dict[str, Any] = {"event": "stage", "stage": label}
        text = label
        eta = None
        if counted:
            done, total = int(counted.group(1)), int(counted.group(2))
            kind = label[: counted.start()]
            self._since.setdefault(kind, log.elapsed())
            reached = tenth(done, total)
            due = kind not in self._seen or reached > self._tenths.get(kind, -1) or log.due()
            percent = 100.0 * done / total if total else 100.0
            eta = eta_seconds(log.elapsed() - self._since[kind], done, total)
            text += f" ({percent:.0f}%)"
            event |= {"done": done, "total": total, "percent": round(percent, 1)}
        else:
            kind = _NUMBER.sub("#", label)
            reached = 0
            due = kind not in self._seen or log.due()
        if not due:
            return
        self._seen.add(kind)
        self._tenths[kind] = reached
        log.line(text, event, eta=eta, hold=self._first)
        self._first = False


@contextmanager
def stage_progress(
    output: Output | bool, command: str = "", console: Console | None = None
) -> Iterator[Callable[[str], None]]:
    """The progress of a command made of stages: a transient spinner on an interactive stderr,
    paced plain lines elsewhere (:class:`StageLines`), JSON lines with ``--log-format json``,
    nothing when quiet. Yields the callback the library calls with a short stage label.

    ``output``: an :class:`Output`, or a bool (True: as a plain command prints; False: nothing).
    """
    if isinstance(output, bool):
        output = Output(leader=output)
    console = console or err_console
    kind = output.progress_kind(console)
    if kind == "off":
        yield lambda _label: None
        return
    if kind == "live":
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("starting", total=None)
            yield lambda label: progress.update(task, description=label)
        return
    log = ProgressLog(command, kind == "json", stream=None if kind == "json" else console.file)
    ok = False
    try:
        yield StageLines(log)
        ok = True
    finally:
        log.close(ok)


# ----------------------------------------------------------------------------------------------
# Threads and ranks


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU thread count (``None``: torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        from landscape.errors import UserError

        raise UserError(f"--threads must be positive, got {threads}")
    import torch

    torch.set_num_threads(threads)


def leader_process() -> bool:
    """Join the process group when ``torchrun`` launched us; True on the rank that reports and
    writes (rank 0, or the only process). Under torchrun every rank does the work on its shard."""
    from landscape.distributed import init_from_env, rank

    return not init_from_env() or rank() == 0


F = TypeVar("F", bound=Callable[..., Any])


def holds_output(folder: Callable[[Mapping[str, Any]], Path]) -> Callable[[F], F]:
    """Decorate a command that writes one output folder (``folder`` computes it from the command's
    arguments): it joins ``torchrun``'s process group first, so that only rank 0 takes the
    folder, then holds it for the whole command (:func:`landscape.runs.locked_output_dir`: a
    second writer stops at once with ``<folder> is in use by process N``)."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command)

        @functools.wraps(command)
        def held(*args: Any, **kwargs: Any) -> Any:
            from landscape.runs import locked_output_dir

            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            leader_process()
            with locked_output_dir(folder(bound.arguments)):
                return command(*args, **kwargs)

        return held  # type: ignore[return-value]

    return decorate
