"""The HTML report opened in a real browser (Debian's headless Chromium): every figure loads, the page
logs no error, the comparison table has one row per run; the screenshot is kept as a test artefact.

Without Chromium this test skips, except under ``CI=true``, where it fails: CI (``.ci/run``) installs
the browser, so a missing one there is a broken CI, not a reason to skip. The checking code is that
of ``scripts/screenshot_report.py``; the cases on a broken copy of the page show that it can fail.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from cli.main import main

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["adamw", "sam", "func-sam"]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", ROOT / "scripts" / "screenshot_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shot = _load_script()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _require_browser() -> str:
    """The Chromium executable; without one: fail under ``CI=true``, skip elsewhere."""
    path = shot.find_chromium()
    if path is None:
        message = "no Chromium (apt-get install -y chromium, or set $CHROMIUM)"
        if _in_ci():
            pytest.fail(f"CI=true and {message}: .ci/run installs it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser() -> str:
    return _require_browser()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """The folder CI keeps: ``$PYTEST_ARTIFACTS`` or ``test-artifacts/`` at the repository root."""
    folder = Path(os.environ.get("PYTEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report on three short MLP runs with diagnostics and a final analysis (densities included),
    built through the command line as a user would."""
    base = tmp_path_factory.mktemp("browser")
    suite = base / "suite"
    train = ["train", "--model", "mlp", "--steps", "20", "--batch-size", "32", "--log-every", "5"]
    train += ["--checkpoint-every", "0", "--diagnose-every", "10", "--diagnose-samples", "64"]
    train += ["--final-metrics", "eigen,trace,ggn,tau,density", "--final-samples", "64", "--out", str(suite)]
    for method in METHODS:
        train += ["--method", method]
    assert main(train) == 0
    out = base / "report"
    args = ["report", str(suite), "--out", str(out), "--slice-steps", "9", "--slice-grid", "5"]
    assert main([*args, "--sparsity", "0.5,0.9"]) == 0
    return out


def test_headless_chromium_renders_the_report(browser, report, artifacts, capsys):
    png = artifacts / "report-screenshot.png"
    seen = shot.inspect_page(report / "index.html", png, height=None)
    with capsys.disabled():
        print(f"\nbrowser test artefact: {png} ({len(seen.images)} figures, page {seen.height} px)")
    assert seen.problems(runs=len(METHODS)) == []
    assert len(seen.images) >= 8, [img["figure"] for img in seen.images]
    comparison = [t for t in seen.tables if t["caption"].startswith(shot.COMPARISON_CAPTION)]
    assert len(comparison) == 1 and len(comparison[0]["rows"]) == len(METHODS)
    assert shot.plot_pixels(png) > 2000  # the figures were painted, not only decoded


def test_the_check_reports_a_broken_figure_and_a_console_error(browser, report, tmp_path):
    page = (report / "index.html").read_text(encoding="utf-8")
    # one figure's embedded PNG replaced by a file that does not exist
    broken, count = re.subn(
        r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', 'src="missing.png"', page, count=1
    )
    assert count == 1
    (tmp_path / "broken.html").write_text(broken, encoding="utf-8")
    seen = shot.inspect_page(tmp_path / "broken.html")
    problems = seen.problems(runs=len(METHODS))
    assert sum("figure did not load" in p for p in problems) == 1, problems
    assert any("console error" in p and "missing.png" in p for p in problems), problems
    assert sum(img["naturalWidth"] > 0 for img in seen.images) == len(seen.images) - 1
    # a script error and a console.error, every figure intact
    scripted = page.replace("</body>", "<script>console.error('boom'); undefinedName();</script></body>")
    (tmp_path / "scripted.html").write_text(scripted, encoding="utf-8")
    problems = shot.inspect_page(tmp_path / "scripted.html").problems(runs=len(METHODS))
    assert not any("figure did not load" in p for p in problems), problems
    assert any(p == "console error: boom" for p in problems), problems
    assert any("undefinedName" in p for p in problems), problems
    # one row more than there are runs
    assert any("not one per run" in p for p in seen.problems(runs=len(METHODS) + 1))


def test_the_command_line_check(browser, report, tmp_path, capsys):
    """The README's command: exit 0 on the report; on a copy whose figures are all blank, exit 1 with
    one FAIL line per blank figure and one for the missing plot colours."""
    runs = ["--runs", str(len(METHODS))]
    assert shot.main([str(report / "index.html"), str(tmp_path / "a.png"), *runs]) == 0
    assert "figures rendered, no console error" in capsys.readouterr().out
    page = (report / "index.html").read_text(encoding="utf-8")
    blank, count = re.subn(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:,", page)
    (tmp_path / "blank.html").write_text(blank, encoding="utf-8")
    assert shot.main([str(tmp_path / "blank.html"), str(tmp_path / "b.png"), *runs]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL figure did not load") == count and "FAIL figures NOT rendered" in out


def test_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    """The rule of the ``browser`` fixture, with no browser to be found."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-browser"))
    assert shot.find_chromium() is None
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _require_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _require_browser()
