"""Open a report's ``index.html`` in headless Chromium, check what the browser saw and save a screenshot.

Usage::

    python scripts/screenshot_report.py reports/demo/index.html reports/demo/screenshot.png
    python scripts/screenshot_report.py out/index.html shot.png --runs 3 --height 0   # full page

The checks (exit status 1 when one fails, each failure on its own line):

- every figure (``<img>``) loaded and decoded: ``naturalWidth > 0``;
- the page logged no error: no ``console.error``/``console.assert``, no uncaught exception, no
  error entry in the browser's log (a resource that failed to load is one);
- with ``--runs N``: every comparison table (caption starting with ``--table``) has exactly N body rows;
- the screenshot holds at least ``--min-plot-pixels`` pixels of the colours the report's figures
  draw with and no page text uses (figures were painted, not just decoded).

Needs Debian's ``chromium`` (``apt-get install -y chromium``; also found: ``chromium-browser``,
``google-chrome``, or the path in ``$CHROMIUM``); exit status 2 when there is none. Nothing else:
the browser is driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ending in a NUL byte, commands on the browser's file descriptor 3, replies and events
on 4), with the standard library only; no driver, no browser download. The browser runs with no
network access (``--disable-background-networking``, a throw-away profile), so the page must be
self-contained.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The caption of the report's comparison table (one body row per run).
COMPARISON_CAPTION = "Final weights"
# Chromium's longest texture side: a full-page screenshot is cut there.
MAX_HEIGHT = 16384
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
# Flags that let Chromium run headless as root on a machine with no network and no display.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
# Run in the page once it has loaded: wait until every image is decoded (or has failed), then
# describe the images and tables.
_INSPECT_JS = """
(async () => {
  const images = [...document.images];
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  const cell = (row) => (row.cells.length ? row.cells[0].textContent.trim() : "");
  return {
    images: images.map((img) => ({
      src: (img.getAttribute("src") || "").slice(0, 60),
      figure: img.closest("figure") ? img.closest("figure").id : "",
      alt: img.alt,
      complete: img.complete,
      naturalWidth: img.naturalWidth,
    })),
    tables: [...document.querySelectorAll("table")].map((table) => {
      const rows = [...table.tBodies].flatMap((body) => [...body.rows]);
      return { caption: table.caption ? table.caption.textContent.trim() : "", rows: rows.map(cell) };
    }),
    height: Math.ceil(document.documentElement.scrollHeight),
    url: location.href,
  };
})()
"""


@dataclass
class PageReport:
    """What the browser saw: every ``<img>``, every table's body rows, every error it logged."""

    url: str
    images: list[dict] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    height: int = 0
    screenshot: Path | None = None

    def problems(self, runs: int | None = None, table: str = COMPARISON_CAPTION) -> list[str]:
        """One line per failed check (empty: the page passed). ``runs``: the number of body rows
        every table whose caption starts with ``table`` must have (``None``: not checked)."""
        out = []
        if not self.images:
            out.append("the page has no figure (<img>)")
        for img in self.images:
            if img["naturalWidth"] <= 0:
                name = img["figure"] or img["alt"] or img["src"]
                out.append(f"figure did not load (naturalWidth 0): {name} (src {img['src']!r})")
        out += [f"console error: {text}" for text in self.errors]
        if runs is not None:
            chosen = [t for t in self.tables if t["caption"].startswith(table)]
            if not chosen:
                out.append(f"no table captioned {table!r}")
            for t in chosen:
                if len(t["rows"]) != runs:
                    out.append(
                        f"table {t['caption']!r} has {len(t['rows'])} rows, not one per run ({runs}): {t['rows']}"
                    )
        return out


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


