"""What the report measures itself on each run's ``final.pt``, as plain data (no layout here).

* the training loss and accuracy of the final weights (a fixed random subset of the training
  split of at most ``train_targets`` targets);
* the loss-landscape slices: 1D and 2D filter-normalised random directions through every final
  checkpoint (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of Neural
  Nets", arXiv:1712.09913, Sec. 4) and the straight path from each group's baseline run to every
  other run of the group, on at most ``slice_targets`` training targets;
* one-shot global magnitude pruning on the held-out set (Functional-SAM: Singh, Mobahi, Agarwala
  & Dauphin 2025, arXiv 2502.02407, Fig. 5; :mod:`landscape.prune`).

:func:`measure_runs` returns a :class:`Measurements`; :mod:`landscape.report.compose` lays it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.bounds import JobSize
from landscape.data import Dataset
from landscape.evaluation import EvalResult, evaluate, target_subset
from landscape.prune import PruneResult, prune_eval
from landscape.report.runs import RunData, baseline_run

__all__ = [
    "DEFAULT_PRUNE_TARGETS",
    "DEFAULT_SPARSITIES",
    "DEFAULT_TRAIN_TARGETS",
    "MeasureSettings",
    "Measurements",
    "SliceSettings",
    "measure_runs",
]

Progress = Callable[[str], None]
PathSlice = tuple[str, str, dict[str, Any]]
"""A path between two runs: the baseline's label, the other run's label, ``{"alphas", "losses"}``."""

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The training loss/accuracy of the final weights are measured on at most this many targets: all
# 1617 training digits; 512 sequences of 64 bytes of the text (a forward pass of ~0.4 s here).
DEFAULT_TRAIN_TARGETS = 32768
# Pruning evaluates each sparsity on at most this many held-out targets: all 180 held-out digits;
# 256 of the 717 held-out text sequences (0.25 s per sparsity instead of 0.75 s).
DEFAULT_PRUNE_TARGETS = 16384


@dataclass(frozen=True)
class SliceSettings:
    """Loss-landscape slice budgets: points per axis, half-width in filter norms, data size."""

    line_steps: int = 41
    plane_steps: int = 17
    path_steps: int = 31
    distance: float = 1.0
    targets: int = 2048


@dataclass(frozen=True)
class MeasureSettings:
    """What to measure and on how much data (the report's options; see ``build_report``)."""

    seed: int = 0
    slices: bool = True
    pruning: bool = True
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    slice_settings: SliceSettings = field(default_factory=SliceSettings)
    train_targets: int = DEFAULT_TRAIN_TARGETS
    prune_targets: int = DEFAULT_PRUNE_TARGETS
    dtype: torch.dtype = torch.float32
    trust_checkpoint: bool = False
    device: str = "cpu"


@dataclass
class Measurements:
    """Everything measured, by run label (paths by group name), plus the seconds of each stage."""

    train_evals: dict[str, EvalResult] = field(default_factory=dict)
    surfaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths: dict[str, list[PathSlice]] = field(default_factory=dict)
    pruning: dict[str, list[PruneResult]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Loaded:
    """A run's final weights with its training data (the subset used here) and held-out data."""

    model: torch.nn.Module
    loss: str
    train: Dataset
    eval: Dataset | None


def measure_runs(
    runs: Sequence[RunData],
    groups: Mapping[str, list[RunData]],
    settings: MeasureSettings,
    progress: Progress | None = None,
) -> Measurements:
    """Load each run's final weights and measure them (see the module docstring)."""
    report = progress or (lambda _label: None)
    out = Measurements()
    stamp = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal stamp
        now = time.perf_counter()
        out.seconds[stage] = now - stamp
        stamp = now

    loaded: dict[str, _Loaded] = {}
    for run in runs:
        report(f"{run.label}: final weights on the training data")
        item = _load(run, settings)
        loaded[run.label] = item
        out.train_evals[run.label] = evaluate(item.model, item.train, item.loss)
    lap("train evaluation")
    if settings.slices:
        report(_slices_size(groups, settings.slice_settings))
        out.surfaces, out.paths = _slices(groups, loaded, settings, report)
    lap("slices")
    if settings.pruning:
        out.pruning = _pruning(runs, loaded, settings, report)
    lap("pruning")
    return out


def _load(run: RunData, settings: MeasureSettings) -> _Loaded:
    from landscape.resolve import eval_split_from_config, resolve_inputs

    # max_targets=None: the whole training split; the budgets choose the subsets
    inputs = resolve_inputs(
        run.final_checkpoint,
        seed=settings.seed,
        dtype=settings.dtype,
        max_targets=None,
        use_eval_data=True,
        trust_checkpoint=settings.trust_checkpoint,
    )
    held_out = eval_split_from_config(inputs.config, settings.dtype)
    train = target_subset(inputs.data, settings.train_targets, settings.seed)
    # on the device: evaluate, Problem and prune_eval compute where the model is; the data stays here
    return _Loaded(inputs.model.to(settings.device), inputs.loss, train, held_out)


def _pruning(
    runs: Sequence[RunData], loaded: dict[str, _Loaded], settings: MeasureSettings, report: Progress
) -> dict[str, list[PruneResult]]:
    """One-shot pruning of every run with held-out data, at every sparsity (0 included)."""
    levels = sorted({0.0, *(float(s) for s in settings.sparsities)})
    out = {}
    for run in runs:
        item = loaded[run.label]
        if item.eval is None:
            continue
        report(f"{run.label}: one-shot pruning")
        held_out = target_subset(item.eval, settings.prune_targets, settings.seed)
        out[run.label] = prune_eval(item.model, held_out, item.loss, levels)
    return out


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _same_shapes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def _slices_size(groups: Mapping[str, list[RunData]], grid: SliceSettings) -> JobSize:
    """The size of the slices, stated before they start: every run's line and plane, and a path
    from each group's baseline to each of its other runs (at most)."""
    from landscape.surface import slice_points

    runs = sum(len(members) for members in groups.values())
    paths = sum(len(members) - 1 for members in groups.values())
    each = slice_points(
        line=True,
        plane=True,
        path=False,
        line_steps=grid.line_steps,
        plane_steps=grid.plane_steps,
        path_steps=grid.path_steps,
    )
    total = runs * each + paths * (grid.path_steps + 1)
    return JobSize(
        f"slices: {runs} run(s) x (line {grid.line_steps} + plane {grid.plane_steps}x{grid.plane_steps} "
        f"+ centre 1) + up to {paths} path(s) x {grid.path_steps + 1} = {total} loss evaluations, each on "
        f"up to {grid.targets} training targets"
    )


def _slices(
    groups: Mapping[str, list[RunData]],
    loaded: dict[str, _Loaded],
    settings: MeasureSettings,
    report: Progress,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[PathSlice]]]:
    """1D and 2D slices around every final checkpoint; the path from each group's baseline run to
    every other run of the group (same architecture only)."""
    from landscape.problem import Problem
    from landscape.surface import compute_surface

    grid, seed = settings.slice_settings, settings.seed
    surfaces: dict[str, dict[str, Any]] = {}
    paths: dict[str, list[PathSlice]] = {}
    problems: dict[str, Problem] = {}
    for members in groups.values():
        for run in members:
            item = loaded[run.label]
            problem = Problem(item.model, target_subset(item.train, grid.targets, seed), item.loss)
            problems[run.label] = problem

            def stage(label: str, name: str = run.label) -> None:
                report(f"{name}: {label}")

            surface = compute_surface(
                problem,
                line=True,
                plane=True,
                distance=grid.distance,
                line_steps=grid.line_steps,
                plane_steps=grid.plane_steps,
                seed=seed,
                progress=stage,
            )
            surfaces[run.label] = surface.to_dict()
    for name, members in groups.items():
        if len(members) < 2:
            continue
        base = baseline_run(members)
        base_params = _params(loaded[base.label].model)
        for run in members:
            other = _params(loaded[run.label].model)
            if run is base or not _same_shapes(base_params, other):
                continue
            report(f"path {base.label} -> {run.label}")
            surface = compute_surface(
                problems[base.label],
                line=False,
                plane=False,
                other=other,
                path_steps=grid.path_steps,
                seed=seed,
            )
            paths.setdefault(name, []).append((base.label, run.label, surface.to_dict()["path"]))
    return surfaces, paths
