"""``build_report``: from training run folders to the report folder (``landscape report``).

A short pipeline of three parts, each in its own module:

1. read each run folder (:mod:`landscape.report.runs`, through :mod:`landscape.runs`): the
   configuration, the training curves and diagnostics (``metrics.jsonl``), the final evaluation
   (``summary.json``) and the final analysis with its spectral densities (``analysis.json``);
2. measure each run's ``final.pt`` (:mod:`landscape.report.measure`): the final weights on the
   training data, loss-landscape slices and paths, one-shot pruning;
3. lay out the document from that data (:mod:`landscape.report.compose`) and write it atomically
   (:mod:`landscape.report.document`): ``index.html``, ``report.md``, PNGs and CSVs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from landscape import runs as run_files
from landscape.bounds import SEED, SLICE_DISTANCE, SLICE_GRID, SLICE_STEPS
from landscape.errors import UserError
from landscape.report.compose import compose_report
from landscape.report.document import write_report
from landscape.report.measure import (
    DEFAULT_PRUNE_TARGETS,
    DEFAULT_SPARSITIES,
    DEFAULT_TRAIN_TARGETS,
    MeasureSettings,
    SliceSettings,
    measure_runs,
)
from landscape.report.runs import RunData, group_runs, load_runs

__all__ = ["DEFAULT_SPARSITIES", "ReportResult", "SliceSettings", "build_report"]

Progress = Callable[[str], None]


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the folder, its files, the summary and stage timings."""

    out_dir: Path
    files: list[Path]
    summary: list[str]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def index(self) -> Path:
        """``index.html``."""
        return self.out_dir / run_files.REPORT_HTML

    @property
    def markdown(self) -> Path:
        """``report.md``."""
        return self.out_dir / run_files.REPORT_MARKDOWN


@run_files.holding("out_dir")  # one writer from the start: a second one stops at once
def build_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    slices: bool = True,
    pruning: bool = True,
    sweep_dirs: Sequence[str | Path] = (),
    title: str | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    slice_settings: SliceSettings | None = None,
    train_targets: int = DEFAULT_TRAIN_TARGETS,
    prune_targets: int = DEFAULT_PRUNE_TARGETS,
    dtype: torch.dtype = torch.float32,
    notes: Sequence[str] = (),
    trust_checkpoint: bool = False,
    device: str | torch.device | None = None,
) -> ReportResult:
    """Write the report on the runs in ``run_dirs`` (run or suite folders) to ``out_dir``.

    Args:
        run_dirs: run folders and/or suite folders (a suite stands for all its runs).
        out_dir: the report folder: ``index.html``, ``report.md``, PNGs, CSVs.
        seed: seeds the slice directions and the training-data subset: same seed, same report.
        progress: called with a short label before each stage.
        slices / pruning: compute the loss-landscape slices / the pruning curves.
        sweep_dirs: runs that only enter the rho sweep (figure, table and summary).
        title: the page title (default: names the groups).
        sparsities: pruning levels (fractions; 0 is added).
        slice_settings: slice grid sizes and data budget.
        train_targets: targets of the training split for the final train loss and accuracy.
        prune_targets: held-out targets on which each pruned model is evaluated.
        notes: extra lines for the provenance section (the demo's settings, for example).
        trust_checkpoint: let the runs' stored configs name code to run (import paths of models,
            data, losses); without it only built-ins and data files. Checkpoints are always read
            weights-only.
        device: where the final weights are evaluated, sliced and pruned (``auto``, ``cpu``,
            ``cuda:N``, ...; :func:`landscape.distributed.resolve_device`). Default: the CPU.

    ``out_dir`` is held for this process from the start (:func:`landscape.runs.locked_output_dir`:
    a second writer gets one line and changes nothing), and the new report replaces the previous
    one as a set: its figures and tables that the new report lacks go with it.
    """
    started = time.perf_counter()
    report = progress or (lambda _label: None)
    out = run_files.ensure_writable_dir(Path(out_dir))
    settings = _settings(
        seed,
        slices,
        pruning,
        sparsities,
        slice_settings,
        train_targets,
        prune_targets,
        dtype,
        trust_checkpoint,
    )
    if device is not None:
        from dataclasses import replace

        from landscape.distributed import resolve_device

        settings = replace(settings, device=str(resolve_device(device)))

    report("reading run folders")
    runs, sweep_only = _read(run_dirs, sweep_dirs)
    groups = group_runs(runs)
    seconds = {"read": time.perf_counter() - started}

    measured = measure_runs(runs, groups, settings, report)
    seconds |= measured.seconds

    stamp = time.perf_counter()
    report("drawing figures")
    notes = [*notes, *undefined_tau_notes([*runs, *sweep_only])]
    composed = compose_report(runs, sweep_only, groups, measured, settings, title=title, notes=notes)
    seconds["figures"] = time.perf_counter() - stamp

    stamp = time.perf_counter()
    report("writing the report")
    files = write_report(composed.document, out)
    seconds["write"] = time.perf_counter() - stamp
    seconds["total"] = time.perf_counter() - started
    return ReportResult(out, files, composed.summary, seconds)


