"""Gradient rules against independent float64 references built in this file.

The references never call landscape.optim: the model is a function of one flat parameter vector
(``torch.func.functional_call``), the cross-entropy, its output gradient r = dL/dF and the
per-sample losses are written out by hand, Jacobians are explicit ``[outputs, params]`` matrices.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.optim import (
    ASAM,
    MSAM,
    RULES,
    SAM,
    AngleSAM,
    FunctionalSAM,
    LogitSAM,
    PlainGradient,
    PrecondFunctionalSAM,
    PrecondSAM,
    SharpnessAwareOptimizer,
    m_sharpness,
    make_base_optimizer,
    make_rule,
)

RTOL, ATOL = 1e-9, 1e-12


# ----------------------------------------------------------------------------------- tiny models
class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 5, hidden: int = 6, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


class TinyLM(nn.Module):
    """One pre-LayerNorm causal self-attention block with a tanh MLP; logits [B, T, V]."""

    def __init__(self, vocab: int = 7, d: int = 8, seq: int = 5, hidden: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.3 * torch.randn(seq, d))
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        h = self.embed(idx) + self.pos[:T]
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        h = h + self.proj(att @ v)
        h = h + self.fc2(torch.tanh(self.fc1(self.ln2(h))))
        return self.head(self.ln_f(h))


def make_case(kind: str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 100)
    if kind == "mlp":
        model = TinyMLP().double()
        x = torch.randn(8, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=g)
    else:
        model = TinyLM().double()
        x = torch.randint(0, 7, (4, 5), generator=g)
        y = torch.randint(0, 7, (4, 5), generator=g)
        y[0, :2] = -100  # ignored targets: uneven counts per sample
        y[2, 4] = -100
    return model, x, y


# ------------------------------------------------------------------------------ references
def ce_loss(z: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy over counted targets, written out."""
    z2, y2 = z.reshape(-1, z.shape[-1]), y.reshape(-1)
    mask = (y2 != -100).to(z.dtype)
    logp = z2 - torch.logsumexp(z2, dim=1, keepdim=True)
    picked = logp.gather(1, y2.clamp_min(0).unsqueeze(1)).squeeze(1)
    return -(picked * mask).sum() / mask.sum()


def ce_residual(z: Tensor, y: Tensor) -> Tensor:
    """r = dL/dz = (softmax(z) - onehot(y)) / N on counted targets, 0 on ignored ones."""
    z2, y2 = z.reshape(-1, z.shape[-1]), y.reshape(-1)
    mask = (y2 != -100).to(z.dtype)
    p = torch.exp(z2 - torch.logsumexp(z2, dim=1, keepdim=True))
    onehot = torch.zeros_like(p).scatter_(1, y2.clamp_min(0).unsqueeze(1), 1.0)
    return ((p - onehot) * mask.unsqueeze(1) / mask.sum()).reshape(z.shape)


def ce_per_sample(z: Tensor, y: Tensor) -> Tensor:
    """l_i: the mean cross-entropy over sample i's counted targets (shape [B])."""
    B = y.shape[0]
    z2, y2 = z.reshape(-1, z.shape[-1]), y.reshape(-1)
    mask = (y2 != -100).to(z.dtype)
    logp = z2 - torch.logsumexp(z2, dim=1, keepdim=True)
    nll = -logp.gather(1, y2.clamp_min(0).unsqueeze(1)).squeeze(1) * mask
    return nll.reshape(B, -1).sum(1) / mask.reshape(B, -1).sum(1)


