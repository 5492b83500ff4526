"""``landscape report``: the numbers in the page are the run folders' numbers, every figure is embedded,
nothing points outside the file, the Markdown's images exist, figures are readable, the summary is
computed from the numbers. The page in a real browser: tests/test_browser.py."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from landscape.report import plots
from landscape.report.build import SliceSettings, build_report
from landscape.report.document import compact_png, external_references
from landscape.report.runs import load_runs
from landscape.report.summary import (
    flatness_sentences,
    generalisation_sentences,
    logit_path_sentences,
    right_reason_sentences,
)
from landscape.resolve import resolve_inputs
from landscape.train import RunConfig, evaluate, expand_suite, train_run, train_suite

METHODS = ["adamw", "sam"]
SMALL = SliceSettings(line_steps=9, plane_steps=5, path_steps=7, targets=256)


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """Two short MLP runs with diagnostics and a final analysis (densities included)."""
    out = tmp_path_factory.mktemp("runs") / "suite"
    config = RunConfig(
        model="mlp",
        steps=20,
        batch_size=32,
        log_every=5,
        checkpoint_every=0,
        diagnose_every=10,
        diagnose_samples=64,
        final_analysis=True,
        final_metrics="lambda_max,eigen,lambda_min,trace,ggn,tau,density",
        final_samples=64,
    )
    train_suite(expand_suite(config, METHODS, []), out)
    return out


@pytest.fixture(scope="module")
def built(suite, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "rep"
    build_report([suite], out, seed=0, slice_settings=SMALL, sparsities=(0.5, 0.9))
    return out


class _Tables(HTMLParser):
    """Rows of every <table> (cell texts) and every <img> src."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(out: Path) -> _Tables:
    parser = _Tables()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    return parser


def _run_json(suite: Path, method: str, name: str) -> dict:
    return json.loads((suite / method / name).read_text())


def test_html_table_holds_the_run_folders_numbers(suite, built):
    comparison = _parse(built).tables[0]
    header, rows = comparison[0], {row[0]: row for row in comparison[1:]}
    assert header[:2] == ["method", "rho"]
    for method, shown in (("adamw", "AdamW"), ("sam", "SAM")):
        row = dict(zip(header, rows[shown], strict=True))
        summary = _run_json(suite, method, "summary.json")
        analysis = _run_json(suite, method, "analysis.json")
        assert row["eval loss"] == f"{summary['eval_loss']:.4f}"
        assert row["eval acc"] == f"{summary['eval_accuracy']:.4f}"
        for key, column in (
            ("lambda_max", "λmax(H)"),
            ("lambda_min", "λmin(H)"),
            ("trace", "tr(H)"),
            ("ggn_trace", "tr(G)"),
            ("functional_trace", "tr(H_F)"),
        ):
            assert row[column] == f"{analysis[key]:.4g}", key
        for key in ("tau_logit", "tau_func", "tau_cross"):
            assert row[key.replace("tau_", "τ_")] == f"{analysis[key]:.3f}"
        # train loss and accuracy: the final weights on the training split, recomputed here
        inputs = resolve_inputs(suite / method / "final.pt")
        train = evaluate(inputs.model, inputs.data, inputs.loss)
        assert row["train loss"] == f"{train.loss:.4f}"
        assert row["train acc"] == f"{train.accuracy:.4f}"
        assert float(row["step time (ms)"]) > 0
    assert rows["SAM"][1] == "0.05" and rows["AdamW"][1] == "-"


def test_every_figure_is_embedded_and_nothing_points_outside(built):
    page = (built / "index.html").read_text(encoding="utf-8")
    parsed = _parse(built)
    pngs = sorted(p.name for p in built.glob("*.png"))
    names = {"loss", "curvature", "tau", "density", "slice-1d", "slice-2d", "path", "pruning"}
    assert {n.split("-", 1)[1][:-4] for n in pngs} == names
    assert len(parsed.images) == len(pngs)
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in parsed.images]
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
    assert sorted(embedded) == sorted((built / n).read_bytes() for n in pngs)
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in embedded)
    assert external_references(page) == []
    assert not re.search(r"src=\"(?!data:image/png;base64,)", page)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 holds "/" freely
    for pattern in (r"[a-z]+://", r"//[a-z]", r"<link", r"<script", r"<iframe", r"@import", r"url\("):
        assert not re.search(pattern, text, re.I), pattern


