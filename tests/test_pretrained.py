"""Checkpoints as they are saved: Hugging Face save_pretrained folders (single file, shards, tied
weights, bf16, float64), peft adapter folders, torch.compile prefixes, complex tensors refused."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from landscape.checkpoints import load_into_model
from landscape.errors import UserError
from landscape.models import build_model
from landscape.models.hf import is_pretrained_folder, load_pretrained_folder

transformers = pytest.importorskip("transformers")


def tiny_gpt2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def save(model: nn.Module, folder, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, **kwargs)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("shards", [None, "20KB"])
def test_folder_loads_with_tied_weights(tmp_path, shards):
    model = tiny_gpt2()
    save(model, tmp_path / "m", **({"max_shard_size": shards} if shards else {}))
    if shards:
        assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    assert is_pretrained_folder(tmp_path / "m") and not is_pretrained_folder(tmp_path)
    loaded = load_pretrained_folder(tmp_path / "m")
    assert same_weights(loaded, model)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied
    x = torch.randint(0, 64, (2, 8))
    model.eval(), loaded.eval()
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_float64_folder_keeps_every_bit(tmp_path):
    model = tiny_gpt2().double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-9)  # bits a float32 round trip would lose
    save(model, tmp_path / "m")
    loaded = load_pretrained_folder(tmp_path / "m", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    assert same_weights(loaded, model)


def test_bf16_folder_is_computed_in_the_dtype_asked_for(tmp_path):
    model = tiny_gpt2().to(torch.bfloat16)
    save(model, tmp_path / "m")
    loaded = load_pretrained_folder(tmp_path / "m", dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert same_weights(loaded, model.float())


def test_peft_adapter_folder_over_a_local_base(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_gpt2()
    save(base, tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = peft.get_peft_model(
            tiny_gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
        )
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save(adapted, tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(settings))
    loaded = load_pretrained_folder(tmp_path / "adapter")
    assert same_weights(loaded, adapted)
    settings["base_model_name_or_path"] = "gpt2"  # a hub id: never downloaded
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(settings))
    with pytest.raises(UserError, match="not a local save_pretrained folder"):
        load_pretrained_folder(tmp_path / "adapter")


def test_bad_folders_give_one_line_errors(tmp_path):
    save(tiny_gpt2(), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, auto_map={"AutoModel": "x.Y"})))
    with pytest.raises(UserError, match="custom model code"):
        load_pretrained_folder(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, architectures=["os.system"])))
    with pytest.raises(UserError, match="not a transformers model class"):
        load_pretrained_folder(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, n_embd=32)))
    with pytest.raises(UserError, match="do not match its config.json"):
        load_pretrained_folder(tmp_path / "m")
    with pytest.raises(UserError, match="not a save_pretrained folder"):
        load_pretrained_folder(tmp_path)


def test_torch_compile_prefix_and_complex_tensors():
    model = build_model("mlp")
    compiled = torch.compile(model)  # its state dict names every tensor _orig_mod.<name>
    state = {k: v + 1.0 for k, v in compiled.state_dict().items()}
    assert all(k.startswith("_orig_mod.") for k in state)
    from landscape.checkpoints import strip_common_prefix

    target = build_model("mlp")
    load_into_model(target, strip_common_prefix(state))
    assert torch.equal(target.net[0].weight, model.net[0].weight + 1.0)
    complex_state = {k: v.to(torch.complex64) for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="complex"):
        load_into_model(build_model("mlp"), complex_state)


HF_FACTORY = """
import torch
import transformers


def make():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def load():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (6, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding: its targets are ignored
    targets = ids[:, 1:].clone()
    targets[0, 5:] = -100
    return {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1]}, targets
"""


def test_cli_analyze_takes_dict_inputs_from_a_data_function(tmp_path, capsys):
    from cli.main import main

    (tmp_path / "hfdata.py").write_text(HF_FACTORY)
    spec = str(tmp_path / "hfdata.py")
    args = ["analyze", "--model", f"{spec}:make", "--data", f"{spec}:load", "--metrics", "tau,trace"]
    code = main([*args, "--trace-samples", "8", "--out", str(tmp_path / "a"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["num_samples"] == 6 and result["num_targets"] == 6 * 8 - 3
    # the same numbers as the Python API on the same dict inputs
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("hfdata_ref", tmp_path / "hfdata.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    from landscape.analysis import analyze

    ref = analyze(module.make(), module.load(), "cross_entropy", "tau")
    assert result["loss"] == pytest.approx(ref.loss, rel=1e-6)
    assert result["tau_logit"] == pytest.approx(ref.tau_logit, rel=1e-5)
