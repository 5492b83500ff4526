"""The metric registry (``landscape.metrics``): every key spelled in its metric's module only, the
probe seeds of each metric declared once (and the same as the estimators' own), the shared trace
sketch, the checks on a declaration, and the one-module claim: a metric written in a test-only
module (``metric_plugin.py``) reaches analyze, analysis.json, layers.csv, the training diagnostics,
summary.json, both command-line summaries and the report without another edit."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import sys
from pathlib import Path

import metric_plugin
import pytest
import torch
from rich.console import Console

import cli.train
import landscape.metrics as registry
from cli.main import main
from helpers import tiny_case
from landscape.analysis import METRICS, analyze
from landscape.curvature.density import slq
from landscape.curvature.eigen import lanczos
from landscape.curvature.operators import (
    BlockOperator,
    GGNOperator,
    HessianOperator,
    functional_hessian_operator,
)
from landscape.curvature.trace import block_traces, trace_estimate, xtrace_difference
from landscape.errors import UserError
from landscape.metrics import Column, Diagnostic, Metric, Outcome, Row
from landscape.problem import Problem
from landscape.train import RunSummary, TrainProgress

ROOT = Path(__file__).resolve().parents[1]

# analysis.json as it has always been: the keys and their order
ANALYSIS_KEYS = [
    "loss",
    "grad_norm",
    "num_params",
    "num_samples",
    "num_targets",
    "dtype",
    "device",
    "mode",
    "metrics",
    "exact",
    "lambda_max",
    "lambda_max_residual",
    "lambda_max_error_bound",
    "lambda_max_converged",
    "lambda_max_products",
    "top_eigenvalues",
    "top_residuals",
    "top_converged",
    "eigen_products",
    "lambda_min",
    "lambda_min_residual",
    "lambda_min_error_bound",
    "lambda_min_converged",
    "lambda_min_products",
    "trace",
    "trace_stderr",
    "trace_method",
    "trace_products",
    "gradient_noise_trace",
    "gradient_noise_trace_stderr",
    "gradient_noise_method",
    "gradient_noise_samples",
    "gradient_noise_probes",
    "m_sharpness_m",
    "m_sharpness_values",
    "m_sharpness_stderr",
    "m_sharpness_rho",
    "m_sharpness_draws",
    "ggn_lambda_max",
    "ggn_lambda_max_residual",
    "ggn_trace",
    "ggn_trace_stderr",
    "functional_trace",
    "functional_trace_stderr",
    "tau_logit",
    "tau_func",
    "tau_cross",
    "sharpness_gradient_norm",
    "tau_note",
    "hvp_count",
    "ggn_count",
    "hvp_method",
    "ggn_method",
    "seconds",
    "seed",
    "processes",
    "memory_budget",
    "memory_plans",
    "notes",
    "layers",
    "density",
]
LAYER_COLUMNS = [
    "name",
    "num_params",
    "trace",
    "trace_stderr",
    "ggn_trace",
    "ggn_trace_stderr",
    "functional_trace",
    "lambda_max",
    "lambda_max_residual",
    "tau_logit",
    "tau_func",
    "tau_cross",
]
DIAGNOSTIC_KEYS = [
    "lambda_max",
    "lambda_max_residual",
    "trace",
    "trace_stderr",
    "gradient_noise_trace",
    "gradient_noise_trace_stderr",
    "m_sharpness_m",
    "m_sharpness_values",
    "m_sharpness_stderr",
    "ggn_lambda_max",
    "ggn_trace",
    "ggn_trace_stderr",
    "functional_trace",
    "functional_trace_stderr",
    "tau_logit",
    "tau_func",
    "tau_cross",
    "tau_note",
]


# ----------------------------------------------------------------------------------------------
# One home for each key


def _homes() -> dict[str, set[Path]]:
    """Key -> the module(s) of the metric(s) that write it (per-layer columns that are nobody's
    whole-model key: the module that writes the column)."""
    homes: dict[str, set[Path]] = {}
    for metric in registry.metrics():
        for key in metric.outputs():
            homes.setdefault(key, set()).add(Path(inspect.getfile(metric.compute)).resolve())
    for metric in registry.metrics():
        for key in metric.layer_columns:
            homes.setdefault(key, {Path(inspect.getfile(metric.compute)).resolve()})
    return homes


def _spelled(tree: ast.AST, keys: set[str]) -> list[tuple[int, str]]:
    """Where ``tree`` spells one of ``keys``: a string, a keyword argument, an attribute (not of
    ``torch``/``np``: ``torch.trace`` is torch's), a class field."""
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        elif isinstance(node, ast.keyword):
            name = node.arg
        elif isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("torch", "np")):
                name = node.attr
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        if name in keys:
            found.append((node.lineno, name))
    return found