def test_markdown_images_exist_and_csvs_hold_full_precision(suite, built):
    text = (built / "report.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images and all((built / name).is_file() for name in images)
    assert sorted(images) == sorted(p.name for p in built.glob("*.png"))
    assert "| method | rho |" in text
    frame = pd.read_csv(built / "comparison.csv")
    for method in METHODS:
        row = frame[frame["method_id"] == method].iloc[0]
        summary = _run_json(suite, method, "summary.json")
        analysis = _run_json(suite, method, "analysis.json")
        assert row["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-7)
        assert row["trace"] == pytest.approx(analysis["trace"], rel=1e-7)
    pruning = pd.read_csv(built / "pruning.csv")
    assert sorted(set(pruning["sparsity"])) == [0.0, 0.5, 0.9]


def test_report_on_a_run_without_diagnostics_or_analysis(tmp_path):
    run = tmp_path / "plain"
    train_run(RunConfig(model="mlp", steps=10, batch_size=32, checkpoint_every=0, log_every=5), run)
    out = tmp_path / "rep"
    result = build_report([run], out, slices=False, sparsities=(0.5,))
    table = _parse(out).tables[0]
    row = dict(zip(table[0], table[1], strict=True))
    summary = json.loads((run / "summary.json").read_text())
    assert row["eval loss"] == f"{summary['eval_loss']:.4f}"
    assert row["λmax(H)"] == "-" and row["τ_logit"] == "-"
    assert sorted(p.name for p in out.glob("*.png")) == [
        "mlp-on-digits-loss.png",
        "mlp-on-digits-pruning.png",
    ]
    assert any("Best eval loss" in line for line in result.summary)


def test_figures_name_quantities_units_and_methods(suite):
    runs = load_runs([suite])
    for fig in (plots.loss_curves_figure(runs), plots.curvature_curves_figure(runs)):
        for ax in fig.axes:
            assert "training step" in ax.get_xlabel()
            assert "(" in ax.get_ylabel() and ax.get_ylabel().strip()
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert legend == ["AdamW", "SAM"]
    density = plots.density_overlay_figure(runs)
    assert [ax.get_yscale() for ax in density.axes] == ["log"] * 3
    assert all("eigenvalue (" in ax.get_xlabel() for ax in density.axes)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert plots.auto_scale(ax, [0.01, 0.1, 10.0]) == " (log scale)" and ax.get_yscale() == "log"
    fig2, ax2 = plt.subplots()
    assert plots.auto_scale(ax2, [1.0, 2.0, 3.0]) == "" and ax2.get_yscale() == "linear"
    plt.close("all")


def test_figure_bytes_are_reproducible():
    import matplotlib.pyplot as plt

    def draw():
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [1, 3, 2], label="x")
        ax.legend()
        return compact_png(fig)

    assert draw() == draw()


def _frame(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {
        "run": [f"r{i}" for i in range(n)],
        "method": [f"M{i}" for i in range(n)],
        "method_id": [f"m{i}" for i in range(n)],
        "rho": [None] * n,
    }
    return pd.DataFrame(base | columns)


def test_summary_is_computed_from_the_numbers():
    frame = _frame(lambda_max=[5.0, 2.0, 9.0], trace=[50.0, 60.0, 40.0], eval_loss=[1.0, 1.2, 0.9])
    text = " ".join(flatness_sentences(frame))
    assert "Lowest λmax(H): M1 (2)" in text and "highest: M2 (9)" in text
    assert "Lowest tr(H): M2 (40)" in text and "disagree" in text
    swapped = frame.assign(lambda_max=[1.0, 2.0, 9.0])
    assert "Lowest λmax(H): M0 (1)" in " ".join(flatness_sentences(swapped))
    # standard errors decide whether first place is resolved
    close = frame.assign(trace_stderr=[5.0, 5.0, 5.0])
    assert "not resolved" in " ".join(flatness_sentences(close))
    # which path dominates follows tau
    logit = _frame(tau_logit=[0.9, 0.8], tau_func=[0.1, 0.05], tau_cross=[-0.1, -0.2])
    lines = logit_path_sentences(logit, "language")
    assert "the logit path dominates" in lines[0] and "τ_logit > 0.5" in lines[0]
    assert "negative in all 2" in lines[1]
    func = _frame(tau_logit=[0.1, 0.2], tau_func=[0.7, 0.9], tau_cross=[0.2, -0.1])
    assert "the functional path dominates" in logit_path_sentences(func, "vision")[0]
    # best generalisation and the flat-for-the-right-reason check
    gen = " ".join(generalisation_sentences(frame))
    assert "Best eval loss: M2 (0.9000)" in gen
    reason = _frame(lambda_max=[1.0, 3.0], eval_loss=[2.0, 1.0], tau_logit=[0.9, 0.4])
    assert "M0 has the lowest λmax(H) (1) but not the best eval loss" in right_reason_sentences(reason)[0]
    assert "largest τ_logit" in right_reason_sentences(reason)[0]


def test_cli_report_and_its_errors(suite, tmp_path, capsys):
    out = tmp_path / "cli-report"
    code = main(
        [
            "report",
            str(suite / "adamw"),
            str(suite / "sam"),
            "--out",
            str(out),
            "--no-slices",
            "--sparsity",
            "0.5",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    assert (out / "index.html").is_file() and not list(out.glob("*slice*.png"))
    missing = tmp_path / "nothing"
    assert main(["report", str(missing), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: run folder not found") and err.count("\n") == 1
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "y")]) == 1
    assert "neither a run folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert main(["report", str(suite), "--out", str(tmp_path / "z"), "--sparsity", "2"]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
