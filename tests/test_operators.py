"""Curvature operators against dense float64 references (double-backward Hessians, explicit Jacobians)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import DEVICES, dense_ggn, dense_gradient, dense_hessian, rel, tiny_case
from landscape.curvature import operators
from landscape.curvature.linear_operator import DenseOperator
from landscape.curvature.operators import (
    BlockOperator,
    GGNOperator,
    HessianOperator,
    functional_hessian_operator,
)
from landscape.errors import UserError
from landscape.problem import Problem

KINDS = ["mlp", "cnn", "lm", "mse"]
HVP_METHODS = ["reuse", "forward-over-reverse", "double-backward"]


@pytest.fixture(
    scope="module",
    params=[(kind, device) for kind in KINDS for device in DEVICES],
    ids=[f"{kind}-{device}" for kind in KINDS for device in DEVICES],
)
def case(request):
    """A tiny float64 problem on each device this machine has, with dense CPU references."""
    kind, device = request.param
    model, (x, y), loss = tiny_case(kind)
    reference = Problem(model, (x, y), loss, dtype=torch.float64)
    problem = Problem(model, (x, y), loss, dtype=torch.float64, device=device)
    return {
        "kind": kind,
        "device": device,
        "model": model,
        "x": x,
        "y": y,
        "loss": loss,
        "problem": problem,
        "reference": reference,
        "H": dense_hessian(reference, x, y),
        "G": dense_ggn(reference, x, y),
    }


@pytest.mark.parametrize("method", HVP_METHODS)
def test_hessian_routes_match_double_backward_reference(case, method):
    H = HessianOperator(case["problem"], method=method)
    assert rel(H.to_dense(), case["H"]) < 1e-12
    assert H.products == case["problem"].num_params


@pytest.mark.parametrize("method", ["reuse", "stream"])
def test_ggn_matches_explicit_jacobian(case, method):
    G = GGNOperator(case["problem"], method=method)
    assert rel(G.to_dense(), case["G"]) < 1e-12


def test_functional_hessian_is_h_minus_g_and_ggn_is_psd(case):
    HF = functional_hessian_operator(case["problem"]).to_dense()
    assert rel(HF, case["H"] - case["G"]) < 1e-11
    eig = torch.linalg.eigvalsh(case["G"])
    assert eig.min() > -1e-12 * eig.abs().max()
    if case["kind"] != "mse":  # a nonlinear net has a nonzero functional part
        assert HF.abs().max() > 1e-6


@pytest.mark.parametrize("method", HVP_METHODS)
def test_symmetry(case, method):
    H = HessianOperator(case["problem"], method=method)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(2, H.n, generator=g, dtype=torch.float64)
    assert abs(float(u @ H.matvec(v).cpu()) - float(H.matvec(u).cpu() @ v)) < 1e-12 * float(
        u.norm() * v.norm() * case["H"].abs().max()
    )


@pytest.mark.parametrize("batch_size", [1, 5])
def test_batch_size_invariance(case, batch_size):
    x, y = case["x"], case["y"]
    chunked = Problem(
        case["model"], (x, y), case["loss"], batch_size=batch_size, dtype=torch.float64, device=case["device"]
    )
    assert len(chunked.batches) > 1
    V = torch.randn(chunked.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = case["problem"]
    for method in HVP_METHODS:
        assert rel(HessianOperator(chunked, method=method).matmat(V), case["H"] @ V) < 1e-12
    assert rel(GGNOperator(chunked, method="stream").matmat(V), case["G"] @ V) < 1e-12
    assert rel(chunked.gradient(), whole.gradient()) < 1e-12
    assert abs(chunked.loss_value() - whole.loss_value()) < 1e-13
    for method in HVP_METHODS:  # read off the retained outputs with "reuse", a forward pass otherwise
        H = HessianOperator(chunked, method=method)
        assert abs(H.loss_value() - whole.loss_value()) < 1e-13 * max(1.0, abs(whole.loss_value()))
        assert rel(H.gradient(), whole.gradient()) < 1e-12


def test_gradient_matches_reference(case):
    reference = dense_gradient(case["reference"], case["x"], case["y"])
    assert rel(case["problem"].gradient(), reference) < 1e-12


def test_float32_agrees_with_float64(case):
    p32 = Problem(
        case["model"], (case["x"], case["y"]), case["loss"], dtype=torch.float32, device=case["device"]
    )
    V = torch.randn(p32.num_params, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for method in HVP_METHODS:
        hv = HessianOperator(p32, method=method).matmat(V.float()).double()
        assert hv.dtype == torch.float64
        assert rel(hv, case["H"] @ V) < 1e-4
    assert rel(GGNOperator(p32).matmat(V.float()).double(), case["G"] @ V) < 1e-4


def test_parameter_subset_and_blocks(case):
    problem = case["problem"]
    name = problem.param_names[0]
    sub = Problem(
        case["model"],
        (case["x"], case["y"]),
        case["loss"],
        params=[name],
        dtype=torch.float64,
        device=case["device"],
    )
    sl = problem.blocks()[0][1]
    ref_block = case["H"][sl, sl]
    assert rel(HessianOperator(sub).to_dense(), ref_block) < 1e-12
    assert rel(BlockOperator(DenseOperator(case["H"]), sl).to_dense(), ref_block) == 0.0


@pytest.mark.parametrize("batch_size", [None, 3])
@pytest.mark.parametrize("method", HVP_METHODS)
def test_block_products_confined_to_the_block_match_the_dense_hessian(case, method, batch_size, monkeypatch):
    """H_bb V for single tensors, a run of whole tensors and an unaligned slice, on every route.

    reuse and double-backward confine the backward to the block; forward-over-reverse and the
    unaligned slice take the block of a full product. Both agree with the dense Hessian, and the
    confined route really is taken where it applies (the full product is made unavailable)."""
    problem = Problem(
        case["model"],
        (case["x"], case["y"]),
        case["loss"],
        batch_size=batch_size,
        dtype=torch.float64,
        device=case["device"],
    )
    assert (len(problem.batches) > 1) == (batch_size is not None)
    H = HessianOperator(problem, method=method)
    offsets = problem.offsets
    blocks = [sl for _, sl in problem.blocks()]
    blocks += [slice(offsets[1], offsets[3]), slice(offsets[0] + 1, offsets[1] + 2)]
    g = torch.Generator().manual_seed(5)
    for sl in blocks:
        size = sl.stop - sl.start
        V = torch.randn(size, 3, generator=g, dtype=torch.float64)
        aligned = sl.start in offsets and sl.stop in offsets
        confined = aligned and method != "forward-over-reverse"
        before = H.products
        with monkeypatch.context() as patch:
            if confined:  # the block of a full product must not be used
                patch.setattr(H, "matmat", lambda *a, **k: pytest.fail("full product used"))
            out = BlockOperator(H, sl).matmat(V)
        assert rel(out, case["H"][sl, sl] @ V) < 1e-12
        assert H.products - before == 3
        assert (H.diagonal_block_matmat(sl, V) is not None) == confined


def test_operator_algebra_and_scipy_view(case):
    problem = case["problem"]
    H, G = HessianOperator(problem), GGNOperator(problem)
    combo = 2.0 * H - G
    v = torch.randn(problem.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert rel(combo.matvec(v), (2 * case["H"] - case["G"]) @ v) < 1e-12
    sv = H.to_scipy().matvec(v.numpy())  # numpy in, numpy out: from any device
    assert rel(torch.from_numpy(sv), case["H"] @ v) < 1e-12


@pytest.mark.parametrize("batch_size", [None, 2])
def test_products_written_into_out_match_the_dense_hessian(case, batch_size):
    """``matmat(V, out=...)``: every route, one or several retained graphs (the later ones added
    into ``out``), blocks narrower than ``V``, a float32 problem into a float64 ``out`` and the
    sum H - G; the result is ``out`` itself and equals the dense product."""
    x, y = case["x"], case["y"]
    problem = Problem(
        case["model"], (x, y), case["loss"], batch_size=batch_size, dtype=torch.float64, device=case["device"]
    )
    V = torch.randn(problem.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    V = V.to(case["device"])
    H_dense, G_dense = case["H"].to(case["device"]), case["G"].to(case["device"])
    for method in HVP_METHODS:
        H = HessianOperator(problem, method=method, block_size=2)
        out = torch.full_like(V, float("nan"))
        assert H.matmat(V, out=out) is out
        assert rel(out, H_dense @ V) < 1e-12 and H.products == 3
        column = torch.full_like(V[:, 0], float("nan"))  # a single vector, as Lanczos passes it
        assert rel(H.matmat(V[:, 0], out=column), H_dense @ V[:, 0]) < 1e-12
    H_F = HessianOperator(problem) - GGNOperator(problem)
    out = torch.full_like(V, float("nan"))
    assert rel(H_F.matmat(V, out=out), (H_dense - G_dense) @ V) < 1e-12
    single = Problem(case["model"], (x, y), case["loss"], batch_size=batch_size, device=case["device"])
    out = torch.full_like(V, float("nan"))
    HessianOperator(single, method="reuse").matmat(V[:, :1].float(), out=out[:, :1])
    assert rel(out[:, :1], H_dense @ V[:, :1]) < 1e-5 and bool(out[:, 1:].isnan().all())
    with pytest.raises(ValueError, match="out must have shape"):
        HessianOperator(problem).matmat(V, out=torch.empty_like(V[:, :2]))


def test_out_on_an_indexed_device_matches_an_operator_on_the_unindexed_one():
    """A tensor reports ``mps:0``/``cuda:0`` where an operator may hold ``mps``/``cuda``."""
    from landscape.curvature.linear_operator import same_device

    d = torch.device
    assert same_device(d("mps", 0), d("mps")) and same_device(d("cuda"), d("cuda", 1))
    assert same_device(d("cuda", 0), d("cuda", 0)) and same_device(d("cpu"), d("cpu"))
    assert not same_device(d("cuda", 0), d("cuda", 1)) and not same_device(d("cuda", 0), d("cpu"))


def test_sums_of_operators_add_in_place_and_leave_their_input_alone():
    """A sum scales and adds into its first term's product; an operator that returns its input
    (the identity) must not see that input changed."""
    from landscape.curvature.linear_operator import LinearOperator, SumOperator

    class Identity(LinearOperator):
        def _matmat(self, V: torch.Tensor) -> torch.Tensor:
            return V

    g = torch.Generator().manual_seed(5)
    A = torch.randn(6, 6, dtype=torch.float64, generator=g)
    A = A + A.T
    V = torch.randn(6, 3, dtype=torch.float64, generator=g)
    kept = V.clone()
    identity = Identity(6, torch.float64)
    for terms, dense in (
        ([(-2.0, identity), (3.0, DenseOperator(A))], -2.0 * torch.eye(6, dtype=torch.float64) + 3.0 * A),
        ([(1.0, identity), (1.0, identity)], 2.0 * torch.eye(6, dtype=torch.float64)),
        ([(0.5, DenseOperator(A)), (-1.0, identity)], 0.5 * A - torch.eye(6, dtype=torch.float64)),
    ):
        assert rel(SumOperator(terms).matmat(V), dense @ kept) < 1e-14
        assert torch.equal(V, kept)


def test_ignore_index_targets_are_skipped():
    model, (x, y), loss = tiny_case("lm")
    y = y.clone()
    y[0, :2] = -100
    y[2, 4] = -100
    problem = Problem(model, (x, y), loss, dtype=torch.float64, batch_size=2)
    assert problem.num_targets == y.numel() - 3
    assert rel(HessianOperator(problem).to_dense(), dense_hessian(problem, x, y)) < 1e-12
    assert rel(GGNOperator(problem).to_dense(), dense_ggn(problem, x, y)) < 1e-12


class SDPAModel(nn.Module):
    """Attention through F.scaled_dot_product_attention (its CPU kernels lack forward-mode AD)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.head(F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_auto_falls_back_when_forward_mode_is_unsupported():
    torch.manual_seed(0)
    model = SDPAModel().double()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 5))
    problem = Problem(model, (x, y), dtype=torch.float64)
    H = HessianOperator(problem, memory_budget=0)  # no room to keep graphs: must stream
    assert H.method in ("forward-over-reverse", "double-backward")
    reference = dense_hessian(problem, x, y)
    assert rel(H.to_dense(), reference) < 1e-12
    # every route works on F.scaled_dot_product_attention (the problem runs it on its math path)
    for method in HVP_METHODS:
        assert rel(HessianOperator(problem, method=method).to_dense(), reference) < 1e-12
    assert rel(GGNOperator(problem, method="stream").to_dense(), dense_ggn(problem, x, y)) < 1e-12


