"""Safe checkpoint loading, unwrapping, strict loading into models and atomic saving."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from landscape.checkpoints import (
    load_checkpoint,
    load_into_model,
    load_state_dict,
    read_checkpoint_metadata,
    save_atomic,
    strip_common_prefix,
    unsafe_globals,
)
from landscape.errors import UserError
from landscape.models import build_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", hidden=(8,))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


class MarkerPayload:
    """Unpickling this would run ``touch <marker>`` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------------
# Layouts


def test_plain_state_dict_round_trip(tmp_path: Path) -> None:
    model = _model()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "w.pt")
    loaded = load_state_dict(tmp_path / "w.pt")
    assert _same(loaded, sd)
    fresh = build_model("mlp", hidden=(8,))
    assert load_into_model(fresh, loaded) is fresh
    assert _same(fresh.state_dict(), sd)
    assert read_checkpoint_metadata(tmp_path / "w.pt") is None


@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".bin"])
def test_other_torch_suffixes(tmp_path: Path, suffix: str) -> None:
    sd = _model().state_dict()
    torch.save(sd, tmp_path / f"w{suffix}")
    assert _same(load_state_dict(str(tmp_path / f"w{suffix}")), sd)


def test_lightning_layout(tmp_path: Path) -> None:
    sd = _model().state_dict()
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        "hyper_parameters": {"lr": 0.1, "name": "mlp"},
    }
    torch.save(ckpt, tmp_path / "epoch=3.ckpt")
    assert _same(load_state_dict(tmp_path / "epoch=3.ckpt"), sd)


def test_ddp_prefix(tmp_path: Path) -> None:
    sd = _model().state_dict()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")
    assert _same(load_state_dict(tmp_path / "ddp.pt"), sd)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1}, tmp_path / "b.pt")
    assert _same(load_state_dict(tmp_path / "b.pt"), sd)


def test_run_checkpoint_with_config(tmp_path: Path) -> None:
    sd = _model().state_dict()
    config = {"model": "mlp", "data": "digits", "loss": "cross_entropy", "seed": 0, "hidden": [8]}
    save_atomic(
        {"model": sd, "optimizer": {"lr": 0.1}, "step": 10, "config": config}, tmp_path / "run" / "final.pt"
    )
    path = tmp_path / "run" / "final.pt"
    assert _same(load_state_dict(path), sd)
    assert read_checkpoint_metadata(path) == config
    state, meta = load_checkpoint(path)
    assert _same(state, sd) and meta == config


