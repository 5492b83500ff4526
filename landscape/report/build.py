"""``build_report``: from training run folders to the report folder (``landscape report``).

What it reads and what it measures itself:

* read from each run folder (:mod:`landscape.report.runs`): the configuration, the training
  curves and diagnostics (``metrics.jsonl``), the final evaluation (``summary.json``) and the
  final analysis with its spectral densities (``analysis.json``);
* measured here on each ``final.pt``: the training loss and accuracy of the final weights (a fixed
  random subset of the training split of at most ``train_targets`` targets), the loss-landscape
  slices (1D and 2D filter-normalised random directions, Li et al. 2018, and the straight path
  from a baseline run to each other run of its group, on at most ``slice_targets`` training
  targets) and one-shot global magnitude pruning on the held-out set (Functional-SAM Fig. 5).

Runs are grouped by suite (see :func:`landscape.report.runs.group_runs`); each group gets its
table, curves, densities, slices and pruning. A rho sweep (Fig. 3) collects runs of the same
model, data and number of steps across groups, plus ``sweep_dirs``: runs that enter only the sweep
(e.g. a ``--rho`` sweep trained without diagnostics). The vision/language tau contrast (Fig. 2)
appears when the runs hold both a classifier and a language model.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from landscape.errors import UserError
from landscape.report.document import (
    Bullets,
    FigureBlock,
    Paragraph,
    Report,
    Section,
    TableBlock,
    write_report,
)
from landscape.report.files import ensure_writable_dir
from landscape.report.runs import RunData, find_run_dirs, group_runs, load_runs, method_label
from landscape.report.summary import (
    BASELINES,
    TauContrast,
    contrast_sentences,
    group_sentences,
    rho_sentences,
)
from landscape.report.tables import (
    comparison_frame,
    comparison_table,
    pruning_frame,
    pruning_table,
    rho_sweep_frame,
    rho_sweep_table,
)

__all__ = ["DEFAULT_SPARSITIES", "ReportResult", "SliceSettings", "build_report"]

Progress = Callable[[str], None]

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
        return self.out_dir / "index.html"


@dataclass
class _Loaded:
    """A run's final weights with its training data (the subset used here) and held-out data."""

    model: torch.nn.Module
    loss: str
    train: Any
    eval: Any


@dataclass
class _TrainEval:
    loss: float
    accuracy: float | None
    num_targets: int


