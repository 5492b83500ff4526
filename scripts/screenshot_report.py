"""Open a report's ``index.html`` in headless Chromium, save a screenshot and check the figures rendered.

Usage::

    python scripts/screenshot_report.py reports/demo/index.html reports/demo/screenshot.png

Needs Debian's ``chromium`` (``apt-get install -y chromium``; also found: ``chromium-browser``,
``google-chrome``, or the path in ``$CHROMIUM``). The browser runs with no network access
(``--disable-background-networking``, a throw-away profile), so the page must be self-contained:
if any figure failed to load, its area is blank and the check below fails.

The check: the screenshot must hold at least ``--min-plot-pixels`` pixels of the colours the
report's figures draw with and no page text uses (the method colours of ``landscape.report.plots``
and the viridis colours of the 2D slices). Exit status 0 when it passes, 1 when it does not,
2 when no Chromium is installed.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Plot colours: SAM red, Functional-SAM blue, Precond Functional-SAM orange, fSGLD green (the method
# colours of landscape.report.plots) and two viridis shades of the 2D slices. Dark blue-greys are
# left out: antialiased page text comes close to them.
PLOT_COLOURS = [
    (214, 39, 40),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (33, 145, 140),
    (253, 231, 37),
]


def find_chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM`` or the first of ``CANDIDATES`` on the PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 4000, timeout: float = 120.0) -> Path:
    """Render ``page`` in headless Chromium and write a ``width`` x ``height`` PNG to ``out``."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium found (apt-get install -y chromium, or set $CHROMIUM)")
    page = Path(page).resolve()
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        tmp_png = Path(profile) / "shot.png"
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}/data",
            f"--screenshot={tmp_png}",
            f"--window-size={width},{height}",
            page.as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if not tmp_png.is_file():
            raise RuntimeError(
                f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-800:]}"
            )
        _compact(tmp_png, out)
    return out


def _compact(src: Path, dest: Path) -> None:
    """Save the screenshot as a 256-colour PNG (a few hundred kB instead of a few MB)."""
    from PIL import Image

    image = Image.open(src).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True
    )
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, dest)


def plot_pixels(png: Path, tolerance: int = 30) -> int:
    """Pixels of ``png`` within ``tolerance`` (per channel) of one of ``PLOT_COLOURS``."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    hit = np.zeros(pixels.shape[:2], dtype=bool)
    for colour in PLOT_COLOURS:
        hit |= (np.abs(pixels - np.asarray(colour, dtype=np.int16)) <= tolerance).all(axis=-1)
    return int(hit.sum())


def main(argv: list[str] | None = None) -> int:
    """Command line: screenshot, then the rendered-figures check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("out", type=Path, help="screenshot PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--min-plot-pixels", type=int, default=2000)
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"error: {args.page} not found", file=sys.stderr)
        return 1
    try:
        shot = screenshot(args.page, args.out, args.width, args.height)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    count = plot_pixels(shot)
    verdict = "figures rendered" if count >= args.min_plot_pixels else "figures NOT rendered"
    print(f"{shot}: {count} plot-coloured pixels: {verdict}")
    return 0 if count >= args.min_plot_pixels else 1


if __name__ == "__main__":
    sys.exit(main())
