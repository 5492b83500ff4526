"""Shared plumbing of the commands: the two consoles, the stage spinner, threads and the leading rank."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

LOSS_HELP = (
    "the loss: cross_entropy, mse, bce (with logits), nll (log-probabilities in), model (a Hugging Face "
    "model's own loss from its labels), or an import path module:callable naming a function "
    "(outputs, targets) -> mean loss or a torch.nn loss module [default: the model's]"
)
"""``--loss`` of every command (tests check it names every loss of ``landscape.losses.LOSSES``)."""

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