def _fixed_subset(data: Any, max_targets: int, seed: int) -> Any:
    """At most ``max_targets`` targets of ``data``: a random subset drawn once (kept in data order)."""
    per_item = max(1, int(data.y[:1].numel()))
    keep = max(1, max_targets // per_item)
    if keep >= len(data):
        return data
    gen = torch.Generator().manual_seed(int(seed))
    index = torch.randperm(len(data), generator=gen)[:keep].sort().values
    return data.subset(index)


def _load(run: RunData, seed: int, dtype: torch.dtype, train_targets: int, trust: bool) -> _Loaded:
    from landscape.resolve import resolve_inputs
    from landscape.train.config import eval_split_from_config

    # max_targets=None: the whole training split; the budgets below choose the subsets
    inputs = resolve_inputs(
        run.final_checkpoint,
        seed=seed,
        dtype=dtype,
        max_targets=None,
        use_eval_data=True,
        trust_checkpoint=trust,
    )
    held_out = eval_split_from_config(inputs.config, dtype)
    return _Loaded(inputs.model, inputs.loss, _fixed_subset(inputs.data, train_targets, seed), held_out)


def _baseline(runs: Sequence[RunData]) -> RunData:
    """AdamW (or SGD) when present, else the first run: the reference for paths and the contrast."""
    for run in runs:
        if run.method in BASELINES:
            return run
    return runs[0]


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _same_shapes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def _sweep_family(run: RunData) -> tuple[Any, ...]:
    """Runs comparable in a rho sweep: same model, data and number of steps."""
    c = run.config
    return (c.get("model"), str(c.get("model_kwargs")), c.get("data"), c.get("steps"))


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
        trust_checkpoint: let the runs' final checkpoints unpickle objects and name code to run
            (import paths of models, data, losses); without it only built-ins and data files.
    """
    started = time.perf_counter()
    report = progress or (lambda _label: None)
    settings = slice_settings or SliceSettings()
    out = ensure_writable_dir(Path(out_dir))
    if train_targets < 1 or prune_targets < 1:
        raise UserError(f"target budgets must be positive, got {train_targets} and {prune_targets}")
    levels = sorted({0.0, *(float(s) for s in sparsities)})
    if any(not 0.0 <= s < 1.0 for s in levels):
        raise UserError(f"pruning sparsities must be in [0, 1), got {levels}")
    seconds: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        seconds[stage] = seconds.get(stage, 0.0) + now - since
        return now

    report("reading run folders")
    sweep_paths = {p.resolve() for d in sweep_dirs for p, _ in find_run_dirs(Path(d))}
    every = load_runs([*run_dirs, *sweep_dirs])
    runs = [r for r in every if r.path.resolve() not in sweep_paths]
    sweep_only = [r for r in every if r.path.resolve() in sweep_paths]
    if not runs:
        raise UserError("no runs to report on besides the rho sweep: give at least one run folder")
    groups = group_runs(runs)
    t = lap("read", started)

    # ----------------------------------------------------------------------- measurements
    from landscape.train import evaluate

    loaded: dict[str, _Loaded] = {}
    train_evals: dict[str, _TrainEval] = {}
    for run in runs:
        report(f"{run.label}: final weights on the training data")
        item = _load(run, seed, dtype, train_targets, trust_checkpoint)
        loaded[run.label] = item
        result = evaluate(item.model, item.train, item.loss)
        train_evals[run.label] = _TrainEval(result.loss, result.accuracy, result.num_targets)
    t = lap("train evaluation", t)

    surfaces: dict[str, dict[str, Any]] = {}
    paths: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    if slices:
        surfaces, paths = _slices(groups, loaded, settings, seed, report)
    t = lap("slices", t)

    prune_results: dict[str, list[Any]] = {}
    if pruning:
        from landscape.train import prune_eval

        for run in runs:
            item = loaded[run.label]
            if item.eval is None:
                continue
            report(f"{run.label}: one-shot pruning")
            held_out = _fixed_subset(item.eval, prune_targets, seed)
            prune_results[run.label] = prune_eval(item.model, held_out, item.loss, levels)
    t = lap("pruning", t)

    # ------------------------------------------------------------------------ frames
    frame = comparison_frame(runs, train_evals)
    prune_frame = pruning_frame(prune_results, runs) if prune_results else pd.DataFrame()
    sweep_frames = _rho_sweeps(runs, sweep_only)

    # ------------------------------------------------------------------------ document
    report("drawing figures")
    doc = Report(title or _default_title(groups))
    summary_sections: list[Section] = []
    summary_items: list[str] = []
    group_sections: list[Section] = []
    for name, members in groups.items():
        labels = [r.label for r in members]
        part = frame[frame["run"].isin(labels)].reset_index(drop=True)
        prune_part = prune_frame[prune_frame["run"].isin(labels)] if not prune_frame.empty else None
        sentences = group_sentences(part, members[0].domain, prune_part)
        heading = _group_title(name, members)
        summary_items += [f"{heading}: {s}" for s in sentences]
        if sentences:
            summary_sections.append(Section(heading, [Bullets(sentences)], level=3))
        # within a group's section the run's own name suffices (labels carry the group when names repeat)
        shown = part.assign(run=[r.name for r in members])
        group_sections += _group_sections(name, members, shown, prune_part, surfaces, paths.get(name, []))
    contrast_section, contrast_lines = _contrast(groups)
    if contrast_lines:
        summary_items += contrast_lines
        summary_sections.append(Section("Vision against language", [Bullets(contrast_lines)], level=3))
    sweep_sections = []
    for key, sweep in sweep_frames.items():
        lines = rho_sentences(sweep)
        summary_items += lines
        if lines:
            summary_sections.append(
                Section(f"Perturbation radius ({key[0]} on {key[2]})", [Bullets(lines)], level=3)
            )
        sweep_sections.append(_sweep_section(key, sweep, [*runs, *sweep_only]))

    doc.intro.append(
        Paragraph(
            "Which optimizer found the flatter minimum, and was it flat for the right reason? Every number "
            "below is read from the run folders or measured on their final checkpoints, and every sentence "
            "of the summary is computed from those numbers."
        )
    )
    doc.sections.append(Section("Summary", [] if summary_sections else [Paragraph("No comparable numbers.")]))
    doc.sections += summary_sections
    doc.sections += group_sections
    if contrast_section is not None:
        doc.sections.append(contrast_section)
    doc.sections += sweep_sections
    doc.sections.append(
        _provenance(runs, sweep_only, seed, settings, slices, pruning, (train_targets, prune_targets), notes)
    )
    doc.csvs["comparison.csv"] = frame
    doc.csvs["training_curves.csv"] = _curves_frame(runs)
    if not prune_frame.empty:
        doc.csvs["pruning.csv"] = prune_frame
    if sweep_frames:
        doc.csvs["rho_sweep.csv"] = pd.concat(list(sweep_frames.values()), ignore_index=True)
    if surfaces or paths:
        doc.csvs["slices.csv"] = _slices_frame(surfaces, paths)
    t = lap("figures", t)
    report("writing the report")
    files = write_report(doc, out)
    lap("write", t)
    seconds["total"] = time.perf_counter() - started
    return ReportResult(out, files, summary_items, seconds)


# ------------------------------------------------------------------------------------------
# Measurements


def _slices(
    groups: dict[str, list[RunData]],
    loaded: dict[str, _Loaded],
    settings: SliceSettings,
    seed: int,
    report: Progress,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[tuple[str, str, dict[str, Any]]]]]:
    """1D and 2D slices around every final checkpoint; the path from each group's baseline run to
    every other run of the group (same architecture only)."""
    from landscape.problem import Problem
    from landscape.surface import compute_surface

    surfaces: dict[str, dict[str, Any]] = {}
    paths: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    problems: dict[str, Problem] = {}
    for members in groups.values():
        for run in members:
            item = loaded[run.label]
            data = _fixed_subset(item.train, settings.targets, seed)
            problem = Problem(item.model, data, item.loss)
            problems[run.label] = problem

            def stage(label: str, name: str = run.label) -> None:
                report(f"{name}: {label}")

            surface = compute_surface(
                problem,
                line=True,
                plane=True,
                distance=settings.distance,
                line_steps=settings.line_steps,
                plane_steps=settings.plane_steps,
                seed=seed,
                progress=stage,
            )
            surfaces[run.label] = surface.to_dict()
    for name, members in groups.items():
        if len(members) < 2:
            continue
        base = _baseline(members)
        base_params = _params(loaded[base.label].model)
        for run in members:
            if run is base:
                continue
            other = _params(loaded[run.label].model)
            if not _same_shapes(base_params, other):
                continue
            report(f"path {base.label} -> {run.label}")
            surface = compute_surface(
                problems[base.label],
                line=False,
                plane=False,
                other=other,
                path_steps=settings.path_steps,
                seed=seed,
            )
            paths.setdefault(name, []).append((base.label, run.label, surface.to_dict()["path"]))
    return surfaces, paths


def _rho_sweeps(
    runs: Sequence[RunData], sweep_only: Sequence[RunData]
) -> dict[tuple[Any, ...], pd.DataFrame]:
    """Rho-sweep frames per family of comparable runs (see ``_sweep_family``); only families in
    which some method has two or more rho values. The rho = 0 reference is the AdamW/SGD run."""

    def eval_loss(run: RunData) -> float | None:
        value = (run.summary or {}).get("eval_loss")
        if value is None and "eval_loss" in run.metrics:
            values = run.metrics["eval_loss"].dropna()
            value = values.iloc[-1] if not values.empty else None
        return float(value) if value is not None else None

    families: dict[tuple[Any, ...], list[RunData]] = {}
    for run in [*runs, *sweep_only]:
        if run.rho is None and run.method not in BASELINES:
            continue  # a method without rho (fSGLD) is no rho = 0 reference
        families.setdefault(_sweep_family(run), []).append(run)
    out = {}
    for key, members in families.items():
        frame = rho_sweep_frame(members, eval_loss)
        if not frame.empty:
            out[key] = frame
    return out


# ------------------------------------------------------------------------------------------
# Document parts


def _group_title(name: str, members: Sequence[RunData]) -> str:
    c = members[0].config
    what = f"{c.get('model')} on {c.get('data')}"
    return name if what in name else f"{name} ({what})"


def _default_title(groups: dict[str, list[RunData]]) -> str:
    return "Loss-landscape report: " + "; ".join(_group_title(n, m) for n, m in groups.items())


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "group"


def _group_sections(
    name: str,
    members: list[RunData],
    frame: pd.DataFrame,
    prune: pd.DataFrame | None,
    surfaces: dict[str, dict[str, Any]],
    paths: list[tuple[str, str, dict[str, Any]]],
) -> list[Section]:
    from landscape.report import plots

    slug = _slug(name)
    heading = _group_title(name, members)
    c = members[0].config
    steps = sorted({r.steps for r in members})
    intro = (
        f"{len(members)} run{'s' if len(members) > 1 else ''} of the {c.get('model')} model on {c.get('data')} "
        f"({', '.join(str(s) for s in steps)} steps, seed {c.get('seed')}): "
        + ", ".join(r.method_label if r.name == r.method else f"{r.name} ({r.method_label})" for r in members)
        + "."
    )
    main = Section(f"Runs: {heading}", [Paragraph(intro)])
    main.blocks.append(
        TableBlock(comparison_table(frame, "Final weights: losses, curvature, tau split, cost"))
    )
    sections = [main]

    curves = Section("Over training", level=3)
    if any(("eval_loss" in r.metrics or "train_loss" in r.metrics) for r in members):
        curves.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-loss.png",
                plots.loss_curves_figure(members),
                "Training loss (mean batch loss between log steps) and eval loss on the held-out set.",
            )
        )
    if any(not r.diagnostics().empty for r in members):
        subset = _diagnostic_subset_note(members)
        curves.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-curvature.png",
                plots.curvature_curves_figure(members),
                f"Top Hessian eigenvalue and traces of H, G and H_F during training ({subset}).",
            )
        )
        curves.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-tau.png",
                plots.tau_curves_figure(members),
                "Split of the sharpness gradient H ε* into its logit path (τ_logit, through the Gauss-Newton "
                "part G) and its functional path (τ_func, through H_F), and their cross term τ_cross; the "
                f"three sum to 1 (Functional-SAM Eq. 9, Fig. 2 and Fig. 4; {subset}).",
            )
        )
    if curves.blocks:
        sections.append(curves)

    if any((r.analysis or {}).get("density") for r in members):
        sections.append(
            Section(
                "Spectral densities",
                [
                    FigureBlock.from_figure(
                        f"{slug}-density.png",
                        plots.density_overlay_figure(members),
                        "Spectral densities of H, G and H_F at the final weights (stochastic Lanczos quadrature, "
                        "Gaussian-broadened; from each run's analysis.json).",
                    )
                ],
                level=3,
            )
        )

    landscape = Section("Loss-landscape slices", level=3)
    if any(r.label in surfaces for r in members):
        landscape.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-slice-1d.png",
                plots.slice_line_figure(members, surfaces),
                "Training loss along one random filter-normalised direction through each final checkpoint "
                "(Li et al. 2018; biases and norm parameters fixed). A flatter minimum rises more slowly.",
            )
        )
        landscape.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-slice-2d.png",
                plots.slice_plane_figure(members, surfaces),
                "Training loss on a random filter-normalised plane through each final checkpoint (star), one "
                "colour scale for all panels.",
            )
        )
    if paths:
        landscape.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-path.png",
                plots.path_figure(members, paths),
                "Training loss on the straight line between the baseline run's final weights (t = 0) and each "
                "other run's (t = 1); a bump between them is a barrier.",
            )
        )
    if landscape.blocks:
        sections.append(landscape)

    if prune is not None and not prune.empty:
        sections.append(
            Section(
                "Pruning robustness",
                [
                    FigureBlock.from_figure(
                        f"{slug}-pruning.png",
                        plots.pruning_figure(members, prune),
                        "One-shot global magnitude pruning of the final weights (weight matrices and embeddings; "
                        "no retraining), evaluated on the held-out set (Functional-SAM Fig. 5).",
                    ),
                    TableBlock(
                        pruning_table(
                            prune,
                            f"Eval loss ({plots.loss_unit(members)}) after one-shot pruning",
                            {r.label: plots.run_legend(r, members) for r in members},
                        )
                    ),
                ],
                level=3,
            )
        )
    return sections


def _diagnostic_subset_note(members: Sequence[RunData]) -> str:
    sizes = sorted({r.config.get("diagnose_samples") for r in members if r.config.get("diagnose_samples")})
    if not sizes:
        return "measured on a fixed subset of the training data"
    return f"measured every {members[0].config.get('diagnose_every')} steps on a fixed subset of {sizes[0]} training items"


def _contrast(groups: dict[str, list[RunData]]) -> tuple[Section | None, list[str]]:
    """The vision/language tau side by side (one baseline run per domain), with its sentences."""
    chosen: dict[str, tuple[str, RunData]] = {}
    for name, members in groups.items():
        with_tau = [
            r
            for r in members
            if "tau_logit" in r.diagnostics() and r.diagnostics()["tau_logit"].notna().any()
        ]
        if not with_tau:
            continue
        domain = members[0].domain
        if domain not in chosen:
            chosen[domain] = (name, _baseline(with_tau))
    if "vision" not in chosen or "language" not in chosen:
        return None, []
    from landscape.report import plots

    panels = []
    sides = []
    for domain in ("vision", "language"):
        name, run = chosen[domain]
        c = run.config
        panels.append((f"{domain}: {c.get('model')} on {c.get('data')}, {run.method_label}", run))
        diag = run.diagnostics()
        later = diag[diag["step"] > 0] if (diag["step"] > 0).any() else diag
        sides.append(
            TauContrast(
                domain,
                name,
                run.method_label,
                float(diag["tau_logit"].dropna().iloc[-1]),
                float(diag["tau_func"].dropna().iloc[-1]),
                float(later["tau_logit"].mean()),
                float(later["tau_func"].mean()),
            )
        )
    lines = contrast_sentences(sides)
    section = Section(
        "Vision against language: which path does the sharpness gradient take?",
        [
            Paragraph(
                "Functional-SAM Fig. 2 finds τ_logit close to 1 in language modelling and comparable to τ_func in "
                "vision. The same measurement on the runs here, with whatever sign and size it has:"
            ),
            FigureBlock.from_figure(
                "tau-vision-vs-language.png",
                plots.tau_contrast_figure(panels),
                "τ_logit, τ_func and τ_cross over training, vision (left) and language (right), one run each "
                "(the baseline optimizer where present).",
            ),
            *([Bullets(lines)] if lines else []),
        ],
    )
    return section, lines


def _sweep_section(key: tuple[Any, ...], frame: pd.DataFrame, runs: Sequence[RunData]) -> Section:
    from landscape.report import plots

    model, _, data, steps = key
    members = [r for r in runs if r.label in set(frame["run"])]
    slug = _slug(f"rho-{model}-{data}-{steps}")
    return Section(
        f"Perturbation radius: {model} on {data}, {steps} steps",
        [
            FigureBlock.from_figure(
                f"{slug}.png",
                plots.rho_sweep_figure(members, frame),
                "Eval loss against the perturbation radius ρ of each swept method; dashed: the baseline optimizer "
                "(ρ = 0) (Functional-SAM Fig. 3).",
            ),
            TableBlock(rho_sweep_table(frame, "Eval loss by ρ")),
            Bullets(rho_sentences(frame) or ["No method was run at two values of ρ."]),
        ],
    )


def _provenance(
    runs: Sequence[RunData],
    sweep_only: Sequence[RunData],
    seed: int,
    settings: SliceSettings,
    slices: bool,
    pruning: bool,
    budgets: tuple[int, int],
    notes: Sequence[str],
) -> Section:
    """Where every number came from: runs, their configurations, analysis budgets, versions."""
    import os

    import matplotlib

    everything = [*runs, *sweep_only]
    # run folders relative to their common parent, named once (a demo's is a temporary folder)
    try:
        root = Path(os.path.commonpath([str(r.path.resolve()) for r in everything]))
    except ValueError:  # different drives
        root = None
    if root is not None and len(everything) == 1:
        root = root.parent
    rows = []
    for run in everything:
        c = run.config
        a = run.analysis or {}
        analysis = (
            f"analysis on {a.get('num_targets')} targets ({a.get('trace_method')}, {a.get('hvp_count')} H and "
            f"{a.get('ggn_count')} G products, {float(a.get('seconds') or 0):.1f} s)"
            if a
            else "no final analysis"
        )
        rows.append(
            f"{run.label} [{run.group}]: {method_label(run.method)}"
            + (f", rho {run.rho:g}" if run.rho is not None else "")
            + f", {c.get('base') or 'own'} base, lr {c.get('lr')}, batch {c.get('batch_size')}, {run.steps} steps, "
            f"seed {c.get('seed')}; {analysis}; folder {_relative(run.path, root)}"
        )
    lines = [
        f"Report seed {seed} (slice directions, training-data subsets); torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), matplotlib {matplotlib.__version__}, Python "
        f"{platform.python_version()}.",
        f"Train loss/accuracy: final weights on at most {budgets[0]} training targets (a fixed random subset).",
    ]
    if slices:
        lines.append(
            f"Slices: {settings.line_steps} points on [-{settings.distance:g}, {settings.distance:g}] filter norms "
            f"(1D), a {settings.plane_steps}x{settings.plane_steps} grid (2D), {settings.path_steps} points on "
            f"t in [-0.25, 1.25] (paths), each on at most {settings.targets} training targets."
        )
    if pruning:
        lines.append(
            "Pruning: weight matrices and embeddings ranked jointly by |w|; biases and norm gains kept."
        )
    if root is not None:
        lines.append(f"Run folders below are relative to {root}.")
    lines += list(notes)
    return Section("Provenance", [Bullets(lines), Bullets(rows)])


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _curves_frame(runs: Sequence[RunData]) -> pd.DataFrame:
    parts = []
    for run in runs:
        if run.metrics.empty:
            continue
        part = run.metrics.copy()
        part.insert(0, "method", run.method_label)
        part.insert(0, "run", run.label)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _slices_frame(
    surfaces: dict[str, dict[str, Any]], paths: dict[str, list[tuple[str, str, dict[str, Any]]]]
) -> pd.DataFrame:
    rows = []
    for label, surface in surfaces.items():
        line = surface.get("line") or {}
        for a, loss in zip(line.get("alphas", []), line.get("losses", []), strict=True):
            rows.append({"run": label, "kind": "1d", "alpha": a, "beta": math.nan, "other": "", "loss": loss})
        plane = surface.get("plane") or {}
        for i, a in enumerate(plane.get("alphas", [])):
            for j, b in enumerate(plane.get("betas", [])):
                rows.append(
                    {
                        "run": label,
                        "kind": "2d",
                        "alpha": a,
                        "beta": b,
                        "other": "",
                        "loss": plane["losses"][i][j],
                    }
                )
    for items in paths.values():
        for source, target, path in items:
            for t, loss in zip(path["alphas"], path["losses"], strict=True):
                rows.append(
                    {
                        "run": source,
                        "kind": "path",
                        "alpha": t,
                        "beta": math.nan,
                        "other": target,
                        "loss": loss,
                    }
                )
    return pd.DataFrame(rows)
