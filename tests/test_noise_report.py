"""The report shows tr(V) next to tr(H) per run (comparison columns, a figure at the final weights
and over training) and S_m against m (a line per run with error bars): on constructed run data,
whose picture is known exactly, and end to end from a short training suite."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from cli.main import main
from landscape.metrics import msharpness, noise, trace
from landscape.report import plots
from landscape.report.compose import compose_report
from landscape.report.document import write_report
from landscape.report.measure import Measurements, MeasureSettings
from landscape.report.runs import RunData

METHODS = ["adamw", "sam", "func-sam"]
M_VALUES = [1, 4, 16]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _run(i: int, method: str) -> RunData:
    rows = [
        {
            "step": step,
            trace.TRACE: 10.0 + (i + 1) * step,
            trace.STDERR: 0.5,
            noise.NOISE_TRACE: 5.0 + 2 * (i + 1) * step,
            noise.STDERR: 0.0,
        }
        for step in (0, 10, 20)
    ]
    analysis = {
        trace.TRACE: 30.0 + i,
        trace.STDERR: 0.5,
        noise.NOISE_TRACE: 40.0 + 3 * i,
        noise.STDERR: 0.0,
        noise.METHOD: "exact",
        msharpness.M_VALUES: M_VALUES,
        msharpness.M_SHARPNESS: [0.3 - 0.05 * i, 0.2 - 0.05 * i, 0.1 - 0.03 * i],
        msharpness.STDERR: [0.0, 0.01, 0.005],
        msharpness.RHO: 0.05,
    }
    config = {
        "method": method,
        "model": "mlp",
        "data": "digits",
        "loss": "cross_entropy",
        "steps": 20,
        "seed": 0,
    }
    summary = {"eval_loss": 1.0 + 0.1 * i, "eval_accuracy": 0.5, "train_loss": 1.0}
    return RunData(
        Path(f"/runs/{method}"), method, config, pd.DataFrame(rows), summary, analysis, "g", method
    )


def test_noise_figure_places_each_run_at_tr_h_tr_v_and_draws_its_path_over_training():
    runs = [_run(i, m) for i, m in enumerate(METHODS)]
    fig = plots.noise_hessian_figure(runs)
    final, over = fig.axes
    points = [line for line in final.get_lines() if line.get_marker() == "o"]
    assert [(float(p.get_xdata()[0]), float(p.get_ydata()[0])) for p in points] == [
        (30, 40),
        (31, 43),
        (32, 46),
    ]
    assert [p.get_color() for p in points] == [plots.method_color(m) for m in METHODS]
    assert "tr(V)" in final.get_ylabel() and "tr(H)" in final.get_xlabel()
    paths = [line for line in over.get_lines() if len(line.get_xdata()) == 3]
    assert len(paths) == 3 and list(paths[1].get_ydata()) == [5.0, 45.0, 85.0]


def test_m_sharpness_figure_draws_s_m_against_m_with_error_bars():
    runs = [_run(i, m) for i, m in enumerate(METHODS)]
    fig = plots.m_sharpness_figure(runs)
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(lines) == 3 and ax.get_xscale() == "log"
    assert list(lines[0].get_xdata()) == M_VALUES and list(lines[0].get_ydata()) == pytest.approx(
        [0.3, 0.2, 0.1]
    )
    assert len(ax.containers) == 3  # one errorbar container per run
    # the bars span ± 2 standard errors
    segments = ax.containers[0][2][0].get_segments()
    assert segments[1][1][1] - segments[1][0][1] == pytest.approx(2 * plots.ERROR_BAND * 0.01)


def test_the_report_shows_tr_v_columns_and_both_figures(tmp_path):
    runs = [_run(i, m) for i, m in enumerate(METHODS)]
    composed = compose_report(
        runs, [], {"g": runs}, Measurements(), MeasureSettings(slices=False, pruning=False)
    )
    files = {Path(f).name for f in write_report(composed.document, tmp_path / "report")}
    assert {"g-noise.png", "g-m-sharpness.png", "g-curvature.png"} <= files
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert header.index("tr(H)") < header.index("tr(V)")
    assert "Gradient-noise trace tr(V)" in md and "m-sharpness S_m" in md and "arXiv 2509.18001" in md
    assert "gradient-noise trace" in md  # the curvature figure's caption names the tr(V) panel
    csv = (tmp_path / "report" / "comparison.csv").read_text().splitlines()
    assert noise.NOISE_TRACE in csv[0].split(",") and noise.STDERR in csv[0].split(",")


def test_train_and_report_end_to_end(tmp_path):
    from landscape.report.build import build_report

    suite = tmp_path / "suite"
    args = ["train", "--model", "mlp", "--method", "adamw", "--method", "sam", "--steps", "4"]
    args += [
        "--diagnose-every",
        "2",
        "--diagnose-samples",
        "32",
        "--final-samples",
        "32",
        "--batch-size",
        "32",
    ]
    args += ["--final-metrics", "trace,noise,m_sharpness", "--out", str(suite)]
    assert main(args) == 0
    records = [json.loads(line) for line in (suite / "sam" / "metrics.jsonl").read_text().splitlines()]
    diagnostics = [r for r in records if r.get(noise.NOISE_TRACE) is not None]
    assert [r["step"] for r in diagnostics] == [0, 2, 4]
    assert all(r[msharpness.M_VALUES] == [4, 16] and len(r[msharpness.M_SHARPNESS]) == 2 for r in diagnostics)
    summary = json.loads((suite / "sam" / "summary.json").read_text())
    assert summary[noise.NOISE_TRACE] is not None
    build_report([suite], tmp_path / "report", slices=False, pruning=False)
    report = tmp_path / "report"
    pngs = {p.name for p in report.rglob("*.png")}
    assert any(name.endswith("-noise.png") for name in pngs) and any(
        name.endswith("-m-sharpness.png") for name in pngs
    )
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "tr(V)" in md and "S_m" in md
