"""Built-in model zoo, import-path models and output unwrapping."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from landscape.data import load_data
from landscape.errors import UserError
from landscape.models import (
    CNN,
    MLP,
    TransformerLM,
    build_model,
    list_models,
    model_info,
    unwrap_output,
)

BUILTINS = ["mlp", "cnn", "transformer"]


def _batch(name: str, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_data(model_info(name).default_data, samples=n, seq_len=16)
    return ds.x, ds.y


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@pytest.fixture
def isolated_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_list_models_and_info() -> None:
    models = list_models()
    assert list(models) == BUILTINS
    assert all(isinstance(d, str) and d and "\n" not in d for d in models.values())
    assert model_info("mlp").default_data == "digits"
    assert model_info("cnn").default_data == "digits"
    assert model_info("transformer").default_data == "text"
    assert {model_info(n).loss for n in BUILTINS} == {"cross_entropy"}
    assert model_info("transformer").as_dict()["task"] == "language_model"
    with pytest.raises(UserError, match="unknown built-in model 'resnet'"):
        model_info("resnet")


@pytest.mark.parametrize(
    ("name", "expected_shape"),
    [("mlp", (8, 10)), ("cnn", (8, 10)), ("transformer", (8, 16, 256))],
)
def test_builtin_forward_shapes(name: str, expected_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    x, y = _batch(name)
    out = model(x)
    assert out.shape == expected_shape
    assert torch.isfinite(out).all()
    loss = _loss(out, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_parameter_counts_are_small() -> None:
    counts = {n: sum(p.numel() for p in build_model(n).parameters()) for n in BUILTINS}
    assert counts["mlp"] == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert 3000 < counts["cnn"] < 5000
    assert 20_000 < counts["transformer"] < 60_000


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_are_deterministic_given_seed(name: str) -> None:
    torch.manual_seed(123)
    a = build_model(name).state_dict()
    torch.manual_seed(123)
    b = build_model(name).state_dict()
    torch.manual_seed(124)
    c = build_model(name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_cnn_accepts_flat_and_image_inputs() -> None:
    torch.manual_seed(0)
    model = build_model("cnn")
    x, _ = _batch("cnn")
    flat = model(x)
    image = model(x.view(-1, 1, 8, 8))
    assert torch.allclose(flat, image)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 16)]
    assert any(isinstance(m, nn.GELU) for m in model.modules())
    assert any(isinstance(m, nn.AvgPool2d) for m in model.modules())


def test_mlp_options() -> None:
    model = build_model("mlp", hidden=[32], activation="relu", num_classes=3)
    assert isinstance(model, MLP)
    assert model(torch.zeros(2, 64)).shape == (2, 3)
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, nn.Tanh) for m in build_model("mlp").modules())
    with pytest.raises(UserError, match="unknown activation 'swishy'"):
        build_model("mlp", activation="swishy")
    with pytest.raises(UserError, match="unknown option.*depth.*'mlp'"):
        build_model("mlp", depth=3)
    with pytest.raises(UserError, match="hidden width"):
        build_model("mlp", hidden=(0,))


def test_transformer_structure_and_options() -> None:
    model = build_model("transformer")
    assert isinstance(model, TransformerLM)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"LayerNorm", "GELU", "CausalSelfAttention", "Embedding"} <= kinds
    assert len(model.blocks) == 2 and model.blocks[0].attn.n_head == 2
    assert model.head.weight.data_ptr() != model.tok_emb.weight.data_ptr()  # untied
    # the causal mask is a non-persistent buffer: not in checkpoints
    assert not any("mask" in k for k in model.state_dict())
    bigger = build_model("transformer", n_layer=3, n_head=4, d_model=48, block_size=32)
    assert len(bigger.blocks) == 3 and bigger(torch.zeros(1, 32, dtype=torch.long)).shape == (1, 32, 256)
    with pytest.raises(UserError, match="block_size"):
        bigger(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(UserError, match="not divisible"):
        build_model("transformer", d_model=30, n_head=4)


def test_transformer_is_causal() -> None:
    torch.manual_seed(0)
    model = build_model("transformer").eval()
    idx = torch.randint(0, 256, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 7) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_transformer_does_not_use_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("scaled_dot_product_attention must not be used")

    monkeypatch.setattr(F, "scaled_dot_product_attention", forbidden)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", forbidden)
    model = build_model("transformer")
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 256)


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)  # torch's jvp decomps
@pytest.mark.parametrize("name", BUILTINS)
def test_forward_mode_ad_through_functional_call(name: str) -> None:
    """jvp of the loss matches a central finite difference; forward-over-reverse (HVP) runs."""
    torch.manual_seed(0)
    model = build_model(name).double()
    x, y = _batch(name, n=4)
    if x.is_floating_point():
        x = x.double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    tangent = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def loss_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return _loss(functional_call(model, p, (x,)), y)

    value, directional = jvp(loss_fn, (params,), (tangent,))
    eps = 1e-6
    plus = loss_fn({k: v + eps * tangent[k] for k, v in params.items()})
    minus = loss_fn({k: v - eps * tangent[k] for k, v in params.items()})
    assert torch.allclose(value, loss_fn(params))
    assert torch.allclose(directional, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-8)

    _, hvp = jvp(grad(loss_fn), (params,), (tangent,))
    assert set(hvp) == set(params)
    assert all(torch.isfinite(t).all() for t in hvp.values())
    assert sum(float((hvp[k] * tangent[k]).sum()) for k in params) != 0.0


# ------------------------------------------------------------------------------------------------
# Import paths


def _write_module(directory: Path, source: str) -> str:
    name = f"user_models_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


MODULE_SOURCE = """
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Linear(64, 5))

    def make_sized(width=3):
        return nn.Linear(64, width)

    instance = nn.Linear(64, 2)

    def broken():
        raise RuntimeError("factory exploded")

    def not_a_model():
        return 42

    NUMBER = 7
