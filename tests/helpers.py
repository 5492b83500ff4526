"""Tiny problems and dense float64 references (double-backward only: never torch.func.hessian,
which is wrong across LayerNorm in torch 2.13)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.losses import IGNORE_INDEX
from landscape.models import build_model
from landscape.problem import Problem


def tiny_case(kind: str, seed: int = 0, n: int = 24) -> tuple[nn.Module, tuple[Tensor, Tensor], str]:
    """A float64 model, its data and loss: 'mlp', 'cnn', 'lm' (transformer with [B,T,V] logits,
    LayerNorm, GELU, causal attention), 'mse' (MLP regression)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "mlp":
        model = build_model("mlp", in_features=6, hidden=(7, 5), num_classes=4)
        x = torch.randn(n, 6, generator=g)
        y = torch.randint(0, 4, (n,), generator=g)
        loss = "cross_entropy"
    elif kind == "cnn":
        model = build_model("cnn", num_classes=3, channels=(2, 3), image_size=4)
        x = torch.rand(n, 1, 4, 4, generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        loss = "cross_entropy"
    elif kind == "lm":
        model = build_model("transformer", vocab_size=7, block_size=5, n_layer=1, n_head=2, d_model=4)
        x = torch.randint(0, 7, (n // 4, 5), generator=g)
        y = torch.randint(0, 7, (n // 4, 5), generator=g)
        loss = "cross_entropy"
    elif kind == "mse":
        model = build_model("mlp", in_features=3, hidden=(6,), num_classes=2)
        x = torch.randn(n, 3, generator=g)
        y = torch.randn(n, 2, generator=g)
        loss = "mse"
    else:
        raise ValueError(kind)
    model = model.double()
    return (
        model,
        (x.double() if x.is_floating_point() else x, y.double() if y.is_floating_point() else y),
        loss,
    )


def _flat_outputs(problem: Problem, theta: Tensor, inputs: Tensor) -> Tensor:
    return problem.outputs(problem.unflatten(theta), inputs)


Reference = Callable[[Tensor, Tensor], Tensor]
"""The full-data mean loss of the outputs, written with torch's own functions (not landscape's)."""


def dense_loss(problem: Problem, x: Tensor, y: Tensor, reference: Reference | None = None):
    """L(theta) on the whole data in one piece (mean over targets), as a function of a flat vector.

    ``reference`` (outputs, targets) -> mean loss; default: cross-entropy or mse by the problem's loss name.
    """

    def f(theta: Tensor) -> Tensor:
        out = _flat_outputs(problem, theta, x)
        if reference is not None:
            return reference(out, y)
        if problem.loss == "cross_entropy":
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)
        return F.mse_loss(out, y.reshape(out.shape))

    return f


def dense_hessian(problem: Problem, x: Tensor, y: Tensor, reference: Reference | None = None) -> Tensor:
    """Reference H by torch.autograd.functional.hessian (reverse-over-reverse)."""
    theta = problem.parameter_vector().detach()
    return torch.autograd.functional.hessian(dense_loss(problem, x, y, reference), theta)


def dense_output_hessian(reference: Reference, out: Tensor, y: Tensor) -> Tensor:
    """The Hessian of the mean loss in the outputs, ``[n, n]``, by double-backward of ``reference``."""
    return torch.autograd.functional.hessian(
        lambda flat: reference(flat.reshape(out.shape), y), out.detach().reshape(-1)
    )


def dense_ggn(problem: Problem, x: Tensor, y: Tensor, reference: Reference | None = None) -> Tensor:
    """Reference G = (1/N) J^T H_out J from the explicit Jacobian and output Hessian (with a
    ``reference`` loss: J^T H_out J, H_out the double-backward Hessian of the mean in the outputs)."""
    theta = problem.parameter_vector().detach()
    out = _flat_outputs(problem, theta, x).detach()
    J = torch.autograd.functional.jacobian(lambda t: _flat_outputs(problem, t, x), theta)
    J = J.reshape(out.numel(), -1)
    if reference is not None:
        return J.T @ dense_output_hessian(reference, out, y) @ J
    if problem.loss == "cross_entropy":
        C = out.shape[-1]
        p = out.reshape(-1, C).softmax(-1)
        keep = (y.reshape(-1) != IGNORE_INDEX).double()
        blocks = [k * (torch.diag(pi) - torch.outer(pi, pi)) for pi, k in zip(p, keep, strict=True)]
        Hout = torch.block_diag(*blocks)
        N = keep.sum()
    else:
        Hout = 2.0 * torch.eye(out.numel(), dtype=out.dtype)
        N = out.numel()
    return J.T @ Hout @ J / N


def dense_gradient(problem: Problem, x: Tensor, y: Tensor, reference: Reference | None = None) -> Tensor:
    theta = problem.parameter_vector().detach().requires_grad_(True)
    (g,) = torch.autograd.grad(dense_loss(problem, x, y, reference)(theta), theta)
    return g


def available_devices() -> list[str]:
    """The devices this machine can run the suite on: the CPU always, CUDA when present (float64
    references need a device with float64: Apple's MPS has none)."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


DEVICES = available_devices()


def rel(a: Tensor | float, b: Tensor | float) -> float:
    """max |a - b| / max |b| (compared on the CPU in float64, wherever a and b live)."""
    a = torch.as_tensor(a).detach().to(device="cpu", dtype=torch.float64)
    b = torch.as_tensor(b).detach().to(device="cpu", dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
