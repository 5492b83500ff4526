"""The ``noise`` and ``m_sharpness`` metrics: ``landscape analyze --metrics noise`` against the exact
per-sample covariance trace on the built-in models (exact, and within its standard error when a tiny
memory budget forces the sketch), S_m against the module-level definition
(:func:`landscape.optim.sharpness.m_sharpness`) on the same random partitions, their seeds, the
metric options on the command line, and the keys in the training diagnostics.

tr(V) = (1/N) sum_i ||g_i - g_bar||^2 (Luo, Harandi, Phung & Le 2025, arXiv 2509.18001);
S_m = sum_c (n_c / N) [L_c(theta + rho g_c / ||g_c||) - L_c(theta)] (Andriushchenko & Flammarion
2022, arXiv 2206.06232, Sec. 3).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_noise_trace import dense_noise_trace

import landscape.metrics as registry
from cli.main import main
from helpers import tiny_case
from landscape.analysis import analyze
from landscape.curvature.noise import partition_order
from landscape.errors import UserError
from landscape.metrics import msharpness, noise
from landscape.optim.sharpness import m_sharpness as module_m_sharpness
from landscape.problem import Problem
from landscape.train.diagnostics import diagnose

KINDS = ["mlp", "cnn", "lm"]  # the built-in models: MLP, CNN, transformer


@pytest.mark.parametrize("kind", KINDS)
def test_noise_metric_is_the_exact_per_sample_covariance_trace(kind):
    model, (x, y), loss = tiny_case(kind, seed=2, n=24)
    reference = dense_noise_trace(model, x, y, loss)
    result = analyze(model, (x, y), loss, metrics="noise", seed=4)
    assert result.gradient_noise_method == "exact" and result.gradient_noise_trace_stderr == 0.0
    assert result.gradient_noise_trace == pytest.approx(reference, rel=1e-10)
    assert result.gradient_noise_samples == len(y) and result.gradient_noise_probes == 0
    # exact=True takes the exact method whatever the budget
    forced = analyze(model, (x, y), loss, metrics="noise", exact=True, noise_memory_budget=1)
    assert forced.gradient_noise_trace == pytest.approx(reference, rel=1e-10)


def test_noise_metric_takes_the_analysis_budget_not_a_fixed_one(monkeypatch):
    """Unset, ``noise_memory_budget`` is what the memory plan allows: a sample's gradient larger
    than the fixed 1 GiB of the API's default (2.1 GB at 124M parameters) still gets the exact
    method, in chunks as large as the plan leaves room for beside the per-sample graphs."""
    import landscape.curvature.budget as budget_module
    import landscape.curvature.noise as noise_module

    # the process as if it held 1 GiB: what the suite has run before leaves it anywhere from
    # 0.5 to 2.5 GB resident, and the plan's arithmetic, not the suite's history, is under test
    monkeypatch.setattr(budget_module, "used_memory", lambda device="cpu": 1 << 30)
    model, (x, y), loss = tiny_case("mlp", seed=2, n=24)
    reference = dense_noise_trace(model, x, y, loss)
    per_sample = 3 << 29  # 1.5 GiB per sample's gradient, as if the model were large
    monkeypatch.setattr(noise_module, "_exact_bytes", lambda problem, chunk: chunk * per_sample)
    chunks = []
    exact = noise_module._exact
    monkeypatch.setattr(noise_module, "_exact", lambda p, c: chunks.append(c) or exact(p, c))
    planned = analyze(model, (x, y), loss, metrics="noise", seed=4, max_memory="6GB")
    assert planned.gradient_noise_method == "exact"
    assert planned.gradient_noise_trace == pytest.approx(reference, rel=1e-10)
    assert len(chunks) == 1 and 1 < chunks[0] < len(y)  # 6 GB less 1 GiB: 2 or 3 samples
    # set explicitly, the option wins over the plan
    forced = analyze(model, (x, y), loss, metrics="noise", noise_memory_budget=1 << 30, noise_probes=4)
    assert forced.gradient_noise_method == "sketch"


def test_metrics_that_never_multiply_by_h_retain_no_graphs_for_it():
    """``noise`` and ``m_sharpness`` alone: H streams (nothing retained, no route timed), with the
    same gradient; with a metric that multiplies by H, the route is chosen as before."""
    model, (x, y), loss = tiny_case("lm", seed=2, n=24)
    alone = analyze(model, (x, y), loss, metrics="noise,m_sharpness", m_draws=1)
    assert alone.hvp_method == "double-backward" and alone.hvp_count == 0
    with_h = analyze(model, (x, y), loss, metrics="noise,lambda_max")
    assert with_h.hvp_method == "reuse" and with_h.hvp_count > 0
    assert alone.grad_norm == pytest.approx(with_h.grad_norm, rel=1e-6)
    assert alone.gradient_noise_trace == pytest.approx(with_h.gradient_noise_trace, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_noise_metric_sketched_under_a_tiny_budget_is_within_its_standard_error(kind):
    model, (x, y), loss = tiny_case(kind, seed=2, n=24)
    reference = dense_noise_trace(model, x, y, loss)
    result = analyze(model, (x, y), loss, metrics="noise", noise_memory_budget=64, noise_probes=200, seed=1)
    assert result.gradient_noise_method == "sketch" and result.gradient_noise_probes == 200
    assert 0 < result.gradient_noise_trace_stderr < 0.3 * reference
    assert abs(result.gradient_noise_trace - reference) < 4 * result.gradient_noise_trace_stderr
    again = analyze(model, (x, y), loss, metrics="noise", noise_memory_budget=64, noise_probes=200, seed=1)
    other = analyze(model, (x, y), loss, metrics="noise", noise_memory_budget=64, noise_probes=200, seed=2)
    assert again.gradient_noise_trace == result.gradient_noise_trace != other.gradient_noise_trace


def test_noise_sketch_draws_its_probes_from_its_seed_stream():
    from landscape.curvature.noise import gradient_noise_trace

    model, data, loss = tiny_case("mlp", n=20)
    problem = Problem(model, data, loss)
    result = analyze(problem, metrics="noise", noise_method="sketch", noise_probes=12, seed=7)
    direct = gradient_noise_trace(problem, method="sketch", num_probes=12, seed=next(noise.SEEDS.draw(7)))
    assert result.gradient_noise_trace == direct.estimate and noise.SEEDS == registry.SeedStream.named(
        "noise"
    )


def test_cli_analyze_metrics_noise_equals_the_dense_loop(tmp_path, capsys):
    from landscape.resolve import resolve_inputs

    out = tmp_path / "a"
    args = ["analyze", "--model", "mlp", "--data", "digits", "--samples", "40", "--dtype", "float64"]
    assert main([*args, "--metrics", "noise", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "tr(V)" in stdout and "exact over 40 samples" in stdout
    payload = json.loads((out / "analysis.json").read_text())
    inputs = resolve_inputs(None, "mlp", "digits", None, samples=40, seed=0, dtype=torch.float64)
    x, y = inputs.data.x, inputs.data.y
    assert payload["gradient_noise_trace"] == pytest.approx(
        dense_noise_trace(inputs.model, x, y, "cross_entropy")
    )
    assert payload["gradient_noise_trace_stderr"] == 0.0
    # forced into the sketch by a tiny memory budget: within its standard error
    sketch = tmp_path / "s"
    options = ["--option", "noise_memory_budget=100", "--option", "noise_probes=128"]
    assert main([*args, "--metrics", "noise", *options, "--out", str(sketch)]) == 0
    sketched = json.loads((sketch / "analysis.json").read_text())
    assert sketched["gradient_noise_method"] == "sketch" and sketched["gradient_noise_probes"] == 128
    gap = abs(sketched["gradient_noise_trace"] - payload["gradient_noise_trace"])
    assert 0 < sketched["gradient_noise_trace_stderr"] and gap < 4 * sketched["gradient_noise_trace_stderr"]


@pytest.mark.parametrize("kind", [*KINDS, "mse"])
def test_m_sharpness_metric_is_the_definition_on_its_random_partitions(kind):
    model, (x, y), loss = tiny_case(kind, seed=3, n=26)
    model.eval()  # the module-level definition runs the module as it is; the problem in eval mode
    n, seed, rho, draws = len(y), 5, 0.1, 3
    result = analyze(
        model, (x, y), loss, metrics="m_sharpness", m_values=(1, 3, 100), m_rho=rho, m_draws=draws, seed=seed
    )
    assert result.m_sharpness_m == [1, 3, 100] and result.m_sharpness_rho == rho
    assert result.m_sharpness_draws == [1, draws, 1]
    first = next(msharpness.SEEDS.draw(seed))
    partitions = [partition_order(n, first + r) for r in range(draws)]
    sampled = torch.tensor(
        [module_m_sharpness(model, x[order], y[order], loss, rho, [3])[3] for order in partitions],
        dtype=torch.float64,
    )
    expected = [
        module_m_sharpness(model, x, y, loss, rho, [1])[1],
        float(sampled.mean()),
        module_m_sharpness(model, x, y, loss, rho, [100])[100],
    ]
    assert result.m_sharpness_values == pytest.approx(expected, rel=1e-9, abs=1e-14)
    assert result.m_sharpness_stderr[0] == result.m_sharpness_stderr[2] == 0.0
    assert result.m_sharpness_stderr[1] == pytest.approx(float(sampled.std()) / draws**0.5, rel=1e-9)


def test_m_sharpness_grows_as_m_shrinks_and_repeats_with_the_seed():
    model, data, loss = tiny_case("mlp", seed=1, n=48)
    one = analyze(model, data, loss, metrics="m_sharpness", m_values="1,4,16,48", seed=2)
    assert one.m_sharpness_values == sorted(
        one.m_sharpness_values, reverse=True
    )  # smaller micro-batches, sharper
    assert (
        analyze(model, data, loss, metrics="m_sharpness", m_values="1,4,16,48", seed=2).m_sharpness_values
        == one.m_sharpness_values
    )
    other = analyze(model, data, loss, metrics="m_sharpness", m_values="1,4,16,48", seed=3)
    assert (
        other.m_sharpness_values[1] != one.m_sharpness_values[1]
        and other.m_sharpness_values[0] == one.m_sharpness_values[0]
    )


def test_m_sharpness_bad_options_are_user_errors():
    model, data, loss = tiny_case("mlp", n=12)
    for options in ({"m_values": "0,2"}, {"m_values": "a"}, {"m_rho": -1.0}, {"m_draws": 0}):
        with pytest.raises(UserError):
            analyze(model, data, loss, metrics="m_sharpness", **options)


def test_metric_options_on_the_command_line(tmp_path, capsys):
    assert registry.parse_options(
        ["m_values=1,2,8", "noise_probes=3", "m_rho=0.1", "noise_method=sketch"]
    ) == {
        "m_values": (1, 2, 8),
        "noise_probes": 3,
        "m_rho": 0.1,
        "noise_method": "sketch",
    }
    for bad in (["m_values"], ["bogus=1"], ["noise_probes=x"], ["=3"]):
        with pytest.raises(UserError):
            registry.parse_options(bad)
    out = tmp_path / "a"
    args = ["analyze", "--model", "mlp", "--data", "digits", "--samples", "24", "--metrics", "m_sharpness"]
    assert main([*args, "--option", "m_values=1,2,8", "--out", str(out)]) == 0
    assert "S_m" in capsys.readouterr().out
    assert json.loads((out / "analysis.json").read_text())["m_sharpness_m"] == [1, 2, 8]
    assert main([*args, "--option", "bogus=1", "--out", str(tmp_path / "b")]) == 1
    assert "error: unknown metric option 'bogus'" in capsys.readouterr().err


def test_the_training_diagnostics_record_tr_v_and_s_m():
    from landscape.data import Dataset

    model, data, loss = tiny_case("mlp", seed=1, n=32)
    subset = Dataset(data[0], data[1], name="tiny", task="classification", num_classes=4)
    record = diagnose(model, subset, None, loss, seed=3, chosen="noise,m_sharpness")
    reference = dense_noise_trace(model, data[0], data[1], loss)
    assert record["gradient_noise_trace"] == pytest.approx(reference, rel=1e-9)
    assert record["gradient_noise_trace_stderr"] == 0.0
    assert record["m_sharpness_m"] == [4, 16] and len(record["m_sharpness_values"]) == 2
    assert len(record["m_sharpness_stderr"]) == 2
    budget = registry.diagnostic_budget(registry.select("noise,m_sharpness"))
    assert budget == {"noise_probes": 16, "noise_memory_budget": 1 << 28, "m_draws": 2, "m_values": (4, 16)}