class Flat:
    """The model as a function of one flat float64 parameter vector."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()

    def unflat(self, theta: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = math.prod(s)
            out[n] = theta[i : i + k].reshape(s)
            i += k
        return out

    def outputs(self, theta: Tensor, x: Tensor) -> Tensor:
        return torch.func.functional_call(self.model, self.unflat(theta), (x,))

    def grad(self, fn, theta: Tensor) -> Tensor:
        t = theta.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(t), t)
        return g

    def loss_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.grad(lambda t: ce_loss(self.outputs(t, x), y), theta)

    def jacobian(self, theta: Tensor, x: Tensor) -> Tensor:
        return torch.autograd.functional.jacobian(lambda t: self.outputs(t, x).reshape(-1), theta.detach())

    def residual(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return ce_residual(self.outputs(theta, x), y).reshape(-1)

    def ascent(self, theta: Tensor, x: Tensor, y: Tensor, rho: float) -> Tensor:
        g = self.loss_grad(theta, x, y)
        return theta + rho * g / g.norm()


def rule_grad(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


def run_rule(rule, model, x, y, **kw) -> tuple[Tensor, Tensor]:
    before = [p.detach().clone() for p in model.parameters()]
    loss = rule.compute_gradient(model, x, y, **kw)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach()), "parameters not restored bit for bit"
    return loss, rule_grad(model)


def close(a: Tensor, b: Tensor, rtol: float = RTOL) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=ATOL * max(1.0, float(b.abs().max())))


KINDS = ["mlp", "lm"]
RHO = 0.07


# ------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize("kind", KINDS)
def test_plain_gradient_and_loss(kind):
    model, x, y = make_case(kind)
    flat = Flat(model)
    loss, g = run_rule(PlainGradient("adamw"), model, x, y)
    close(g, flat.loss_grad(flat.theta, x, y))
    close(loss, ce_loss(flat.outputs(flat.theta, x), y).detach())


@pytest.mark.parametrize("kind", KINDS)
def test_sam_is_gradient_at_ascent_point(kind):
    model, x, y = make_case(kind)
    flat = Flat(model)
    loss, g = run_rule(SAM(rho=RHO), model, x, y)
    close(g, flat.loss_grad(flat.ascent(flat.theta, x, y, RHO), x, y))
    close(loss, ce_loss(flat.outputs(flat.theta, x), y).detach())


@pytest.mark.parametrize("kind", KINDS)
def test_functional_sam_against_explicit_jacobian(kind):
    model, x, y = make_case(kind)
    flat = Flat(model)
    _, g = run_rule(FunctionalSAM(rho=RHO), model, x, y)
    J_pert = flat.jacobian(flat.ascent(flat.theta, x, y, RHO), x)
    reference = J_pert.T @ flat.residual(flat.theta, x, y)
    close(g, reference)
    # and it is not SAM: the logit path is missing
    sam_ref = flat.loss_grad(flat.ascent(flat.theta, x, y, RHO), x, y)
    assert (g - sam_ref).norm() > 1e-4 * sam_ref.norm()


@pytest.mark.parametrize("kind", KINDS)
def test_logit_sam_against_explicit_jacobian(kind):
    model, x, y = make_case(kind)
    flat = Flat(model)
    _, g = run_rule(LogitSAM(rho=RHO), model, x, y)
    reference = flat.jacobian(flat.theta, x).T @ flat.residual(flat.ascent(flat.theta, x, y, RHO), x, y)
    close(g, reference)


@pytest.mark.parametrize("kind", KINDS)
def test_angle_sam_endpoints_and_interior(kind):
    model, x, y = make_case(kind)
    _, func = run_rule(FunctionalSAM(rho=RHO), model, x, y)
    _, logit = run_rule(LogitSAM(rho=RHO), model, x, y)
    _, plain = run_rule(PlainGradient(), model, x, y)
    _, at0 = run_rule(AngleSAM(rho=RHO, phi=0.0), model, x, y)
    _, at90 = run_rule(AngleSAM(rho=RHO, phi=math.pi / 2), model, x, y)
    close(at0, func)
    close(at90, logit)
    phi = 0.7
    _, mid = run_rule(AngleSAM(rho=RHO, phi=phi), model, x, y)
    close(mid, plain + math.sin(phi) * (logit - plain) + math.cos(phi) * (func - plain))


def test_asam_scales_weight_tensors_only():
    model, x, y = make_case("mlp")
    flat = Flat(model)
    rho, eta = 0.5, 0.01
    _, g = run_rule(ASAM(rho=rho, eta=eta), model, x, y)
    theta = flat.theta
    T = torch.cat(
        [
            (theta_part.abs() + eta) if "weight" in n else torch.ones_like(theta_part)
            for n, theta_part in zip(flat.names, [v.reshape(-1) for v in flat.unflat(theta).values()])
        ]
    )
    grad0 = flat.loss_grad(theta, x, y)
    e = rho * T**2 * grad0 / (T * grad0).norm()
    close(g, flat.loss_grad(theta + e, x, y))


@pytest.mark.parametrize("kind", KINDS)
def test_precond_rules_use_hand_computed_adam_denominator(kind):
    model, x, y = make_case(kind)
    beta1, beta2, eps_adam = 0.9, 0.95, 1e-8
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(beta1, beta2), eps=eps_adam, weight_decay=0.1)
    rho = 2e-4

    # before Adam's first step M = 1: precond-SAM is SAM
    _, g_first = run_rule(PrecondSAM(rho=rho), model, x, y, optimizer=opt)
    _, g_sam = run_rule(SAM(rho=rho), model, x, y)
    close(g_first, g_sam)

    # three real AdamW steps on other batches; v is replayed by hand from the recorded gradients
    v = None
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        xb = torch.randn(x.shape, generator=gen, dtype=x.dtype) if x.is_floating_point() else x.roll(1, 0)
        opt.zero_grad()
        F.cross_entropy(
            model(xb).reshape(-1, model(xb).shape[-1]), y.reshape(-1), ignore_index=-100
        ).backward()
        gt = rule_grad(model).clone()
        v = (1 - beta2) * gt**2 if v is None else beta2 * v + (1 - beta2) * gt**2
        opt.step()
    M = (v / (1 - beta2**3)).sqrt() + eps_adam

    flat = Flat(model)
    grad0 = flat.loss_grad(flat.theta, x, y)
    e = rho * (grad0 / grad0.norm()) / M
    _, g = run_rule(PrecondSAM(rho=rho), model, x, y, optimizer=opt)
    close(g, flat.loss_grad(flat.theta + e, x, y))
    _, g_func = run_rule(PrecondFunctionalSAM(rho=rho), model, x, y, optimizer=opt)
    close(g_func, flat.jacobian(flat.theta + e, x).T @ flat.residual(flat.theta, x, y))
    # the preconditioned perturbation is much longer than rho: rho lives on another scale
    assert e.norm() > 10 * rho


def test_precond_needs_an_adam_optimizer():
    model, x, y = make_case("mlp")
    with pytest.raises(ValueError, match="optimizer"):
        PrecondSAM().compute_gradient(model, x, y)
    with pytest.raises(TypeError, match="Adam"):
        PrecondSAM().compute_gradient(model, x, y, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("kind", KINDS)
def test_msam_against_loop(kind):
    model, x, y = make_case(kind)
    flat = Flat(model)
    m = 3
    B = x.shape[0]
    reference = torch.zeros_like(flat.theta)
    loss_ref = 0.0
    for start in range(0, B, m):
        xc, yc = x[start : start + m], y[start : start + m]
        n = xc.shape[0]
        reference += (n / B) * flat.loss_grad(flat.ascent(flat.theta, xc, yc, RHO), xc, yc)
        loss_ref += (n / B) * float(ce_loss(flat.outputs(flat.theta, xc), yc))
    loss, g = run_rule(MSAM(rho=RHO, m=m), model, x, y)
    close(g, reference)
    assert float(loss) == pytest.approx(loss_ref, rel=1e-12)
    # m >= B is SAM
    _, g_full = run_rule(MSAM(rho=RHO, m=B), model, x, y)
    _, g_sam = run_rule(SAM(rho=RHO), model, x, y)
    close(g_full, g_sam)


def test_mse_and_callable_losses():
    torch.manual_seed(4)
    model = TinyMLP(classes=2).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)
    flat = Flat(model)

    def mse(t: Tensor) -> Tensor:
        return ((flat.outputs(t, x) - y) ** 2).mean()

    g0 = flat.grad(mse, flat.theta)
    reference = flat.grad(mse, flat.theta + RHO * g0 / g0.norm())
    _, g = run_rule(SAM(rho=RHO), model, x, y, loss_fn="mse")
    close(g, reference)
    _, g_callable = run_rule(SAM(rho=RHO), model, x, y, loss_fn=lambda o, t: ((o - t) ** 2).mean())
    close(g_callable, reference)
    # func-sam with mse: r = 2 (f - y) / N
    _, g_func = run_rule(FunctionalSAM(rho=RHO), model, x, y, loss_fn="mse")
    with torch.no_grad():
        r = (2 * (flat.outputs(flat.theta, x) - y) / y.numel()).reshape(-1)
    close(g_func, flat.jacobian(flat.theta + RHO * g0 / g0.norm(), x).T @ r)


@pytest.mark.parametrize("wrap", ["tuple", "dict", "attr"])
def test_model_output_containers(wrap):
    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = self.inner(x)
            if wrap == "tuple":
                return (z, None)
            if wrap == "dict":
                return {"aux": 0, "logits": z}
            return type("Out", (), {"logits": z})()

    model, x, y = make_case("mlp")
    _, g_ref = run_rule(FunctionalSAM(rho=RHO), model, x, y)
    _, g = run_rule(FunctionalSAM(rho=RHO), Wrapped(model), x, y)
    close(g, g_ref)


# ---------------------------------------------------------------------- dropout and BatchNorm
@pytest.mark.parametrize("name", ["sam", "func-sam", "logit-sam", "angle-sam", "rwsam"])
def test_dropout_masks_are_replayed(name):
    """At rho = 0 the perturbed pass sits at theta: its result is g only if the masks match."""
    torch.manual_seed(0)
    model = TinyMLP(dropout=0.5).double().train()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    torch.manual_seed(11)
    PlainGradient().compute_gradient(model, x, y)
    plain = rule_grad(model).clone()
    after_plain = torch.random.get_rng_state()
    torch.manual_seed(11)
    make_rule(name, rho=0.0).compute_gradient(model, x, y)
    close(rule_grad(model), plain)
    # the rule consumed exactly one pass worth of random numbers, like the plain step
    assert torch.equal(torch.random.get_rng_state(), after_plain)


@pytest.mark.parametrize("name", ["sam", "func-sam", "angle-sam", "msam", "rwsam", "precond-sam"])
def test_batchnorm_statistics_updated_by_clean_pass_only(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double().train()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        if name == "msam":  # one update per micro-batch of the clean passes
            for start in range(0, 12, 4):
                reference(x[start : start + 4])
        else:
            reference(x)
    opt = torch.optim.AdamW(model.parameters())
    rule = make_rule(name, rho=0.1, m=4) if name == "msam" else make_rule(name, rho=0.1)
    rule.compute_gradient(model, x, y, optimizer=opt)
    bn, bn_ref = model[1], reference[1]
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked)


# ---------------------------------------------------------------------------- m-sharpness
def test_m_sharpness_against_loop_and_leaves_model_alone():
    model, x, y = make_case("lm")
    flat = Flat(model)
    rho = 0.05
    expected = {}
    for m in (1, 3, 4):
        total = 0.0
        for start in range(0, x.shape[0], m):
            xc, yc = x[start : start + m], y[start : start + m]
            theta_c = flat.ascent(flat.theta, xc, yc, rho)
            with torch.no_grad():
                clean = ce_loss(flat.outputs(flat.theta, xc), yc)
                pert = ce_loss(flat.outputs(theta_c, xc), yc)
            total += xc.shape[0] * float(pert - clean)
        expected[m] = total / x.shape[0]
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.random.get_rng_state()
    got = m_sharpness(model, x, y, "cross_entropy", rho, [1, 3, 4])
    assert set(got) == {1, 3, 4}
    for m in expected:
        assert got[m] == pytest.approx(expected[m], rel=1e-9, abs=1e-14)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert got[1] > got[4] > 0  # smaller micro-batches are sharper here (first order: rho ||g_c||)


# ------------------------------------------------------------------ schedule, registry, state
def test_rho_warmup_and_schedule():
    model, x, y = make_case("mlp")
    rule = SAM(rho=0.3, rho_warmup=3)
    seen = []
    for _ in range(5):
        seen.append(rule.current_rho())
        rule.compute_gradient(model, x, y)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    scheduled = FunctionalSAM(rho=1.0, rho_schedule=lambda t: 0.01 * t)
    scheduled.step = 4
    assert scheduled.current_rho() == pytest.approx(0.04)
    # the warm-up really changes the gradient: step 0 uses rho/3
    flat = Flat(model)
    fresh = SAM(rho=0.3, rho_warmup=3)
    _, g = run_rule(fresh, model, x, y)
    close(g, flat.loss_grad(flat.ascent(flat.theta, x, y, 0.1), x, y))


def test_registry_and_factory():
    assert set(RULES) == {
        "sgd",
        "adamw",
        "sam",
        "asam",
        "msam",
        "func-sam",
        "logit-sam",
        "angle-sam",
        "precond-sam",
        "precond-func-sam",
        "rwsam",
        "sgld",
        "fsgld",
        "lora",
        "fmlora",
        "efmlora",
    }
    for name, spec in RULES.items():
        rule = make_rule(name, sigma=0.01) if name == "fsgld" else make_rule(name)
        assert rule.name == name
        assert spec.description and spec.cost and spec.base_optimizer in ("sgd", "adamw", "sgld")
    assert make_rule("angle-sam", phi=0.3, rho=None).phi == 0.3  # None options are dropped
    assert make_rule("msam", m=4).m == 4
    with pytest.raises(ValueError, match="unknown rule"):
        make_rule("nope")
    with pytest.raises(TypeError, match="does not take"):
        make_rule("sam", phi=0.1)
    assert isinstance(
        make_base_optimizer("adamw", [nn.Parameter(torch.zeros(2))], lr=1e-3), torch.optim.AdamW
    )


def test_state_dict_round_trip():
    rule = SAM(rho=0.1, rho_warmup=10)
    model, x, y = make_case("mlp")
    for _ in range(3):
        rule.compute_gradient(model, x, y)
    other = SAM(rho=0.1, rho_warmup=10)
    other.load_state_dict(rule.state_dict())
    assert other.step == 3 and other.current_rho() == rule.current_rho()
    with pytest.raises(ValueError):
        FunctionalSAM().load_state_dict(rule.state_dict())


# ---------------------------------------------------------------------------- the wrapper
def test_wrapper_one_call_equals_rule_then_adamw():
    model, x, y = make_case("lm")
    twin = copy.deepcopy(model)
    opt = SharpnessAwareOptimizer(
        model, torch.optim.AdamW, rule="func-sam", rho=RHO, lr=1e-2, weight_decay=0.1
    )
    rule = FunctionalSAM(rho=RHO)
    base = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = opt.step(inputs=x, targets=y)
        loss_twin = rule.compute_gradient(twin, x, y, optimizer=base)
        base.step()
        assert torch.equal(loss, loss_twin)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert opt.param_groups is opt.base_optimizer.param_groups
    state = opt.state_dict()
    assert state["rule"]["step"] == 3


def test_wrapper_closure_matches_batch_call():
    model, x, y = make_case("mlp")
    twin = copy.deepcopy(model)
    opt = SharpnessAwareOptimizer(model, "sgd", rule="sam", rho=RHO, lr=0.1, momentum=0.9)
    opt_twin = SharpnessAwareOptimizer(twin, "sgd", rule="sam", rho=RHO, lr=0.1, momentum=0.9)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
        opt_twin.step(inputs=x, targets=y)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # an lr scheduler can wrap the one-call optimizer
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(inputs=x, targets=y)
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_wrapper_with_precond_rule_reads_its_adamw_state():
    model, x, y = make_case("mlp")
    twin = copy.deepcopy(model)
    opt = SharpnessAwareOptimizer(model, "adamw", rule="precond-func-sam", rho=1e-3, lr=1e-2)
    rule, base = PrecondFunctionalSAM(rho=1e-3), torch.optim.AdamW(twin.parameters(), lr=1e-2)
    for _ in range(3):
        opt.step(inputs=x, targets=y)
        rule.compute_gradient(twin, x, y, optimizer=base)
        base.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_residual_dtype_stores_r_in_lower_precision():
    model, x, y = make_case("lm")
    _, g = run_rule(FunctionalSAM(rho=RHO), model, x, y)
    _, g_low = run_rule(FunctionalSAM(rho=RHO, residual_dtype=torch.float32), model, x, y)
    torch.testing.assert_close(g_low, g, rtol=1e-5, atol=1e-7 * float(g.abs().max()))
    assert not torch.equal(g_low, g)


def test_m_sharpness_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double().train()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    got = m_sharpness(model, x, y, "cross_entropy", 0.05, [2, 12])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert got[2] > 0 and got[12] > 0