def test_auto_reuses_graphs_when_they_fit_and_streams_otherwise(monkeypatch):
    model, (x, y), loss = tiny_case("mlp")
    problem = Problem(model, (x, y), loss, dtype=torch.float64)
    monkeypatch.setattr(operators, "_REUSE_MARGIN", 0.0)  # forward-over-reverse never wins
    assert HessianOperator(problem).method == "reuse"
    streaming = HessianOperator(problem, memory_budget=0)
    # no room for graphs: the faster streaming route, timed on the first chunk
    assert set(streaming.route_seconds) == {"forward-over-reverse", "double-backward"}
    assert streaming.method == min(streaming.route_seconds, key=streaming.route_seconds.get)
    assert streaming._graphs is None
    assert GGNOperator(problem, memory_budget=0).method == "stream"


@pytest.mark.parametrize("case", ["mlp", "lm"])
def test_auto_times_the_retained_graph_against_forward_over_reverse(case, monkeypatch):
    """When the graphs fit, auto times one product of each on the first chunk and keeps the
    retained graph unless forward-over-reverse is clearly faster; either way, exact products.
    Below a graph size where the retained graph always wins, nothing is timed."""
    model, (x, y), loss = tiny_case(case)
    problem = Problem(model, (x, y), loss, dtype=torch.float64)
    reference = dense_hessian(problem, x, y)
    small = HessianOperator(problem)
    assert small.method == "reuse" and small.route_seconds == {}
    monkeypatch.setattr(operators, "_TIME_ROUTES_BYTES", 0)  # as if the graph were large
    if problem.device.type == "cpu":  # timed on accelerators; on a CPU only when asked
        assert HessianOperator(problem).route_seconds == {}
        monkeypatch.setattr(operators, "_TIME_ROUTES_ON_CPU", True)
    H = HessianOperator(problem)
    assert set(H.route_seconds) == {"reuse", "forward-over-reverse"}
    faster = H.route_seconds["forward-over-reverse"] <= operators._REUSE_MARGIN * H.route_seconds["reuse"]
    assert H.method == ("forward-over-reverse" if faster else "reuse")
    monkeypatch.setattr(operators, "_REUSE_MARGIN", float("inf"))  # forward-over-reverse always wins
    forward = HessianOperator(problem)
    assert forward.method == "forward-over-reverse" and forward._graphs is None
    assert rel(forward.to_dense(), reference) < 1e-12
    monkeypatch.setattr(operators, "_REUSE_MARGIN", 0.0)
    reuse = HessianOperator(problem)
    assert reuse.method == "reuse" and reuse._graphs is not None
    assert rel(reuse.to_dense(), reference) < 1e-12