def test_metric_keys_are_spelled_only_in_their_metric_module():
    """Outside the metric that writes it (and this test), no code names a key of analysis.json or
    metrics.jsonl: the CLI, the training diagnostics, summary.json and the report read them from
    the registry. The estimators' own result types (``landscape/curvature``) name their quantities;
    a key that is also an ``analyze`` option (``trace_method``) is spelled as the option; a
    record's inner fields (a density's ``grid``, ``density``) are its payload's format."""
    homes = _homes()
    keys = set(registry.output_keys()) | set(registry.layer_columns())
    keys -= set(inspect.signature(analyze).parameters)
    assert {"lambda_max", "trace", "ggn_trace", "functional_trace", "tau_logit"} <= keys
    spelled = []
    for path in sorted([*(ROOT / "landscape").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        if (ROOT / "landscape" / "curvature") in path.parents:
            continue
        for line, key in _spelled(ast.parse(path.read_text()), keys):
            if path.resolve() not in homes[key]:
                spelled.append(f"{path.relative_to(ROOT)}:{line} {key!r}")
    assert not spelled, spelled


def test_the_grep_finds_a_spelled_key():
    code = 'r["trace"]; x = r.ggn_trace; f(tau_logit=1)\nclass S:\n    lambda_max: float\ntorch.trace(a)'
    found = _spelled(ast.parse(code), {"trace", "ggn_trace", "tau_logit", "lambda_max"})
    assert sorted(key for _, key in found) == ["ggn_trace", "lambda_max", "tau_logit", "trace"]


# ----------------------------------------------------------------------------------------------
# The registry as built


def test_builtin_metrics_their_keys_and_order_are_those_of_analysis_json():
    assert registry.names() == (
        "lambda_max",
        "eigen",
        "lambda_min",
        "trace",
        "noise",
        "m_sharpness",
        "ggn",
        "tau",
        "density",
        "layers",
    )
    assert METRICS == registry.names() and list(METRICS) == list(registry.names())
    model, data, loss = tiny_case("mlp", n=12)
    result = analyze(model, data, loss, trace_samples=6, layer_samples=4, density_steps=4, top_k=2, seed=1)
    payload = result.to_dict()
    assert list(payload) == ANALYSIS_KEYS
    assert list(result.layers_frame().columns) == LAYER_COLUMNS
    assert result.metrics == registry.names()
    assert list(registry.diagnostic_keys()) == DIAGNOSTIC_KEYS
    assert registry.diagnostic_budget() == {
        "tol": 1e-2,
        "max_iter": 20,
        "trace_samples": 24,
        "noise_probes": 16,
        "noise_memory_budget": 1 << 28,
        "m_draws": 2,
        "m_values": (4, 16),
    }
    # every metric's cost is counted, and adds up to the analysis's
    assert sum(o.hessian_products for o in result.outcomes.values()) == result.hvp_count
    assert sum(o.ggn_products for o in result.outcomes.values()) == result.ggn_count
    # lambda_max asks first for the run it shares with eigen: the products count for it
    assert result.outcomes["lambda_max"].hessian_products == result.eigen_products
    assert result.outcomes["eigen"].hessian_products == 0
    assert result.outcomes["tau"].hessian_products == 1 and result.outcomes["tau"].ggn_products == 1


def test_a_metric_that_did_not_run_reads_none_and_unknown_names_fail():
    model, data, loss = tiny_case("mlp", n=12)
    result = analyze(model, data, loss, metrics="tau")
    assert result.trace is None and result.to_dict()["trace"] is None and result.tau_logit is not None
    assert result.layers == [] and result.density is None and result.to_dict()["layers"] == []
    with pytest.raises(AttributeError, match="no attribute 'bogus'"):
        _ = result.bogus
    with pytest.raises(UserError, match="unknown analysis option"):
        analyze(model, data, loss, metrics="tau", bogus=1)
    with pytest.raises(UserError, match="unknown metric"):
        registry.parse_metrics("eigen,nope")
    assert registry.parse_metrics(" all ") == registry.names()
    assert registry.parse_metrics(["tau", "eigen"]) == ("eigen", "tau")


def test_seed_streams_give_every_estimator_the_seed_it_always_had():
    """lambda_max, eigen and lambda_min: seed; trace (and the shared sketch): seed + 1; ggn: seed + 2, 3, 4; density: seed + 5;
    layers: seed + 6 for the block traces, seed + 7 + i for tensor i's Lanczos."""
    model, data, loss = tiny_case("mlp", n=30)
    problem = Problem(model, data, loss, dtype=torch.float64)
    H = HessianOperator(problem)
    G = GGNOperator(problem, hessian=H)
    F = functional_hessian_operator(problem, H, G)
    s, m = 11, 10

    res = analyze(problem, metrics="eigen,lambda_min", top_k=2, seed=s)
    assert res.top_eigenvalues == lanczos(H, k=2, which="LA", tol=1e-3, max_iter=300, seed=s).eigenvalues
    assert res.lambda_min == lanczos(H, k=1, which="SA", tol=1e-3, max_iter=300, seed=s).eigenvalues[0]

    res = analyze(problem, metrics="trace,ggn", trace_method="hutchpp", trace_samples=m, seed=s)
    assert res.trace == trace_estimate(H, "hutchpp", m, seed=s + 1).estimate
    assert (
        res.ggn_lambda_max == lanczos(G, k=1, which="LA", tol=1e-3, max_iter=300, seed=s + 2).eigenvalues[0]
    )
    assert res.ggn_trace == trace_estimate(G, "hutchpp", m, seed=s + 3).estimate
    assert res.functional_trace == trace_estimate(F, "hutchpp", m, seed=s + 4).estimate

    shared = analyze(problem, metrics="trace,ggn", trace_samples=m, seed=s)
    alone = analyze(problem, metrics="trace", trace_samples=m, seed=s)
    a, b, c = xtrace_difference(H, G, m, seed=s + 1)
    assert (shared.trace, shared.ggn_trace, shared.functional_trace) == (a.estimate, b.estimate, c.estimate)
    assert alone.trace == pytest.approx(shared.trace, rel=1e-12)  # the same probes, shared or not
    # the sketch skips tr(H)'s own stage when only ggn reads it: fewer H products
    assert analyze(problem, metrics="ggn", trace_samples=m, seed=s).hvp_count < shared.hvp_count

    res = analyze(problem, metrics="density", density_probes=2, density_steps=5, seed=s)
    nodes = slq(H, num_probes=2, num_steps=5, seed=s + 5).nodes
    assert res.density["H"]["nodes"] == [float(x) for x in torch.as_tensor(nodes).reshape(-1)]

    res = analyze(problem, metrics="layers", layer_samples=6, layer_max_iter=4, seed=s)
    blocks = problem.blocks()
    traces = block_traces(H, [sl for _, sl in blocks], num_products=6, seed=s + 6)
    for i, (layer, (_, sl)) in enumerate(zip(res.layers, blocks, strict=True)):
        assert layer.trace == traces[i].estimate
        size = sl.stop - sl.start
        top = lanczos(BlockOperator(H, sl), k=1, which="LA", tol=1e-3, max_iter=min(size, 4), seed=s + 7 + i)
        assert layer.lambda_max == top.eigenvalues[0]


def test_seed_streams():
    stream = registry.SeedStream(3).draw(10)
    assert [next(stream) for _ in range(3)] == [13, 14, 15]
    named = registry.SeedStream.named("noise")
    assert named == registry.SeedStream.named("noise") and named.start >= 2**20


# ----------------------------------------------------------------------------------------------
# Declarations are checked when registered


def _toy(**changes) -> Metric:
    base = Metric(
        name="toy",
        description="a toy",
        order=999,
        keys=("toy_value",),
        compute=lambda ctx: Outcome({"toy_value": 1.0}),
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "eigen"}, "registered already"),
        ({"name": "a,b"}, "bad metric name"),
        ({"order": 10}, "order 10 of 'eigen'"),
        ({"rows": (Row("x", "other_value"),)}, "does not write: other_value"),
        ({"columns": (Column("toy_value", error="toy_err"),)}, "does not write: toy_err"),
        ({"diagnostic": Diagnostic(("toy_value",), budget={"tol": 1e-3})}, "budgets disagree on tol"),
        ({"diagnostic": Diagnostic(("toy_value",), budget={"speed": 2})}, "unknown options"),
        ({"options": {"max_iter": 3}}, "declares options that exist"),
    ],
)
def test_an_inconsistent_declaration_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        registry.register(_toy(**changes))
    assert "toy" not in registry.names()


