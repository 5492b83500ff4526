"""Built-in LoRA, FMLoRA and EFMLoRA against independent float64 references built in this file.

The references never call ``landscape.optim.flat_lora``: projections are ``A^T (A A^T)^{-1} A`` and
``B (B^T B)^{-1} B^T`` by linear solves (no pseudo-inverse), ``A^+ = A^T (A A^T)^{-1}``, and the
full-space gradient ``G = grad_W L`` is taken directly as the gradient with respect to the frozen
base weight W0 (``W = W0 + s B A``, so ``dL/dW0 = dL/dW``), through ``torch.func.functional_call``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.analysis import analyze
from landscape.errors import UserError
from landscape.models import build_model
from landscape.optim import (
    RULES,
    EFMLoRA,
    FMLoRA,
    LoRAGradient,
    LoRALinear,
    SharpnessAwareOptimizer,
    add_lora,
    lora_layers,
    make_rule,
    merge_lora,
)
from landscape.optim.flat_lora import (
    ascent_perturbation,
    b_perturbations,
    estimate_full_gradient,
    realised_norms,
    transfer_to_b,
)
from landscape.problem import Problem

RTOL = 1e-9


def close(a: Tensor, b: Tensor, rtol: float = RTOL) -> None:
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().clamp_min(1e-300)
    assert float((a - b).abs().max() / scale) < rtol, (a, b)


# ----------------------------------------------------------------------------- float64 references
def proj_rows(A: Tensor) -> Tensor:
    """P_A = A^T (A A^T)^{-1} A: projector onto the row space of a full-row-rank A."""
    return A.T @ torch.linalg.solve(A @ A.T, A)


def proj_cols(B: Tensor) -> Tensor:
    """P_B = B (B^T B)^{-1} B^T for a full-column-rank B; 0 for B = 0."""
    if not bool(B.any()):
        return torch.zeros(B.shape[0], B.shape[0], dtype=B.dtype)
    return B @ torch.linalg.solve(B.T @ B, B.T)


def right_inverse(A: Tensor) -> Tensor:
    """A^+ = A^T (A A^T)^{-1} for a full-row-rank A."""
    return A.T @ torch.linalg.inv(A @ A.T)


def reference_eb(
    Gs: list[Tensor], As: list[Tensor], Bs: list[Tensor], ss: list[float], rho: float, normalization: str
) -> tuple[list[Tensor], list[Tensor]]:
    """(E_B, Ebar_W) per layer: G_hat = (G P_A + P_B G)/2, Ebar = rho G_hat/||G_hat||, E_B = Ebar A^+ / s."""
    ghat = [0.5 * (G @ proj_rows(A) + proj_cols(B) @ G) for G, A, B in zip(Gs, As, Bs, strict=True)]
    if normalization == "global":
        total = math.sqrt(sum(float(g.square().sum()) for g in ghat))
        ebar = [rho * g / total for g in ghat]
    else:
        ebar = [rho * g / g.norm() for g in ghat]
    return [e @ right_inverse(A) / s for e, A, s in zip(ebar, As, ss, strict=True)], ebar


class Net(nn.Module):
    """fc1 (6 -> 8), fc2 and fc3 (8 -> 8, equal shapes: one batched SVD), head (8 -> 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))))


LAYERS = ("fc1", "fc2", "fc3")
ALPHA, RANK = 6.0, 3


def make_net(seed: int = 0, random_b: bool = True) -> tuple[nn.Module, Tensor, Tensor]:
    """A float64 Net with LoRA (r = 3, s = 2) on fc1-3, B random (not LoRA's 0), head.bias trained."""
    torch.manual_seed(seed)
    net = Net().double()
    add_lora(net, rank=RANK, alpha=ALPHA, targets="fc")
    net.head.bias.requires_grad_(True)  # a trained non-LoRA parameter: gradient at the perturbed point
    if random_b:
        with torch.no_grad():
            for name in LAYERS:
                getattr(net, name).lora_B.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=g)
    return net, x, y


