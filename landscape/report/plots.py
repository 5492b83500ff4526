"""The report's figures (matplotlib, Agg). Every function returns a ``Figure``; nothing is saved here.

Conventions: axes carry the quantity and its unit (losses in nats for cross-entropy; Hessian
eigenvalues and traces in loss units per squared parameter unit; tau is a dimensionless share),
legends name the method of each run, and a y axis switches to a log scale when its values span
more than a factor of 30 (a symmetric log scale when they also change sign). A method keeps its
colour in every figure; runs of one method with different rho differ by line style.

The curves over training are the metrics' (:func:`landscape.metrics.curves`): one panel each in the
curvature figure, one line each in the split figure (the tau split of Functional-SAM: Singh,
Mobahi, Agarwala & Dauphin 2025, arXiv 2502.02407, Eq. 9, Fig. 2 and Fig. 4). An estimated curve
(a ``Curve`` with an ``error`` key: the stochastic traces) carries a band of ``ERROR_BAND``
standard errors. More than ``SMALL_MULTIPLES_ABOVE`` runs on a curve or density panel become
small multiples: a panel per run on shared axes, the other runs in grey behind, so that five lines
that overlap stay apart. Density panels tick the largest SLQ nodes of each run, the outlier
eigenvalues (:func:`landscape.figures.largest_nodes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogLocator, NullLocator  # noqa: E402

from landscape import metrics as registry  # noqa: E402
from landscape.figures import DENSITY_LABELS, mark_nodes  # noqa: E402
from landscape.metrics import msharpness, noise, trace  # noqa: E402
from landscape.metrics.density import DENSITY  # noqa: E402
from landscape.optim.rules import RULES  # noqa: E402
from landscape.report.runs import RunData  # noqa: E402

__all__ = [
    "curvature_curves_figure",
    "density_overlay_figure",
    "loss_curves_figure",
    "m_sharpness_figure",
    "noise_hessian_figure",
    "path_figure",
    "pruning_figure",
    "rho_sweep_figure",
    "slice_line_figure",
    "slice_plane_figure",
    "tau_contrast_figure",
    "tau_curves_figure",
]

CURVATURE_UNIT = "loss / param²"
_LINESTYLES = ["-", "--", ":", "-."]
LOG_SPAN = 30.0  # a y range wider than this factor gets a log axis


METHOD_COLORS = {name: spec.color for name, spec in RULES.items()}
"""Fixed line colours of the gradient rules, from their specs: a method looks the same in every figure."""
_SPARE_COLORS = ["#004488", "#bb5566", "#ddaa33", "#66ccee", "#aa3377", "#228833"]


def method_color(method: str) -> str:
    """The fixed colour of a method (a spare colour, chosen by name, for methods outside the list)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _SPARE_COLORS[sum(map(ord, method)) % len(_SPARE_COLORS)]


def run_styles(runs: Sequence[RunData]) -> dict[str, dict[str, Any]]:
    """Line style of each run (by label): the method's colour, a dash pattern per repeat of a method."""
    seen: dict[str, int] = {}
    styles = {}
    for run in runs:
        k = seen.get(run.method, 0)
        seen[run.method] = k + 1
        styles[run.label] = {"color": method_color(run.method), "ls": _LINESTYLES[k % len(_LINESTYLES)]}
    return styles


def run_legend(run: RunData, runs: Sequence[RunData]) -> str:
    """Legend text: the method, with rho when several runs of the method differ in rho, and the
    run label when two runs would otherwise read the same."""
    same = [r for r in runs if r.method == run.method]
    text = run.method_label
    if len({r.rho for r in same}) > 1 and run.rho is not None:
        text += f" (ρ={run.rho:g})"
    if sum(1 for r in runs if r.method == run.method and r.rho == run.rho) > 1:
        text += f" [{run.label}]"
    return text


def loss_unit(runs: Sequence[RunData]) -> str:
    """``nats`` for cross-entropy runs, ``squared error`` for MSE."""
    losses = {str(r.config.get("loss") or "cross_entropy") for r in runs}
    return "nats" if losses == {"cross_entropy"} else "squared error"