def test_registered_is_undone_even_on_error():
    with pytest.raises(RuntimeError), registry.registered(_toy()):
        assert "toy" in METRICS
        raise RuntimeError
    assert "toy" not in METRICS


# ----------------------------------------------------------------------------------------------
# One module is all a new metric takes


@pytest.fixture
def plugin():
    with registry.registered(metric_plugin.METRIC) as metric:
        yield metric


def test_a_new_metric_reaches_analyze_the_result_and_its_layers(plugin):
    model, data, loss = tiny_case("mlp", n=20)
    result = analyze(model, data, loss, metrics="grad_norm_sq,eigen", top_k=1)
    assert result.metrics == ("eigen", "grad_norm_sq")
    assert result.grad_norm_sq == pytest.approx(result.grad_norm**2, rel=1e-12)
    assert result.outcomes["grad_norm_sq"].hessian_products == 0
    assert result.to_dict()["grad_norm_sq"] == result.grad_norm_sq
    cubed = analyze(model, data, loss, metrics="grad_norm_sq", grad_power=3)
    assert cubed.grad_norm_sq == pytest.approx(result.grad_norm**3, rel=1e-12)
    # its per-layer column joins the layers metric's, in the registry's order
    both = analyze(model, data, loss, metrics="layers,grad_norm_sq", layer_samples=4, layer_max_iter=3)
    frame = both.layers_frame()
    assert list(frame.columns) == [
        *LAYER_COLUMNS[:2],
        "layer_grad_norm_sq",
        *LAYER_COLUMNS[2:],
    ]  # registry order
    assert frame["layer_grad_norm_sq"].sum() == pytest.approx(both.grad_norm**2, rel=1e-12)