def test_safetensors(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in _model().state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    assert _same(load_state_dict(tmp_path / "w.safetensors"), sd)
    assert read_checkpoint_metadata(tmp_path / "w.safetensors") is None
    save_file(sd, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    assert read_checkpoint_metadata(tmp_path / "m.safetensors") == {"format": "pt"}
    config = {"model": "mlp", "data": "digits"}
    save_atomic(sd, tmp_path / "c.safetensors", metadata={"config": json.dumps(config)})
    assert read_checkpoint_metadata(tmp_path / "c.safetensors") == config
    assert _same(load_state_dict(tmp_path / "c.safetensors"), sd)


def test_strip_common_prefix_only_when_shared() -> None:
    t = torch.zeros(1)
    assert set(strip_common_prefix({"module.model.a": t, "module.model.b": t})) == {"a", "b"}
    assert set(strip_common_prefix({"model.a": t, "head.b": t})) == {"model.a", "head.b"}


def test_prefix_restored_for_wrapper_models(tmp_path: Path) -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(3, 2)

    src = Wrapper()
    torch.save(src.state_dict(), tmp_path / "w.pt")  # keys model.weight, model.bias get stripped
    loaded = load_state_dict(tmp_path / "w.pt")
    assert set(loaded) == {"weight", "bias"}
    dst = load_into_model(Wrapper(), loaded)
    assert torch.equal(dst.model.weight, src.model.weight)


# ------------------------------------------------------------------------------------------------
# Pickles: refused unless trusted


def test_pickled_module_refused_then_loaded_when_trusted(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(UserError) as info:
        load_state_dict(tmp_path / "full.pt")
    message = str(info.value)
    assert "--trust-checkpoint" in message
    assert "torch.nn.modules.container.Sequential" in message
    assert "\n" not in message
    loaded = load_state_dict(tmp_path / "full.pt", trust_checkpoint=True)
    assert _same(loaded, model.state_dict())
    torch.save({"model": model, "config": {"model": "x"}}, tmp_path / "wrapped.pt")
    assert _same(load_state_dict(tmp_path / "wrapped.pt", trust_checkpoint=True), model.state_dict())
    assert read_checkpoint_metadata(tmp_path / "wrapped.pt", trust_checkpoint=True) == {"model": "x"}
    with pytest.raises(UserError, match="--trust-checkpoint"):
        read_checkpoint_metadata(tmp_path / "wrapped.pt")


@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_never_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(2), "evil": MarkerPayload(marker)}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=4)
    with pytest.raises(UserError) as info:
        load_state_dict(path)
    assert f"{os.system.__module__}.system" in str(info.value)
    assert "--trust-checkpoint" in str(info.value)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        read_checkpoint_metadata(path)
    assert f"{os.system.__module__}.system" in unsafe_globals(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Bad files


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found: .*nope.pt"):
        load_state_dict(tmp_path / "nope.pt")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported checkpoint type '.h5'"):
        load_state_dict(tmp_path / "w.h5")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(UserError, match="not a file"):
        load_state_dict(tmp_path / "dir.pt")


def test_corrupt_files(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in _model().state_dict().items()}
    torch.save(sd, tmp_path / "good.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(sd, str(tmp_path / "good.safetensors"))
    cases = {
        "garbage.pt": b"this is not a checkpoint at all",
        "empty.pt": b"",
        "truncated.pt": (tmp_path / "good.pt").read_bytes()[:400],
        "truncated_legacy.pt": (tmp_path / "legacy.pt").read_bytes()[:400],
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......",
        "truncated.safetensors": (tmp_path / "good.safetensors").read_bytes()[:200],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=f"cannot read checkpoint .*{name}.*corrupt") as info:
            load_state_dict(tmp_path / name)
        assert "\n" not in str(info.value) and "--trust-checkpoint" not in str(info.value), name
    assert _same(load_state_dict(tmp_path / "legacy.pt"), sd)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([torch.zeros(1)], "holds a list, not a dict of tensors"),
        ({"epoch": 3, "lr": 0.1}, "entry 'epoch' is a int"),
        ({}, "empty dict"),
        ({"state_dict": {"a": 1}}, "entry 'state_dict' is a dict"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, payload: object, message: str) -> None:
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(UserError, match=message):
        load_state_dict(tmp_path / "x.pt")


# ------------------------------------------------------------------------------------------------
# Loading into a model


def test_shape_mismatch_message() -> None:
    sd = build_model("mlp", hidden=(8,)).state_dict()
    with pytest.raises(UserError) as info:
        load_into_model(build_model("mlp", hidden=(16,)), sd)
    message = str(info.value)
    assert "checkpoint does not match the model" in message
    assert "shape mismatch" in message and "net.0.weight: checkpoint [8, 64] vs model [16, 64]" in message
    assert "\n" not in message


def test_missing_and_unexpected_keys_message() -> None:
    sd = build_model("mlp", hidden=(8,)).state_dict()
    with pytest.raises(UserError, match=r"missing key\(s\): net.4.weight, net.4.bias.*unexpected") as info:
        load_into_model(build_model("mlp", hidden=(8, 8)), {**sd, "extra.weight": torch.zeros(1)})
    assert "extra.weight" in str(info.value)
    many = {f"layer{i}.weight": torch.zeros(1) for i in range(10)}
    with pytest.raises(UserError, match=r"10 unexpected key\(s\): .*\(\+7 more\)"):
        load_into_model(nn.Linear(2, 2), {**nn.Linear(2, 2).state_dict(), **many})


def test_non_finite_weights_rejected() -> None:
    model = _model()
    sd = model.state_dict()
    sd["net.2.bias"] = sd["net.2.bias"].clone()
    sd["net.2.bias"][1] = float("nan")
    with pytest.raises(UserError, match="tensor 'net.2.bias' contains NaN or infinite"):
        load_into_model(model, sd)
    sd["net.2.bias"][1] = float("inf")
    with pytest.raises(UserError, match="net.2.bias"):
        load_into_model(model, sd)


def test_transformer_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_model("transformer")
    save_atomic({"model": src.state_dict(), "config": {"model": "transformer"}}, tmp_path / "final.pt")
    torch.manual_seed(2)
    dst = load_into_model(build_model("transformer"), load_state_dict(tmp_path / "final.pt"))
    idx = torch.randint(0, 256, (1, 10))
    assert torch.equal(src(idx), dst(idx))


# ------------------------------------------------------------------------------------------------
# Atomic saving


def test_save_atomic_leaves_no_partial_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ckpt.pt"
    save_atomic({"w": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    with pytest.raises(Exception):
        save_atomic({"w": torch.zeros(3), "bad": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    with pytest.raises(UserError, match="dict of tensors"):
        save_atomic({"a": 1}, tmp_path / "x.safetensors")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
