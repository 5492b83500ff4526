"""Trace and diagonal estimators: exact paths, unbiasedness, calibrated standard errors, XTrace algebra."""

import json
import math

import numpy as np
import pytest
import torch

from landscape.curvature.eigen import gaussian_vectors, seeded_generator
from landscape.curvature.linear_operator import DenseOperator
from landscape.curvature.trace import (
    block_traces,
    exact_diagonal,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    trace_estimate,
    xtrace,
    xtrace_difference,
)

ESTIMATORS = {"hutchinson": hutchinson_trace, "hutchpp": hutchpp_trace, "xtrace": xtrace}


def symmetric_with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a Haar-random orthogonal Q (numpy RNG: independent of the probes)."""
    rng = np.random.default_rng(20_000 + seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return torch.as_tensor((Q * eigenvalues) @ Q.T)


def network_spectrum(n: int = 300, seed: int = 0) -> np.ndarray:
    """Outliers, a positive bulk piled up near 0 and a few small negative eigenvalues."""
    rng = np.random.default_rng(seed)
    negatives = -1e-4 * rng.uniform(0, 1, n // 10)
    bulk = 0.02 * rng.uniform(0, 1, n - 5 - len(negatives)) ** 4
    return np.concatenate([[0.126, 0.108, 0.091, 0.066, 0.045], negatives, bulk])


@pytest.fixture(scope="module")
def network() -> tuple[torch.Tensor, float]:
    spectrum = network_spectrum()
    return symmetric_with_spectrum(spectrum), float(spectrum.sum())


@pytest.fixture(scope="module")
def decaying() -> tuple[torch.Tensor, float]:
    spectrum = 1.0 / np.arange(1, 301) ** 2
    return symmetric_with_spectrum(spectrum, seed=1), float(spectrum.sum())


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_exact_when_budget_reaches_n(network, method):
    A, trace = network
    op = DenseOperator(A)
    result = ESTIMATORS[method](op, A.shape[0], seed=0)
    assert result.method == "exact" and result.stderr == 0.0
    assert result.estimate == pytest.approx(float(torch.trace(A)), rel=1e-13)
    assert result.num_products == op.products == A.shape[0]
    assert ESTIMATORS[method](A, 10 * A.shape[0]).estimate == pytest.approx(trace, rel=1e-12)


@pytest.mark.parametrize("matrix", ["network", "decaying"])
@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_unbiased_with_calibrated_stderr(matrix, method, request):
    A, trace = request.getfixturevalue(matrix)
    results = [ESTIMATORS[method](A, 60, seed=seed) for seed in range(30)]
    estimates = np.array([r.estimate for r in results])
    stderrs = np.array([r.stderr for r in results])
    spread = estimates.std(ddof=1)
    assert abs(estimates.mean() - trace) <= 4 * spread / math.sqrt(len(results))
    assert 0.5 <= spread / stderrs.mean() <= 2.0
    for r in results:
        assert r.num_products == 60
        assert r.estimate == pytest.approx(np.mean(r.samples), rel=1e-12)


def test_xtrace_beats_hutchinson_on_decaying_spectrum(decaying):
    A, trace = decaying
    errors = {name: [] for name in ESTIMATORS}
    for seed in range(10):
        for name, estimator in ESTIMATORS.items():
            errors[name].append(abs(estimator(A, 60, seed=seed).estimate - trace))
    rms = {name: math.sqrt(np.mean(np.square(e))) for name, e in errors.items()}
    assert rms["xtrace"] < rms["hutchinson"] / 30
    assert rms["xtrace"] < rms["hutchpp"]


def test_xtrace_matches_explicit_leave_one_out(network):
    """The vectorised downdate equals forming orth(A Omega_{-i}) explicitly for every i."""
    A, _ = network
    n, s, seed = A.shape[0], 6, 3
    result = xtrace(A, 2 * s, seed=seed)
    Omega = gaussian_vectors(n, s, seeded_generator(seed))
    Omega = Omega * (math.sqrt(n) / Omega.norm(dim=0))
    explicit = []
    for i in range(s):
        others = torch.cat([Omega[:, :i], Omega[:, i + 1 :]], dim=1)
        Q = torch.linalg.qr(A @ others).Q
        x = Omega[:, i] - Q @ (Q.T @ Omega[:, i])
        explicit.append(float(torch.trace(Q.T @ A @ Q) + x @ A @ x))
    assert np.allclose(result.samples, explicit, rtol=1e-10, atol=0)
    assert result.stderr == pytest.approx(np.std(explicit, ddof=1) / math.sqrt(s), rel=1e-8)


def test_xtrace_low_rank_operator_is_exact():
    rng = np.random.default_rng(5)
    B = torch.as_tensor(rng.standard_normal((200, 20)))
    A = B @ B.T  # rank 20 < s = 30: A Omega is rank deficient
    op = DenseOperator(A)
    result = xtrace(op, 60, seed=0)
    assert result.estimate == pytest.approx(float(torch.trace(A)), rel=1e-10)
    assert result.stderr < 1e-9 * result.estimate
    assert result.num_products == op.products == 30 + 20


def test_budget_rounding_and_validation(network):
    A, _ = network
    op = DenseOperator(A)
    assert xtrace(op, 61).num_products == 60 and op.products == 60
    op = DenseOperator(A)
    assert hutchpp_trace(op, 62).num_products == 62 and op.products == 62  # 20 sketch, 20 + 22 probes
    assert len(hutchpp_trace(A, 62).samples) == 22
    assert hutchpp_trace(A, 3).stderr == math.inf
    assert xtrace(A, 2).stderr == math.inf and hutchinson_trace(A, 1).stderr == math.inf
    for estimator, too_small in ((xtrace, 1), (hutchpp_trace, 2), (hutchinson_trace, 0)):
        with pytest.raises(ValueError):
            estimator(A, too_small)


def test_hutchinson_independent_of_block_size_and_reproducible(network):
    A, _ = network
    state = torch.get_rng_state()
    reference = hutchinson_trace(A, 50, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    assert hutchinson_trace(A, 50, seed=4, block_size=7).samples == pytest.approx(
        reference.samples, rel=1e-13
    )
    assert hutchinson_trace(A, 50, seed=4) == reference
    assert hutchinson_trace(A, 50, seed=5).estimate != reference.estimate


def test_block_traces_share_probes(network):
    A, _ = network
    n = A.shape[0]
    bounds = [(0, 40), (40, 41), (41, 200), (200, n)]
    op = DenseOperator(A)
    results = block_traces(op, bounds, 64, seed=2)
    assert op.products == 64 and all(r.num_products == 64 for r in results)
    # Same probes as Hutchinson: the block estimates add up to its estimate exactly.
    total = hutchinson_trace(A, 64, seed=2).estimate
    assert sum(r.estimate for r in results) == pytest.approx(total, rel=1e-12)
    as_slices = block_traces(A, [slice(a, b) for a, b in bounds], 64, seed=2)
    assert [r.estimate for r in as_slices] == [r.estimate for r in results]
    exact = [float(A.diagonal()[a:b].sum()) for a, b in bounds]
    exact_results = block_traces(A, bounds, n)
    assert [r.estimate for r in exact_results] == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert all(r.stderr == 0.0 for r in exact_results)
    with pytest.raises(ValueError):
        block_traces(A, [(0, n + 1)], 10)


def test_block_traces_calibrated(network):
    A, _ = network
    bounds = [(0, 100), (100, 300)]
    exact = np.array([float(A.diagonal()[a:b].sum()) for a, b in bounds])
    runs = [block_traces(A, bounds, 40, seed=seed) for seed in range(30)]
    estimates = np.array([[r.estimate for r in run] for run in runs])
    stderrs = np.array([[r.stderr for r in run] for run in runs])
    spread = estimates.std(axis=0, ddof=1)
    assert np.all(np.abs(estimates.mean(axis=0) - exact) <= 4 * spread / math.sqrt(30))
    assert np.all((0.5 <= spread / stderrs.mean(axis=0)) & (spread / stderrs.mean(axis=0) <= 2.0))


def test_hutchinson_diagonal(network):
    A, _ = network
    n = A.shape[0]
    diagonal, stderr = hutchinson_diagonal(A, 100, seed=1)
    assert diagonal.shape == stderr.shape == (n,)
    z = ((diagonal - A.diagonal()) / stderr).numpy()
    assert abs(z.mean()) < 4 / math.sqrt(n) + 0.1 and 0.7 < z.std() < 1.4
    assert float(diagonal.sum()) == pytest.approx(hutchinson_trace(A, 100, seed=1).estimate, rel=1e-10)
    exact, zero = hutchinson_diagonal(A, n)
    assert torch.allclose(exact, A.diagonal(), rtol=0, atol=1e-16) and not zero.any()
    assert torch.allclose(exact_diagonal(A), A.diagonal(), rtol=0, atol=1e-16)


def test_float32_operator_close_to_float64(network):
    A, _ = network
    for method in ESTIMATORS:
        r64 = trace_estimate(A, method=method, num_products=60, seed=0)
        r32 = trace_estimate(DenseOperator(A.float()), method=method, num_products=60, seed=0)
        assert r32.estimate == pytest.approx(r64.estimate, rel=1e-5)
        assert r32.stderr == pytest.approx(r64.stderr, rel=1e-3)


def test_dispatcher_and_json(network):
    A, _ = network
    for method, estimator in ESTIMATORS.items():
        assert trace_estimate(A, method=method, num_products=30, seed=1) == estimator(A, 30, seed=1)
    with pytest.raises(ValueError):
        trace_estimate(A, method="girard", num_products=30)
    payload = json.loads(json.dumps(xtrace(A, 30).to_dict()))
    assert payload["method"] == "xtrace" and len(payload["samples"]) == 15
    assert json.loads(json.dumps(xtrace(A, 2).to_dict()))["stderr"] is None


@pytest.mark.parametrize("budget", [40, 400])
def test_xtrace_difference_equals_three_xtraces_with_one_seed_and_saves_products(network, budget):
    """tr A, tr B, tr(A - B) from one sketch: the numbers of xtrace on each with the same seed,
    for 3s products of each operator instead of 4s (B here is low-rank: XTrace's SVD branch)."""
    A, _ = network
    rng = np.random.default_rng(7)
    factor = torch.as_tensor(rng.standard_normal((A.shape[0], 6)))
    B = factor @ factor.T * 1e-3  # rank 6 < s
    a_op, b_op = DenseOperator(A), DenseOperator(B)
    tr_a, tr_b, tr_d = xtrace_difference(a_op, b_op, budget, seed=3)
    for got, matrix in ((tr_a, A), (tr_b, B), (tr_d, A - B)):
        want = xtrace(DenseOperator(matrix), budget, seed=3)
        assert math.isclose(got.estimate, want.estimate, rel_tol=1e-10), (got.estimate, want.estimate)
        np.testing.assert_allclose(got.samples or [], want.samples or [], rtol=1e-8, atol=1e-12)
    if budget < A.shape[0]:
        s = budget // 2
        assert a_op.products == 3 * s  # sketch, own second stage, the difference's second stage
        assert b_op.products == s + 6 + s  # its second stage needs only its rank
        none, *_ = xtrace_difference(DenseOperator(A), b_op, budget, seed=3, include_a=False)
        assert none is None
    else:
        assert tr_d.estimate == pytest.approx(float(torch.trace(A - B)), rel=1e-12)
    with pytest.raises(ValueError):
        xtrace_difference(a_op, DenseOperator(B[:10, :10]), budget)
