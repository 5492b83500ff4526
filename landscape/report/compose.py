"""Laying out the report: tables, figures, sentences and provenance, from data only.

:func:`compose_report` takes what was read from the run folders (:class:`~landscape.report.runs.RunData`)
and what was measured on their final weights (:class:`~landscape.report.measure.Measurements`) and
returns the document (:class:`~landscape.report.document.Report`) and the summary sentences. It
loads no model and measures nothing: a new figure or table goes here (its drawing in
:mod:`landscape.report.plots`, its frame in :mod:`landscape.report.tables`), a new measurement in
:mod:`landscape.report.measure`.

Runs are grouped by suite (see :func:`landscape.report.runs.group_runs`); each group gets its
table, curves, densities, slices and pruning. A rho sweep (Functional-SAM: Singh, Mobahi,
Agarwala & Dauphin 2025, arXiv 2502.02407, Fig. 3) collects runs of the same model, data and number of steps
across groups, plus the runs that enter only the sweep. The vision/language tau contrast (Fig. 2)
appears when the runs hold both a classifier and a language model.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from landscape import metrics as registry
from landscape.figures import OUTLIER_TICKS
from landscape.metrics import msharpness, noise, tau, trace
from landscape.metrics.density import DENSITY
from landscape.provenance import provenance
from landscape.report.document import (
    Bullets,
    FigureBlock,
    Paragraph,
    Report,
    Section,
    TableBlock,
)
from landscape.report.measure import Measurements, MeasureSettings, PathSlice
from landscape.report.runs import BASELINES, RunData, baseline_run, method_label
from landscape.report.summary import (
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

__all__ = ["ComposedReport", "compose_report"]

_INTRO = (
    "Which optimizer found the flatter minimum, and was it flat for the right reason? Every number "
    "below is read from the run folders or measured on their final checkpoints, and every sentence "
    "of the summary is computed from those numbers."
)


@dataclass
class ComposedReport:
    """The document to write and the summary sentences (also printed by the command line)."""

    document: Report
    summary: list[str]


def compose_report(
    runs: Sequence[RunData],
    sweep_only: Sequence[RunData],
    groups: dict[str, list[RunData]],
    measured: Measurements,
    settings: MeasureSettings,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> ComposedReport:
    """The report on ``runs`` (grouped as ``groups``) and ``sweep_only`` (runs that enter only the
    rho sweep), with what ``measure_runs`` found under ``settings``; ``notes`` extend the provenance."""
    frame = comparison_frame(runs, measured.train_evals)
    prune_frame = pruning_frame(measured.pruning, runs) if measured.pruning else pd.DataFrame()
    sweep_frames = _rho_sweeps(runs, sweep_only)

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
        group_sections += _group_sections(
            name, members, shown, prune_part, measured.surfaces, measured.paths.get(name, [])
        )
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

    doc.intro.append(Paragraph(_INTRO))
    doc.sections.append(Section("Summary", [] if summary_sections else [Paragraph("No comparable numbers.")]))
    doc.sections += summary_sections
    doc.sections += group_sections
    if contrast_section is not None:
        doc.sections.append(contrast_section)
    doc.sections += sweep_sections
    doc.sections.append(_provenance(runs, sweep_only, settings, notes))
    doc.csvs["comparison.csv"] = frame
    doc.csvs["training_curves.csv"] = _curves_frame(runs)
    if not prune_frame.empty:
        doc.csvs["pruning.csv"] = prune_frame
    if sweep_frames:
        doc.csvs["rho_sweep.csv"] = pd.concat(list(sweep_frames.values()), ignore_index=True)
    if measured.surfaces or measured.paths:
        doc.csvs["slices.csv"] = _slices_frame(measured.surfaces, measured.paths)
    return ComposedReport(doc, summary_items)


# ------------------------------------------------------------------------------------------
# Frames


def _sweep_family(run: RunData) -> tuple[Any, ...]:
    """Runs comparable in a rho sweep: same model, data and number of steps."""
    c = run.config
    return (c.get("model"), str(c.get("model_kwargs")), c.get("data"), c.get("steps"))


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
    paths: list[PathSlice],
) -> list[Section]:
    """A group's sections: its runs with their table, then (each when there is something to show)
    curves over training, spectral densities, loss-landscape slices and pruning."""
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
    parts = [  # in this order: each draws its figures when called
        _curves_section(slug, members),
        _noise_section(slug, members),
        _density_section(slug, members),
        _landscape_section(slug, members, surfaces, paths),
        _pruning_section(slug, members, prune),
    ]
    return [main, *(part for part in parts if part.blocks)]


def _curves_section(slug: str, members: list[RunData]) -> Section:
    """Training and eval loss, curvature and the tau split over training."""
    from landscape.report import plots

    curves = Section("Over training", level=3)
    if any(("eval_loss" in r.metrics or "train_loss" in r.metrics) for r in members):
        curves.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-loss.png",
                plots.loss_curves_figure(members),
                "Training loss (mean batch loss between log steps) and eval loss on the held-out set"
                f"{_multiples_note(members)}.",
            )
        )
    if any(not r.diagnostics().empty for r in members):
        subset = _diagnostic_subset_note(members)
        curves.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-curvature.png",
                plots.curvature_curves_figure(members),
                f"{_curves_caption()} during training ({subset}); shaded: ± {plots.ERROR_BAND:g} standard "
                "errors of each stochastic trace estimate (a value inside another run's band is not "
                f"resolved from it){_multiples_note(members)}.",
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
    return curves


def _noise_section(slug: str, members: list[RunData]) -> Section:
    """The gradient-noise trace tr(V) against tr(H) per run, and S_m against m (from each run's
    final analysis; over training too when the runs were diagnosed)."""
    from landscape.report import plots

    section = Section("Gradient noise and m-sharpness", level=3)
    source = "Luo, Harandi, Phung & Le 2025, arXiv 2509.18001"
    if any(plots.has_noise_and_trace(r) for r in members):
        methods = {(r.analysis or {}).get(noise.METHOD) for r in members if plots.has_noise_and_trace(r)}
        how = (
            "exact per-sample gradients" if methods == {"exact"} else "exact or sketched per-sample gradients"
        )
        section.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-noise.png",
                plots.noise_hessian_figure(members),
                "Gradient-noise trace tr(V) = (1/N) Σ_i ||g_i − ḡ||², the trace of the per-sample gradient "
                f"covariance ({how}), against the Hessian trace tr(H): at the final weights (left; bars: "
                f"± {plots.ERROR_BAND:g} standard errors) and, for diagnosed runs, over training (right). "
                f"Near a minimum tr(V) tracks tr(H), and SAM lowers tr(V) ({source}, Table 6).",
            )
        )
    if any(plots.has_m_sharpness(r) for r in members):
        rhos = sorted({(r.analysis or {}).get(msharpness.RHO) for r in members if plots.has_m_sharpness(r)})
        rho = ", ".join(f"{x:g}" for x in rhos if x is not None)
        section.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-m-sharpness.png",
                plots.m_sharpness_figure(members),
                "m-sharpness S_m at the final weights: SAM's first-order loss increase at radius "
                f"ρ = {rho} on micro-batches of m samples, averaged over random partitions of the analysis "
                f"data (bars: ± {plots.ERROR_BAND:g} standard errors over the partitions; m = 1 and m ≥ N have "
                "one partition). It grows as m shrinks (Andriushchenko & Flammarion 2022, arXiv 2206.06232, "
                f"Sec. 3); the gap between small and large m is the gradient noise that SAM's perturbation "
                f"regularises ({source}).",
            )
        )
    return section


def _multiples_note(members: Sequence[RunData], where: str = "a column") -> str:
    """The caption's note on small multiples (more runs than one panel shows readably)."""
    from landscape.report import plots

    if len(members) <= plots.SMALL_MULTIPLES_ABOVE:
        return ""
    return f"; {where} per run on shared axes, the other runs in grey behind"


