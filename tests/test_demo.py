"""``landscape demo --quick`` end to end: both suites, every method, the analysis, the report."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from landscape.demo import DEMO_METHODS, QUICK

METHOD_NAMES = ["AdamW", "SAM", "Functional-SAM", "Precond Functional-SAM", "fSGLD"]


@pytest.mark.timeout(300)
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    runs = tmp_path / "runs"
    started = time.perf_counter()
    code = main(["demo", "--quick", "--out", str(out), "--runs", str(runs), "--seed", "0"])
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0
    assert f"report: {out / 'index.html'}" in printed
    # not a terminal: plain stage lines on stderr, each tenth of a run's steps, with the elapsed time
    log = captured.err.splitlines()
    training = [line for line in log if line.startswith("vision: training adamw, step ")]
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in training] == [
        str(p) for p in range(0, 101, 10)
    ]
    assert all(re.search(r"  elapsed [\dhms.]+(  eta [\dhms.]+)?$", line) for line in log), log
    assert any(line.startswith("drawing figures  elapsed ") for line in log)
    print(f"quick demo: {elapsed:.0f} s")

    # both suites, every method, each final checkpoint analysed (densities included)
    for suite in ("vision", "language"):
        listing = json.loads((runs / suite / "suite.json").read_text())
        assert [r["method"] for r in listing["runs"]] == list(DEMO_METHODS)
        for method in DEMO_METHODS:
            analysis = json.loads((runs / suite / method / "analysis.json").read_text())
            assert set(analysis["density"]) == {"H", "G", "H_F"}
            assert analysis["tau_logit"] is not None and analysis["lambda_min"] is not None
    config = json.loads((runs / "language" / "adamw" / "config.json").read_text())
    assert config["model"] == "transformer" and config["data"] == "text"
    assert config["steps"] == QUICK.language.steps

    # the report: both comparison tables, the contrast figure and the rho sweep
    page = (out / "index.html").read_text(encoding="utf-8")
    for heading in ("Runs: vision (mlp on digits)", "Runs: language (transformer on text)"):
        assert heading in page
    for name in ("vision-tau.png", "language-tau.png", "tau-vision-vs-language.png", "rho-mlp-digits-60.png"):
        assert (out / name).is_file()
    assert page.count("<img ") == len(list(out.glob("*.png")))
    frame = pd.read_csv(out / "comparison.csv")
    assert sorted(frame["group"].unique()) == ["language", "vision"]
    for group in ("vision", "language"):
        assert list(frame[frame["group"] == group]["method"]) == METHOD_NAMES
    sweep = pd.read_csv(out / "rho_sweep.csv")
    assert sorted(sweep[sweep["method_id"] == "sam"]["rho"]) == [0.05, 0.2]
    summary = page[page.index("<h2>Summary</h2>") : page.index("Runs: vision")]
    assert "Vision against language" in summary and "Mean τ_logit over training" in summary
    assert re.search(r"Best eval loss: [A-Za-z-]+", summary)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert all((out / name).is_file() for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))


def test_demo_refuses_a_used_runs_folder(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "something").write_text("x")
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--runs", str(runs)]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert not Path(tmp_path / "demo").exists()
