"""First-order identities of the SAM family, checked through the curvature engine.

With eps* = g / ||g||, to first order in rho (Singh, Mobahi, Agarwala & Dauphin 2025, arXiv 2502.02407, Eq. 7, 10 and 20):

    (g_sam       - g) / rho -> H   eps*      (full Hessian)
    (g_func_sam  - g) / rho -> H_F eps*      (functional Hessian, H - G)
    (g_logit_sam - g) / rho -> G   eps*      (Gauss-Newton)
    (g_angle_sam - g) / rho -> (sin(phi) G + cos(phi) H_F) eps*

and the error is O(rho): dividing rho by 4 divides it by about 4. The curvature products come from
``landscape.curvature.operators`` (exact Hessian- and GGN-vector products), the rule gradients from
``landscape.optim`` finite differences, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from landscape.curvature.operators import GGNOperator, HessianOperator, functional_hessian_operator
from landscape.optim import make_rule
from landscape.problem import Problem


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class TinyLM(nn.Module):
    """One pre-LayerNorm causal self-attention block with a tanh MLP; logits [B, T, V]."""

    def __init__(self, vocab: int = 7, d: int = 8, seq: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.3 * torch.randn(seq, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        h = self.embed(idx) + self.pos[:T]
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
            ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")
        )
        h = h + self.proj(att.softmax(-1) @ v)
        h = h + self.fc2(torch.tanh(self.fc1(self.ln2(h))))
        return self.head(h)


def make_case(kind: str) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        return (
            TinyMLP().double(),
            torch.randn(10, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (10,), generator=g),
        )
    y = torch.randint(0, 7, (4, 5), generator=g)
    y[1, :2] = -100
    return TinyLM().double(), torch.randint(0, 7, (4, 5), generator=g), y


def rule_gradient(name: str, model: nn.Module, x: Tensor, y: Tensor, **options) -> Tensor:
    make_rule(name, **options).compute_gradient(model, x, y)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("kind", ["mlp", "lm"])
def test_first_order_identities_through_the_curvature_engine(kind):
    model, x, y = make_case(kind)
    problem = Problem(model, (x, y), loss="cross_entropy", dtype=torch.float64)
    assert problem.param_names == [n for n, _ in model.named_parameters()]
    H, G = HessianOperator(problem), GGNOperator(problem)
    HF = functional_hessian_operator(problem, H, G)
    g = problem.gradient()
    torch.testing.assert_close(rule_gradient("adamw", model, x, y), g, rtol=1e-10, atol=1e-13)
    eps = g / g.norm()
    phi = 0.6
    cases = {
        "sam": ({}, H.matvec(eps)),
        "func-sam": ({}, HF.matvec(eps)),
        "logit-sam": ({}, G.matvec(eps)),
        "angle-sam": ({"phi": phi}, math.sin(phi) * G.matvec(eps) + math.cos(phi) * HF.matvec(eps)),
    }
    # the three directions differ, so matching each one is a real check
    assert (cases["func-sam"][1] - cases["logit-sam"][1]).norm() > 0.1 * cases["sam"][1].norm()

    rho = 4e-3
    for name, (options, curvature_product) in cases.items():
        errors = []
        for r in (rho, rho / 4):
            finite_difference = (rule_gradient(name, model, x, y, rho=r, **options) - g) / r
            errors.append(float((finite_difference - curvature_product).norm()))
        relative = errors[1] / float(curvature_product.norm())
        assert relative < 0.01, f"{name}: relative first-order error {relative:.2e}"
        assert 3.7 < errors[0] / errors[1] < 4.3, (
            f"{name}: error ratio {errors[0] / errors[1]:.2f}, not linear"
        )
