"""The lambda_max and lambda_min metrics, and the memory plans that ``analyze`` makes and follows,
against dense float64 references (double-backward Hessians: ``tests/helpers.py``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cli.main import main
from helpers import DEVICES, dense_ggn, dense_hessian, tiny_case
from landscape.analysis import analyze
from landscape.curvature import budget as budgets
from landscape.errors import UserError
from landscape.problem import Problem


def _reference(kind: str, device: str = "cpu"):
    model, (x, y), loss = tiny_case(kind, seed=1)
    problem = Problem(model, (x, y), loss, dtype=torch.float64, device=device)
    cpu = Problem(model, (x, y), loss, dtype=torch.float64)
    return problem, torch.linalg.eigvalsh(dense_hessian(cpu, x, y)), cpu, x, y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["mlp", "cnn", "lm"])
def test_lambda_max_and_lambda_min_metrics_match_dense_eigenvalues(kind, device):
    problem, eig, *_ = _reference(kind, device)
    n = problem.num_params
    res = analyze(problem, metrics="lambda_max,lambda_min", tol=1e-10, max_iter=n, seed=0)
    assert res.metrics == ("lambda_max", "lambda_min")
    assert res.lambda_max == pytest.approx(float(eig[-1]), rel=1e-6)
    assert res.lambda_min == pytest.approx(float(eig[0]), rel=1e-6)
    assert res.lambda_max_converged and res.lambda_min_converged
    assert res.lambda_max_error_bound <= 1e-10 * abs(res.lambda_max)
    assert res.lambda_min_products is not None and res.lambda_min_products <= res.hvp_count
    assert res.top_eigenvalues is None  # eigen did not run
    assert res.device == str(problem.device)


def test_lambda_max_alone_costs_less_than_with_lambda_min():
    """Asking for the sharpness does not pay for lambda_min: eigen no longer runs both ends."""
    problem, eig, *_ = _reference("mlp")
    alone = analyze(problem, metrics="lambda_max", tol=1e-6, seed=0)
    eigen = analyze(problem, metrics="eigen", top_k=1, tol=1e-6, seed=0)
    both = analyze(problem, metrics="lambda_max,lambda_min", tol=1e-6, seed=0)
    assert alone.hvp_count == eigen.hvp_count < both.hvp_count
    assert eigen.lambda_min is None and eigen.lambda_max == alone.lambda_max  # eigen carries lambda_max
    assert alone.lambda_max == pytest.approx(float(eig[-1]), rel=1e-5)


def test_eigen_and_lambda_max_share_one_run_and_write_each_key_once():
    problem, eig, *_ = _reference("cnn")
    both = analyze(problem, metrics="lambda_max,eigen", top_k=3, tol=1e-8, seed=0)
    alone = analyze(problem, metrics="eigen", top_k=3, tol=1e-8, seed=0)
    assert both.hvp_count == alone.hvp_count == both.eigen_products  # one Lanczos run
    assert both.lambda_max == both.top_eigenvalues[0] == alone.lambda_max
    assert "lambda_max" not in both.outcomes["eigen"].values
    assert both.top_eigenvalues == pytest.approx(eig.flip(0)[:3].tolist(), rel=1e-6)
    assert set(both.memory_plans) == {"lambda_max"}  # the shared run's plan, under lambda_max


def _trained_digits_mlp():
    from landscape.data import load_data
    from landscape.models import build_model

    torch.manual_seed(0)
    ds = load_data("digits")
    model = build_model("mlp")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ds.x), ds.y).backward()
        opt.step()
    return model, ds


def test_lambda_max_metric_within_ten_products_on_trained_digits_mlp(tmp_path, capsys):
    """Acceptance: ``--metrics lambda_max`` at ``--tol 1e-3`` on the built-in digits MLP (all 1797
    samples, trained) converges in at most 10 products, through analyze and the command line."""
    model, ds = _trained_digits_mlp()
    tight = analyze(model, ds, metrics="lambda_max", tol=1e-9, max_iter=80, dtype=torch.float64)
    quick = analyze(model, ds, metrics="lambda_max", tol=1e-3)
    assert quick.hvp_count <= 10 and quick.lambda_max_products <= 10 and quick.lambda_max_converged
    assert abs(quick.lambda_max - tight.lambda_max) <= 1e-3 * tight.lambda_max
    ckpt = tmp_path / "mlp.pt"
    torch.save(model.state_dict(), ckpt)
    args = ["analyze", ckpt, "--model", "mlp", "--data", "digits", "--metrics", "lambda_max"]
    code = main([str(a) for a in [*args, "--tol", "1e-3", "--device", "cpu", "--out", tmp_path / "a"]])
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert written["hvp_count"] <= 10 and written["lambda_max_converged"]
    assert written["lambda_min"] is None and written["top_eigenvalues"] is None
    assert written["memory_plans"]["lambda_max"]["fits"] and written["device"] == "cpu"


# ----------------------------------------------------------------------------------------------
# Memory plans


def _budget(monkeypatch, nbytes: int) -> None:
    """Pretend that ``nbytes`` are free for the metrics (the process's own RSS would make a
    ``max_memory`` this small a moving target)."""
    monkeypatch.setattr(budgets, "remaining_budget", lambda limit, device="cpu": nbytes)


def test_plans_are_announced_recorded_and_followed():
    problem, eig, *_ = _reference("mlp")
    said: list[str] = []
    res = analyze(problem, metrics="lambda_max,trace,density", trace_samples=12, progress=said.append)
    lines = [s for s in said if "estimated peak" in s]
    assert [s.split(",")[0] for s in lines] == ["lambda_max", "trace", "density"]
    plans = res.memory_plans
    assert plans["lambda_max"]["full_basis"] and plans["lambda_max"]["hvp_route"] == res.hvp_method == "reuse"
    assert plans["density"]["slq_mode"] == "lockstep"
    assert res.memory_budget == plans["trace"]["budget"] > 0


def _smallest_budget(problem: Problem, requests: dict) -> int:
    """About the smallest budget in which every metric of ``requests`` has a plan."""
    from landscape.curvature.memory import measure_footprint, plan_metric

    footprint, budget = measure_footprint(problem), 10_000
    while True:
        try:
            for name, request in requests.items():
                plan_metric(name, footprint, budget, request)
            return budget
        except UserError:
            budget = int(budget * 1.1)


def test_a_small_budget_bounds_the_basis_streams_and_runs_slq_one_probe_at_a_time(monkeypatch):
    """A budget below the retained graphs and the full bases: streaming products, a thick-restart
    basis, SLQ without lockstep, smaller chunks and a cheaper trace estimator; the eigenvalues
    still match the dense float64 ones and the densities keep their quadrature."""
    from landscape.curvature.memory import Request

    model, (x, y), loss = tiny_case("lm", seed=1)
    problem = Problem(model, (x, y), loss, dtype=torch.float64)
    H, G = dense_hessian(problem, x, y), dense_ggn(problem, x, y)
    eig, n = torch.linalg.eigvalsh(H), problem.num_params
    metrics = "lambda_max,eigen,lambda_min,ggn,density"
    common = dict(tol=1e-8, max_iter=n, seed=0, top_k=3, trace_samples=30, density_probes=3, density_steps=12)
    roomy = analyze(model, (x, y), loss, metrics, dtype=torch.float64, **common)
    requests = {
        "lambda_max": Request(k=3, max_iter=n),
        "lambda_min": Request(k=1, max_iter=n),
        "ggn": Request(k=1, max_iter=n, trace_samples=30),
        "density": Request(density_probes=3, density_steps=12),
    }
    _budget(monkeypatch, int(1.25 * _smallest_budget(problem, requests)))
    small = analyze(model, (x, y), loss, metrics, dtype=torch.float64, **common)
    plans = small.memory_plans
    assert roomy.hvp_method == "reuse" and roomy.memory_plans["lambda_min"]["full_basis"]
    assert small.hvp_method in ("forward-over-reverse", "double-backward") and small.ggn_method == "stream"
    assert not plans["lambda_min"]["full_basis"] and plans["lambda_min"]["basis_vectors"] < n
    assert plans["density"]["slq_mode"] in ("sequential", "recurrence")
    assert min(p["chunk_samples"] for p in plans.values()) < len(x)
    assert any("memory plan" in note for note in small.notes)  # hutchpp or hutchinson instead of xtrace
    assert small.lambda_max == pytest.approx(float(eig[-1]), rel=1e-6)
    assert not plans["lambda_max"]["full_basis"] and all(small.top_converged)  # top-3 by thick restart
    assert small.top_eigenvalues == pytest.approx(eig.flip(0)[:3].tolist(), rel=1e-6)
    assert small.top_eigenvalues == pytest.approx(roomy.top_eigenvalues, rel=1e-6)
    assert small.ggn_lambda_max == pytest.approx(float(torch.linalg.eigvalsh(G)[-1]), rel=1e-6)
    if small.lambda_min_converged:
        assert small.lambda_min == pytest.approx(float(eig[0]), rel=1e-6)
    else:  # a bounded basis may run out of steps: its error bound still holds
        assert abs(small.lambda_min - float(eig[0])) <= small.lambda_min_error_bound * (1 + 1e-6)
    for label in ("H", "G", "H_F"):  # the same probes, another recurrence: the same moments
        a, b = roomy.density[label], small.density[label]
        first = [sum(w * t for w, t in zip(d["weights"], d["nodes"], strict=True)) for d in (a, b)]
        assert first[1] == pytest.approx(first[0], rel=1e-8, abs=1e-10)


def test_a_budget_that_fits_nothing_is_one_line_naming_the_metric(monkeypatch):
    problem, *_ = _reference("mlp")
    _budget(monkeypatch, 1000)
    with pytest.raises(UserError, match=r"^lambda_max needs about .* more than the memory budget of 1000 B"):
        analyze(problem, metrics="lambda_max")


def test_cli_max_memory_too_small_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["analyze", "--model", "mlp", "--samples", "32", "--max-memory", "1KB", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "--max-memory" in lines[0]
    assert not out.exists()


def test_cli_max_memory_is_a_size(capsys):
    code = main(["analyze", "--model", "mlp", "--max-memory", "lots"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "invalid memory size" in err


def test_every_planned_trace_draws_its_probes_in_the_planned_blocks(monkeypatch):
    """The probe block of a plan is followed by the metric that owns it, ggn's included (its plan
    also holds a Lanczos basis): a ggn plan of Hutchinson in blocks of 1 draws 1 probe at a time."""
    import landscape.analysis as analysis_module
    from landscape.curvature import trace as trace_module

    original_plan, original_draw = analysis_module.plan_metric, trace_module.rademacher_vectors
    drawn: list[int] = []

    def pinned(name, *args, **kwargs):
        plan = original_plan(name, *args, **kwargs)
        if name == "ggn":
            from dataclasses import replace

            plan = replace(plan, trace_method="hutchinson", block_size=1)
        return plan

    def spy(n, k, generator, device="cpu"):
        drawn.append(k)
        return original_draw(n, k, generator, device)

    monkeypatch.setattr(analysis_module, "plan_metric", pinned)
    monkeypatch.setattr(trace_module, "rademacher_vectors", spy)
    model, (x, y), loss = tiny_case("mlp", seed=1)
    result = analyze(model, (x, y), loss, "ggn", trace_samples=8, seed=0, max_memory=1 << 40)
    assert result.memory_plans["ggn"]["block_size"] == 1
    assert any("hutchinson" in note for note in result.notes)
    assert drawn and max(drawn) == 1