class _DevTools:
    """A Chromium started with ``--remote-debugging-pipe``, and the protocol spoken over that pipe.

    Replies are matched to commands by id; every event that arrives meanwhile is kept in ``events``.
    """

    def __init__(self, browser: str, profile: Path, timeout: float) -> None:
        self.timeout = timeout
        self.events: list[dict] = []
        self._next_id = 0
        self._buffer = b""
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser's ends, numbered 10 or more so that bash's "3<&N 4>&M" cannot clobber them (dash
        # takes one-digit descriptors only)
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._log = open(profile / "chromium.log", "w+b")  # closed in close()
        command = [
            "bash",
            "-c",
            f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-',
            browser,
            *FLAGS,
            "--remote-debugging-pipe",
            f"--user-data-dir={profile / 'data'}",
            "about:blank",
        ]
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(child_r, child_w),
            )
        finally:
            os.close(child_r)
            os.close(child_w)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (raises ``RuntimeError`` on a protocol error)."""
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data) :]
        reply = self._wait(lambda m: m.get("id") == self._next_id, f"the reply to {method}")
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str | None = None, **params) -> dict:
        """The first event ``method`` (of ``session``, with these ``params``) received so far or
        from now on."""

        def wanted(m: dict) -> bool:
            return (
                m.get("method") == method
                and (session is None or m.get("sessionId") == session)
                and all(m.get("params", {}).get(k) == v for k, v in params.items())
            )

        for event in self.events:
            if wanted(event):
                return event
        return self._wait(wanted, f"the event {method}")

    def _wait(self, wanted, what: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                raise RuntimeError(f"chromium sent no {what} (exit {self.process.poll()}): {self.log_tail()}")
            ready, _, _ = select.select([self._from_browser], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    self.process.wait(timeout=5)
                    continue
                self._buffer += chunk

    def log_tail(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-800:]

    def close(self) -> None:
        """Ask the browser to quit; kill it if it has not within a few seconds."""
        try:
            if self.process.poll() is None:
                try:
                    self.send("Browser.close")
                except (RuntimeError, OSError):
                    pass
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._log.close()


def _error_lines(events: list[dict], session: str) -> list[str]:
    """The errors among the page's console calls, uncaught exceptions and browser log entries."""
    out = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif event["method"] == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            url = entry.get("url") or ""
            # keep the end of a long URL: the file name is what tells which resource failed
            where = f" ({url if len(url) <= 100 else '...' + url[-97:]})" if url else ""
            out.append(f"{entry.get('text', '')}{where}")
    return out


def inspect_page(
    page: Path,
    screenshot: Path | None = None,
    width: int = 1280,
    height: int | None = 4000,
    timeout: float = 60.0,
) -> PageReport:
    """Load ``page`` in headless Chromium and report its images, tables and logged errors; with
    ``screenshot``, also save a ``width`` x ``height`` PNG there (``height=None``: the whole page,
    up to ``MAX_HEIGHT`` pixels). Raises ``FileNotFoundError`` when no Chromium is installed."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium found (apt-get install -y chromium, or set $CHROMIUM)")
    url = Path(page).resolve().as_uri()
    report = PageReport(url=url)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        tools = _DevTools(browser, Path(profile), timeout)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                tools.send(f"{domain}.enable", session=session)
            metrics = {"width": width, "height": height or 1000, "deviceScaleFactor": 1, "mobile": False}
            tools.send("Emulation.setDeviceMetricsOverride", metrics, session)
            tools.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session)
            navigation = tools.send("Page.navigate", {"url": url}, session)
            if navigation.get("errorText"):
                raise RuntimeError(f"chromium could not open {url}: {navigation['errorText']}")
            # the load event of this navigation (not a late one of the blank page it replaced)
            tools.wait_event("Page.lifecycleEvent", session, name="load", loaderId=navigation["loaderId"])
            seen = tools.send(
                "Runtime.evaluate",
                {"expression": _INSPECT_JS, "awaitPromise": True, "returnByValue": True},
                session,
            )
            if "exceptionDetails" in seen:
                raise RuntimeError(f"the page inspection failed: {seen['exceptionDetails']}")
            value = seen["result"]["value"]
            if value["url"] != url:
                raise RuntimeError(f"chromium inspected {value['url']}, not {url}")
            report.images, report.tables, report.height = value["images"], value["tables"], value["height"]
            if screenshot is not None:
                if height is None:
                    metrics["height"] = max(1, min(report.height, MAX_HEIGHT))
                    tools.send("Emulation.setDeviceMetricsOverride", metrics, session)
                shot = tools.send("Page.captureScreenshot", {"format": "png"}, session)
                report.screenshot = _compact(base64.b64decode(shot["data"]), Path(screenshot))
            report.errors = _error_lines(tools.events, session)
        finally:
            tools.close()
    return report


def _compact(png: bytes, dest: Path) -> Path:
    """Save the screenshot as a 256-colour PNG (a few hundred kB instead of a few MB)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        buffer, format="PNG"
    )
    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, dest)
    return dest


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
    """Command line: load the page, save the screenshot, print every failed check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("out", type=Path, help="screenshot PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000, help="screenshot height; 0: the whole page")
    parser.add_argument("--runs", type=int, default=None, help="rows every comparison table must have")
    parser.add_argument("--table", default=COMPARISON_CAPTION, help="caption start of the comparison tables")
    parser.add_argument("--min-plot-pixels", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the browser")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"error: {args.page} not found", file=sys.stderr)
        return 1
    try:
        report = inspect_page(args.page, args.out, args.width, args.height or None, args.timeout)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = report.problems(args.runs, args.table)
    count = plot_pixels(report.screenshot)
    if count < args.min_plot_pixels:
        problems.append(f"figures NOT rendered: {count} plot-coloured pixels (< {args.min_plot_pixels})")
    loaded = sum(img["naturalWidth"] > 0 for img in report.images)
    print(f"{report.screenshot}: {loaded}/{len(report.images)} figures loaded, {count} plot-coloured pixels")
    for line in problems:
        print(f"FAIL {line}")
    print("figures rendered, no console error" if not problems else f"{len(problems)} check(s) failed")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
