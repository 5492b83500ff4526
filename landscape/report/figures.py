"""Figures (matplotlib, Agg): readable axes with quantities, legends naming what is drawn."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DENSITY_LABELS = {
    "H": "loss Hessian H",
    "G": "Gauss-Newton G",
    "H_F": "functional Hessian H_F = H - G",
}
PNG_METADATA = {"Software": None}


def density_figure(density: dict[str, dict[str, list[float]]], title: str = "") -> Figure:
    """Spectral densities (SLQ, Gaussian-broadened) of H, G and H_F, one panel each, log density.

    The outlier eigenvalues are marked with ticks at the SLQ nodes whose weight is visible.
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
        weights = np.asarray(d.get("weights", []))
        if nodes.size:
            heavy = nodes[weights > 1e-3 * weights.max()] if weights.size == nodes.size else nodes
            ax.plot(heavy, np.full_like(heavy, floor * 3), "|", color="C3", ms=8, label="SLQ nodes")
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
