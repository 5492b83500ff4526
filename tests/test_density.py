"""Stochastic Lanczos quadrature against exact float64 spectra."""

import json
import math

import numpy as np
import pytest
import torch

from helpers import DEVICES
from landscape.curvature.density import SLQ_MODES, choose_slq_mode, slq, slq_memory
from landscape.curvature.eigen import seeded_generator
from landscape.curvature.linear_operator import DenseOperator
from landscape.curvature.trace import rademacher_vectors
from landscape.errors import UserError


def symmetric_with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a Haar-random orthogonal Q (numpy RNG: independent of the probes)."""
    rng = np.random.default_rng(30_000 + seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return torch.as_tensor((Q * eigenvalues) @ Q.T)


def network_spectrum(n: int = 400, seed: int = 0) -> np.ndarray:
    """Outliers, a positive bulk piled up near 0 and a cluster of negatives down to -1e-4."""
    rng = np.random.default_rng(seed)
    negatives = -9e-5 * rng.uniform(0, 1, n // 10)
    negatives[0] = -1e-4
    bulk = 0.02 * rng.uniform(0, 1, n - 5 - len(negatives)) ** 4
    return np.sort(np.concatenate([[0.126, 0.108, 0.091, 0.066, 0.045], negatives, bulk]))


@pytest.fixture(scope="module")
def network() -> tuple[torch.Tensor, np.ndarray]:
    spectrum = network_spectrum()
    return symmetric_with_spectrum(spectrum), spectrum


class CountingOperator(DenseOperator):
    """Counts ``matmat`` calls (not just products) to check the probes run in lockstep."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__(matrix)
        self.calls = 0

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super()._matmat(V)


