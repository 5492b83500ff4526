"""The files of ``landscape analyze --out DIR``: analysis.json, layers.csv, density.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from landscape.analysis import AnalysisResult
from landscape.report.figures import density_figure, save_png
from landscape.report.files import dumps_json, staged_output


def write_analysis(
    result: AnalysisResult, out_dir: Path, context: dict[str, Any] | None = None
) -> list[Path]:
    """Write ``analysis.json`` (every result plus ``context``: model, data, checkpoint, versions),
    ``layers.csv`` (when per-layer metrics ran) and ``density.png`` (when densities ran), atomically.

    Returns the paths written.
    """
    out_dir = Path(out_dir)
    payload = result.to_dict()
    if context:
        payload["context"] = context
    names = ["analysis.json"]
    with staged_output(out_dir) as tmp:
        (tmp / "analysis.json").write_text(dumps_json(payload))
        if result.layers:
            result.layers_frame().to_csv(tmp / "layers.csv", index=False, float_format="%.8g")
            names.append("layers.csv")
        if result.density:
            title = f"{context.get('model', '')} on {context.get('data', '')}" if context else ""
            save_png(density_figure(result.density, title=title), tmp / "density.png")
            names.append("density.png")
    return [out_dir / n for n in names]


def write_surface(surface: Any, out_dir: Path, context: dict[str, Any] | None = None) -> list[Path]:
    """Write ``surface.json`` and ``surface-line.png`` / ``surface-plane.png`` / ``surface-path.png``."""
    from landscape.report.figures import surface_figures

    out_dir = Path(out_dir)
    payload = surface.to_dict()
    if context:
        payload["context"] = context
    names = ["surface.json"]
    with staged_output(out_dir) as tmp:
        (tmp / "surface.json").write_text(dumps_json(payload))
        for key, fig in surface_figures(payload).items():
            save_png(fig, tmp / f"surface-{key}.png")
            names.append(f"surface-{key}.png")
    return [out_dir / n for n in names]