def auto_scale(ax: Axes, values: Any, axis: str = "y") -> str:
    """Put ``ax``'s ``axis`` on a log scale when ``values`` span more than ``LOG_SPAN`` (symlog when
    they also change sign). Returns ``""``, ``" (log scale)"`` or ``" (symmetric log scale)"``."""
    v = np.asarray(pd.to_numeric(pd.Series(np.ravel(values)), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return ""
    setter = ax.set_yscale if axis == "y" else ax.set_xscale
    lo, hi = float(v.min()), float(v.max())
    if lo > 0 and hi / lo > LOG_SPAN:
        setter("log")
        return " (log scale)"
    magnitude = np.abs(v[v != 0])
    # symlog only when most values span decades: one value near zero (a trace at initialisation)
    # is no reason to bend the whole axis
    typical = float(np.percentile(magnitude, 25)) if magnitude.size else 0.0
    if lo < 0 < hi and typical > 0 and magnitude.max() / typical > 1e3:
        linthresh = float(10 ** math.floor(math.log10(typical)))
        setter("symlog", linthresh=linthresh)
        return " (symmetric log scale)"
    return ""


def _finish(fig: Figure, title: str) -> Figure:
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _legend(ax: Axes, **kwargs: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, **kwargs)


SMALL_MULTIPLES_ABOVE = 3
"""More runs than this on a curve or density panel: one small panel per run, sharing axes."""
ERROR_BAND = 2.0
"""Bands around an estimated curve: this many standard errors either side (the summary calls two
runs whose values differ by less than two combined standard errors "not resolved")."""
_GHOST = {"color": "0.82", "lw": 0.9, "zorder": 1}


def _series(frame: pd.DataFrame, key: str, error: str | None = None) -> pd.DataFrame:
    """``step``, the value and (when recorded) its standard error, rows with a value only."""
    columns = ["step", key] + ([error] if error and error in frame else [])
    if key not in frame:
        return pd.DataFrame(columns=columns)
    return frame[columns].dropna(subset=[key])


def _band(ax: Axes, part: pd.DataFrame, key: str, error: str | None, color: str) -> list[float]:
    """Shade ``ERROR_BAND`` standard errors around the curve; returns the band's edges (for the
    axis scale). On a log axis a band reaching below zero is cut at a tenth of the value."""
    if not error or error not in part:
        return []
    errors = pd.to_numeric(part[error], errors="coerce")
    keep = errors.notna()
    if not keep.any():
        return []
    steps = part["step"][keep].to_numpy(dtype=float)
    values = part[key][keep].to_numpy(dtype=float)
    half = ERROR_BAND * errors[keep].to_numpy(dtype=float)
    lower, upper = values - half, values + half
    if ax.get_yscale() == "log":
        lower = np.where(lower > 0, lower, values / 10)
    ax.fill_between(steps, lower, upper, color=color, alpha=0.22, lw=0, zorder=2, gid="error-band")
    return [*lower.tolist(), *upper.tolist()]


def _values(runs: Sequence[RunData], read: Any, key: str) -> list[float]:
    out: list[float] = []
    for run in runs:
        out.extend(_series(read(run), key)[key].tolist())
    return out


def _curve_panels(
    runs: Sequence[RunData],
    panels: Sequence[tuple[str, str | None, str, str]],
    read: Any,
    marker: str | None = None,
    width: float = 10.5,
) -> Figure:
    """Curves over training, one panel per ``(key, error key, axis label, title)``: every run on
    the panel (with its error band) for up to ``SMALL_MULTIPLES_ABOVE`` runs; more runs become
    small multiples (a row per quantity, a column per run, shared axes, the other runs in grey
    behind each). ``read(run)`` gives the run's frame of records."""
    styles = run_styles(runs)
    small = len(runs) > SMALL_MULTIPLES_ABOVE
    if small:
        rows, cols = len(panels), len(runs)
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(2.35 * cols + 0.9, 2.3 * rows + 0.4),
            squeeze=False,
            sharex=True,
            sharey="row",
        )
    else:
        cols = 2 if len(panels) > 1 else 1
        rows = max(math.ceil(len(panels) / cols), 1)
        fig, axes = plt.subplots(rows, cols, figsize=(width, 3.5 * rows), squeeze=False)
        for ax in axes.ravel()[len(panels) :]:
            fig.delaxes(ax)  # an odd number of panels: no empty axes left in the figure
    for p, (key, error, ylabel, title) in enumerate(panels):
        values = _values(runs, read, key)
        if small:
            row_axes = list(axes[p])
        else:
            row_axes = [axes.ravel()[p]]
        suffix = ""
        for ax in row_axes:
            suffix = auto_scale(ax, values)
        for c, ax in enumerate(row_axes):
            shown = [runs[c]] if small else list(runs)
            if small:
                for other in runs:
                    part = _series(read(other), key)
                    if other is not runs[c] and not part.empty:
                        ax.plot(part["step"], part[key], **_GHOST)
            for run in shown:
                part = _series(read(run), key, error)
                if part.empty:
                    continue
                style = styles[run.label]
                ax.plot(
                    part["step"],
                    part[key],
                    lw=1.5,
                    marker=marker,
                    label=run_legend(run, runs),
                    zorder=3,
                    **style,
                )
                _band(ax, part, key, error, style["color"])
            ax.grid(alpha=0.3)
            if small:
                if p == 0:
                    ax.set_title(run_legend(runs[c], runs), fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{ylabel}{suffix}", fontsize=8)
                if p == len(panels) - 1:
                    ax.set_xlabel("training step", fontsize=8)
                ax.tick_params(labelsize=7)
            else:
                ax.set_xlabel("training step (optimizer updates)")
                ax.set_ylabel(f"{ylabel}{suffix}", fontsize=9)
                if title:
                    ax.set_title(title, fontsize=10)
        if small and title:
            row_axes[-1].annotate(
                title,
                xy=(1.02, 0.5),
                xycoords="axes fraction",
                rotation=-90,
                va="center",
                ha="left",
                fontsize=8,
            )
    if not small:
        _legend(axes[0, 0])
    return fig


def loss_curves_figure(runs: Sequence[RunData], title: str = "") -> Figure:
    """Training loss (mean batch loss between log steps) and eval loss (held-out set) against step;
    more than ``SMALL_MULTIPLES_ABOVE`` runs: small multiples (a column per run)."""
    unit = loss_unit(runs)
    panels = [
        ("train_loss", None, f"training loss (mean batch loss) ({unit})", ""),
        ("eval_loss", None, f"eval loss (held-out set) ({unit})", ""),
    ]
    fig = _curve_panels(runs, panels, lambda run: run.metrics)
    return _finish(fig, title)


def curvature_curves_figure(runs: Sequence[RunData], title: str = "") -> Figure:
    """The metrics' curvature curves (λmax(H), tr(H), tr(G) and tr(H_F), and any other metric's
    ``Curve``) against step (training diagnostics, fixed subset): one panel each, two per row, a
    band of ``ERROR_BAND`` standard errors around every estimated curve (a ``Curve`` with an
    ``error`` key); more than ``SMALL_MULTIPLES_ABOVE`` runs: a row per quantity, a column per run."""
    panels = [
        (curve.key, curve.error, f"{curve.label} ({curve.unit or CURVATURE_UNIT})", curve.title)
        for curve in registry.curves("curvature")
    ]
    fig = _curve_panels(runs, panels, lambda run: run.diagnostics(), marker=".")
    return _finish(fig, title)


def _split_axes(ax: Axes, diag: pd.DataFrame, label_lines: bool) -> list[float]:
    """The shares of the split figure (the metrics' ``Curve``s with ``figure="split"``) of one run."""
    values: list[float] = []
    for curve in registry.curves("split"):
        key, label = curve.key, curve.label
        if key not in diag:
            continue
        part = diag[["step", key]].dropna()
        if part.empty:
            continue
        ax.plot(
            part["step"],
            part[key],
            color=curve.color,
            ls=curve.linestyle,
            lw=1.6,
            marker=".",
            label=label if label_lines else None,
        )
        values.extend(part[key].tolist())
    ax.axhline(0.0, color="0.7", lw=0.8)
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("share of ||H ε*||² (dimensionless)")
    ax.grid(alpha=0.3)
    return values


def tau_curves_figure(runs: Sequence[RunData], title: str = "") -> Figure:
    """τ_logit, τ_func and τ_cross against step, one panel per run (Functional-SAM Fig. 2 / Fig. 4)."""
    keys = [curve.key for curve in registry.curves("split")]
    shown = [r for r in runs if any(key in r.diagnostics() for key in keys)]
    n = max(len(shown), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, sharey=True)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(shown):
            ax.set_visible(False)
            continue
        run = shown[i]
        _split_axes(ax, run.diagnostics(), label_lines=i == 0)
        ax.set_title(run_legend(run, runs), fontsize=10)
        if i % cols:
            ax.set_ylabel("")
    if shown:
        fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    if title:
        fig.suptitle(title, fontsize=11)
        fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 0.97))
    return fig