def all_params(net: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def ref_loss_and_grads(
    net: nn.Module, values: dict[str, Tensor], x: Tensor, y: Tensor
) -> tuple[float, dict[str, Tensor]]:
    """Loss and the gradient with respect to EVERY parameter (base weights too) at ``values``."""
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in values.items()}
    loss = F.cross_entropy(torch.func.functional_call(net, leaves, (x,)), y)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return float(loss.detach()), dict(zip(leaves, grads, strict=True))


def trained_names(net: nn.Module) -> list[str]:
    return [n for n, p in net.named_parameters() if p.requires_grad]


def reference_perturbation(
    net: nn.Module, values: dict[str, Tensor], x: Tensor, y: Tensor, rho: float, normalization: str
) -> tuple[list[Tensor], list[Tensor]]:
    """(E_B, Ebar_W) of fc1-3 at ``values`` from G = dL/dW0 there."""
    _, grads = ref_loss_and_grads(net, values, x, y)
    s = ALPHA / RANK
    return reference_eb(
        [grads[f"{n}.weight"] for n in LAYERS],
        [values[f"{n}.lora_A"] for n in LAYERS],
        [values[f"{n}.lora_B"] for n in LAYERS],
        [s] * len(LAYERS),
        rho,
        normalization,
    )


def with_b(values: dict[str, Tensor], E: list[Tensor]) -> dict[str, Tensor]:
    out = dict(values)
    for n, e in zip(LAYERS, E, strict=True):
        out[f"{n}.lora_B"] = values[f"{n}.lora_B"] + e
    return out


# ------------------------------------------------------------------------------- the math (dense)
def random_layer(n: int, m: int, r: int, seed: int, b_rank: int | None = None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, m, generator=g, dtype=torch.float64)
    B = torch.randn(n, r, generator=g, dtype=torch.float64)
    if b_rank == 0:
        B = torch.zeros_like(B)
    G = torch.randn(n, m, generator=g, dtype=torch.float64)
    return A, B, G


@pytest.mark.parametrize("shape", [(7, 5, 3), (12, 9, 4), (4, 10, 2)])
def test_eq12_estimate_is_half_of_two_projections(shape):
    n, m, r = shape
    A, B, G = random_layer(n, m, r, seed=n)
    s = 2.5
    gA, gB = s * B.T @ G, s * G @ A.T  # LoRA's own gradients, by the chain rule
    est = estimate_full_gradient(A, B, gA, gB, s)
    close(est, 0.5 * (G @ proj_rows(A) + proj_cols(B) @ G))
    # each term on its own: (1/s) gB (A^T)^+ = G P_A and (1/s) (B^T)^+ gA = P_B G
    close(estimate_full_gradient(A, B, gA, torch.zeros_like(gB), s), 0.5 * proj_cols(B) @ G)
    close(estimate_full_gradient(A, B, torch.zeros_like(gA), gB, s), 0.5 * G @ proj_rows(A))


