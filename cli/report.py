"""``landscape report`` and ``landscape demo``: parse, call ``landscape.report`` / ``landscape.demo``, print.

Registered in ``cli/main.py``; this module does not import it (``python -m cli.main`` runs that
file as ``__main__``, and importing it again from here would build a second app).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import (
    LogFormat,
    Output,
    Quiet,
    print_line,
    print_paths,
    set_threads,
    stage_progress,
    summary_event,
)
from cli.options import Device, MaxMemory, announcing, bounded, parsed, sparsities
from landscape.bounds import SEED, SLICE_DISTANCE, SLICE_GRID, SLICE_STEPS, THREADS


def _print_summary(lines: list[str], limit: int | None = None) -> None:
    shown = lines if limit is None else lines[:limit]
    for line in shown:
        print_line(f"- {line}")
    if limit is not None and len(lines) > limit:
        print_line(f"  ... {len(lines) - limit} more in the report")


def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="run folders of landscape train, or suite folders (all their runs)", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option(help="report folder (index.html, report.md, PNGs, CSVs)")] = Path(
        "reports/report"
    ),
    sweep: Annotated[
        list[Path] | None,
        typer.Option(help="runs or suites that only enter the rho sweep (repeatable)", show_default=False),
    ] = None,
    title: Annotated[str | None, typer.Option(help="page title [default: names the groups of runs]")] = None,
    slices: Annotated[
        bool, typer.Option("--slices/--no-slices", help="compute the 1D/2D loss-landscape slices and paths")
    ] = True,
    pruning: Annotated[
        bool, typer.Option("--pruning/--no-pruning", help="evaluate one-shot global magnitude pruning")
    ] = True,
    sparsity: Annotated[
        str, parsed(sparsities, "pruning levels, comma-separated fractions")
    ] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    slice_steps: Annotated[int, bounded(SLICE_STEPS, "points along each 1D slice")] = 41,
    slice_grid: Annotated[int, bounded(SLICE_GRID, "points per axis of each 2D slice")] = 17,
    slice_distance: Annotated[float, bounded(SLICE_DISTANCE, "slice half-width in filter norms")] = 1.0,
    seed: Annotated[int, bounded(SEED, "seeds the slice directions and the data subsets")] = 0,
    threads: Annotated[int | None, bounded(THREADS, "torch threads (default: torch's choice)")] = None,
    device: Device = "auto",
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            help="let the runs' stored configs name code to run (import paths of models, data, losses); "
            "trusted runs only (checkpoints are always read weights-only)"
        ),
    ] = False,
    quiet: Quiet = False,
    log_format: LogFormat = "text",
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Compare training runs: a self-contained HTML page, Markdown with PNGs, and CSV tables.

    The page holds the comparison table (losses, lambda_max/min, traces of H, G and H_F, tau split,
    step time), curves over training, spectral densities, loss-landscape slices, pruning robustness,
    the rho sweep and a summary computed from the numbers.
    """
    del debug  # read by main()
    from landscape.report.build import SliceSettings, build_report
    from landscape.runs import ensure_writable_dir

    levels = sparsities(sparsity)
    output = Output.parse(quiet, log_format)
    set_threads(threads)
    ensure_writable_dir(out)
    settings = SliceSettings(line_steps=slice_steps, plane_steps=slice_grid, distance=slice_distance)
    with stage_progress(output, "report") as spinner:
        progress = announcing(spinner)
        result = build_report(
            runs,
            out,
            seed=seed,
            progress=progress,
            slices=slices,
            pruning=pruning,
            sweep_dirs=sweep or [],
            title=title,
            sparsities=levels,
            slice_settings=settings,
            trust_checkpoint=trust_checkpoint,
            device=device,
        )
    if output.json_lines:
        summary_event(
            "report",
            output,
            summary=result.summary,
            index=str(result.index),
            markdown=str(result.markdown),
            seconds=result.seconds,
        )
    elif quiet:
        print_paths([result.index, result.markdown])
    else:
        _print_summary(result.summary, limit=8)
        print_line(f"report: {result.index} (Markdown: {result.markdown})")


def demo(
    out: Annotated[Path, typer.Option(help="report folder")] = Path("reports/demo"),
    quick: Annotated[bool, typer.Option(help="a small version (under a minute) of every stage")] = False,
    runs: Annotated[
        Path | None,
        typer.Option(help="keep the training runs in this new folder [default: a temporary folder]"),
    ] = None,
    seed: Annotated[int, bounded(SEED, "seeds models, data order, estimators and slices")] = 0,
    device: Device = "auto",
    max_memory: MaxMemory = None,
    threads: Annotated[
        int, bounded(THREADS, "torch threads (the demo's small models run fastest on one)")
    ] = 1,
    quiet: Quiet = False,
    log_format: LogFormat = "text",
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """The whole tool on the built-in data, offline: train AdamW, SAM, Functional-SAM, Precond
    Functional-SAM and fSGLD on digits (MLP) and on the text corpus (transformer LM), analyse every
    final checkpoint and write the report (3-4 minutes on 2 busy CPU cores; --quick under 1)."""
    del debug
    from landscape.demo import run_demo

    output = Output.parse(quiet, log_format)
    set_threads(threads)
    with stage_progress(output, "demo") as progress:
        result = run_demo(
            out,
            quick=quick,
            seed=seed,
            progress=progress,
            runs_dir=runs,
            device=device,
            max_memory=max_memory,
        )
    if output.json_lines:
        summary_event(
            "demo",
            output,
            summary=result.report.summary,
            index=str(result.index),
            runs=str(result.runs_dir) if result.runs_dir is not None else None,
            seconds=result.seconds,
        )
        return
    if quiet:
        print_paths([result.index, *([result.runs_dir] if result.runs_dir is not None else [])])
        return
    _print_summary(result.report.summary)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print_line(f"time: {timing}")
    if result.runs_dir is not None:
        print_line(f"runs: {result.runs_dir}")
    print_line(f"report: {result.index}")
