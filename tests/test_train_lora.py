"""``landscape train --method lora|fmlora|efmlora``: adapters in the training loop, on the command line.

The recipe of ``docs/lora.md`` in small: pre-train the built-in transformer on ``text-train``,
then fine-tune it with ``--init`` on half of ``text-eval`` as a suite (``adamw`` next to the LoRA
methods, so that only the LoRA runs get adapters), and analyse ``final.pt`` with no other
argument. Plus bit-exact resume of ``efmlora`` (its EMA lives in the rule's state), a peft model
from an import path (its own adapters are kept), ``--init`` from a LoRA run (merged) and the
option errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import cli.train
from cli.main import main
from landscape.analysis import analyze
from landscape.models import build_model
from landscape.optim import LoRALinear, add_lora, lora_layers
from landscape.resolve import resolve_inputs
from landscape.train import (
    RunConfig,
    TrainProgress,
    expand_suite,
    read_metrics,
    strip_timing,
    train_run,
)
from landscape.train.diagnostics import LORA_DIAGNOSTIC_KEYS

PRE_STEPS = ["--steps", "20", "--lr", "3e-3", "--checkpoint-every", "0"]
FINE_TUNE = ["--steps", "8", "--diagnose-every", "8", "--diagnose-samples", "2", "--no-final-analysis"]
ADAPTED = [
    *(f"blocks.{i}.{name}" for i in (0, 1) for name in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")),
    "head",
]  # every nn.Linear of the built-in transformer (d_model 32, vocabulary 256)


def run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


# ----------------------------------------------------------------------------------------------
# The fine-tuning recipe


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """``pre/`` (pre-trained transformer) and ``ft/`` (suite adamw, lora, efmlora from it)."""
    root = tmp_path_factory.mktemp("recipe")
    pre = ["train", "--model", "transformer", "--data", "text-train", "--eval-data", "text-eval", *PRE_STEPS]
    assert main([*pre, "--out", str(root / "pre")]) == 0
    ft = ["train", "--init", root / "pre" / "final.pt", "--data", "text-eval", "--eval-fraction", "0.5"]
    ft += ["--method", "adamw", "--method", "lora", "--method", "efmlora", "--lora-rank", "4"]
    assert main([str(a) for a in [*ft, *FINE_TUNE, "--out", root / "ft"]]) == 0
    return root


def test_only_the_lora_runs_get_adapters_and_only_they_train(recipe):
    pre = weights(recipe / "pre" / "final.pt")
    adamw = weights(recipe / "ft" / "adamw" / "final.pt")
    assert adamw.keys() == pre.keys()  # no adapters for a method that is not a LoRA one
    assert json.loads((recipe / "ft" / "adamw" / "config.json").read_text())["lora_rank"] is None
    for method in ("lora", "efmlora"):
        config = json.loads((recipe / "ft" / method / "config.json").read_text())
        assert config["lora_rank"] == 4 and config["lora_alpha"] == 16 and config["lora_targets"] is None
        assert config["init"].endswith("final.pt") and config["data"] == "text-eval"
        assert config["model"] == "transformer"  # taken from --init's run configuration
        final = weights(recipe / "ft" / method / "final.pt")
        adapters = {k for k in final if "lora_" in k}
        assert adapters == {f"{layer}.lora_{f}" for layer in ADAPTED for f in "AB"}
        assert final["blocks.0.attn.qkv.lora_A"].shape == (4, 32)
        for key, value in pre.items():  # the pre-trained weights are frozen
            assert torch.equal(final[key], value), (method, key)
        assert all(final[f"{layer}.lora_B"].abs().max() > 0 for layer in ADAPTED)  # the adapters moved
    assert json.loads((recipe / "ft" / "efmlora" / "config.json").read_text())["ema_new_weight"] == 0.99


def test_lora_diagnostics_are_logged(recipe):
    records = {m: read_metrics(recipe / "ft" / m) for m in ("adamw", "lora", "efmlora")}
    assert not any("cond_A_max" in r for r in records["adamw"])
    for method in ("lora", "efmlora"):
        diagnosed = [r for r in records[method] if "lambda_max" in r]
        assert [r["step"] for r in diagnosed] == [0, 8]
        for r in diagnosed:
            assert 1.0 <= r["cond_A_mean"] <= r["cond_A_max"] < 10, r
        # curvature and weight norm are those of the trained parameters: the adapters
        assert diagnosed[0]["weight_norm"] < 0.5 * records["adamw"][0]["weight_norm"]
    # B = 0 at the start: both LoRA runs compute the pre-trained function, with the same A
    first = [strip_timing(records[m][0]) for m in ("lora", "efmlora")]
    assert first[1].pop("ema_sharpness_gap") >= 0
    assert first[0] == first[1]
    assert first[0]["eval_loss"] == records["adamw"][0]["eval_loss"]
    lora = [r for r in records["lora"] if "lambda_max" in r]
    assert all(r["perturbation_norm"] == 0.0 and "ema_sharpness_gap" not in r for r in lora)
    efm = [r for r in records["efmlora"] if "lambda_max" in r]
    assert set(LORA_DIAGNOSTIC_KEYS) <= set(efm[-1])
    # per layer ||s E A|| <= rho = 0.05 (the realised part of a radius-rho perturbation), 9 layers
    assert 0 < efm[-1]["perturbation_norm"] <= 0.05 * math.sqrt(len(ADAPTED)) + 1e-6
    assert efm[-1]["ema_sharpness_gap"] >= 0
    status = cli.train._status(TrainProgress("efmlora", 8, 8, "train", 1.0, efm[-1]))
    assert f"cond(A) {efm[-1]['cond_A_max']:.3g}" in status


def test_analyze_final_pt_rebuilds_the_adapters(recipe, tmp_path, capsys):
    final = recipe / "ft" / "efmlora" / "final.pt"
    args = ["analyze", final, "--params", "lora_", "--metrics", "eigen", "--top-k", "1", "--samples", "4"]
    code, _, err = run([*args, "--out", tmp_path / "a", "--json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    blocks = sum(4 * (i + o) for i, o in [(32, 96), (32, 32), (32, 128), (128, 32)])
    assert result["num_params"] == 2 * blocks + 4 * (32 + 256)  # r (in + out) per layer, head included
    # the same number from a model given its adapters by hand
    torch.manual_seed(0)
    model = build_model("transformer")
    add_lora(model, rank=4, alpha=16)
    model.load_state_dict(weights(final))
    reference = analyze(
        model, resolve_inputs(final, samples=4).data, metrics="eigen", top_k=1, params="lora_"
    )
    assert math.isclose(result["lambda_max"], reference.lambda_max, rel_tol=1e-6)
    # no --params: the trained parameters of the rebuilt model are the adapters too
    inputs = resolve_inputs(final, samples=4)
    trained = [n for n, p in inputs.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert sum(isinstance(m, LoRALinear) for m in inputs.model.modules()) == len(ADAPTED)


def test_init_from_a_lora_run_starts_from_the_merged_weights(recipe, tmp_path, capsys):
    lora = recipe / "ft" / "lora" / "final.pt"
    args = ["train", "--init", lora, "--method", "sgd", "--momentum", "0", "--lr", "1e-12", "--steps", "1"]
    code, _, err = run([*args, "--out", tmp_path / "merged"], capsys)
    assert code == 0, err
    trained, merged = weights(lora), weights(tmp_path / "merged" / "final.pt")
    assert not any("lora_" in k for k in merged)
    scaling = 16 / 4
    for layer in ADAPTED:
        expected = (
            trained[f"{layer}.weight"] + scaling * trained[f"{layer}.lora_B"] @ trained[f"{layer}.lora_A"]
        )
        torch.testing.assert_close(merged[f"{layer}.weight"], expected, rtol=0, atol=1e-6)
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], trained["blocks.0.attn.qkv.weight"])


# ----------------------------------------------------------------------------------------------
# Determinism


MLP_LORA = dict(
    model="mlp",
    method="efmlora",
    lora_rank=4,
    ema_new_weight=0.5,
    rho=0.1,
    steps=12,
    batch_size=32,
    log_every=3,
    checkpoint_every=5,
    diagnose_every=4,
    diagnose_samples=64,
    final_analysis=False,
    final_metrics="eigen",
    final_samples=64,
)


def test_efmlora_resumes_bit_for_bit_and_diagnostics_do_not_steer(tmp_path):
    config = RunConfig(**MLP_LORA)
    summary = train_run(dataclasses.replace(config, final_analysis=True), tmp_path / "reference")
    # the final analysis measures the curvature in the trained parameters: the adapters of net.0/2/4
    analysis = json.loads((tmp_path / "reference" / "analysis.json").read_text())
    assert analysis["num_params"] == 4 * (64 + 64) * 2 + 4 * (64 + 10) and summary.lambda_max > 0

    def crash(event):
        if event.step == 8:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(config, tmp_path / "run", progress=crash)
    step = torch.load(tmp_path / "run" / "checkpoints" / "step-5.pt", weights_only=True)
    assert step["rule"]["ema"] and all(v.abs().max() > 0 for v in step["rule"]["ema"].values())
    train_run(None, tmp_path / "run", resume=True)
    reference, resumed = weights(tmp_path / "reference" / "final.pt"), weights(tmp_path / "run" / "final.pt")
    assert reference.keys() == resumed.keys() and "net.0.lora_A" in reference
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    strip = [strip_timing(r) for r in read_metrics(tmp_path / "reference")]
    assert strip == [strip_timing(r) for r in read_metrics(tmp_path / "run")]
    assert all("ema_sharpness_gap" in r for r in strip if "lambda_max" in r)
    # the gap's extra passes and the curvature diagnostics leave the trajectory alone
    train_run(dataclasses.replace(config, diagnose_every=0), tmp_path / "quiet")
    quiet = weights(tmp_path / "quiet" / "final.pt")
    assert all(torch.equal(reference[k], quiet[k]) for k in reference)


def test_lora_options_only_for_lora_methods():
    runs = expand_suite(RunConfig(model="mlp", lora_targets="net\\.0"), ["sam", "lora", "fmlora"], [])
    assert [(r.name, r.lora_rank, r.lora_targets) for r in runs] == [
        ("sam", None, None),
        ("lora", 8, "net\\.0"),
        ("fmlora", 8, "net\\.0"),
    ]
    assert runs[2].rule_options() == {"seed": 0, "rho": 0.05, "rho_warmup": 0, "normalization": "layer"}


# ----------------------------------------------------------------------------------------------
# A peft model from an import path keeps its own adapters


def tiny_peft_gpt2() -> nn.Module:
    """2-layer GPT-2 (n_embd 32) with peft LoRA r = 2 on c_attn; eager attention, so HVPs work."""
    import peft
    import transformers

    config = transformers.GPT2Config(
        vocab_size=256,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(
            transformers.GPT2LMHeadModel(config),
            peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True),
        )


def test_peft_model_keeps_its_own_adapters(tmp_path, capsys):
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    args = ["train", "--model", f"{__name__}:tiny_peft_gpt2", "--data", "text-eval", "--method", "fmlora"]
    args += ["--steps", "3", "--batch-size", "4", "--diagnose-every", "3", "--diagnose-samples", "2"]
    code, _, err = run([*args, "--no-final-analysis", "--out", tmp_path / "peft"], capsys)
    assert code == 0, err
    final = weights(tmp_path / "peft" / "final.pt")
    assert not any(k.endswith(".lora_A") for k in final)  # no built-in adapter was added
    assert any("lora_A.default" in k for k in final)
    assert "cond_A_max" in read_metrics(tmp_path / "peft")[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the stored import path runs only when named again (a file never chooses code to run)
        inputs = resolve_inputs(tmp_path / "peft" / "final.pt", f"{__name__}:tiny_peft_gpt2", samples=2)
    assert len(lora_layers(inputs.model)) == 2
    assert not any(isinstance(m, LoRALinear) for m in inputs.model.modules())


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "mlp", "--lora-rank", "4"], "--lora-rank is not used by method adamw"),
        (["--model", "mlp", "--method", "sam", "--ema-new-weight", "0.5"], "--ema-new-weight is not used"),
        (["--model", "mlp", "--method", "lora", "--lora-rank", "0"], "--lora-rank must be a positive"),
        (
            ["--model", "mlp", "--method", "lora", "--lora-alpha", "-1"],
            "--lora-alpha must be a positive number",
        ),
        (["--model", "mlp", "--method", "efmlora", "--ema-new-weight", "0"], "must be in (0, 1]"),
        (["--model", "mlp", "--method", "fmlora", "--lora-normalization", "x"], "--lora-normalization 'x'"),
        (["--model", "mlp", "--method", "lora", "--lora-targets", "("], "invalid --lora-targets pattern"),
        (["--model", "mlp", "--method", "lora", "--lora-targets", "attn"], "match no nn.Linear layer"),
        (["--model", "mlp", "--method", "lora", "--lora-rank", "20"], "exceeds min(in, out) = 10"),
        (["--resume", "x", "--lora-rank", "4"], "drop --lora-rank"),
    ],
)
def test_bad_lora_options_give_one_line_errors(args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", *args] + ([] if "--resume" in args else ["--out", "out"]), capsys)
    usage = ("must be", "--lora-normalization 'x'", "invalid --lora-targets pattern")  # values of options
    assert code == (2 if any(u in fragment for u in usage) else 1)
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
    assert not Path("out").exists()