"""


def test_import_path_model_from_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_sys_path: None
) -> None:
    monkeypatch.chdir(tmp_path)
    mod = _write_module(tmp_path, MODULE_SOURCE)
    model = build_model(f"{mod}:make")
    assert isinstance(model, nn.Sequential) and model(torch.zeros(3, 64)).shape == (3, 5)
    assert str(tmp_path) in sys.path
    assert build_model(f"{mod}:make_sized", width=4).out_features == 4
    assert isinstance(build_model(f"{mod}.make"), nn.Sequential)
    assert build_model(f"{mod}:instance").out_features == 2
    assert isinstance(build_model(f"{tmp_path / (mod + '.py')}:make"), nn.Sequential)


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("missing", "cannot import model factory '.*:missing'"),
        ("broken", "model factory '.*:broken' failed: RuntimeError: factory exploded"),
        ("not_a_model", "returned a int, not a torch.nn.Module"),
        ("NUMBER", "is a int, not a callable"),
    ],
)
def test_import_path_model_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_sys_path: None, attr: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    mod = _write_module(tmp_path, MODULE_SOURCE)
    with pytest.raises(UserError, match=message):
        build_model(f"{mod}:{attr}")


def test_unknown_model_and_missing_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_sys_path: None
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="unknown model 'resnet50'.*mlp, cnn, transformer"):
        build_model("resnet50")
    with pytest.raises(
        UserError, match="cannot import model factory 'no_such_pkg_xyz:make'.*No module named"
    ):
        build_model("no_such_pkg_xyz:make")
    with pytest.raises(UserError, match="cannot import model factory 'missing.py:make'"):
        build_model("missing.py:make")
    with pytest.raises(UserError, match="non-empty"):
        build_model("  ")
    (tmp_path / "bad_syntax_mod_q.py").write_text("def broken(:\n")
    with pytest.raises(UserError, match="SyntaxError"):
        build_model("bad_syntax_mod_q:broken")


# ------------------------------------------------------------------------------------------------
# Output unwrapping


def test_unwrap_output() -> None:
    t = torch.ones(2, 3)
    assert unwrap_output(t) is t
    assert unwrap_output((t, torch.zeros(1))) is t
    assert unwrap_output([t]) is t
    assert unwrap_output({"loss": torch.zeros(()), "logits": t}) is t
    assert unwrap_output({"out": t, "aux": torch.zeros(1)}) is t
    assert unwrap_output(SimpleNamespace(logits=t, loss=None)) is t
    assert unwrap_output(({"logits": t},)) is t
    with pytest.raises(UserError, match="model output of type str"):
        unwrap_output("nope")
    with pytest.raises(UserError, match="empty"):
        unwrap_output(())
    with pytest.raises(UserError, match="empty"):
        unwrap_output({})


def test_cnn_class_directly() -> None:
    model = CNN(num_classes=4)
    assert model(torch.zeros(2, 8, 8)).shape == (2, 4)