def test_eq12_at_lora_start_and_with_rank_deficient_b():
    A, B, G = random_layer(6, 5, 3, seed=1, b_rank=0)
    s = 2.0
    est = estimate_full_gradient(A, B, s * B.T @ G, s * G @ A.T, s)
    close(est, 0.5 * G @ proj_rows(A))  # B = 0: (B^T)^+ = 0
    u = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    v = torch.randn(1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    B1 = u @ v  # rank 1 of r = 3: P_B is the projector onto span(u)
    est = estimate_full_gradient(A, B1, s * B1.T @ G, s * G @ A.T, s)
    close(est, 0.5 * (G @ proj_rows(A) + (u @ u.T / (u.T @ u)) @ G))


@pytest.mark.parametrize("normalization", ["layer", "global"])
def test_low_rank_path_equals_dense_equations_and_realises_ebar_pa(normalization):
    # three layers, two with equal shapes (batched), one gradient missing
    layers = [random_layer(7, 5, 3, seed=10), random_layer(7, 5, 3, seed=11), random_layer(9, 6, 2, seed=12)]
    ss = [2.0, 0.5, 4.0]
    As, Bs, Gs = zip(*layers, strict=True)
    gAs = [s * B.T @ G for (A, B, G), s in zip(layers, ss, strict=True)]
    gBs = [s * G @ A.T for (A, B, G), s in zip(layers, ss, strict=True)]
    rho = 0.3
    E, sq = b_perturbations(As, Bs, gAs, gBs, ss, rho, normalization)
    ref_E, ref_ebar = reference_eb(list(Gs), list(As), list(Bs), ss, rho, normalization)
    for e, r, ebar, A, s in zip(E, ref_E, ref_ebar, As, ss, strict=True):
        close(e, r)
        close(s * e @ A, ebar @ proj_rows(A))  # realised full-space perturbation = Ebar_W P_A
    ghat = [0.5 * (G @ proj_rows(A) + proj_cols(B) @ G) for A, B, G in layers]
    close(sq, torch.stack([g.square().sum() for g in ghat]))
    close(realised_norms(As, E, ss), torch.stack([(eb @ proj_rows(A)).norm() for eb, A in zip(ref_ebar, As)]))
    # the dense helpers, chained (Eqs. 12 -> 13 -> 15), give the same E_B
    dense = [estimate_full_gradient(A, B, ga, gb, s) for A, B, ga, gb, s in zip(As, Bs, gAs, gBs, ss)]
    ebar = ascent_perturbation(dense, rho, normalization)
    for eb, A, s, r in zip(ebar, As, ss, ref_E, strict=True):
        close(transfer_to_b(eb, A, s), r)
    # a layer without gradients (None) gets no perturbation under per-layer normalisation
    E2, _ = b_perturbations(As, Bs, [None, gAs[1], gAs[2]], [None, gBs[1], gBs[2]], ss, rho, "layer")
    assert not bool(E2[0].any()) and bool(E2[1].any())


def test_low_rank_path_with_b_zero_or_rank_deficient_and_in_float32():
    A, _, G = random_layer(7, 5, 3, seed=20)
    s, rho = 2.0, 0.4
    u = torch.randn(7, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(21))
    v = torch.randn(1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    for B, P_B in (
        (torch.zeros(7, 3, dtype=torch.float64), torch.zeros(7, 7, dtype=torch.float64)),
        (u @ v, u @ u.T / (u.T @ u)),
    ):
        E, _ = b_perturbations([A], [B], [s * B.T @ G], [s * G @ A.T], [s], rho)
        ghat = 0.5 * (G @ proj_rows(A) + P_B @ G)
        close(E[0], rho * ghat / ghat.norm() @ right_inverse(A) / s)
    # float32 factors: the float64 Gram route keeps float32 accuracy
    B = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    want, _ = reference_eb([G], [A], [B], [s], rho, "layer")
    E32, _ = b_perturbations(
        [A.float()], [B.float()], [(s * B.T @ G).float()], [(s * G @ A.T).float()], [s], rho
    )
    close(E32[0], want[0], 1e-5)


def test_zero_gradient_gives_zero_perturbation():
    A, B, _ = random_layer(5, 4, 2, seed=5)
    for normalization in ("layer", "global"):
        E, sq = b_perturbations(
            [A], [B], [torch.zeros_like(A)], [torch.zeros_like(B)], [2.0], 0.1, normalization
        )
        assert not bool(E[0].any()) and float(sq[0]) == 0.0 and bool(torch.isfinite(E[0]).all())


# ----------------------------------------------------------------------------------- built-in LoRA
def test_add_lora_wraps_freezes_and_starts_at_the_base_model():
    torch.manual_seed(0)
    model = build_model("mlp").double()
    x = torch.randn(5, 64, dtype=torch.float64)
    before = model(x)
    names = add_lora(model, rank=4, alpha=8, generator=torch.Generator().manual_seed(0))
    assert names == ["net.0", "net.2", "net.4"]
    close(model(x), before, 1e-15)  # B = 0: the same function
    trained = trained_names(model)
    assert trained == [f"net.{i}.lora_{k}" for i in (0, 2, 4) for k in ("A", "B")]
    layer = model.net[0]
    assert isinstance(layer, LoRALinear) and isinstance(layer, nn.Linear) and layer.scaling == 2.0
    assert layer.lora_A.shape == (4, 64) and layer.lora_B.shape == (64, 4) and not bool(layer.lora_B.any())
    assert float(layer.lora_A.detach().abs().max()) <= 1 / math.sqrt(64)  # Kaiming-uniform, a = sqrt(5)
    # forward: x (W0 + s B A)^T + b, with dropout off
    with torch.no_grad():
        layer.lora_B.normal_()
    W = layer.weight + layer.scaling * layer.lora_B @ layer.lora_A
    close(layer(x), x @ W.T + layer.bias)
    info = lora_layers(model)
    assert [f.name for f in info] == names and info[0].scaling == 2.0 and info[0].rank == 4
    close(info[0].base_weight() + info[0].delta_weight(), W)
    # same seed, same A
    other = build_model("mlp").double()
    add_lora(other, rank=4, alpha=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(other.net[0].lora_A, model.net[0].lora_A)


def test_add_lora_targets_and_errors():
    model = build_model("transformer", n_layer=1, d_model=16, vocab_size=32, block_size=8)
    assert add_lora(model, rank=2, targets="attn") == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]
    assert add_lora(model, rank=2, targets="mlp.0, head") == ["blocks.0.mlp.0", "head"]  # comma list
    with pytest.raises(UserError, match="match no nn.Linear"):
        add_lora(model, rank=2, targets="attn")  # already wrapped: LoRALinear is never wrapped again
    with pytest.raises(UserError, match="match no nn.Linear"):
        add_lora(build_model("mlp"), targets="nothing")
    for bad in (dict(rank=0), dict(rank=2.5), dict(alpha=-1.0), dict(alpha=float("nan")), dict(dropout=1.0)):
        with pytest.raises(UserError):
            add_lora(build_model("mlp"), **bad)
    with pytest.raises(UserError, match="exceeds min"):
        add_lora(build_model("mlp"), rank=16)  # net.4 is 64 -> 10
    with pytest.raises(UserError, match="invalid LoRA target"):
        add_lora(build_model("mlp"), targets="net.(")


def test_merge_lora_and_checkpoint_keys():
    torch.manual_seed(0)
    model = build_model("mlp").double()
    plain_keys = set(model.state_dict())
    add_lora(model, rank=3, alpha=5, dropout=0.1)
    assert set(model.state_dict()) - plain_keys == {f"net.{i}.lora_{k}" for i in (0, 2, 4) for k in "AB"}
    # a checkpoint of the model without LoRA loads with strict=False, missing only the adapters
    result = model.load_state_dict(build_model("mlp").double().state_dict(), strict=False)
    assert sorted(result.missing_keys) == sorted(set(model.state_dict()) - plain_keys)
    with torch.no_grad():
        for f in lora_layers(model):
            f.B.normal_()
    model.eval()  # dropout off
    x = torch.randn(4, 64, dtype=torch.float64)
    out = model(x)
    assert merge_lora(model) == ["net.0", "net.2", "net.4"]
    assert not lora_layers(model) and set(model.state_dict()) == plain_keys
    assert all(type(m) is nn.Linear for m in model.net if isinstance(m, nn.Linear))
    close(model(x), out, 1e-12)


# -------------------------------------------------------------------------------------- the rules
def test_plain_lora_rule_and_missing_adapters():
    net, x, y = make_net()
    rule = make_rule("lora")
    assert isinstance(rule, LoRAGradient)
    loss = rule.compute_gradient(net, x, y)
    ref_loss, grads = ref_loss_and_grads(net, all_params(net), x, y)
    assert abs(float(loss) - ref_loss) < 1e-12
    for n, p in net.named_parameters():
        if p.requires_grad:
            close(p.grad, grads[n])
    assert set(rule.diagnostics().cond_A) == set(LAYERS) and rule.diagnostics().perturbation_norm == 0.0
    for name in ("lora", "fmlora", "efmlora"):
        with pytest.raises(UserError, match="no trainable LoRA layer"):
            make_rule(name).compute_gradient(build_model("mlp"), torch.randn(3, 64), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("normalization", ["layer", "global"])
def test_fmlora_gradient_is_the_gradient_at_b_plus_eb(normalization):
    net, x, y = make_net()
    rho = 0.2
    theta = all_params(net)
    rule = FMLoRA(rho=rho, normalization=normalization)
    loss = rule.compute_gradient(net, x, y)
    E, ebar = reference_perturbation(net, theta, x, y, rho, normalization)
    ref_loss, _ = ref_loss_and_grads(net, theta, x, y)
    _, grads = ref_loss_and_grads(net, with_b(theta, E), x, y)
    assert abs(float(loss) - ref_loss) < 1e-12  # the loss at theta
    for n in trained_names(net):
        close(net.get_parameter(n).grad, grads[n])
        assert torch.equal(net.get_parameter(n), theta[n])  # restored bit for bit
    # diagnostics: cond(A) and the realised ||s E_B A|| = ||Ebar_W P_A||
    diag = rule.diagnostics()
    for n in LAYERS:
        sv = torch.linalg.eigvalsh(theta[f"{n}.lora_A"] @ theta[f"{n}.lora_A"].T).sqrt()
        assert abs(diag.cond_A[n] - float(sv[-1] / sv[0])) < 1e-9 * diag.cond_A[n]
    realised = [float((eb @ proj_rows(theta[f"{n}.lora_A"])).norm()) for eb, n in zip(ebar, LAYERS)]
    assert abs(diag.perturbation_norm - math.sqrt(sum(r * r for r in realised))) < 1e-12
    if normalization == "layer":
        assert all(r <= rho * (1 + 1e-12) for r in realised)
    else:
        assert diag.perturbation_norm <= rho * (1 + 1e-12)


def test_fmlora_at_lora_start_uses_only_g_pa():
    net, x, y = make_net(random_b=False)  # B = 0
    theta = all_params(net)
    FMLoRA(rho=0.1).compute_gradient(net, x, y)
    E, _ = reference_perturbation(net, theta, x, y, 0.1, "layer")
    _, grads = ref_loss_and_grads(net, with_b(theta, E), x, y)
    for n in trained_names(net):
        close(net.get_parameter(n).grad, grads[n])


def test_efmlora_state_update_and_gradients_follow_the_formula():
    net, x, y = make_net()
    beta, rho = 0.7, 0.15
    rule = make_rule("efmlora", rho=rho, ema_new_weight=beta)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.05)
    ema = [torch.zeros_like(net.get_parameter(f"{n}.lora_B")) for n in LAYERS]
    for step in range(3):
        theta = all_params(net)
        perturbed = with_b(theta, ema)
        ref_loss, grads = ref_loss_and_grads(net, perturbed, x, y)
        fresh, _ = reference_perturbation(net, perturbed, x, y, rho, "layer")  # G and P_B at B + E_{t-1}
        s = ALPHA / RANK
        realised = math.sqrt(
            sum(float((s * e @ theta[f"{n}.lora_A"]).norm()) ** 2 for e, n in zip(ema, LAYERS))
        )
        loss = rule.compute_gradient(net, x, y, optimizer=opt)
        assert abs(float(loss) - ref_loss) < 1e-12  # the loss at the perturbed point
        for n in trained_names(net):
            close(net.get_parameter(n).grad, grads[n])
            assert torch.equal(net.get_parameter(n), theta[n])
        ema = [(1 - beta) * e + beta * f for e, f in zip(ema, fresh, strict=True)]
        for n, e in zip(LAYERS, ema, strict=True):
            close(rule.ema[n], e)
        assert abs(rule.diagnostics().perturbation_norm - realised) <= 1e-12 * max(realised, 1.0)
        opt.step()
    assert rule.step == 3


def test_efmlora_state_dict_resumes_bit_exactly():
    net, x, y = make_net()

    def run(model, rule, opt, steps):
        for _ in range(steps):
            rule.compute_gradient(model, x, y, optimizer=opt)
            opt.step()

    def fresh(model):
        return EFMLoRA(rho=0.1, ema_new_weight=0.9), torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=0.02
        )

    straight = copy.deepcopy(net)
    rule, opt = fresh(straight)
    run(straight, rule, opt, 4)
    half = copy.deepcopy(net)
    rule1, opt1 = fresh(half)
    run(half, rule1, opt1, 2)
    saved_rule, saved_opt, saved_model = (
        rule1.state_dict(),
        opt1.state_dict(),
        copy.deepcopy(half.state_dict()),
    )
    assert set(saved_rule["ema"]) == set(LAYERS)
    resumed = copy.deepcopy(net)
    resumed.load_state_dict(saved_model)
    rule2, opt2 = fresh(resumed)
    rule2.load_state_dict(saved_rule)
    opt2.load_state_dict(saved_opt)
    assert rule2.state_dict()["ema"].keys() == saved_rule["ema"].keys()  # pending buffers are saved too
    run(resumed, rule2, opt2, 2)
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), n
    for n in LAYERS:
        assert torch.equal(rule.ema[n], rule2.ema[n])
    # buffers of other layers, or of another shape, are refused
    bad = EFMLoRA()
    bad.load_state_dict({**saved_rule, "ema": {"elsewhere": torch.zeros(8, 3)}})
    with pytest.raises(UserError, match="does not have"):
        bad.compute_gradient(copy.deepcopy(net), x, y)
    bad.load_state_dict({**saved_rule, "ema": {"fc1": torch.zeros(8, 2)}})
    with pytest.raises(UserError, match="shape"):
        bad.compute_gradient(copy.deepcopy(net), x, y)


