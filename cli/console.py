"""Shared plumbing of the commands: the two consoles, the stage spinner, threads and the leading rank."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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
