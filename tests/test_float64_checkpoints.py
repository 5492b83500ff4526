"""A float64 checkpoint comes back bit for bit wherever weights are loaded in float64.

Loading float64 weights into a float32 model and casting afterwards keeps 24 of the 53
significand bits; every path below builds the model in the asked dtype first. The checkpoints
come from real float64 training runs (AdamW updates in float64 fill the low bits) and from a
state dict of random float64 values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli.main import main
from landscape.errors import UserError
from landscape.models import build_model
from landscape.resolve import resolve_inputs
from landscape.runs import CONFIG_FILE, FINAL_FILE, latest_checkpoint, load_run_checkpoint
from landscape.train import RunConfig, train_run
from landscape.train.setup import prepare, restore

FAST = dict(model="mlp", dtype="float64", steps=3, batch_size=16, log_every=1, checkpoint_every=2)


class Stop(UserError):
    """Raised by a patched library function once it has seen the model it was given."""


def low_bits_used(state: dict[str, torch.Tensor]) -> bool:
    """Whether some weight needs more than float32's significand (else the test proves nothing)."""
    return any(v.is_floating_point() and not torch.equal(v, v.float().double()) for v in state.values())


def assert_bitwise(state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("float64")
    plain = root / "adamw"
    train_run(RunConfig(method="adamw", **FAST), plain)
    lora = root / "lora"
    train_run(RunConfig(method="lora", lora_rank=2, **FAST), lora)
    torch.manual_seed(0)
    model = build_model("mlp").double()
    state = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in model.state_dict().items()}
    raw = root / "random.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(raw))
    return {"plain": plain, "lora": lora, "raw": raw}


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / FINAL_FILE, weights_only=True)["model"]


def test_the_checkpoints_use_float64_bits(runs):
    assert low_bits_used(final_state(runs["plain"]))
    lora = final_state(runs["lora"])
    assert low_bits_used({k: v for k, v in lora.items() if "lora_" in k})


# --------------------------------------------------------------- resolve_inputs and its commands
def test_resolve_inputs_run_checkpoint_plain_state_dict_and_lora_adapters(runs):
    for run in ("plain", "lora"):
        inputs = resolve_inputs(runs[run] / FINAL_FILE, dtype=torch.float64)
        assert_bitwise(final_state(runs[run]), inputs.model)
    from safetensors.torch import load_file

    inputs = resolve_inputs(runs["raw"], model="mlp", dtype=torch.float64)
    assert_bitwise(load_file(str(runs["raw"])), inputs.model)


def test_analyze_surface_and_prune_eval_commands(runs, monkeypatch, tmp_path):
    import landscape.analysis
    import landscape.prune
    import landscape.surface

    seen: dict[str, object] = {}

    def grab(name):
        def patched(first, *args, **kwargs):
            seen[name] = (first, kwargs)
            raise Stop("seen")

        return patched

    monkeypatch.setattr(landscape.analysis, "analyze", grab("analyze"))
    monkeypatch.setattr(landscape.surface, "compute_surface", grab("surface"))
    monkeypatch.setattr(landscape.prune, "prune_eval", grab("prune"))
    final = runs["plain"] / FINAL_FILE
    state = final_state(runs["plain"])
    f64 = ["--dtype", "float64"]
    assert main(["analyze", str(final), *f64, "--out", str(tmp_path / "a")]) == 1
    assert_bitwise(state, seen["analyze"][0])
    assert main(["prune-eval", str(final), *f64, "--out", str(tmp_path / "p")]) == 1
    assert_bitwise(state, seen["prune"][0])
    argv = ["surface", str(final), "--other", str(runs["raw"]), *f64, "--out", str(tmp_path / "s")]
    assert main(argv) == 1
    problem, kwargs = seen["surface"]
    for name, value in problem.params.items():
        assert torch.equal(value, state[name]), name
    from safetensors.torch import load_file

    for name, value in load_file(str(runs["raw"])).items():
        assert torch.equal(kwargs["other"][name], value), name


def test_final_analysis_and_report(runs, monkeypatch):
    import landscape.analysis
    import landscape.report.measure as measure
    from landscape.report.runs import load_run
    from landscape.train import analyse_final

    seen = []

    def grab(model, *args, **kwargs):
        seen.append(model)
        raise Stop("seen")

    monkeypatch.setattr(landscape.analysis, "analyze", grab)
    for run in ("plain", "lora"):
        with pytest.raises(Stop):
            analyse_final(runs[run], run=run, metrics="eigen", seed=0, dtype=torch.float64)
        assert_bitwise(final_state(runs[run]), seen[-1])
    monkeypatch.setattr(measure, "evaluate", grab)
    settings = measure.MeasureSettings(slices=False, pruning=False, dtype=torch.float64)
    for run in ("plain", "lora"):
        data = load_run(runs[run])
        with pytest.raises(Stop):
            measure.measure_runs([data], {"g": [data]}, settings)
        assert_bitwise(final_state(runs[run]), seen[-1])


# ------------------------------------------------------------------------------------ training
def test_train_init_loads_float64_bit_for_bit(runs):
    for dtype in ("float64", "float32"):
        config = RunConfig(model="mlp", method="sgd", init=str(runs["plain"] / FINAL_FILE), dtype=dtype)
        model = prepare(config.resolved()).model
        expected = final_state(runs["plain"])
        if dtype == "float32":  # one rounding, as a float32 model holds it
            expected = {k: v.float() for k, v in expected.items()}
        assert_bitwise(expected, model)


def test_train_init_merges_lora_adapters_in_float64(runs):
    state = final_state(runs["lora"])
    config = RunConfig(model="mlp", method="sgd", init=str(runs["lora"] / FINAL_FILE), dtype="float64")
    model = prepare(config.resolved()).model
    scaling = 16.0 / 2  # lora_alpha / lora_rank
    expected = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        layer = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and f"{layer}.lora_A" in state:
            value = value + scaling * (state[f"{layer}.lora_B"] @ state[f"{layer}.lora_A"])
        expected[key] = value
    assert low_bits_used(expected)
    assert_bitwise(expected, model)


def test_train_resume_restores_float64_bit_for_bit(runs):
    """The resumed model is rebuilt in the run's dtype before its step checkpoint is loaded."""
    _, checkpoint = latest_checkpoint(runs["plain"])
    state = load_run_checkpoint(checkpoint)
    assert low_bits_used(state["model"])
    config = RunConfig.from_dict(json.loads((runs["plain"] / CONFIG_FILE).read_text()))
    prepared = prepare(config)
    restore(prepared, state)
    assert_bitwise(state["model"], prepared.model)