def test_ema_sharpness_gap_against_reference_and_without_side_effects():
    net, x, y = make_net()
    rule = EFMLoRA(rho=0.2, ema_new_weight=0.5)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        rule.compute_gradient(net, x, y, optimizer=opt)
        opt.step()
    theta = all_params(net)
    grads_before = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    ema_before = {k: v.clone() for k, v in rule.ema.items()}
    rng_before = torch.get_rng_state()
    out = rule.ema_sharpness_gap(net, x, y)
    l0, _ = ref_loss_and_grads(net, theta, x, y)
    l_ema, _ = ref_loss_and_grads(net, with_b(theta, [ema_before[n] for n in LAYERS]), x, y)
    E_sam, _ = reference_perturbation(net, theta, x, y, 0.2, "layer")
    l_sam, _ = ref_loss_and_grads(net, with_b(theta, E_sam), x, y)
    assert abs(out["s_ema"] - (l_ema - l0)) < 1e-12 and abs(out["s_sam"] - (l_sam - l0)) < 1e-12
    assert abs(out["gap"] - abs(l_ema - l_sam)) < 1e-12
    assert rule.diagnostics().ema_sharpness_gap == out["gap"]
    assert torch.equal(torch.get_rng_state(), rng_before) and rule.step == 2
    for n, p in net.named_parameters():
        assert torch.equal(p, theta[n])
        if p.requires_grad:
            assert torch.equal(p.grad, grads_before[n])
    for k, v in ema_before.items():
        assert torch.equal(rule.ema[k], v)


