"""Figures of one analysis or one surface (matplotlib, Agg): readable axes with quantities, legends
naming what is drawn.

The pictures that go with the files of an analysis or surface folder (``density.png``,
``surface-*.png``, written by :mod:`landscape.runs.write`); the report draws its comparisons of
runs in :mod:`landscape.report.plots` with the same labels.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DENSITY_LABELS = {
    "H": "loss Hessian H",
    "G": "Gauss-Newton G",
    "H_F": "functional Hessian H_F = H - G",
}
PNG_METADATA = {"Software": None}


OUTLIER_TICKS = 5
"""How many of the largest SLQ nodes a density figure marks."""


def largest_nodes(nodes: Any, count: int = OUTLIER_TICKS, tol: float = 1e-3) -> np.ndarray:
    """The ``count`` largest distinct quadrature nodes (Ritz values), largest first.

    The largest Ritz values of a Lanczos run converge first, to the largest eigenvalues (the
    Kaniel-Paige theory: Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1), so they
    mark the outliers of the spectrum; their quadrature weights are tiny (an isolated eigenvalue
    carries about 1/n of the measure), which is why they are chosen by value, never by weight.
    Nodes of different probes that agree within ``tol`` times the range of the nodes count once.
    """
    values = np.sort(np.asarray(nodes, dtype=float).ravel())[::-1]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return values
    span = float(values[0] - values[-1]) or max(abs(float(values[0])), 1.0)
    kept: list[float] = []
    for value in values:
        if not kept or kept[-1] - value > tol * span:
            kept.append(float(value))
        if len(kept) == count:
            break
    return np.asarray(kept)


def mark_nodes(ax: Axes, nodes: Any, color: str, row: int = 0, label: str | None = None) -> None:
    """Tick marks at the largest SLQ nodes along the bottom of ``ax`` (``row``: how far up, so the
    ticks of several runs do not overlap)."""
    marks = largest_nodes(nodes)
    if marks.size == 0:
        return
    ax.plot(
        marks,
        np.full(marks.shape, 0.04 + 0.05 * row),
        "|",
        color=color,
        ms=9,
        mew=1.4,
        transform=ax.get_xaxis_transform(),
        label=label,
        gid="largest-nodes",
    )


def density_figure(density: dict[str, dict[str, list[float]]], title: str = "") -> Figure:
    """Spectral densities (SLQ, Gaussian-broadened) of H, G and H_F, one panel each, log density.

    Ticks mark the largest SLQ nodes (:func:`largest_nodes`): the outlier eigenvalues.
    """
    keys = [k for k in ("H", "G", "H_F") if k in density]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        d = density[key]
        grid = np.asarray(d["grid"])
        dens = np.asarray(d["density"])
        floor = max(float(dens.max()) * 1e-7, 1e-300)
        ax.semilogy(grid, np.maximum(dens, floor), color="C0", lw=1.4)
        nodes = np.asarray(d.get("nodes", []))
        if nodes.size:
            mark_nodes(ax, nodes, "C3", label=f"{OUTLIER_TICKS} largest SLQ nodes (outliers)")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(DENSITY_LABELS.get(key, key), fontsize=10)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("spectral density (log scale)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Any) -> None:
    """Save a figure as PNG with reproducible bytes (no software/date metadata) and close it."""
    fig.savefig(path, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def surface_figures(surface: dict[str, Any], title: str = "") -> dict[str, Figure]:
    """Figures of a :class:`landscape.surface.Surface` dict: ``line`` (1D slice), ``plane`` (2D
    contour, log-spaced levels when losses span decades) and ``path`` (interpolation)."""
    figs: dict[str, Figure] = {}
    if surface.get("line"):
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        ax.plot(surface["line"]["alphas"], surface["line"]["losses"], color="C0", lw=1.6)
        ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
        ax.set_xlabel("alpha (filter-normalised direction, units of filter norm)")
        ax.set_ylabel("mean loss")
        ax.set_title(title or "1D loss slice", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figs["line"] = fig
    if surface.get("plane"):
        p = surface["plane"]
        z = np.asarray(p["losses"], dtype=float)
        fig, ax = plt.subplots(figsize=(5.0, 4.2))
        a, b = np.meshgrid(p["alphas"], p["betas"], indexing="ij")
        lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
        if lo > 0 and hi / lo > 30:
            levels = np.geomspace(lo, hi, 25)
            norm = matplotlib.colors.LogNorm(vmin=lo, vmax=hi)
        else:
            levels = np.linspace(lo, hi, 25)
            norm = None
        cs = ax.contourf(a, b, z, levels=levels, norm=norm, cmap="viridis")
        ax.contour(a, b, z, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
        fig.colorbar(cs, ax=ax, label="mean loss" + (" (log scale)" if norm is not None else ""))
        ax.plot([0], [0], "r*", ms=9, label="checkpoint")
        ax.set_xlabel("alpha (direction 1)")
        ax.set_ylabel("beta (direction 2)")
        ax.set_title(title or "2D loss slice (filter-normalised)", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        figs["plane"] = fig
    if surface.get("path"):
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        ax.plot(surface["path"]["alphas"], surface["path"]["losses"], color="C2", lw=1.6)
        for t, label in ((0.0, "checkpoint A"), (1.0, "checkpoint B")):
            ax.axvline(t, color="0.5", lw=0.8, ls=":")
            ax.text(t, ax.get_ylim()[1], label, ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("t in (1 - t) theta_A + t theta_B")
        ax.set_ylabel("mean loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figs["path"] = fig
    return figs
