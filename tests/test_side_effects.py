"""No side effects: every public function leaves the caller's model, flags and RNG as it found them.

The model is in training mode with dropout, a frozen parameter and a BatchNorm kept in eval mode
on purpose (mixed modes, which ``model.train(was_training)`` would overwrite). After each call:
every module's mode, every ``requires_grad`` flag, every parameter and buffer (bit for bit) and the
global RNG state are as before. The rules' ``compute_gradient`` trains, so it may fill ``.grad``
and advance the RNG, but only as one training forward pass does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import landscape
from landscape.curvature.operators import GGNOperator, HessianOperator, functional_hessian_operator
from landscape.data.loaders import Dataset
from landscape.evaluation import evaluate
from landscape.optim import RULES, m_sharpness, make_rule
from landscape.problem import Problem
from landscape.prune import prune_eval
from landscape.surface import compute_surface


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(torch.tanh(self.norm(self.embed(x)))))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = Net().double().train()
    model.norm.eval()  # kept in eval mode on purpose
    model.embed.bias.requires_grad_(False)  # a frozen parameter
    return model


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "modes": [(name, m.training) for name, m in model.named_modules()],
        "flags": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "rng": torch.get_rng_state(),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any], *, rng: bool = True) -> None:
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    if rng:
        assert torch.equal(after["rng"], before["rng"])


X = torch.randn(12, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))


CALLS: dict[str, Callable[[nn.Module], Any]] = {
    "analyze": lambda m: landscape.analyze(
        m,
        (X, Y),
        metrics="eigen,trace,tau,ggn,density,layers",
        top_k=1,
        trace_samples=8,
        max_iter=6,
        layer_samples=4,
        layer_max_iter=3,
        density_probes=1,
        density_steps=4,
    ),
    "hessian": lambda m: landscape.hessian(m, (X, Y)).to_dense(),
    "ggn": lambda m: landscape.ggn(m, (X, Y)).to_dense(),
    "functional_hessian": lambda m: landscape.functional_hessian(m, (X, Y)).to_dense(),
    "operators": lambda m: (
        HessianOperator(Problem(m, (X, Y))).to_dense(),
        GGNOperator(Problem(m, (X, Y), "cross_entropy")).to_dense(),
        functional_hessian_operator(Problem(m, (X, Y))).to_dense(),
    ),
    "problem": lambda m: (Problem(m, (X, Y)).gradient(), Problem(m, (X, Y)).loss_value()),
    "surface": lambda m: compute_surface(Problem(m, (X, Y)), line_steps=3, plane_steps=2),
    "evaluate": lambda m: evaluate(m, Dataset(X, Y, name="x", task="classification"), "cross_entropy"),
    "prune_eval": lambda m: prune_eval(
        m, Dataset(X, Y, name="x", task="classification"), "cross_entropy", [0.0, 0.5]
    ),
    "m_sharpness": lambda m: m_sharpness(m, X, Y, "cross_entropy", 0.05, [4, 12]),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_public_functions_leave_model_flags_and_rng_alone(name):
    model = make_model()
    torch.manual_seed(123)
    before = snapshot(model)
    CALLS[name](model)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("rule", [r for r in RULES if r not in ("lora", "fmlora", "efmlora")])
def test_rules_change_only_the_gradients_and_advance_the_rng_as_training_does(rule):
    """A rule step keeps modes, flags, parameters and (BatchNorm in eval mode) buffers; the RNG
    moves as one training forward moves it (the perturbed passes replay the first pass's masks)."""
    model = make_model()
    torch.manual_seed(123)
    before = snapshot(model)
    options = {"m": 12} if rule == "msam" else {"sigma": 0.01} if rule == "fsgld" else {}
    make_rule(rule, **options).compute_gradient(
        model,
        X,
        Y,
        optimizer=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
        if rule.startswith("precond")
        else torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1),
    )
    assert_same(before, snapshot(model), rng=False)
    assert model.embed.bias.grad is None and model.head.weight.grad is not None
    torch.set_rng_state(before["rng"])
    with torch.no_grad():
        model(X)  # one training forward
    if rule != "fsgld":  # fSGLD draws its perturbation from its own generator, not the global one
        assert torch.equal(snapshot(model)["rng"], torch.get_rng_state())