def test_dropout_masks_are_replayed_in_the_second_pass():
    torch.manual_seed(0)
    model = build_model(
        "transformer", n_layer=1, d_model=16, vocab_size=32, block_size=8, dropout=0.2
    ).double()
    add_lora(model, rank=2, targets="attn|mlp", dropout=0.3)
    tokens = torch.randint(0, 32, (4, 9))
    x, y = tokens[:, :-1], tokens[:, 1:]
    rule = FMLoRA(rho=0.0)  # rho = 0: the second pass must reproduce the first exactly
    torch.manual_seed(5)
    rule.compute_gradient(model, x, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(5)
    LoRAGradient().compute_gradient(model, x, y)
    for n, p in model.named_parameters():
        if p.requires_grad:
            close(got[n], p.grad, 1e-12)


def test_registry_options_and_wrapper():
    for name, cls in (("lora", LoRAGradient), ("fmlora", FMLoRA), ("efmlora", EFMLoRA)):
        assert isinstance(make_rule(name), cls) and RULES[name].base_optimizer == "adamw"
    rule = make_rule("efmlora", rho=0.3, ema_new_weight=0.9, normalization="global", rho_warmup=None)
    assert (rule.rho, rule.ema_new_weight, rule.normalization) == (0.3, 0.9, "global")
    for bad in (
        dict(ema_new_weight=0.0),
        dict(ema_new_weight=1.5),
        dict(normalization="row"),
        dict(rho=-1.0),
    ):
        with pytest.raises(UserError):
            make_rule("efmlora", **bad)
    net, x, y = make_net()
    opt = SharpnessAwareOptimizer(net, "adamw", rule="efmlora", rho=0.1, lr=1e-2)
    losses = [float(opt.step(inputs=x, targets=y)) for _ in range(30)]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)