def test_reuse_graph_survives_in_place_model_updates():
    model, (x, y), loss = tiny_case("mlp")
    problem = Problem(model, (x, y), loss, dtype=torch.float64)
    H = HessianOperator(problem, method="reuse")
    before = H.to_dense()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # PyHessian's retained graph breaks here; ours holds its own copies
    assert rel(H.to_dense(), before) == 0.0


def test_problem_errors():
    model, (x, y), loss = tiny_case("mlp")
    with pytest.raises(UserError, match="labels out of range"):
        Problem(model, (x, y + 10), loss)
    with pytest.raises(UserError, match="NaN"):
        Problem(model, (x * float("nan"), y), loss)
    with pytest.raises(UserError, match="differ in length"):
        Problem(model, (x, y[:-1]), loss)
    with pytest.raises(UserError, match="unknown loss"):
        Problem(model, (x, y), "hinge")
    with pytest.raises(UserError, match="matches no parameter"):
        Problem(model, (x, y), loss, params="nothing_like_this")
    with pytest.raises(UserError, match="empty"):
        Problem(model, (x[:0], y[:0]), loss)


def test_ggn_stream_single_columns_match_the_explicit_jacobian(case):
    """One or two columns take the dual-number route (outputs and J v in one forward pass), three
    or more the vmapped one; both are exact."""
    G = GGNOperator(case["problem"], method="stream")
    V = torch.randn(G.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert rel(G.matvec(V[:, 0]), case["G"] @ V[:, 0]) < 1e-12
    assert G._dual_works is True
    assert rel(G.matmat(V[:, :2]), case["G"] @ V[:, :2]) < 1e-12
    assert rel(G.matmat(V), case["G"] @ V) < 1e-12
    assert G.products == 6


def test_products_live_on_the_problem_device_and_the_data_on_the_host(case):
    problem = case["problem"]
    device = torch.device(case["device"])
    assert problem.device.type == device.type
    assert all(p.device.type == device.type for p in problem.params.values())
    for batch in problem.batches:  # the data stays where it was given (the host)
        assert batch.targets.device.type == "cpu"
        moved = problem.device_batch(batch)
        assert moved.targets.device.type == device.type
        if device.type == "cpu":
            assert moved is batch
    for op in (HessianOperator(problem), GGNOperator(problem)):
        out = op.matvec(torch.ones(op.n, dtype=torch.float64))
        assert out.device.type == device.type and op.device.type == device.type
    assert problem.describe()["device"] == str(problem.device)


def test_device_names_resolve_or_fail_with_one_line():
    from landscape.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(UserError, match="invalid device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")
        model, (x, y), loss = tiny_case("mlp")
        with pytest.raises(UserError, match="CUDA is not available"):
            Problem(model, (x, y), loss, device="cuda")
    else:
        with pytest.raises(UserError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_auto_device_under_torchrun_is_the_local_rank_gpu(monkeypatch):
    """With (simulated) CUDA, each torchrun process resolves 'auto' and 'cuda' to its LOCAL_RANK GPU."""
    from landscape import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert distributed.resolve_device("auto") == torch.device("cuda", 2)
    assert distributed.resolve_device("cuda") == torch.device("cuda", 2)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "5")  # more processes than GPUs: shared round-robin
    assert distributed.resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="4 CUDA device"):
        distributed.resolve_device("cuda:4")
