"""Shared terminal plumbing of the commands: the two consoles and the stage spinner."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

out_console = Console()
err_console = Console(stderr=True)  # progress and notes: stdout stays machine-readable (--json)


@contextmanager
def stage_progress(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A transient spinner on stderr showing the current stage and elapsed time.

    Yields the progress callback the library calls with a short stage label.
    """
    if not enabled:
        yield lambda _label: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=None)
        yield lambda label: progress.update(task, description=label)
