"""Numeric options of the commands, declared with their range: bad values are usage errors.

Every numeric option is declared with a :class:`landscape.bounds.Bound` (the one home of its
range, which the library checks as well) through :func:`bounded`: click calls the check while it
parses the command line (typer's ``BadParameter``), so a value out of range stops the command before any work with exit
status 2 and one line, ``error: Invalid value for '--grid': must be an integer in [2, 201], got
100000``, like every other usage error click reports. Comma lists (``--sparsity``) are parsed
the same way by their library parser (:func:`parsed`). :func:`usage_errors` turns the
``UserError`` of a library check of several options together (``--warmup`` against ``--steps``,
``train``'s method options by their rule specs) into the same usage error.

No torch here: the command line loads and builds its help without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from cli.console import err_console
from landscape.bounds import Bound, JobSize
from landscape.errors import UserError

__all__ = [
    "DEVICE_HELP",
    "Device",
    "MaxMemory",
    "announcing",
    "bounded",
    "device_option",
    "devices",
    "max_memory_option",
    "memory_sizes",
    "parsed",
    "sparsities",
    "usage_errors",
]


def _check(bound: Bound) -> Callable[..., Any]:
    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is None:  # an optional option left out
            return value
        problem = bound.problem(value)
        if problem is not None:
            raise typer.BadParameter(problem, ctx=ctx, param=param)
        return value

    return callback


def bounded(bound: Bound, help: str, **options: Any) -> Any:  # noqa: A002 - typer's keyword
    """A ``typer.Option`` whose value must be in ``bound`` (checked while parsing: exit status 2);
    its help text ends with the range."""
    return typer.Option(help=f"{help} [{bound.describe()}]", callback=_check(bound), **options)


def parsed(parse: Callable[[str], Any], help: str, **options: Any) -> Any:  # noqa: A002
    """A text ``typer.Option`` checked by ``parse`` (a library parser that raises ``UserError``,
    such as the sparsity list's) while the command line is parsed; the command receives the text."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is not None:
            try:
                parse(value)
            except UserError as exc:
                raise typer.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return typer.Option(help=help, callback=callback, **options)


def sparsities(text: str) -> list[float]:
    """A ``--sparsity`` list by the pruning module's parser (torch loads only when it is given)."""
    from landscape.prune import parse_sparsities

    return parse_sparsities(text)


def devices(text: str) -> Any:
    """A ``--device`` by the library's resolver (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``): a
    name this machine lacks (``cuda`` without a GPU) is a usage error too."""
    from landscape.distributed import resolve_device

    return resolve_device(text)


def memory_sizes(text: str) -> int:
    """A ``--max-memory`` size (``12GB``, ``800MiB``) by the library's parser."""
    from landscape.curvature.budget import parse_memory

    return parse_memory(text)


DEVICE_HELP = (
    "where to compute: auto (CUDA when available; under torchrun this process's LOCAL_RANK GPU), "
    "cpu, cuda, cuda:N or mps"
)


def device_option() -> Any:
    """``--device``, declared once for every command that computes (checked while parsing)."""
    return parsed(devices, DEVICE_HELP)


def max_memory_option() -> Any:
    """``--max-memory``, declared once for every command that analyses (checked while parsing)."""
    return parsed(
        memory_sizes,
        "memory limit of the process on the device (e.g. 12GB, 800MiB): each metric is planned "
        "to fit it, or stops with one line [default: most of the free memory]",
    )


Device = Annotated[str, device_option()]
"""The ``--device`` parameter of a command (default ``auto``)."""
MaxMemory = Annotated[str | None, max_memory_option()]
"""The ``--max-memory`` parameter of a command (default: most of the free device memory)."""


@contextmanager
def usage_errors() -> Iterator[None]:
    """Inside the block, a ``UserError`` (a library check of the options) is a usage error: exit
    status 2 with its one line."""
    try:
        yield
    except UserError as exc:
        raise typer.BadParameter(str(exc)) from None


def announcing(report: Callable[[str], None], enabled: bool = True) -> Callable[[str], None]:
    """A progress callback that prints a :class:`~landscape.bounds.JobSize` (the size of a job
    about to start) as a ``plan:`` line on stderr that stays, and passes every label on to
    ``report`` (the transient spinner). The line is printed where a person watches (stderr is a
    terminal, and ``enabled``: the leading process): a script or a log that reads stderr still
    gets a failed command's ``error:`` line alone."""

    def progress(label: str) -> None:
        if isinstance(label, JobSize):
            if enabled and err_console.is_terminal:
                err_console.print(f"plan: {label}", markup=False, highlight=False, soft_wrap=True)
            else:  # a log gets it as a progress line, paced like the others
                label = JobSize(f"plan: {label}")
        report(label)

    return progress