def test_builtin_lm_fine_tunes_with_efmlora():
    torch.manual_seed(0)
    model = build_model("transformer", n_layer=1, d_model=16, vocab_size=32, block_size=16)
    add_lora(model, rank=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (8, 17), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    rule = EFMLoRA()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(25):
        loss = rule.compute_gradient(model, x, y, optimizer=opt)
        opt.step()
        first = float(loss) if first is None else first
    assert float(loss) < first
    diag = rule.diagnostics().as_dict(per_layer=True)
    assert math.isfinite(diag["cond_A_max"]) and diag["perturbation_norm"] > 0
    assert "cond_A/head" in diag and math.isfinite(rule.ema_sharpness_gap(model, x, y)["gap"])


# ------------------------------------------------------------------ curvature of the LoRA factors
def test_problem_and_lambda_max_restricted_to_lora_parameters():
    net, x, y = make_net()
    net.head.bias.requires_grad_(False)
    problem = Problem(net, (x, y), params="lora_")
    names = [n for n, _ in net.named_parameters() if "lora_" in n]
    assert problem.param_names == names
    res = analyze(net, (x, y), metrics="eigen", params="lora_", tol=1e-8)
    # dense float64 Hessian over the LoRA factors only, by double backward
    values = all_params(net)
    flat = torch.cat([values[n].reshape(-1) for n in names]).requires_grad_(True)

    def loss_of(v: Tensor) -> Tensor:
        params, offset = dict(values), 0
        for n in names:
            k = values[n].numel()
            params[n] = v[offset : offset + k].view(values[n].shape)
            offset += k
        return F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)

    (grad,) = torch.autograd.grad(loss_of(flat), flat, create_graph=True)
    eye = torch.eye(len(flat), dtype=torch.float64)
    H = torch.stack([torch.autograd.grad(grad, flat, e, retain_graph=True)[0] for e in eye])
    assert res.num_params == len(flat)
    assert abs(res.lambda_max - float(torch.linalg.eigvalsh(H)[-1])) < 1e-7 * abs(res.lambda_max)
