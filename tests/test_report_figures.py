"""Figures and sentences that tell the truth: error bands on the estimated curves, density ticks at
the largest SLQ nodes, small multiples for more than three runs, "not resolved" for differences
within two standard errors (never in a headline), ratios with digits enough to mean something.

Every case runs on constructed run data (no training), so that the expected picture and sentence
are known exactly; a small report is regenerated from such data at the end.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from landscape import figures
from landscape.report import plots, summary
from landscape.report.compose import compose_report
from landscape.report.document import write_report
from landscape.report.measure import Measurements, MeasureSettings
from landscape.report.runs import RunData
from landscape.report.summary import (
    flatness_sentences,
    group_sentences,
    headline,
    ratio_phrase,
    right_reason_sentences,
)

METHODS = ["adamw", "sam", "func-sam", "precond-func-sam", "fsgld"]
LABELS = ["AdamW", "SAM", "Functional-SAM", "Precond Functional-SAM", "fSGLD"]
STEPS = [0, 10, 20, 30]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------------------------
# Constructed runs


def _density(outliers: list[float], shift: float = 0.0) -> dict[str, list[float]]:
    """A density whose bulk (heavy nodes near 0) hides three outliers of tiny weight: the case in
    which marking nodes by weight skips exactly the largest eigenvalues."""
    bulk = list(np.linspace(-0.2, 0.3, 12) + shift)
    nodes = bulk + outliers
    weights = [0.08] * len(bulk) + [1e-6] * len(outliers)
    grid = np.linspace(-0.5, max(outliers) + 0.5, 200)
    dens = sum(w * np.exp(-0.5 * ((grid - n) / 0.05) ** 2) for n, w in zip(nodes, weights, strict=True))
    return {"grid": grid.tolist(), "density": (dens + 1e-12).tolist(), "nodes": nodes, "weights": weights}


def _run(i: int, method: str, scale: float, stderr: float = 0.5) -> RunData:
    """A run of ``method`` whose curvature grows as ``scale * step`` (traces with ``stderr``)."""
    rows = []
    for step in STEPS:
        rows.append({"step": step, "train_loss": 2.0 - 0.03 * step * scale, "time_s": 0.01 * step})
        rows.append(
            {
                "step": step,
                "lambda_max": 1.0 + 0.1 * scale * step,
                "lambda_max_residual": 1e-6,
                "trace": 10.0 + scale * step,
                "trace_stderr": stderr,
                "ggn_trace": 6.0 + 0.6 * scale * step,
                "ggn_trace_stderr": stderr / 2,
                "functional_trace": 4.0 + 0.4 * scale * step,
                "functional_trace_stderr": stderr,
                "gradient_noise_trace": 5.0 + 2 * scale * step,
                "gradient_noise_trace_stderr": stderr,
                "tau_logit": 0.8,
                "tau_func": 0.1,
                "tau_cross": 0.1,
                "eval_loss": 2.0 - 0.02 * step * scale,
            }
        )
    metrics = pd.DataFrame(rows)
    last = rows[-1]
    analysis = {
        key: last[key]
        for key in ("lambda_max", "trace", "trace_stderr", "ggn_trace", "ggn_trace_stderr")
        + ("functional_trace", "functional_trace_stderr", "tau_logit", "tau_func", "tau_cross")
    }
    analysis["density"] = {k: _density([2.0 + i, 3.0 + i, 4.0 + i]) for k in ("H", "G", "H_F")}
    config = {
        "method": method,
        "model": "mlp",
        "data": "digits",
        "loss": "cross_entropy",
        "steps": 30,
        "seed": 0,
    }
    summary_json = {"eval_loss": last["eval_loss"], "eval_accuracy": 0.5, "train_loss": 1.0}
    return RunData(Path(f"/runs/{method}"), method, config, metrics, summary_json, analysis, "g", method)


def _runs(n: int, stderr: float = 0.5) -> list[RunData]:
    return [_run(i, METHODS[i], 1.0 + 0.2 * i, stderr) for i in range(n)]


def _frame(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {
        "run": [f"r{i}" for i in range(n)],
        "method": LABELS[:n],
        "method_id": METHODS[:n],
        "rho": [None] * n,
    }
    return pd.DataFrame(base | columns)


# ----------------------------------------------------------------------------------------------
# Ratios


@pytest.mark.parametrize(
    "high, low, text",
    [
        (4.536, 4.523, "0.29% higher"),
        (15.78, 15.23, "3.6% higher"),
        (10.5, 10.0, "5% higher"),
        (1.28, 1.0, "1.28× higher"),
        (62.6, 11.93, "5.25× higher"),
        (123.4, 10.0, "12.3× higher"),
        (5000.0, 2.0, "2,500× higher"),
    ],
)
def test_ratios_carry_digits_enough_to_mean_something(high, low, text):
    assert ratio_phrase(high, low) == text
    assert not re.search(r"(?<![\d.])1×", ratio_phrase(high, low))


def test_close_values_are_never_a_bare_one_times():
    frame = _frame(lambda_max=[4.536, 4.523], eval_loss=[1.0, 1.1])
    text = " ".join(flatness_sentences(frame))
    assert "0.29% higher" in text and "1×" not in text and "1x" not in text


# ----------------------------------------------------------------------------------------------
# Resolved or not


# two runs whose traces differ by less than two combined standard errors (the case a reader must not be told is resolved)
CLOSE = dict(
    trace=[15.23, 15.78],
    trace_stderr=[0.5, 0.5],  # gap 0.55 < 2 * hypot(0.5, 0.5) = 1.41
    ggn_trace=[10.0, 10.1],
    ggn_trace_stderr=[0.2, 0.2],
    functional_trace=[5.23, 5.68],
    functional_trace_stderr=[0.4, 0.4],
    eval_loss=[1.0, 1.1],
    tau_logit=[0.8, 0.7],
    tau_func=[0.1, 0.1],
)


def test_differences_within_two_standard_errors_are_not_resolved_and_never_headlines():
    frame = _frame(**CLOSE)
    lines = group_sentences(frame, "vision")
    first = lines[0]
    assert first.startswith("In short: no run is resolved as the flattest")
    assert "flattest by" not in first and "SAM is" not in first and "AdamW is" not in first
    detail = " ".join(flatness_sentences(frame))
    assert detail.count("not resolved") == 3
    assert "flattest run by every" not in detail and "picks" not in detail
    assert "within two standard errors (standard error of the difference 0.7071): not resolved" in detail
    assert "No curvature measure resolves a flattest run" in detail
    # the flat-for-the-right-reason check does not build on an unresolved first place either
    assert not any("has the lowest" in line for line in lines)


def test_a_measure_without_errors_counts_and_the_unresolved_ones_are_named():
    frame = _frame(lambda_max=[3.0, 4.0], **CLOSE)
    first = headline(frame)[0]
    assert first.startswith(
        "In short: AdamW is flattest by 1 of 3 measures (2 do not resolve a flattest run)"
    )
    detail = " ".join(flatness_sentences(frame))
    assert (
        "AdamW is the flattest run by λmax(H) (1 of 3 measures); tr(H) and tr(G) do not resolve one."
        in detail
    )


def test_resolved_differences_name_the_flattest_run():
    frame = _frame(
        lambda_max=[3.0, 4.0],
        trace=[10.0, 20.0],
        trace_stderr=[0.5, 0.5],
        ggn_trace=[5.0, 9.0],
        ggn_trace_stderr=[0.2, 0.2],
        functional_trace=[9.0, 1.0],  # "ranked": lower is not flatter, and it never picks a flattest run
        functional_trace_stderr=[0.1, 0.1],
        eval_loss=[1.0, 1.1],
    )
    first = headline(frame)[0]
    assert first.startswith("In short: AdamW is flattest by 3 of 3 measures; AdamW generalises best")
    assert "the same run" in first
    detail = flatness_sentences(frame)
    assert "AdamW is the flattest run by every measure of flatness here (λmax(H), tr(H) and tr(G))." in detail
    assert "Lowest tr(H): AdamW (10); highest: SAM (20), 2× higher." in detail
    assert not any("tr(H_F) picks" in line for line in detail)


def test_an_unresolved_first_place_with_a_resolved_spread():
    frame = _frame(
        trace=[10.0, 10.4, 20.0],
        trace_stderr=[0.5, 0.5, 0.5],
        eval_loss=[1.0, 1.1, 1.2],
        method_id=METHODS[:3],
    )
    text = " ".join(flatness_sentences(frame))
    assert "Lowest tr(H): AdamW (10); highest: Functional-SAM (20), 2× higher" in text
    assert "the runner-up SAM (10.4) is within two standard errors" in text and "not resolved" in text


def test_right_reason_check_needs_a_resolved_lowest(monkeypatch):
    # λmax(H) carries no standard error; a registry whose first lower-is-flatter measure does
    monkeypatch.setattr(
        summary,
        "measures",
        lambda *kinds: (("trace", "tr(H)", "trace_stderr"),) if kinds == ("lower",) else (),
    )
    close = _frame(trace=[10.0, 10.2], trace_stderr=[0.5, 0.5], eval_loss=[1.1, 1.0])
    line = right_reason_sentences(close)[0]
    assert line.startswith("No run has a resolved lowest tr(H)") and "but not the best" not in line
    apart = _frame(trace=[10.0, 20.0], trace_stderr=[0.5, 0.5], eval_loss=[1.1, 1.0])
    assert "AdamW has the lowest tr(H) (10) but not the best eval loss" in right_reason_sentences(apart)[0]


# ----------------------------------------------------------------------------------------------
# Density ticks


def _ticks(ax) -> list[np.ndarray]:
    return [
        np.asarray(line.get_xdata(), dtype=float)
        for line in ax.get_lines()
        if line.get_gid() == "largest-nodes"
    ]


def test_density_ticks_mark_the_largest_nodes_whatever_their_weight():
    density = _density([5.0, 7.0, 9.0])
    fig = figures.density_figure({"H": density})
    (marks,) = _ticks(fig.axes[0])
    assert {5.0, 7.0, 9.0} <= set(marks.tolist())
    assert marks.max() == max(density["nodes"])
    # the rule it replaces (weight above 1e-3 of the largest) would have missed all three
    heavy = [n for n, w in zip(density["nodes"], density["weights"], strict=True) if w > 1e-3 * 0.08]
    assert max(heavy) < 5.0


def test_largest_nodes_are_distinct_and_ordered():
    nodes = [9.0, 9.0 + 1e-9, 7.0, 7.0 - 1e-10, 5.0, 1.0, 0.5, 0.2, 0.1, 0.0]
    marks = figures.largest_nodes(nodes, count=4)
    np.testing.assert_allclose(marks, [9.0, 7.0, 5.0, 1.0], atol=1e-8)
    assert figures.largest_nodes([]).size == 0


def test_report_density_panels_tick_each_runs_outliers():
    runs = _runs(2)
    fig = plots.density_overlay_figure(runs)
    for ax in fig.axes:
        marks = _ticks(ax)
        assert len(marks) == 2  # one set per run
        for i, xs in enumerate(marks):
            assert xs.max() == pytest.approx(4.0 + i)  # each run's largest node


# ----------------------------------------------------------------------------------------------
# Bands


def _bands(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if c.get_gid() == "error-band"]


def test_every_estimated_curve_has_its_error_band():
    runs = _runs(2, stderr=0.5)
    fig = plots.curvature_curves_figure(runs)
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert not _bands(by_title["top Hessian eigenvalue λmax(H)"])  # Lanczos: no standard error
    for title in (
        "Hessian trace tr(H)",
        "Gauss-Newton trace tr(G)",
        "functional-Hessian trace tr(H_F) = tr(H) - tr(G)",
    ):
        assert len(_bands(by_title[title])) == 2, title
    # the band spans value ± 2 standard errors of the first run's tr(H)
    band = _bands(by_title["Hessian trace tr(H)"])[0]
    ys = band.get_paths()[0].vertices[:, 1]
    values = runs[0].diagnostics()["trace"]
    assert ys.min() == pytest.approx(values.min() - plots.ERROR_BAND * 0.5)
    assert ys.max() == pytest.approx(values.max() + plots.ERROR_BAND * 0.5)


def test_the_curve_declarations_name_their_errors():
    from landscape import metrics

    errors = {c.key: c.error for c in metrics.curves("curvature")}
    assert errors["trace"] == "trace_stderr" and errors["ggn_trace"] == "ggn_trace_stderr"
    assert errors["functional_trace"] == "functional_trace_stderr" and errors["lambda_max"] is None
    # the error of every curve is recorded with it during training
    assert {e for e in errors.values() if e} <= set(metrics.diagnostic_keys())


# ----------------------------------------------------------------------------------------------
# Small multiples


def test_more_than_three_runs_become_small_multiples_sharing_axes():
    runs = _runs(5)
    curves = plots.curvature_curves_figure(runs)
    panels = len(plots.registry.curves("curvature"))
    axes = np.asarray([ax for ax in curves.axes if ax.get_visible()]).reshape(panels, 5)
    assert [ax.get_title() for ax in axes[0]] == LABELS
    for row in axes:
        assert all(row[0].get_shared_y_axes().joined(row[0], ax) for ax in row[1:])
        assert all(axes[0][0].get_shared_x_axes().joined(axes[0][0], ax) for ax in row)
        # the run's own line in its colour, the other four in grey behind it
        for c, ax in enumerate(row):
            colours = [line.get_color() for line in ax.get_lines()]
            assert colours.count(plots.method_color(METHODS[c])) == 1 and colours.count("0.82") == 4
    assert len(_bands(axes[1][0])) == 1  # tr(H) of one run: one band

    density = plots.density_overlay_figure(runs)
    grid = np.asarray(density.axes).reshape(5, 3)
    assert [ax.get_title().split(":")[0] for ax in grid[:, 0]] == LABELS
    for c in range(3):
        column = grid[:, c]
        assert all(column[0].get_shared_x_axes().joined(column[0], ax) for ax in column[1:])
        assert all(column[0].get_shared_y_axes().joined(column[0], ax) for ax in column[1:])
    assert all(len(_ticks(ax)) == 1 for ax in grid.ravel())

    losses = plots.loss_curves_figure(runs)
    assert len(losses.axes) == 2 * 5


def test_three_runs_share_one_panel():
    runs = _runs(3)
    fig = plots.curvature_curves_figure(runs)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(plots.registry.curves("curvature"))
    assert [t.get_text() for t in visible[0].get_legend().get_texts()] == LABELS[:3]
    assert len(plots.density_overlay_figure(runs).axes) == 3


# ----------------------------------------------------------------------------------------------
# A small report, regenerated


def test_a_small_report_regenerated_from_constructed_runs(tmp_path):
    runs = _runs(5, stderr=30.0)  # errors far larger than the differences of the traces
    composed = compose_report(
        runs, [], {"g": runs}, Measurements(), MeasureSettings(slices=False, pruning=False)
    )
    text = " ".join(composed.summary)
    # λmax(H) has no standard error and decides by value; the traces resolve nothing
    assert "In short: AdamW is flattest by 1 of 3 measures (2 do not resolve a flattest run)" in text
    assert text.count("not resolved") == 3 and "flattest run by every" not in text
    files = write_report(composed.document, tmp_path / "report")
    names = {Path(f).name for f in files}
    assert {"g-curvature.png", "g-density.png", "g-loss.png", "index.html", "report.md"} <= names
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "shaded: ± 2 standard errors" in md and "largest quadrature nodes" in md
    assert "a column per run on shared axes" in md and "a row per run on shared axes" in md
