"""Property-based tests of the curvature operators on random small models, shapes and dtypes.

Hypothesis draws a model (an MLP, a CNN or a causal transformer with LayerNorm and GELU, each of
random widths), the number of samples, the loss, the dtype (float32 or float64), the route of
the Hessian-vector product and the probe vectors; every test checks an identity that holds for
every draw:

* symmetry: <u, H v> = <H u, v> and <u, G v> = <G u, v>;
* linearity: H (a u + b v) = a H u + b H v;
* the GGN is positive semi-definite: <v, G v> >= 0 (a convex loss of the outputs);
* H = G + H_F, with the functional Hessian H_F = (1/N) sum_i sum_k [d l_i / d f_k] grad^2 f_k(x_i)
  formed independently by double-backward through the residual-weighted outputs (Singh et al.
  2021, arXiv:2106.16225, Eq. 3; Functional-SAM, Eq. 8);
* the products do not depend on how the data is cut into batches.

Deterministic (``derandomize``: the same examples every run) and small (a few examples each).
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from landscape.curvature.operators import GGNOperator, HessianOperator
from landscape.models import build_model
from landscape.problem import Problem

PROPERTY = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

TOLERANCE = {torch.float32: 2e-4, torch.float64: 1e-10}
"""Relative accuracy of an identity between products (rounding of a few hundred operations)."""


@st.composite
def problems(draw, kinds=("mlp", "cnn", "transformer", "mse")) -> Problem:
    """A random small problem: model of random widths, data, loss and dtype."""
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    n = draw(st.integers(2, 9))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    loss = "cross_entropy"
    if kind == "mlp" or kind == "mse":
        width = draw(st.integers(2, 5))
        hidden = tuple(draw(st.lists(st.integers(2, 6), min_size=1, max_size=2)))
        classes = draw(st.integers(2, 4))
        model = build_model("mlp", in_features=width, hidden=hidden, num_classes=classes)
        x = torch.randn(n, width, generator=g)
        if kind == "mse":
            loss, y = "mse", torch.randn(n, classes, generator=g)
        else:
            y = torch.randint(0, classes, (n,), generator=g)
    elif kind == "cnn":
        channels = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        classes = draw(st.integers(2, 3))
        model = build_model("cnn", num_classes=classes, channels=channels, image_size=4)
        x = torch.rand(n, 1, 4, 4, generator=g)
        y = torch.randint(0, classes, (n,), generator=g)
    else:
        heads = draw(st.sampled_from([1, 2]))
        d_model = heads * draw(st.integers(2, 3))
        vocab, block = draw(st.integers(4, 7)), draw(st.integers(2, 4))
        model = build_model(
            "transformer", vocab_size=vocab, block_size=block, n_layer=1, n_head=heads, d_model=d_model
        )
        x = torch.randint(0, vocab, (n, block), generator=g)
        y = torch.randint(0, vocab, (n, block), generator=g)
    model = model.to(dtype)
    if y.is_floating_point():
        y = y.to(dtype)
    return Problem(model, (x.to(dtype) if x.is_floating_point() else x, y), loss, dtype=dtype)


def probes(problem: Problem, seed: int, k: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(problem.num_params, k, generator=g, dtype=torch.float64).to(problem.dtype)


def close(a: torch.Tensor | float, b: torch.Tensor | float, scale: float, dtype: torch.dtype) -> bool:
    """``|a - b| <= tol * scale`` elementwise, with the dtype's tolerance."""
    diff = (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs()
    return bool((diff <= TOLERANCE[dtype] * scale + 1e-300).all())


def norm(t: torch.Tensor) -> float:
    return float(t.double().norm())


HVP_ROUTES = st.sampled_from(["reuse", "double-backward", "forward-over-reverse"])


@PROPERTY
@given(problem=problems(), method=HVP_ROUTES, seed=st.integers(0, 2**16))
def test_hessian_and_ggn_products_are_symmetric(problem, method, seed):
    U = probes(problem, seed)
    u, v = U[:, 0], U[:, 1]
    for op in (HessianOperator(problem, method=method), GGNOperator(problem)):
        Hu, Hv = op.matvec(u), op.matvec(v)
        scale = norm(u) * norm(Hv) + norm(Hu) * norm(v)
        assert close(u.double() @ Hv.double(), Hu.double() @ v.double(), scale, problem.dtype)


@PROPERTY
@given(
    problem=problems(),
    method=HVP_ROUTES,
    seed=st.integers(0, 2**16),
    a=st.floats(-3, 3, allow_nan=False),
    b=st.floats(-3, 3, allow_nan=False),
)
def test_hessian_products_are_linear(problem, method, seed, a, b):
    H = HessianOperator(problem, method=method)
    U = probes(problem, seed)
    u, v = U[:, 0], U[:, 1]
    together = H.matvec(a * u + b * v)
    apart = a * H.matvec(u) + b * H.matvec(v)
    scale = (abs(a) * norm(u) + abs(b) * norm(v)) * max(
        norm(H.matvec(u)) / norm(u), norm(H.matvec(v)) / norm(v)
    )
    assert close(together, apart, scale, problem.dtype)
    block = H.matmat(U)  # a block of columns is the columns one by one
    assert close(block[:, 0], H.matvec(u), norm(block), problem.dtype)


@PROPERTY
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_the_ggn_is_positive_semi_definite(problem, seed):
    G = GGNOperator(problem)
    V = probes(problem, seed, k=4)
    GV = G.matmat(V)
    quadratic = (V.double() * GV.double()).sum(0)
    scale = max(norm(GV[:, i]) * norm(V[:, i]) for i in range(V.shape[1]))
    assert bool((quadratic >= -TOLERANCE[problem.dtype] * scale - 1e-300).all()), quadratic


def functional_hessian_product(problem: Problem, v: torch.Tensor) -> torch.Tensor:
    """H_F v by double-backward through sum_i <r_i, f(x_i; theta)>, with the residual
    r_i = d l_i / d f (held fixed) at the current parameters: the curvature of the model itself,
    weighted by the loss's first derivative, independent of the operators under test."""
    total = torch.zeros(problem.num_params, dtype=torch.float64)
    for batch in problem.batches:
        leaves = {n: p.detach().clone().requires_grad_(True) for n, p in problem.params.items()}
        params = [leaves[n] for n in problem.param_names]
        outputs = problem.outputs(leaves, batch.inputs)
        (residual,) = torch.autograd.grad(problem.loss_function.sum(outputs, batch.targets), outputs)
        weighted = (residual.detach() * outputs).sum()
        grads = torch.autograd.grad(weighted, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        second = torch.autograd.grad(flat @ v.to(flat.dtype), params, allow_unused=True)
        total += torch.cat(
            [
                (s if s is not None else torch.zeros_like(p)).reshape(-1)
                for s, p in zip(second, params, strict=True)
            ]
        ).double()
    return total / problem.num_targets


@PROPERTY
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_the_hessian_is_the_ggn_plus_the_functional_hessian(problem, seed):
    v = probes(problem, seed, k=1)[:, 0]
    Hv = HessianOperator(problem, method="double-backward").matvec(v).double()
    Gv = GGNOperator(problem).matvec(v).double()
    HFv = functional_hessian_product(problem, v)
    scale = norm(v) * max(norm(Hv), norm(Gv), norm(HFv)) / norm(v)
    assert close(Hv, Gv + HFv, scale, problem.dtype)


@PROPERTY
@given(problem=problems(), seed=st.integers(0, 2**16), cut=st.integers(1, 4))
def test_products_do_not_depend_on_the_batches(problem, seed, cut):
    x = torch.cat([b.inputs for b in problem.batches])
    y = torch.cat([b.targets for b in problem.batches])
    again = Problem(problem.model, (x, y), problem.loss, dtype=problem.dtype, batch_size=cut)
    assert len(again.batches) == -(-len(x) // cut)
    V = probes(problem, seed)
    for make in (lambda p: HessianOperator(p, method="double-backward"), GGNOperator):
        whole, cut_up = make(problem).matmat(V), make(again).matmat(V)
        assert close(whole, cut_up, norm(whole), problem.dtype)
    assert close(problem.loss_value(), again.loss_value(), abs(problem.loss_value()), problem.dtype)


def test_the_properties_fail_on_a_broken_operator():
    """The identities are strict enough to catch a wrong product (a test that cannot fail is a defect)."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=3, hidden=(4,), num_classes=3).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 3, (6,))
    problem = Problem(model, (x, y), "cross_entropy", dtype=torch.float64)
    v = probes(problem, 1, k=1)[:, 0]
    Hv = HessianOperator(problem, method="double-backward").matvec(v).double()
    Gv = GGNOperator(problem).matvec(v).double()
    HFv = functional_hessian_product(problem, v)
    assert close(Hv, Gv + HFv, norm(Hv), torch.float64)
    assert not close(Hv, Gv, norm(Hv), torch.float64)  # the functional part is not negligible here
    assert not close(Hv, Gv + 1.001 * HFv, norm(Hv), torch.float64)
