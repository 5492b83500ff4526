"""LoRA rules on a tiny Hugging Face GPT-2 (built from a config, no download) with peft LoRA.

GPT-2's attention projection ``c_attn`` is a ``Conv1D`` whose weight is stored [in x out]; peft
(``fan_in_fan_out=True``) still keeps ``lora_A.weight`` [r x in] and ``lora_B.weight`` [out x r].
The float64 references take G = dL/dW (out x in) as the transposed gradient of the Conv1D weight.
Skipped when transformers or peft is not installed.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from landscape.analysis import analyze  # noqa: E402
from landscape.optim import EFMLoRA, FMLoRA, lora_layers, make_rule  # noqa: E402

VOCAB = 256


def tiny_gpt2(dtype: torch.dtype = torch.float64, seed: int = 0, attention: str = "eager") -> nn.Module:
    """2-layer GPT-2 (n_embd 32, 2 heads) with peft LoRA r = 4 on c_attn; dropout off."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation=attention,
    )
    base = transformers.GPT2LMHeadModel(config).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(
            base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
        )


def batch(seed: int = 0, n: int = 4, t: int = 12) -> tuple[Tensor, Tensor]:
    tokens = torch.randint(0, VOCAB, (n, t + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def randomise_b(model: nn.Module, scale: float = 0.2) -> None:
    """B away from LoRA's 0, so that both terms of Eq. 12 are exercised."""
    with torch.no_grad():
        for f in lora_layers(model):
            f.B.normal_(0.0, scale)


def ref_loss_and_grads(model: nn.Module, values: dict[str, Tensor], x: Tensor, y: Tensor):
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in values.items()}
    logits = torch.func.functional_call(model, leaves, (x,)).logits
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
    return float(loss.detach()), dict(
        zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True)
    )


def close(a: Tensor, b: Tensor, rtol: float = 1e-9) -> None:
    a, b = a.detach().double(), b.detach().double()
    assert float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) < rtol


def test_peft_layers_are_found_with_the_out_by_in_orientation():
    model = tiny_gpt2()
    randomise_b(model)
    layers = lora_layers(model)
    assert len(layers) == 2 and all(f.name.endswith("attn.c_attn:default") for f in layers)
    f = layers[0]
    assert f.A.shape == (4, 32) and f.B.shape == (96, 4) and f.scaling == 2.0 and f.rank == 4
    assert f.base_weight().shape == (96, 32)  # Conv1D stores [32 x 96]; W0 is shown as out x in
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    W = f.base_weight() + f.delta_weight()
    close(f.module(x), F.linear(x, W, f.module.get_base_layer().bias))  # W = W0 + s B A


def test_fmlora_on_peft_is_the_gradient_at_b_plus_eb():
    model = tiny_gpt2()
    randomise_b(model)
    x, y = batch()
    rho = 0.1
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = lora_layers(model)
    paths = [f.name.split(":")[0] for f in layers]
    _, grads = ref_loss_and_grads(model, values, x, y)
    s = 2.0
    perturbed = dict(values)
    for path in paths:
        A = values[f"{path}.lora_A.default.weight"]
        B = values[f"{path}.lora_B.default.weight"]
        G = grads[f"{path}.base_layer.weight"].T  # Conv1D [in x out] -> dL/dW as out x in
        P_A = A.T @ torch.linalg.solve(A @ A.T, A)
        P_B = B @ torch.linalg.solve(B.T @ B, B.T)
        ghat = 0.5 * (G @ P_A + P_B @ G)
        ebar = rho * ghat / ghat.norm()
        perturbed[f"{path}.lora_B.default.weight"] = B + ebar @ A.T @ torch.linalg.inv(A @ A.T) / s
    _, want = ref_loss_and_grads(model, perturbed, x, y)
    rule = FMLoRA(rho=rho)
    rule.compute_gradient(model, x, y)
    for n, p in model.named_parameters():
        if p.requires_grad:
            close(p.grad, want[n])
            assert torch.equal(p, values[n])


def test_tiny_gpt2_trains_with_efmlora_and_the_other_lora_rules():
    model = tiny_gpt2(torch.float32)
    x, y = batch(1, n=8, t=16)
    rule = make_rule("efmlora", rho=0.05)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        losses.append(float(rule.compute_gradient(model, x, y, optimizer=opt)))
        opt.step()
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)
    assert all(buf.shape == (96, 4) and bool(buf.any()) for buf in rule.ema.values()) and len(rule.ema) == 2
    diag = rule.diagnostics()
    assert all(math.isfinite(c) and c >= 1 for c in diag.cond_A.values()) and diag.perturbation_norm > 0
    gap = rule.ema_sharpness_gap(model, x, y)
    assert math.isfinite(gap["gap"]) and gap["gap"] == abs(gap["s_ema"] - gap["s_sam"])
    state = rule.state_dict()
    other = EFMLoRA(rho=0.05)
    other.load_state_dict(state)
    assert other.step == 8 and set(other.state_dict()["ema"]) == set(rule.ema)
    for name in ("lora", "fmlora"):
        value = make_rule(name).compute_gradient(model, x, y, optimizer=opt)
        assert math.isfinite(float(value))


def test_lambda_max_of_the_peft_lora_hessian():
    model = tiny_gpt2()
    randomise_b(model, 0.1)
    x, y = batch(2, n=2, t=8)
    res = analyze(model, (x, y), metrics="eigen", params="lora_", tol=1e-8)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in names) and res.num_params == sum(
        model.get_parameter(n).numel() for n in names
    )
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    flat = torch.cat([values[n].reshape(-1) for n in names]).requires_grad_(True)

    def loss_of(v: Tensor) -> Tensor:
        params, offset = dict(values), 0
        for n in names:
            k = values[n].numel()
            params[n] = v[offset : offset + k].view(values[n].shape)
            offset += k
        logits = torch.func.functional_call(model, params, (x,)).logits
        return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))

    (grad,) = torch.autograd.grad(loss_of(flat), flat, create_graph=True)
    eye = torch.eye(len(flat), dtype=torch.float64)
    H = torch.stack([torch.autograd.grad(grad, flat, e, retain_graph=True)[0] for e in eye])
    assert abs(res.lambda_max - float(torch.linalg.eigvalsh(H)[-1])) < 1e-7 * abs(res.lambda_max)


def test_sdpa_attention_needs_the_math_kernel_for_curvature():
    # transformers' default sdpa attention has no double backward on CPU; the MATH kernel has it
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x, y = batch(3, n=2, t=8)
    eager, sdpa = tiny_gpt2(), tiny_gpt2(attention="sdpa")
    randomise_b(eager, 0.1)
    sdpa.load_state_dict(eager.state_dict())
    want = analyze(eager, (x, y), metrics="eigen", params="lora_", tol=1e-8, top_k=1).lambda_max
    with sdpa_kernel(SDPBackend.MATH):
        got = analyze(sdpa, (x, y), metrics="eigen", params="lora_", tol=1e-8, top_k=1).lambda_max
    assert abs(got - want) < 1e-8 * abs(want)