def test_weights_nodes_and_cost(network):
    A, spectrum = network
    op = CountingOperator(A)
    density = slq(op, num_probes=6, num_steps=50, seed=0)
    assert density.nodes.shape == density.weights.shape == (6, 50)
    assert op.calls == 50 and op.products == density.num_products == 300
    assert torch.allclose(density.weights.sum(dim=1), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((density.weights >= 0).all())
    # Ritz values lie inside the spectrum; the extremes are found.
    assert spectrum[0] - 1e-15 <= density.lambda_min and density.lambda_max <= spectrum[-1] + 1e-15
    assert density.lambda_max == pytest.approx(spectrum[-1], rel=1e-10)
    # On the scale of the spectrum the node range matches; lambda_min = -1e-4 sits in a cluster
    # near 0 and needs many more steps to resolve to relative accuracy.
    width = spectrum[-1] - spectrum[0]
    assert abs(density.lambda_min - spectrum[0]) <= 1e-3 * width
    long_run = slq(A, num_probes=2, num_steps=200, seed=0)
    assert abs(long_run.lambda_min - spectrum[0]) <= 1e-2 * abs(spectrum[0])


def test_density_integrates_to_one(network):
    A, _ = network
    density = slq(A, num_probes=4, num_steps=40, seed=1)
    grid = density.default_grid(2000)
    assert float(grid[0]) < density.lambda_min and float(grid[-1]) > density.lambda_max
    assert float(torch.trapezoid(density.density(grid), grid)) == pytest.approx(1.0, abs=1e-6)
    wide = torch.linspace(-1.0, 1.0, 20001, dtype=torch.float64)
    assert float(torch.trapezoid(density.density(wide, sigma=0.05), wide)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        density.density(grid, sigma=0.0)


def test_smoothed_density_matches_exact(network):
    A, spectrum = network
    density = slq(A, num_probes=10, num_steps=40, seed=2)
    sigma = 0.005
    grid = torch.linspace(-0.02, 0.15, 1000, dtype=torch.float64)
    exact = torch.exp(-0.5 * ((grid[:, None] - torch.as_tensor(spectrum)) / sigma) ** 2).sum(dim=1) / (
        len(spectrum) * sigma * math.sqrt(2 * math.pi)
    )
    l1 = float(torch.trapezoid((density.density(grid, sigma) - exact).abs(), grid))
    assert l1 < 0.1


def test_trace_is_hutchinson_with_the_same_probes(network):
    A, spectrum = network
    n = A.shape[0]
    density = slq(A, num_probes=8, num_steps=30, seed=3)
    Z = rademacher_vectors(n, 8, seeded_generator(3))
    samples = (Z * (A @ Z)).sum(dim=0)
    assert density.trace == pytest.approx(float(samples.mean()), rel=1e-10)
    assert density.trace_stderr == pytest.approx(float(samples.std()) / math.sqrt(8), rel=1e-8)
    assert abs(density.trace - spectrum.sum()) <= 4 * density.trace_stderr


def test_trace_and_moments_calibrated(network):
    A, spectrum = network
    runs = [slq(A, num_probes=4, num_steps=20, seed=seed) for seed in range(30)]
    for order in (1, 2, 3):
        truth = float(np.mean(spectrum**order))
        estimates = np.array([run.moment(order)[0] for run in runs])
        stderrs = np.array([run.moment(order)[1] for run in runs])
        spread = estimates.std(ddof=1)
        assert abs(estimates.mean() - truth) <= 4 * spread / math.sqrt(len(runs))
        assert 0.5 <= spread / stderrs.mean() <= 2.0
    assert runs[0].moment(0) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_gauss_quadrature_is_exact_to_degree_2m_minus_1(network):
    A, _ = network
    n, steps = A.shape[0], 4
    density = slq(A, num_probes=3, num_steps=steps, seed=4)
    V = rademacher_vectors(n, 3, seeded_generator(4)) / math.sqrt(n)
    power = V
    for degree in range(1, 2 * steps):
        power = A @ power
        exact = (V * power).sum(dim=0)
        quadrature = density.moment_samples(degree)
        assert torch.allclose(quadrature, exact, rtol=1e-8, atol=0), degree


def test_small_operator_steps_capped_at_n():
    spectrum = np.array([-1.0, -0.25, 0.5, 2.0, 3.0])
    A = symmetric_with_spectrum(spectrum, seed=1)
    density = slq(A, num_probes=2, num_steps=50, seed=0)
    assert density.num_steps == 5 and density.num_products == 10
    # With m = n the nodes are the eigenvalues and the weights the squared overlaps (v . u_i)^2.
    eigenvalues, U = torch.linalg.eigh(A)
    V = rademacher_vectors(5, 2, seeded_generator(0)) / math.sqrt(5)
    overlaps = (U.T @ V).T ** 2
    assert torch.allclose(density.nodes, eigenvalues.expand(2, 5), rtol=0, atol=1e-12)
    assert torch.allclose(density.weights, overlaps, rtol=0, atol=1e-12)


def test_float32_operator_close_to_float64(network):
    A, _ = network
    d64 = slq(A, num_probes=4, num_steps=40, seed=5)
    d32 = slq(DenseOperator(A.float()), num_probes=4, num_steps=40, seed=5)
    assert d32.lambda_max == pytest.approx(d64.lambda_max, rel=1e-5)
    assert d32.trace == pytest.approx(d64.trace, rel=1e-5)
    grid = d64.default_grid(500)
    assert torch.allclose(d32.density(grid, 0.002), d64.density(grid, 0.002), rtol=0, atol=1e-2)


def test_reproducible_json_and_global_rng(network):
    A, _ = network
    state = torch.get_rng_state()
    first = slq(A, num_probes=3, num_steps=20, seed=6)
    assert torch.equal(state, torch.get_rng_state())
    again = slq(A, num_probes=3, num_steps=20, seed=6)
    assert torch.equal(first.nodes, again.nodes) and torch.equal(first.weights, again.weights)
    assert not torch.equal(first.nodes, slq(A, num_probes=3, num_steps=20, seed=7).nodes)
    payload = json.loads(json.dumps(first.to_dict()))
    assert payload["trace"] == pytest.approx(first.trace) and len(payload["nodes"]) == 3
    assert json.loads(json.dumps(slq(A, num_probes=1, num_steps=5).to_dict()))["trace_stderr"] is None
    with pytest.raises(ValueError):
        slq(A, num_probes=0)


def smoothed_exact(spectrum: np.ndarray, grid: torch.Tensor, sigma: float) -> np.ndarray:
    z = (grid.numpy()[:, None] - spectrum[None, :]) / sigma
    return np.exp(-0.5 * z**2).sum(axis=1) / len(spectrum) / (sigma * math.sqrt(2.0 * math.pi))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_modes_give_the_same_quadrature(network, dtype, device):
    """Lockstep, one probe at a time and the short recurrence without a basis: the same probes,
    the same tridiagonal matrices up to rounding, the same density and moments."""
    A, spectrum = network
    operator = DenseOperator(A.to(device=device, dtype=dtype))
    results = {mode: slq(operator, 6, 48, seed=2, mode=mode) for mode in SLQ_MODES[1:]}
    reference = results["lockstep"]
    grid, sigma = reference.default_grid(), reference.default_sigma()
    peak = float(reference.density(grid, sigma).max())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for mode, result in results.items():
        assert result.mode == mode and result.num_products == 6 * 48
        assert float((result.density(grid, sigma) - reference.density(grid, sigma)).abs().max()) <= tol * peak
        for order in (1, 2, 3, 6):
            assert result.moment(order)[0] == pytest.approx(reference.moment(order)[0], rel=10 * tol)
    exact = smoothed_exact(spectrum, grid, sigma)
    assert np.abs(results["recurrence"].density(grid, sigma).numpy() - exact).max() <= 0.05 * exact.max()


def test_short_recurrence_has_ghosts_but_the_right_density():
    """Strong outliers and many steps: without full reorthogonalisation the top eigenvalue
    reappears as ghost copies, whose weights add up to its own, so the density is unchanged."""
    rng = np.random.default_rng(0)
    spectrum = np.sort(np.concatenate([[50.0, 20.0, 10.0], rng.uniform(0, 1, 297) ** 3]))
    A = symmetric_with_spectrum(spectrum, seed=4)
    full = slq(A, 4, 150, seed=1, mode="lockstep")
    short = slq(A, 4, 150, seed=1, mode="recurrence")
    copies_full = (full.nodes > 49.99).sum(dim=1)
    copies_short = (short.nodes > 49.99).sum(dim=1)
    assert (copies_full == 1).all() and (copies_short >= 5).all()
    grid, sigma = full.default_grid(), full.default_sigma()
    assert float((short.density(grid, sigma) - full.density(grid, sigma)).abs().max()) <= 1e-10 * float(
        full.density(grid, sigma).max()
    )
    for order in (1, 2, 4, 8):
        assert short.moment(order)[0] == pytest.approx(full.moment(order)[0], rel=1e-10)


def test_auto_mode_follows_the_memory_budget(network):
    A, _ = network
    n, p, m = A.shape[0], 4, 20
    op = DenseOperator(A)
    need = {mode: slq_memory(n, p, m, 8, mode) for mode in SLQ_MODES[1:]}
    assert need["lockstep"] > need["sequential"] > need["recurrence"]
    assert slq(op, p, m, mode="auto").mode == "lockstep"  # plenty of memory here
    assert slq(op, p, m, mode="auto", memory_budget=need["lockstep"]).mode == "lockstep"
    assert slq(op, p, m, mode="auto", memory_budget=need["lockstep"] - 1).mode == "sequential"
    assert slq(op, p, m, mode="auto", memory_budget=need["sequential"] - 1).mode == "recurrence"
    with pytest.raises(UserError, match="density .* memory budget"):
        slq(op, p, m, mode="auto", memory_budget=need["recurrence"] - 1)
    float32 = slq_memory(n, p, m, 4, "lockstep")  # a float32 basis: half the bytes of the vectors
    assert float32 == need["lockstep"] - p * m * n * 4
    assert choose_slq_mode(n, p, m, 4, float32) == "lockstep"
    with pytest.raises(ValueError):
        slq(op, p, m, mode="fast")


def test_host_basis_gives_the_same_result(network):
    A, _ = network
    device = slq(A, 3, 30, seed=5, mode="lockstep")
    host = slq(A, 3, 30, seed=5, mode="lockstep", basis_device="host")
    assert torch.equal(device.nodes, host.nodes) and torch.equal(device.weights, host.weights)


def test_short_recurrence_holds_only_its_vectors_at_scale():
    """The recurrence holds its four float64 vectors and the product's, nothing of size [p, n]
    more: one probe at a time, drawn when its turn comes, and row operations in place (at 124M
    parameters each float64 vector is 1 GB)."""
    from landscape.curvature.linear_operator import LinearOperator
    from landscape.curvature.memory import torch_peak_bytes

    class Diagonal(LinearOperator):
        def __init__(self, d: torch.Tensor) -> None:
            super().__init__(d.numel(), d.dtype)
            self.d = d

        def _matmat(self, V: torch.Tensor) -> torch.Tensor:
            return self.d.unsqueeze(1) * V

    n = 200_000
    op = Diagonal(torch.linspace(-1.0, 2.0, n, dtype=torch.float32))
    found, peak = torch_peak_bytes(lambda: slq(op, 3, 6, seed=0, mode="recurrence"))
    products = 2 * 4 * n  # the operator's float32 input and output
    assert peak <= slq_memory(n, 3, 6, 4, "recurrence") + products + 64 * 1024
    assert found.num_products == 18
    exact = slq(op, 3, 6, seed=0, mode="sequential")  # same probes, 6 steps: no ghosts yet
    assert found.moment(2)[0] == pytest.approx(exact.moment(2)[0], rel=1e-8)