def tau_contrast_figure(panels: Sequence[tuple[str, RunData]], title: str = "") -> Figure:
    """Side by side: the tau split over training in each domain (vision, language), one run each
    (Functional-SAM Fig. 2 contrasts AdamW runs on ImageNet and C4)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.9), squeeze=False, sharey=True)
    for i, (ax, (heading, run)) in enumerate(zip(axes[0], panels, strict=True)):
        _split_axes(ax, run.diagnostics(), label_lines=True)
        ax.set_title(heading, fontsize=10)
        if i:
            ax.set_ylabel("")
        _legend(ax, loc="best")
    return _finish(fig, title)


def _density_line(ax: Axes, d: dict[str, Any], **style: Any) -> None:
    grid = np.asarray(d["grid"], dtype=float)
    dens = np.asarray(d["density"], dtype=float)
    floor = max(float(np.nanmax(dens)) * 1e-6, 1e-300)
    ax.semilogy(grid, np.maximum(dens, floor), **style)


def density_overlay_figure(runs: Sequence[RunData], title: str = "") -> Figure:
    """Spectral densities (SLQ, from each run's ``analysis.json``) of H, G and H_F, log density,
    ticks at each run's largest SLQ nodes (the outlier eigenvalues; :func:`largest_nodes`): one
    panel per matrix with a line per run, or for more than ``SMALL_MULTIPLES_ABOVE`` runs a row per
    run (shared axes per matrix, the other runs in grey behind)."""
    styles = run_styles(runs)

    def density(run: RunData, key: str) -> dict[str, Any] | None:
        return ((run.analysis or {}).get(DENSITY) or {}).get(key)

    keys = [k for k in ("H", "G", "H_F") if any(density(r, k) for r in runs)]
    cols = max(len(keys), 1)
    small = len(runs) > SMALL_MULTIPLES_ABOVE
    rows = len(runs) if small else 1
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(4.6 * cols, (2.2 * rows + 0.6) if small else 3.8),
        squeeze=False,
        sharex="col" if small else False,
        sharey="col" if small else False,
    )
    for c, key in enumerate(keys):
        for r in range(rows):
            ax = axes[r][c]
            shown = [runs[r]] if small else list(runs)
            if small:
                for other in runs:
                    d = density(other, key)
                    if other is not runs[r] and d:
                        _density_line(ax, d, **_GHOST)
            for i, run in enumerate(shown):
                d = density(run, key)
                if not d:
                    continue
                style = styles[run.label]
                _density_line(ax, d, lw=1.3, label=run_legend(run, runs), zorder=3, **style)
                mark_nodes(ax, d.get("nodes", []), style["color"], row=0 if small else i)
            matrix = DENSITY_LABELS.get(key, key)
            ax.grid(alpha=0.3)
            if small:
                ax.set_title(f"{run_legend(runs[r], runs)}: {matrix}", fontsize=9)
                ax.tick_params(labelsize=7)
                # a decade per major tick and no minor ticks: small log panels stay legible (and quick)
                ax.yaxis.set_major_locator(LogLocator(numticks=4))
                ax.yaxis.set_minor_locator(NullLocator())
                if c == 0:
                    ax.set_ylabel("density (log scale)", fontsize=8)
                if r == rows - 1:
                    ax.set_xlabel(f"eigenvalue ({CURVATURE_UNIT})", fontsize=8)
            else:
                ax.set_title(matrix, fontsize=10)
                ax.set_xlabel(f"eigenvalue ({CURVATURE_UNIT})")
                ax.set_ylabel("spectral density (log scale)")
    if keys and not small:
        _legend(axes[0][0], loc="upper right")
    return _finish(fig, title)


def slice_line_figure(
    runs: Sequence[RunData], surfaces: dict[str, dict[str, Any]], title: str = ""
) -> Figure:
    """1D filter-normalised random slices, one line per run (same seed for every run)."""
    styles = run_styles(runs)
    unit = loss_unit(runs)
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    values: list[float] = []
    for run in runs:
        line = (surfaces.get(run.label) or {}).get("line")
        if not line:
            continue
        ax.plot(line["alphas"], line["losses"], lw=1.5, label=run_legend(run, runs), **styles[run.label])
        values.extend(line["losses"])
    ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    suffix = auto_scale(ax, values)
    ax.set_xlabel("α, step along a random direction (units of filter norm)")
    ax.set_ylabel(f"training loss ({unit}){suffix}")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _finish(fig, title)


def slice_plane_figure(
    runs: Sequence[RunData], surfaces: dict[str, dict[str, Any]], title: str = ""
) -> Figure:
    """2D filter-normalised random planes, one contour panel per run, one shared colour scale
    (log-spaced when the losses span decades)."""
    shown = [r for r in runs if (surfaces.get(r.label) or {}).get("plane")]
    n = max(len(shown), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols + 1.1, 3.2 * rows), squeeze=False, layout="constrained"
    )
    all_z = (
        np.concatenate([np.ravel(surfaces[r.label]["plane"]["losses"]) for r in shown])
        if shown
        else np.ones(1)
    )
    all_z = all_z[np.isfinite(all_z)]
    lo, hi = (float(all_z.min()), float(all_z.max())) if all_z.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-12
    use_log = lo > 0 and hi / lo > LOG_SPAN
    levels = np.geomspace(lo, hi, 21) if use_log else np.linspace(lo, hi, 21)
    norm = LogNorm(vmin=lo, vmax=hi) if use_log else None
    mappable = None
    for i, ax in enumerate(axes.ravel()):
        if i >= len(shown):
            ax.set_visible(False)
            continue
        run = shown[i]
        p = surfaces[run.label]["plane"]
        a, b = np.meshgrid(p["alphas"], p["betas"], indexing="ij")
        z = np.clip(np.asarray(p["losses"], dtype=float), lo, hi)
        mappable = ax.contourf(a, b, z, levels=levels, norm=norm, cmap="viridis")
        ax.contour(a, b, z, levels=levels, colors="k", linewidths=0.3, alpha=0.4)
        ax.plot([0], [0], "r*", ms=8)
        ax.set_title(run_legend(run, runs), fontsize=10)
        ax.set_xlabel("α, direction 1 (filter norms)", fontsize=9)
        ax.set_ylabel("β, direction 2 (filter norms)", fontsize=9)
        ax.set_aspect("equal")
        if i % cols:
            ax.set_ylabel("")
        if i < len(shown) - cols:
            ax.set_xlabel("")
    if mappable is not None:
        label = f"training loss ({loss_unit(runs)})" + (" (log scale)" if use_log else "")
        visible = [ax for ax in axes.ravel() if ax.get_visible()]
        fig.colorbar(mappable, ax=visible, label=label, shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def path_figure(
    runs: Sequence[RunData], paths: Sequence[tuple[str, str, dict[str, Any]]], title: str = ""
) -> Figure:
    """Loss along the straight line from one run's final weights (t = 0) to others' (t = 1)."""
    styles = run_styles(runs)
    by_label = {r.label: r for r in runs}
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    values: list[float] = []
    start = None
    for source, target, path in paths:
        start = by_label[source]
        run = by_label[target]
        ax.plot(path["alphas"], path["losses"], lw=1.5, label=f"to {run_legend(run, runs)}", **styles[target])
        values.extend(path["losses"])
    for t in (0.0, 1.0):
        ax.axvline(t, color="0.6", lw=0.8, ls=":")
    suffix = auto_scale(ax, values)
    origin = run_legend(start, runs) if start is not None else "run A"
    ax.set_xlabel(f"t, weights (1 - t)·θ[{origin}] + t·θ[other] (dimensionless)")
    ax.set_ylabel(f"training loss ({loss_unit(runs)}){suffix}")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _finish(fig, title)


def pruning_figure(runs: Sequence[RunData], frame: pd.DataFrame, title: str = "") -> Figure:
    """Eval loss (and accuracy, when measured) against the fraction of weights pruned (Fig. 5)."""
    styles = run_styles(runs)
    has_acc = "eval_accuracy" in frame and frame["eval_accuracy"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10.5 if has_acc else 5.8, 3.9), squeeze=False)
    panels = [("eval_loss", f"eval loss ({loss_unit(runs)})")]
    if has_acc:
        panels.append(("eval_accuracy", "eval accuracy (fraction correct)"))
    for ax, (key, name) in zip(axes[0], panels, strict=True):
        values: list[float] = []
        for run in runs:
            part = frame[frame["run"] == run.label]
            if part.empty:
                continue
            ax.plot(
                100 * part["sparsity"],
                part[key],
                marker="o",
                ms=3,
                lw=1.5,
                label=run_legend(run, runs),
                **styles[run.label],
            )
            values.extend(part[key].tolist())
        suffix = auto_scale(ax, values) if key == "eval_loss" else ""
        ax.set_xlabel("weights pruned (% of weight-matrix entries, smallest |w| first)")
        ax.set_ylabel(name + suffix)
        ax.grid(alpha=0.3)
    _legend(axes[0][0])
    return _finish(fig, title)


def rho_sweep_figure(runs: Sequence[RunData], frame: pd.DataFrame, title: str = "") -> Figure:
    """Eval loss against rho for each swept method; runs without rho (AdamW: rho = 0) as horizontal
    reference lines (Functional-SAM Fig. 3)."""
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    swept = frame[frame["rho"].notna()]
    for method_id, part in swept.groupby("method_id", sort=False):
        part = part.sort_values("rho")
        ax.plot(
            part["rho"],
            part["eval_loss"],
            marker="o",
            lw=1.6,
            color=method_color(str(method_id)),
            label=str(part["method"].iloc[0]),
        )
    for _, row in frame[frame["rho"].isna()].iterrows():
        ax.axhline(
            row["eval_loss"],
            color=method_color(str(row["method_id"])),
            ls="--",
            lw=1.2,
            label=f"{row['method']} (ρ = 0)",
        )
    rhos = swept["rho"].to_numpy(dtype=float)
    # rho is in each method's own units (SAM: the L2 norm of the step; the preconditioned methods:
    # the norm before dividing by AdamW's denominator), so the methods' ranges differ by decades
    xlabel = "perturbation radius ρ (each method's own units"
    if rhos.size and rhos.min() > 0 and rhos.max() / rhos.min() >= 5:
        ax.set_xscale("log")
        xlabel += ", log scale"
    ax.set_xlabel(xlabel + ")")
    losses = frame["eval_loss"].to_numpy(dtype=float)
    losses = losses[np.isfinite(losses)]
    # a radius that wrecks training sits a decade above the rest: a log axis keeps the others readable
    log_y = losses.size > 1 and losses.min() > 0 and losses.max() / losses.min() > 5
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(f"eval loss ({loss_unit(runs)})" + (" (log scale)" if log_y else ""))
    ax.grid(alpha=0.3)
    _legend(ax)
    return _finish(fig, title)


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def has_noise_and_trace(run: RunData) -> bool:
    """Whether the run's final analysis holds both tr(V) and tr(H)."""
    a = run.analysis or {}
    return _number(a.get(noise.NOISE_TRACE)) is not None and _number(a.get(trace.TRACE)) is not None


def noise_hessian_figure(runs: Sequence[RunData], title: str = "") -> Figure:
    """The gradient-noise trace tr(V) against tr(H), one marker per run at its final weights (its
    ``analysis.json``, error bars of ``ERROR_BAND`` standard errors) and, when the runs were
    diagnosed, a second panel with each run's path through (tr(H), tr(V)) over training (the
    diagnostic records; the last point marked). Near a minimum tr(V) tracks tr(H) (Luo, Harandi,
    Phung & Le 2025, arXiv 2509.18001)."""
    styles = run_styles(runs)
    diagnosed = [
        r
        for r in runs
        if not _series(r.diagnostics(), noise.NOISE_TRACE).empty and trace.TRACE in r.diagnostics()
    ]
    cols = 2 if diagnosed else 1
    fig, axes = plt.subplots(1, cols, figsize=(5.4 * cols, 4.0), squeeze=False)
    ax = axes[0, 0]
    xs: list[float] = []
    ys: list[float] = []
    for run in runs:
        if not has_noise_and_trace(run):
            continue
        a = run.analysis or {}
        x, y = float(a[trace.TRACE]), float(a[noise.NOISE_TRACE])
        xerr = _number(a.get(trace.STDERR)) or 0.0
        yerr = _number(a.get(noise.STDERR)) or 0.0
        style = styles[run.label]
        ax.errorbar(
            x,
            y,
            xerr=ERROR_BAND * xerr,
            yerr=ERROR_BAND * yerr,
            fmt="o",
            color=style["color"],
            ms=7,
            capsize=3,
            label=run_legend(run, runs),
        )
        xs.append(x)
        ys.append(y)
    xsuffix = auto_scale(ax, xs, "x")
    ysuffix = auto_scale(ax, ys)
    ax.set_xlabel(f"tr(H) ({CURVATURE_UNIT}){xsuffix}")
    ax.set_ylabel(f"tr(V) ({noise.UNIT}){ysuffix}")
    ax.set_title("final weights (analysis.json)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    if diagnosed:
        ax = axes[0, 1]
        xs, ys = [], []
        for run in diagnosed:
            part = run.diagnostics()[["step", trace.TRACE, noise.NOISE_TRACE]].dropna()
            if part.empty:
                continue
            style = styles[run.label]
            ax.plot(
                part[trace.TRACE],
                part[noise.NOISE_TRACE],
                marker=".",
                lw=1.2,
                label=run_legend(run, runs),
                **style,
            )
            ax.plot(
                part[trace.TRACE].iloc[-1], part[noise.NOISE_TRACE].iloc[-1], "o", color=style["color"], ms=7
            )
            xs.extend(part[trace.TRACE].tolist())
            ys.extend(part[noise.NOISE_TRACE].tolist())
        xsuffix = auto_scale(ax, xs, "x")
        ysuffix = auto_scale(ax, ys)
        ax.set_xlabel(f"tr(H) ({CURVATURE_UNIT}){xsuffix}")
        ax.set_ylabel(f"tr(V) ({noise.UNIT}){ysuffix}")
        ax.set_title("over training (diagnostics; ● last)", fontsize=10)
        ax.grid(alpha=0.3)
    return _finish(fig, title)


def has_m_sharpness(run: RunData) -> bool:
    """Whether the run's final analysis holds S_m."""
    a = run.analysis or {}
    return bool(a.get(msharpness.M_VALUES)) and bool(a.get(msharpness.M_SHARPNESS))


def m_sharpness_figure(runs: Sequence[RunData], title: str = "") -> Figure:
    """The m-sharpness S_m against the micro-batch size m (log axis), one line per run from its
    final analysis, error bars of ``ERROR_BAND`` standard errors over the random partitions
    (Andriushchenko & Flammarion 2022, arXiv 2206.06232, Sec. 3; Luo, Harandi, Phung & Le 2025,
    arXiv 2509.18001)."""
    styles = run_styles(runs)
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    values: list[float] = []
    for run in runs:
        if not has_m_sharpness(run):
            continue
        a = run.analysis or {}
        ms = [float(m) for m in a[msharpness.M_VALUES]]
        s = [float(v) for v in a[msharpness.M_SHARPNESS]]
        errors = [ERROR_BAND * float(e or 0.0) for e in a.get(msharpness.STDERR) or [0.0] * len(ms)]
        style = styles[run.label]
        ax.errorbar(ms, s, yerr=errors, marker="o", capsize=3, lw=1.5, label=run_legend(run, runs), **style)
        values.extend(s)
    ax.set_xscale("log", base=2)
    suffix = auto_scale(ax, values)
    ax.set_xlabel("micro-batch size m (samples; log scale)")
    ax.set_ylabel(
        f"S_m, loss increase at radius ρ ({'nats' if loss_unit(runs) == 'nats' else 'loss'}){suffix}"
    )
    ax.grid(alpha=0.3)
    _legend(ax)
    return _finish(fig, title)
