"""SGLD and fSGLD against closed-form Gaussian facts, and bit-exact resumption of noisy runs."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.optim import FSGLD, SGLD, SharpnessAwareOptimizer, fsgld_sigma


def test_sgld_stationary_variance_is_one_over_beta_curvature():
    """On U = sum_j a_j theta_j^2 / 2 every coordinate is an AR(1) chain; its stationary variance is
    1 / (beta a (1 - lr a / 2)) -> 1 / (beta a) as lr -> 0 (Gibbs measure exp(-beta U))."""
    chains, beta, lr = 30_000, 50.0, 0.008
    curvatures = torch.tensor([1.0, 2.5], dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(2, chains, dtype=torch.float64))
    decayed = nn.Parameter(torch.zeros(chains, dtype=torch.float64))  # U = 0: curvature = weight decay
    weight_decay = 1.5
    opt = SGLD(
        [{"params": [theta]}, {"params": [decayed], "weight_decay": weight_decay}], lr=lr, beta=beta, seed=3
    )
    for _ in range(1_800):  # > 14 relaxation times 1/(lr a) of the slowest coordinate
        theta.grad = curvatures[:, None] * theta.detach()
        decayed.grad = torch.zeros_like(decayed)
        opt.step()
    sampling_error = math.sqrt(2.0 / chains)  # relative std of a variance estimate from N Gaussians
    for values, a in [(theta[0], 1.0), (theta[1], 2.5), (decayed, weight_decay)]:
        measured = float(values.detach().var())
        discrete = 1.0 / (beta * a * (1.0 - lr * a / 2.0))
        assert measured == pytest.approx(discrete, rel=4 * sampling_error)
        assert measured == pytest.approx(1.0 / (beta * a), rel=4 * sampling_error + lr * a)
        assert abs(float(values.detach().mean())) < 4 * math.sqrt(discrete / chains)


def test_sgld_without_noise_is_sgd():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(5))
    b.data.copy_(a.data)
    sgld = SGLD([a], lr=0.1, beta=math.inf, weight_decay=0.01)
    sgd = torch.optim.SGD([b], lr=0.1, weight_decay=0.01)
    for _ in range(3):
        a.grad = a.detach() ** 2
        b.grad = b.detach() ** 2
        sgld.step()
        sgd.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class Identity(nn.Module):
    """A 'model' whose output is its parameter vector (the inputs are ignored)."""

    def __init__(self, theta: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.theta


def sample_fsgld_gradients(model: nn.Module, loss_fn, rule: FSGLD, n: int) -> Tensor:
    x = torch.zeros(1)
    before = model.theta.detach().clone()
    grads = []
    for _ in range(n):
        rule.compute_gradient(model, x, x, loss_fn=loss_fn)
        grads.append(model.theta.grad.clone())
        assert torch.equal(model.theta.detach(), before)  # restored bit for bit
    return torch.stack(grads)


def test_fsgld_gradient_on_quadratic_has_mean_a_theta_and_covariance_sigma2_a2():
    """U = theta^T A theta / 2 + b^T theta: grad U(theta + e) = A theta + b + A e, e ~ N(0, sigma^2 I),
    so its mean is A theta + b and its covariance sigma^2 A^2."""
    gen = torch.Generator().manual_seed(1)
    d, n, sigma = 3, 4_000, 0.2
    Q = torch.randn(d, d, generator=gen, dtype=torch.float64)
    A = Q @ Q.T + torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    theta = torch.randn(d, generator=gen, dtype=torch.float64)
    model = Identity(theta)

    def potential(out: Tensor, _: Tensor) -> Tensor:
        return 0.5 * out @ A @ out + b @ out

    grads = sample_fsgld_gradients(model, potential, FSGLD(sigma=sigma, seed=5), n)
    mean = A @ theta + b
    cov = sigma**2 * A @ A
    standard_error = (cov.diagonal() / n).sqrt()
    assert ((grads.mean(0) - mean).abs() < 4 * standard_error).all()
    measured = torch.cov(grads.T)
    cov_error = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((measured - cov).abs() < 4.5 * cov_error).all()


def test_fsgld_gradient_on_quartic_includes_the_smoothing_term():
    """U = sum theta^4 / 4: E (theta + e)^3 = theta^3 + 3 sigma^2 theta, the gradient of the smoothed
    potential E U(theta + e) (whose Hessian-trace term is what fSGLD regularises)."""
    theta = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    sigma, n = 0.3, 4_000
    grads = sample_fsgld_gradients(
        Identity(theta), lambda out, _: (out**4).sum() / 4, FSGLD(sigma=sigma, seed=2), n
    )
    mean = theta**3 + 3 * sigma**2 * theta
    s2 = sigma**2
    sixth = theta**6 + 15 * theta**4 * s2 + 45 * theta**2 * s2**2 + 15 * s2**3
    standard_error = ((sixth - mean**2) / n).sqrt()
    assert ((grads.mean(0) - mean).abs() < 4 * standard_error).all()
    assert ((grads.mean(0) - theta**3).abs() > 8 * standard_error).all()  # the sigma^2 term is visible


def test_fsgld_sigma_coupling():
    beta = 1e4
    assert fsgld_sigma(beta) == pytest.approx(beta ** (-1.01 / 4))
    # beta = 1e8, eta = 0.01: sigma = 1e8 ** (-1.01 / 4) (Bruno, Hwang, An, Sabanis & Lim 2025, arXiv 2510.02174)
    assert fsgld_sigma(1e-8**-1, eta=0.01) == pytest.approx(9.55e-3, rel=1e-3)
    opt = SGLD([nn.Parameter(torch.zeros(1))], lr=0.1, beta=beta)
    assert FSGLD().current_sigma(opt) == pytest.approx(fsgld_sigma(beta))
    assert FSGLD(beta=100.0, eta=0.5).current_sigma() == pytest.approx(100.0 ** (-1.5 / 4))
    assert FSGLD(sigma=0.3, beta=100.0).current_sigma() == 0.3
    with pytest.raises(ValueError):
        FSGLD().current_sigma(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    # the perturbation really has the coupled scale: with A = I the gradient is theta + e
    grads = sample_fsgld_gradients(
        Identity(torch.zeros(2000, dtype=torch.float64)), lambda o, _: 0.5 * (o**2).sum(), FSGLD(beta=beta), 1
    )
    assert float(grads.std()) == pytest.approx(fsgld_sigma(beta), rel=4 * math.sqrt(1 / 4000))


def _mlp_problem() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def test_fsgld_sgld_resume_is_bit_exact():
    model, x, y = _mlp_problem()
    reference = copy.deepcopy(model)

    def fresh(m: nn.Module) -> tuple[FSGLD, SGLD]:
        return FSGLD(sigma=0.05, seed=9), SGLD(m.parameters(), lr=0.05, beta=1e3, seed=4)

    rule, opt = fresh(reference)
    for _ in range(6):
        rule.compute_gradient(reference, x, y, optimizer=opt)
        opt.step()

    rule, opt = fresh(model)
    for _ in range(3):
        rule.compute_gradient(model, x, y, optimizer=opt)
        opt.step()
    checkpoint = _save({"model": model.state_dict(), "opt": opt.state_dict(), "rule": rule.state_dict()})
    for _ in range(2):  # steps after the checkpoint that are thrown away
        rule.compute_gradient(model, x, y, optimizer=opt)
        opt.step()

    state = _load(checkpoint)
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(state["model"])
    rule, opt = fresh(resumed)
    rule.load_state_dict(state["rule"])
    opt.load_state_dict(state["opt"])
    for _ in range(3):
        rule.compute_gradient(resumed, x, y, optimizer=opt)
        opt.step()
    for p, q in zip(resumed.parameters(), reference.parameters()):
        assert torch.equal(p, q)


def test_wrapper_with_sgld_resumes_bit_exactly_and_accepts_a_closure():
    model, x, y = _mlp_problem()
    twin = copy.deepcopy(model)
    opt = SharpnessAwareOptimizer(model, SGLD, rule="fsgld", lr=0.05, beta=1e3, seed=1)
    for _ in range(2):
        opt.step(inputs=x, targets=y)
    checkpoint = _save({"model": model.state_dict(), "opt": opt.state_dict()})
    opt.step(inputs=x, targets=y)

    state = _load(checkpoint)
    twin.load_state_dict(state["model"])
    opt_twin = SharpnessAwareOptimizer(twin, "sgld", rule="fsgld", lr=0.05, beta=1e3, seed=1)
    opt_twin.load_state_dict(state["opt"])

    def closure() -> Tensor:
        loss = F.cross_entropy(twin(x), y)
        loss.backward()
        return loss

    opt_twin.step(closure)  # the same draws as the batch call: identical parameters
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