def _join(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _curves_caption() -> str:
    """What the curvature figure shows, from its panels' captions: consecutive panels "trace of H",
    "trace of G" are named together ("Top Hessian eigenvalue and traces of H, G and H_F")."""
    groups: list[tuple[str, list[str]]] = []
    for curve in registry.curves("curvature"):
        noun, _, of = (curve.caption or curve.label).partition(" of ")
        if groups and groups[-1][0] == noun and of and groups[-1][1]:
            groups[-1][1].append(of)
        else:
            groups.append((noun, [of] if of else []))
    phrases = [
        (noun + ("s" if len(ofs) > 1 else "")) + (f" of {_join(ofs)}" if ofs else "") for noun, ofs in groups
    ]
    text = _join(phrases) if phrases else "Curvature"
    return text[0].upper() + text[1:]


def _density_section(slug: str, members: list[RunData]) -> Section:
    """The spectral densities of the runs' final analyses, overlaid."""
    from landscape.report import plots

    section = Section("Spectral densities", level=3)
    if any((r.analysis or {}).get(DENSITY) for r in members):
        section.blocks.append(
            FigureBlock.from_figure(
                f"{slug}-density.png",
                plots.density_overlay_figure(members),
                "Spectral densities of H, G and H_F at the final weights (stochastic Lanczos quadrature, "
                "Gaussian-broadened; from each run's analysis.json); ticks: each run's "
                f"{OUTLIER_TICKS} largest quadrature nodes, the outlier eigenvalues"
                f"{_multiples_note(members, 'a row')}.",
            )
        )
    return section


def _landscape_section(
    slug: str, members: list[RunData], surfaces: dict[str, dict[str, Any]], paths: list[PathSlice]
) -> Section:
    """The 1D and 2D slices through each final checkpoint and the paths from the baseline run."""
    from landscape.report import plots

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
    return landscape


def _pruning_section(slug: str, members: list[RunData], prune: pd.DataFrame | None) -> Section:
    """Eval loss against sparsity after one-shot pruning: figure and table."""
    from landscape.report import plots

    section = Section("Pruning robustness", level=3)
    if prune is not None and not prune.empty:
        section.blocks += [
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
        ]
    return section


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
            r for r in members if tau.LOGIT in r.diagnostics() and r.diagnostics()[tau.LOGIT].notna().any()
        ]
        if not with_tau:
            continue
        domain = members[0].domain
        if domain not in chosen:
            chosen[domain] = (name, baseline_run(with_tau))
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
                float(diag[tau.LOGIT].dropna().iloc[-1]),
                float(diag[tau.FUNC].dropna().iloc[-1]),
                float(later[tau.LOGIT].mean()),
                float(later[tau.FUNC].mean()),
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
    runs: Sequence[RunData], sweep_only: Sequence[RunData], settings: MeasureSettings, notes: Sequence[str]
) -> Section:
    """Where every number came from: runs, their configurations, analysis budgets, versions."""
    import matplotlib

    everything = [*runs, *sweep_only]
    root = _common_root(everything)
    grid = settings.slice_settings
    made = provenance()
    lines = [
        f"Made by landscape {made['landscape_version']}: {made['command']}.",
        f"Report seed {settings.seed} (slice directions, training-data subsets); torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), matplotlib {matplotlib.__version__}, Python "
        f"{platform.python_version()}.",
        f"Train loss/accuracy: final weights on at most {settings.train_targets} training targets (a fixed random subset).",
    ]
    if settings.slices:
        lines.append(
            f"Slices: {grid.line_steps} points on [-{grid.distance:g}, {grid.distance:g}] filter norms "
            f"(1D), a {grid.plane_steps}x{grid.plane_steps} grid (2D), {grid.path_steps} points on "
            f"t in [-0.25, 1.25] (paths), each on at most {grid.targets} training targets."
        )
    if settings.pruning:
        lines.append(
            "Pruning: weight matrices and embeddings ranked jointly by |w|; biases and norm gains kept."
        )
    if root is not None:
        lines.append(f"Run folders below are relative to {root}.")
    lines += list(notes)
    return Section(
        "Provenance", [Bullets(lines), Bullets([_provenance_row(run, root) for run in everything])]
    )


