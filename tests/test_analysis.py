"""``landscape.analyze`` against dense float64 references: eigenvalues and tau to 1e-6 relative,
traces within 4 standard errors, exact path, per-layer values, reproducibility, PyHessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import dense_ggn, dense_gradient, dense_hessian, tiny_case
from landscape.analysis import analyze
from landscape.curvature.decomposition import sharpness_decomposition
from landscape.curvature.linear_operator import DenseOperator
from landscape.errors import UserError
from landscape.problem import Problem


def reference(kind: str, n: int = 24):
    model, (x, y), loss = tiny_case(kind, n=n)
    problem = Problem(model, (x, y), loss, dtype=torch.float64)
    H = dense_hessian(problem, x, y)
    G = dense_ggn(problem, x, y)
    g = dense_gradient(problem, x, y)
    return model, (x, y), loss, problem, H, G, g


def dense_tau(H, G, g):
    eps = g / g.norm()
    a = G @ eps
    b = (H - G) @ eps
    s = (a + b) @ (a + b)
    return float(a @ a / s), float(b @ b / s), float(2 * a @ b / s)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "lm"])
def test_eigenvalues_and_tau_match_dense_reference(kind):
    model, data, loss, problem, H, G, g = reference(kind)
    res = analyze(
        problem, metrics="eigen,lambda_min,tau,ggn", top_k=3, tol=1e-10, max_iter=problem.num_params, seed=0
    )
    eig = torch.linalg.eigvalsh(H)
    top = eig.flip(0)[:3]
    for ours, ref in zip(res.top_eigenvalues, top.tolist(), strict=True):
        assert abs(ours - ref) <= 1e-6 * abs(ref)
    assert abs(res.lambda_max - float(top[0])) <= 1e-6 * abs(float(top[0]))
    assert abs(res.lambda_min - float(eig[0])) <= 1e-6 * abs(float(eig[0]))
    assert res.lambda_min < 0  # a random net has negative curvature
    gmax = float(torch.linalg.eigvalsh(G)[-1])
    assert abs(res.ggn_lambda_max - gmax) <= 1e-6 * gmax
    tl, tf, tc = dense_tau(H, G, g)
    assert abs(res.tau_logit - tl) <= 1e-6 * abs(tl)
    assert abs(res.tau_func - tf) <= 1e-6 * abs(tf)
    assert abs(res.tau_cross - tc) <= 1e-6 * abs(tc) + 1e-12
    assert abs(res.tau_logit + res.tau_func + res.tau_cross - 1.0) < 1e-12
    assert abs(res.grad_norm - float(g.norm())) <= 1e-10 * float(g.norm())


@pytest.mark.parametrize("method", ["xtrace", "hutchpp", "hutchinson"])
def test_traces_within_four_standard_errors(method):
    # 36 samples -> P > products, so the estimators are genuinely stochastic here
    model, data, loss, problem, H, G, g = reference("mlp", n=36)
    assert problem.num_params > 60
    res = analyze(problem, metrics="trace,ggn", trace_method=method, trace_samples=30, seed=5)
    for est, err, ref in (
        (res.trace, res.trace_stderr, torch.trace(H)),
        (res.ggn_trace, res.ggn_trace_stderr, torch.trace(G)),
        (res.functional_trace, res.functional_trace_stderr, torch.trace(H - G)),
    ):
        assert err > 0
        assert abs(est - float(ref)) <= 4 * err


def test_exact_path_matches_dense():
    model, data, loss, problem, H, G, g = reference("lm")
    res = analyze(problem, metrics="eigen,lambda_min,trace,ggn", exact=True, top_k=4)
    eig = torch.linalg.eigvalsh(H)
    assert res.top_eigenvalues == pytest.approx(eig.flip(0)[:4].tolist(), rel=1e-10)
    assert res.lambda_min == pytest.approx(float(eig[0]), rel=1e-10)
    assert res.trace == pytest.approx(float(torch.trace(H)), rel=1e-10)
    assert res.ggn_trace == pytest.approx(float(torch.trace(G)), rel=1e-10)
    assert res.functional_trace == pytest.approx(float(torch.trace(H - G)), rel=1e-9)
    assert res.trace_stderr == 0.0


def test_layers_and_density_are_consistent():
    model, data, loss, problem, H, G, g = reference("mlp", n=30)
    res = analyze(problem, metrics="layers,density", layer_max_iter=60, seed=1)
    assert [layer.name for layer in res.layers] == problem.param_names
    for layer, (name, sl) in zip(res.layers, problem.blocks(), strict=True):
        ref_tr = float(torch.trace(H[sl, sl]))
        if layer.trace_stderr == 0:
            assert layer.trace == pytest.approx(ref_tr, rel=1e-9, abs=1e-12)
        else:
            assert abs(layer.trace - ref_tr) <= 4 * layer.trace_stderr + 1e-12
        block_max = float(torch.linalg.eigvalsh(H[sl, sl])[-1])
        assert layer.lambda_max == pytest.approx(block_max, rel=2e-3, abs=1e-9)
        assert layer.tau_logit + layer.tau_func + layer.tau_cross == pytest.approx(1.0, abs=1e-12)
    for key in ("H", "G", "H_F"):
        d = res.density[key]
        grid = torch.tensor(d["grid"])
        mass = torch.trapezoid(torch.tensor(d["density"]), grid)
        assert mass == pytest.approx(1.0, abs=0.05)
    frame = res.layers_frame()
    assert list(frame["name"]) == problem.param_names


def test_decomposition_per_layer_matches_dense():
    model, data, loss, problem, H, G, g = reference("cnn")
    split = sharpness_decomposition(DenseOperator(H), DenseOperator(G), g, problem.blocks())
    eps = g / g.norm()
    for layer, (name, sl) in zip(split.layers, problem.blocks(), strict=True):
        a, b = (G @ eps)[sl], ((H - G) @ eps)[sl]
        s = (a + b) @ (a + b)
        assert layer.tau_logit == pytest.approx(float(a @ a / s), rel=1e-12)
        assert layer.tau_cross == pytest.approx(float(2 * a @ b / s), rel=1e-10, abs=1e-14)


def test_same_seed_same_numbers_and_batch_size_invariance():
    model, (x, y), loss = tiny_case("lm", n=40)
    kw = dict(metrics="eigen,lambda_min,trace,tau", trace_samples=12, top_k=2, seed=3, dtype=torch.float64)
    a = analyze(model, (x, y), loss, **kw).to_dict()
    b = analyze(model, (x, y), loss, **kw).to_dict()
    c = analyze(model, (x, y), loss, batch_size=3, **kw).to_dict()
    for key in ("lambda_max", "trace", "trace_stderr", "tau_logit", "lambda_min"):
        assert a[key] == b[key]
        assert c[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12)


def test_result_views_and_bad_options():
    model, data, loss = tiny_case("mlp")
    res = analyze(model, data, loss, metrics="eigen", top_k=2, dtype=torch.float64)
    d = res.to_dict()
    assert d["trace"] is None and d["lambda_max"] == res.lambda_max
    assert "lambda_max" in res.to_frame().index
    with pytest.raises(UserError, match="unknown metric"):
        analyze(model, data, loss, metrics="eigen,bogus")
    with pytest.raises(UserError, match="unknown trace method"):
        analyze(model, data, loss, trace_method="magic")
    with pytest.raises(UserError, match="top_k must be an integer in \\[1, 1000\\]"):
        analyze(model, data, loss, top_k=0)


def test_lambda_max_within_ten_products_on_trained_digits_mlp():
    """Acceptance: on the built-in digits MLP (all 1797 samples) lambda_max reaches 1e-3 relative
    accuracy in at most 10 Hessian-vector products."""
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
    tight = analyze(model, ds, metrics="eigen", top_k=1, tol=1e-9, max_iter=80, dtype=torch.float64)
    quick = analyze(model, ds, metrics="eigen", top_k=1, tol=1e-3, max_iter=80, dtype=torch.float64)
    assert quick.lambda_max_products <= 10
    assert abs(quick.lambda_max - tight.lambda_max) <= 1e-3 * tight.lambda_max


def test_cross_check_against_pyhessian():
    """lambda_max and the Hutchinson trace agree with PyHessian (an independent implementation)."""
    from pyhessian import hessian as PyHessian

    model, (x, y), loss = tiny_case("mlp", n=64)
    problem = Problem(model, (x, y), loss, dtype=torch.float64)
    H = dense_hessian(problem, x, y)
    torch.manual_seed(0)
    ph = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    ph_eig, _ = ph.eigenvalues(maxIter=1000, tol=1e-9)
    samples = ph.trace(maxIter=400, tol=0.0)
    ph_trace = sum(samples) / len(samples)
    ph_err = (sum((s - ph_trace) ** 2 for s in samples) / (len(samples) - 1) / len(samples)) ** 0.5
    ours = analyze(
        problem, metrics="eigen,trace", trace_method="hutchinson", trace_samples=40, tol=1e-9, seed=2
    )
    assert ours.lambda_max == pytest.approx(ph_eig[0], rel=1e-5)
    assert ours.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)
    combined = math.hypot(ours.trace_stderr, ph_err)
    assert abs(ours.trace - ph_trace) <= 4 * combined
    assert abs(ph_trace - float(torch.trace(H))) <= 4 * ph_err
