"""RW-SAM against a float64 reference written from the paper's equations, and its norm estimate
against exact per-sample gradient norms (``torch.func.vmap``).

Luo, Harandi, Phung, Le 2025 (arXiv 2509.18001): ``p_i = softmax(lambda s)_i``,
``s_i = |f_i(theta + delta z) - f_i(theta)| / delta`` with a Rademacher z,
``eps = rho g_p / ||g_p||``, ``g_p = sum_i p_i grad f_i``, and the update gradient
``grad L_B(theta + eps)``. The references never call landscape.optim: the model is a function of
one flat parameter vector and the per-sample losses are written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import tiny_case
from landscape.optim import SAM, make_rule
from landscape.optim.rwsam import RWSAM, gibbs_weights

KINDS = ["mlp", "cnn", "lm"]
RHO = 0.07


def case(kind: str) -> tuple[nn.Module, Tensor, Tensor]:
    """A built-in float64 model (MLP, CNN, transformer) and a batch; the LM's samples count
    different numbers of targets (ignored ones)."""
    model, (x, y), _ = tiny_case(kind, seed=3, n=16 if kind == "lm" else 10)
    if kind == "lm":
        y = y.clone()
        y[0, :2] = -100
        y[2, 4] = -100
    return model, x, y


class Flat:
    """The model as a function of one flat parameter vector, with hand-written losses."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()

    def unflat(self, theta: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes, strict=True):
            k = math.prod(s)
            out[n] = theta[i : i + k].reshape(s)
            i += k
        return out

    def per_sample(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """f_i: sample i's mean cross-entropy over its counted targets."""
        z = torch.func.functional_call(self.model, self.unflat(theta), (x,))
        z2, y2 = z.reshape(-1, z.shape[-1]), y.reshape(-1)
        mask = (y2 != -100).to(z.dtype)
        logp = z2 - torch.logsumexp(z2, dim=1, keepdim=True)
        nll = -logp.gather(1, y2.clamp_min(0).unsqueeze(1)).squeeze(1) * mask
        return nll.reshape(len(y), -1).sum(1) / mask.reshape(len(y), -1).sum(1)

    def batch_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """L_B: the mean over every counted target of the batch."""
        counts = (y != -100).reshape(len(y), -1).sum(1).to(theta.dtype)
        return (self.per_sample(theta, x, y) * counts).sum() / counts.sum()

    def grad(self, fn, theta: Tensor) -> Tensor:
        t = theta.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(t), t)
        return g

    def per_sample_gradients(self, x: Tensor, y: Tensor) -> Tensor:
        """[B, P]: grad f_i for every sample (vmap over one-sample batches)."""

        def single(theta: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
            return self.per_sample(theta, xi.unsqueeze(0), yi.unsqueeze(0))[0]

        return torch.func.vmap(torch.func.grad(single), in_dims=(None, 0, 0))(self.theta, x, y)


def flat_grad(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


def step(rule, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    return step_with(rule, model, x, y, "cross_entropy")


def step_with(rule, model: nn.Module, x: Tensor, y: Tensor, loss_fn) -> tuple[Tensor, Tensor]:
    before = [p.detach().clone() for p in model.parameters()]
    storage = [p.data_ptr() for p in model.parameters()]
    loss = rule.compute_gradient(model, x, y, loss_fn=loss_fn)
    # theta back bit for bit, in the same storage (optimizers may hold on to it)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert [p.data_ptr() for p in model.parameters()] == storage
    return loss, flat_grad(model)


def close(a: Tensor, b: Tensor, rtol: float = 1e-9) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12 * max(1.0, float(b.abs().max())))


# ---------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("kind", KINDS)
def test_rwsam_against_float64_reference(kind):
    model, x, y = case(kind)
    flat = Flat(model)
    lam, delta = 4.0, 1e-5
    rule = RWSAM(rho=RHO, lambda_=lam, delta=delta, seed=5)
    loss, g = step(rule, model, x, y)
    z = torch.cat([t.reshape(-1) for t in rule.last_direction])
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    with torch.no_grad():
        s = (flat.per_sample(flat.theta + delta * z, x, y) - flat.per_sample(flat.theta, x, y)).abs() / delta
    p = torch.exp(lam * s - (lam * s).max())
    p = p / p.sum()
    g_p = flat.grad(lambda t: (p * flat.per_sample(t, x, y)).sum(), flat.theta)
    theta_eps = flat.theta + RHO * g_p / g_p.norm()
    close(g, flat.grad(lambda t: flat.batch_loss(t, x, y), theta_eps))
    close(loss, flat.batch_loss(flat.theta, x, y).detach())
    close(rule.last_norm_estimates, s, rtol=1e-7)
    close(rule.last_sample_weights, p, rtol=1e-6)
    assert float(p.max() / p.min()) > 1.5  # the weighting is not trivial here


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_lambda_zero_is_sam(kind):
    """Uniform weights: g_p is the batch gradient when the samples count alike."""
    model, x, y = case(kind)
    _, g = step(RWSAM(rho=RHO, lambda_=0.0), model, x, y)
    _, g_sam = step(SAM(rho=RHO), model, x, y)
    close(g, g_sam)


def test_lambda_zero_weights_samples_not_targets():
    """With ignored targets, lambda = 0 averages the per-sample means (the paper's f_B), which
    is not the batch mean over targets: g_p differs from SAM's g."""
    model, x, y = case("lm")
    flat = Flat(model)
    _, g = step(RWSAM(rho=RHO, lambda_=0.0), model, x, y)
    g_p = flat.grad(lambda t: flat.per_sample(t, x, y).mean(), flat.theta)
    close(g, flat.grad(lambda t: flat.batch_loss(t, x, y), flat.theta + RHO * g_p / g_p.norm()))
    _, g_sam = step(SAM(rho=RHO), model, x, y)
    assert not torch.allclose(g, g_sam, rtol=1e-6)


def test_samples_without_targets_get_no_weight():
    model, x, y = case("lm")
    y = y.clone()
    y[1] = -100
    rule = RWSAM(rho=RHO, lambda_=2.0)
    step(rule, model, x, y)
    weights = rule.last_sample_weights
    assert float(weights[1]) == 0.0 and float(weights.sum()) == pytest.approx(1.0, abs=1e-15)


def test_mse_and_a_callable_loss_agree():
    """Per-sample means of a callable come from one-sample slices, of mse from its elements."""
    model, (x, y), _ = tiny_case("mse", seed=2, n=9)
    _, g_builtin = step_with(RWSAM(rho=RHO, lambda_=3.0, seed=1), model, x, y, "mse")
    rule = RWSAM(rho=RHO, lambda_=3.0, seed=1)
    _, g_callable = step_with(rule, model, x, y, lambda o, t: F.mse_loss(o, t))
    close(g_callable, g_builtin)
    assert float(rule.last_sample_weights.max() / rule.last_sample_weights.min()) > 1.5


def test_gibbs_weights_are_a_shifted_softmax():
    scores = torch.tensor([1000.0, 1001.0, 0.0, 3.0], dtype=torch.float64)
    counted = torch.tensor([True, True, True, False])
    p = gibbs_weights(scores, counted, 1.0)
    expected = torch.softmax(scores[:3], 0)
    close(p[:3], expected)
    assert float(p[3]) == 0.0


# ----------------------------------------------------------------- the finite-difference norms
def test_estimate_is_the_directional_derivative_to_second_order():
    """s_i = |<grad f_i, z> + (delta / 2) z^T H_i z| + O(delta^2): the forward difference, with
    H_i sample i's Hessian (double-backward); s_i -> |<grad f_i, z>| as delta -> 0."""
    model, x, y = case("lm")
    flat = Flat(model)
    G = flat.per_sample_gradients(x, y)
    delta = 1e-5
    rule = RWSAM(rho=RHO, delta=delta, seed=1)
    step(rule, model, x, y)
    z = torch.cat([t.reshape(-1) for t in rule.last_direction])
    curvature = []
    for i in range(len(y)):
        t = flat.theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(flat.per_sample(t, x[i : i + 1], y[i : i + 1])[0], t, create_graph=True)
        (hz,) = torch.autograd.grad(g @ z, t)
        curvature.append(float(hz @ z))
    first = (G @ z).abs()
    second = (G @ z + 0.5 * delta * torch.tensor(curvature, dtype=torch.float64)).abs()
    scale = G.norm(dim=1)
    first_error = float(((rule.last_norm_estimates - first) / scale).abs().max())
    second_error = float(((rule.last_norm_estimates - second) / scale).abs().max())
    assert 1e-4 < first_error < 1e-2  # the O(delta) term (z^T H_i z grows with the dimension)
    assert second_error < first_error / 100


@pytest.mark.parametrize("kind", ["mlp", "lm"])
def test_estimate_statistics_over_random_directions(kind):
    """What the estimate estimates, over the rule's own Rademacher draws.

    With X = <g, z>: E[X^2] = ||g||^2 exactly (the square is unbiased; Var[X^2] = 2 ||g||^4 -
    2 sum_j g_j^4), and E|X| lies in [||g|| / sqrt(2), ||g||] (Khintchine-Szarek), near
    sqrt(2/pi) ||g|| for a gradient spread over many coordinates: |X| itself is not ||g||."""
    model, x, y = case(kind)
    G = Flat(model).per_sample_gradients(x, y)
    norms = G.norm(dim=1)
    rule = RWSAM(rho=RHO, delta=1e-7, seed=11)
    draws = 500
    samples = []
    for _ in range(draws):
        rule.compute_gradient(model, x, y)
        samples.append(rule.last_norm_estimates.clone())
    S = torch.stack(samples)  # [draws, B]
    squares = S**2
    mean_sq = squares.mean(0)
    se_sq = squares.std(0) / math.sqrt(draws)
    assert bool(((mean_sq - norms**2).abs() <= 4 * se_sq).all()), mean_sq / norms**2
    mean_abs = S.mean(0) / norms
    se_abs = S.std(0) / math.sqrt(draws) / norms
    assert bool((mean_abs >= 1 / math.sqrt(2) - 4 * se_abs).all())
    assert bool((mean_abs <= 1 + 4 * se_abs).all())
    # biased: on average over the samples the ratio is near the Gaussian sqrt(2/pi), not 1
    assert float(mean_abs.mean()) == pytest.approx(math.sqrt(2 / math.pi), abs=0.05)
    assert float(mean_abs.mean()) < 1 - 4 * float(se_abs.max())


# ---------------------------------------------------------------------- randomness and state
def test_direction_is_seeded_fresh_each_step_and_resumes():
    model, x, y = case("mlp")
    a, b = RWSAM(seed=3), RWSAM(seed=3)
    step(a, model, x, y)
    first = [t.clone() for t in a.last_direction]
    step(b, model, x, y)
    assert all(torch.equal(u, v) for u, v in zip(first, b.last_direction, strict=True))
    step(a, model, x, y)
    assert not all(torch.equal(u, v) for u, v in zip(first, a.last_direction, strict=True))
    resumed = RWSAM(seed=99)
    resumed.load_state_dict(b.state_dict())
    step(b, model, x, y)
    step(resumed, model, x, y)
    assert all(torch.equal(u, v) for u, v in zip(b.last_direction, resumed.last_direction, strict=True))
    assert torch.equal(b.last_sample_weights, resumed.last_sample_weights)


def test_dropout_masks_are_replayed_in_the_finite_difference_pass():
    """With dropout, f_i(theta + delta z) - f_i(theta) is a derivative only if both passes drop
    the same units: both passes use the masks drawn from the RNG state the call started with."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double().train()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    flat = Flat(model)
    rule = RWSAM(rho=RHO, delta=1e-6)
    state = torch.random.get_rng_state()
    rule.compute_gradient(model, x, y)
    z = torch.cat([t.reshape(-1) for t in rule.last_direction])
    with torch.no_grad():
        torch.random.set_rng_state(state)
        f0 = flat.per_sample(flat.theta, x, y)
        torch.random.set_rng_state(state)
        f1 = flat.per_sample(flat.theta + 1e-6 * z, x, y)
    close(rule.last_norm_estimates, (f1 - f0).abs() / 1e-6, rtol=1e-6)
    assert float(rule.last_norm_estimates.max()) < 100.0  # a derivative, not (mask change) / delta


def test_options_reach_the_rule_and_are_validated():
    rule = make_rule("rwsam", lambda_=2.5, delta=1e-3, rho=0.1)
    assert (rule.lambda_, rule.delta, rule.rho) == (2.5, 1e-3, 0.1)
    with pytest.raises(ValueError, match="lambda"):
        RWSAM(lambda_=-1.0)
    with pytest.raises(ValueError, match="delta"):
        RWSAM(delta=0.0)


def test_command_line_flags_lambda_and_delta(tmp_path, capsys):
    """``--lambda`` (the field ``lambda_``: lambda is a Python keyword) and ``--delta`` reach
    config.json and the rule; they are validated and refused by methods that do not take them."""
    import json

    from cli.main import main

    fast = ["train", "--model", "mlp", "--steps", "2", "--batch-size", "16", "--checkpoint-every", "0"]
    out = tmp_path / "run"
    code = main([*fast, "--method", "rwsam", "--lambda", "0.5", "--delta", "0.001", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["lambda_"] == 0.5 and config["delta"] == 0.001 and "temperature" not in config
    capsys.readouterr()
    assert main([*fast, "--method", "sam", "--lambda", "0.5", "--out", str(tmp_path / "b")]) != 0
    assert "error: --lambda is not used by method sam" in capsys.readouterr().err
    assert main([*fast, "--method", "rwsam", "--delta", "0", "--out", str(tmp_path / "c")]) != 0
    assert "error: --delta must be a positive number, got 0.0" in capsys.readouterr().err


def test_parameters_come_back_when_a_pass_fails():
    class Fails(nn.Module):
        def __init__(self, inner: nn.Module, at: int) -> None:
            super().__init__()
            self.inner, self.at, self.calls = inner, at, 0

        def forward(self, x: Tensor) -> Tensor:
            self.calls += 1
            if self.calls == self.at:
                raise RuntimeError("boom")
            return self.inner(x)

    for at in (1, 3):  # the finite-difference pass, the pass at theta + eps
        model, x, y = case("mlp")
        wrapped = Fails(model, at)
        before = [(p.detach().clone(), p.data_ptr()) for p in model.parameters()]
        with pytest.raises(RuntimeError, match="boom"):
            RWSAM(rho=RHO).compute_gradient(wrapped, x, y)
        for (value, pointer), p in zip(before, model.parameters(), strict=True):
            assert torch.equal(value, p) and p.data_ptr() == pointer