def test_a_new_metric_reaches_the_analyze_command(plugin, tmp_path, capsys):
    out = tmp_path / "a"
    args = [
        "analyze",
        "--model",
        "mlp",
        "--samples",
        "40",
        "--metrics",
        "grad_norm_sq,tau",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "||grad L||^2" in stdout and "squared gradient norm" in stdout and "tau_logit" in stdout
    payload = json.loads((out / "analysis.json").read_text())
    assert payload["grad_norm_sq"] == pytest.approx(payload["grad_norm"] ** 2, rel=1e-9)
    assert payload["metrics"] == ["tau", "grad_norm_sq"]
    assert (out / "layers.csv").read_text().startswith("name,num_params,layer_grad_norm_sq")


def test_a_new_metric_reaches_training_summary_json_and_the_report(plugin, tmp_path):
    from landscape.report.build import build_report
    from landscape.train.diagnostics import DIAGNOSTIC_KEYS as LIVE_KEYS

    assert "grad_norm_sq" in LIVE_KEYS  # the module-level constant reads the registry
    suite = tmp_path / "suite"
    args = ["train", "--model", "mlp", "--method", "adamw", "--method", "sgd", "--steps", "4"]
    args += ["--diagnose-every", "2", "--diagnose-samples", "32", "--final-samples", "32"]
    args += ["--final-metrics", "eigen,grad_norm_sq", "--batch-size", "32", "--out", str(suite)]
    assert main(args) == 0
    records = [json.loads(line) for line in (suite / "adamw" / "metrics.jsonl").read_text().splitlines()]
    diagnostics = [r for r in records if "lambda_max" in r]
    assert diagnostics and all(r["grad_norm_sq"] == pytest.approx(r["grad_norm"] ** 2) for r in diagnostics)
    summary = json.loads((suite / "adamw" / "summary.json").read_text())
    analysis = json.loads((suite / "adamw" / "analysis.json").read_text())
    assert summary["grad_norm_sq"] == analysis["grad_norm_sq"] is not None
    keys = list(summary)
    assert keys.index("grad_norm_sq") > keys.index("tau_cross") > keys.index("weight_norm")
    run = RunSummary.from_dict(summary)
    assert run.grad_norm_sq == summary["grad_norm_sq"] and run.to_dict() == summary
    screen = Console(file=io.StringIO(), width=250)
    screen.print(cli.train.summary_table([run]))
    assert "|g|^2" in screen.file.getvalue()  # the training summary's column
    status = cli.train._status(TrainProgress("adamw", 4, 4, "train", 0.5, diagnostics[-1]))
    assert f"g2 {diagnostics[-1]['grad_norm_sq']:.3g}" in status  # the live status line

    result = build_report([suite], tmp_path / "report", slices=False, pruning=False)
    markdown = (tmp_path / "report" / "report.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    assert metric_plugin.LABEL in header
    assert "squared gradient norm" in markdown  # the curvature figure's caption names its panel
    assert any(
        f"Lowest {metric_plugin.LABEL}" in line or f"{metric_plugin.LABEL} of" in line
        for line in result.summary
    )
    comparison = (tmp_path / "report" / "comparison.csv").read_text().splitlines()[0].split(",")
    assert comparison.index("grad_norm_sq") == comparison.index("tau_cross") + 1


def test_a_metric_module_in_the_package_is_registered_on_discovery(tmp_path, monkeypatch):
    """Dropping the module into ``landscape/metrics/`` is all it takes: discovery finds it."""
    (tmp_path / "zz_plugin_copy.py").write_text(Path(metric_plugin.__file__).read_text())
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    try:
        registry.discover()
        assert "grad_norm_sq" in registry.names() and registry.names()[-1] == "layers"
        assert registry.names().index("grad_norm_sq") == registry.names().index("tau") + 1
        registry.discover()  # idempotent
    finally:
        if "grad_norm_sq" in registry.names():
            registry.unregister("grad_norm_sq")
        sys.modules.pop("landscape.metrics.zz_plugin_copy", None)


def test_readme_table_lists_every_metric():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| metric | what | how |") :].split("\n\n")[0]
    assert re.findall(r"^\| `([a-z_]+)` \|", table, re.M) == list(registry.names())


def test_analyze_help_lists_the_registry(capsys):
    assert main(["analyze", "--help"]) == 0
    assert ",".join(registry.names()) in capsys.readouterr().out.replace("\n", "").replace(" ", "")