def _common_root(runs: Sequence[RunData]) -> Path | None:
    """The run folders' common parent, named once in the provenance (a demo's is a temporary folder)."""
    import os

    try:
        root = Path(os.path.commonpath([str(r.path.resolve()) for r in runs]))
    except ValueError:  # different drives
        return None
    return root.parent if len(runs) == 1 else root


def _provenance_row(run: RunData, root: Path | None) -> str:
    """One run: method, rho, optimizer settings, the final analysis's budget and its folder."""
    c = run.config
    a = run.analysis or {}
    analysis = (
        f"analysis on {a.get('num_targets')} targets ({a.get(trace.METHOD)}, {a.get('hvp_count')} H and "
        f"{a.get('ggn_count')} G products, {float(a.get('seconds') or 0):.1f} s)"
        if a
        else "no final analysis"
    )
    return (
        f"{run.label} [{run.group}]: {method_label(run.method)}"
        + (f", rho {run.rho:g}" if run.rho is not None else "")
        + f", {c.get('base') or 'own'} base, lr {c.get('lr')}, batch {c.get('batch_size')}, {run.steps} steps, "
        f"seed {c.get('seed')}; {analysis}; {_made_with(c)}folder {_relative(run.path, root)}"
    )


def _made_with(config: dict) -> str:
    """``trained with landscape X, torch Y; `` from a run's recorded provenance (none before it existed)."""
    made = config.get("provenance")
    if not isinstance(made, dict):
        return ""
    return f"trained with landscape {made.get('landscape_version')}, torch {made.get('torch_version')}; "


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


def _slices_frame(surfaces: dict[str, dict[str, Any]], paths: dict[str, list[PathSlice]]) -> pd.DataFrame:
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
