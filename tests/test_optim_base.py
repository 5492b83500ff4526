"""The shared machinery of the rules: closed-form output gradients, reused noise and perturbations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from landscape.losses import Loss, as_loss
from landscape.optim import AngleSAM, LogitSAM, make_rule
from landscape.optim.noise import GaussianNoise, GaussianPerturbation, SeededGenerator


def autograd_residual(loss: Loss, outputs: Tensor, targets: Tensor) -> Tensor:
    leaf = outputs.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(leaf, targets), leaf)
    return grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_output_gradient_closed_forms_match_autograd(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=dtype)
    tokens = torch.randint(0, 7, (3, 5), generator=gen)
    tokens[0, 1] = tokens[2, 4] = -100  # ignored targets are not counted
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    ce = as_loss("cross_entropy")
    torch.testing.assert_close(
        ce.output_gradient(logits, tokens), autograd_residual(ce, logits, tokens), **tol
    )
    flat_logits, labels = (
        torch.randn(6, 4, generator=gen, dtype=dtype),
        torch.randint(0, 4, (6,), generator=gen),
    )
    torch.testing.assert_close(
        ce.output_gradient(flat_logits, labels), autograd_residual(ce, flat_logits, labels), **tol
    )
    outputs, values = (
        torch.randn(4, 3, generator=gen, dtype=dtype),
        torch.randn(4, 3, generator=gen, dtype=dtype),
    )
    for loss in (as_loss("mse"), as_loss(lambda o, t: ((o - t) ** 4).mean())):
        torch.testing.assert_close(
            loss.output_gradient(outputs, values), autograd_residual(loss, outputs, values), **tol
        )


def test_output_gradient_of_an_all_ignored_batch_is_zero_like_autograd():
    ce = as_loss("cross_entropy")
    logits, targets = torch.randn(2, 3, 4), torch.full((2, 3), -100)
    assert torch.equal(ce.output_gradient(logits, targets), autograd_residual(ce, logits, targets))
    assert torch.equal(ce.output_gradient(logits, targets), torch.zeros_like(logits))


def test_output_gradient_leaves_its_input_alone():
    logits = torch.randn(4, 5, requires_grad=True)
    before = logits.detach().clone()
    r = as_loss("cross_entropy").output_gradient(logits, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(logits.detach(), before) and not r.requires_grad


def test_gaussian_noise_draws_the_numbers_of_one_flat_randn_into_reused_views():
    shapes = [(3, 4), (4,), (2, 2, 2)]
    tensors = [torch.zeros(s) for s in shapes]
    noise, gen = GaussianNoise(), SeededGenerator(seed=7)
    first = noise.draw(tensors, gen, std=0.5)
    expected = torch.randn(sum(math.prod(s) for s in shapes), generator=torch.Generator().manual_seed(7))
    assert [tuple(t.shape) for t in first] == shapes
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in first]), 0.5 * expected, rtol=0, atol=1e-7)
    pointers = [t.data_ptr() for t in first]
    second = noise.draw(tensors, gen)
    assert [t.data_ptr() for t in second] == pointers  # same storage, new numbers
    assert not torch.allclose(second[0], first[0] / 0.5)
    layout = noise.layout
    third = noise.draw([torch.zeros(5), torch.zeros(2, dtype=torch.float64)], gen)  # new shapes: rebuilt
    assert noise.layout is not layout and [t.dtype for t in third] == [torch.float32, torch.float64]


def test_gaussian_perturbation_adds_std_times_noise_and_restores_bit_for_bit():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))]
    before = [p.detach().clone() for p in params]
    perturbation, gen = GaussianPerturbation(), SeededGenerator(seed=3)
    for step in range(3):
        versions = [p._version for p in params]
        perturbation.apply_(params, gen, std=0.1)
        moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(params, before, strict=True)])
        reference = SeededGenerator(seed=3)
        draws = [torch.randn(15, generator=reference.get(torch.device("cpu"))) for _ in range(step + 1)]
        torch.testing.assert_close(moved, 0.1 * draws[-1], rtol=0, atol=1e-6)
        with pytest.raises(RuntimeError, match="twice"):
            perturbation.apply_(params, gen, std=0.1)
        perturbation.restore_()
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
        assert [p._version for p in params] == versions  # through .data: autograd sees no change


class PartlyUsed(nn.Module):
    """A linear model with a parameter the forward never touches (its gradient is None)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Parameter(torch.zeros(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(x))


@pytest.mark.parametrize("name", ["angle-sam", "func-sam", "logit-sam"])
def test_functional_rules_leave_unused_parameters_without_gradient(name):
    torch.manual_seed(0)
    model = PartlyUsed().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    make_rule(name).compute_gradient(model, x, y)
    assert model.unused.grad is None and model.fc.weight.grad is not None


@pytest.mark.parametrize("loss_fn", ["mse", "callable"])
def test_logit_path_uses_the_output_gradient_of_any_loss(loss_fn):
    """LOGIT-SAM = J(theta)^T r(theta + rho eps*) with r from the closed form or from autograd."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    fn = "mse" if loss_fn == "mse" else (lambda o, t: ((o - t) ** 2).mean())
    params = list(model.parameters())
    out = model(x)
    g = torch.autograd.grad(((out - y) ** 2).mean(), params, retain_graph=True)
    norm = torch.sqrt(sum((t**2).sum() for t in g))
    names = [n for n, _ in model.named_parameters()]
    shifted = {n: (p + 0.05 * t / norm).detach() for n, p, t in zip(names, params, g, strict=True)}
    with torch.no_grad():
        r_perturbed = 2 * (torch.func.functional_call(model, shifted, (x,)) - y) / y.numel()
    reference = torch.autograd.grad(out, params, grad_outputs=r_perturbed, retain_graph=True)
    LogitSAM(rho=0.05).compute_gradient(model, x, y, loss_fn=fn)
    for p, ref in zip(params, reference, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-10, atol=1e-13)
    # ANGLE-SAM at pi/2 is the same rule
    AngleSAM(rho=0.05, phi=math.pi / 2).compute_gradient(model, x, y, loss_fn=fn)
    for p, ref in zip(params, reference, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-10, atol=1e-13)