def undefined_tau_notes(runs: Sequence[RunData]) -> list[str]:
    """One provenance line per run whose tau split was undefined (shown as "-"): at the final
    weights and in how many diagnostics, with the reason the analysis gave."""
    from landscape.metrics import tau

    lines = []
    for run in runs:
        reasons: list[str] = []
        if run.analysis is not None and run.analysis.get(tau.NOTE):
            reasons.append(f"at the final weights ({run.analysis[tau.NOTE]})")
        column = run.metrics.get(tau.NOTE) if tau.NOTE in run.metrics else None
        if column is not None:
            undefined = column.dropna()
            undefined = undefined[undefined.astype(bool)]
            if len(undefined):
                reasons.append(f"in {len(undefined)} diagnostic(s) (last: {undefined.iloc[-1]})")
        if reasons:
            lines.append(f"{run.label}: the τ split is undefined " + " and ".join(reasons) + ".")
    return lines


def _settings(
    seed: int,
    slices: bool,
    pruning: bool,
    sparsities: Sequence[float],
    slice_settings: SliceSettings | None,
    train_targets: int,
    prune_targets: int,
    dtype: torch.dtype,
    trust: bool,
) -> MeasureSettings:
    """The measurement settings, checked (one-line ``UserError`` for a bad budget or sparsity)."""
    grid = slice_settings or SliceSettings()
    SEED.check(seed, "seed")
    SLICE_STEPS.check(grid.line_steps, "line_steps")
    SLICE_GRID.check(grid.plane_steps, "plane_steps")
    SLICE_STEPS.check(grid.path_steps, "path_steps")
    SLICE_DISTANCE.check(grid.distance, "distance")
    if train_targets < 1 or prune_targets < 1:
        raise UserError(f"target budgets must be positive, got {train_targets} and {prune_targets}")
    levels = sorted({0.0, *(float(s) for s in sparsities)})
    if any(not 0.0 <= s < 1.0 for s in levels):
        raise UserError(f"pruning sparsities must be in [0, 1), got {levels}")
    return MeasureSettings(
        seed=seed,
        slices=slices,
        pruning=pruning,
        sparsities=tuple(levels),
        slice_settings=grid,
        train_targets=train_targets,
        prune_targets=prune_targets,
        dtype=dtype,
        trust_checkpoint=trust,
    )


def _read(
    run_dirs: Sequence[str | Path], sweep_dirs: Sequence[str | Path]
) -> tuple[list[RunData], list[RunData]]:
    """The runs to report on and the runs that enter only the rho sweep."""
    sweep_paths = {p.resolve() for d in sweep_dirs for p, _ in run_files.find_run_dirs(Path(d))}
    every = load_runs([*run_dirs, *sweep_dirs])
    runs = [r for r in every if r.path.resolve() not in sweep_paths]
    sweep_only = [r for r in every if r.path.resolve() in sweep_paths]
    if not runs:
        raise UserError("no runs to report on besides the rho sweep: give at least one run folder")
    return runs, sweep_only
