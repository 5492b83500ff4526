"""``landscape analyze DIR`` for Hugging Face save_pretrained folders, peft adapter folders and run
folders: the same numbers as the Python API on the in-memory model, and one-line errors."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from torch import nn

from cli.main import main
from landscape.analysis import analyze

transformers = pytest.importorskip("transformers")

VOCAB = 300  # above the 256 byte ids of the built-in text, so both kinds of data fit
POSITIONS = 16

DATA = """
import torch


def labels():
    # Hugging Face's convention: the targets are the input ids (-100 where padded)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (6, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    y = ids.clone()
    y[0, 6:] = -100
    return {"input_ids": ids, "attention_mask": mask}, y


def next_tokens():
    # targets already aligned with the positions: position t predicts token t + 1
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 300, (5, 10), generator=g)
    return {"input_ids": ids[:, :-1], "attention_mask": torch.ones_like(ids[:, :-1])}, ids[:, 1:]


def too_big():
    ids = torch.full((2, 4), 300)
    return ids, ids


def regression():
    g = torch.Generator().manual_seed(3)
    return torch.randint(1, 300, (6, 5), generator=g), torch.randn(6, generator=g)
"""

# eigen (lambda_max, top-1, lambda_min) and trace, small budgets
METRICS = [
    "--metrics",
    "lambda_max,eigen,lambda_min,trace",
    "--top-k",
    "1",
    "--trace-samples",
    "8",
    "--max-iter",
    "40",
]
COMPARED = ("loss", "grad_norm", "lambda_max", "lambda_min", "trace", "num_params", "num_targets")


def tiny_gpt2(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=POSITIONS,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        **overrides,
    )
    return transformers.GPT2LMHeadModel(config)


def save(model: nn.Module, folder, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, **kwargs)


@pytest.fixture
def data_module(tmp_path, monkeypatch):
    """The data functions above as the module ``hfdata`` (importable by the CLI and the test)."""
    (tmp_path / "hfdata.py").write_text(DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hfdata", raising=False)
    import hfdata

    return hfdata


def cli(args, capsys) -> tuple[int, dict, str]:
    capsys.readouterr()  # what came before (save_pretrained's progress bars) is not the command's
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 and "--json" in args else {}), captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_same(result: dict, ref, rel: float = 1e-10) -> None:
    for key in COMPARED:
        expected = getattr(ref, key)
        assert result[key] == pytest.approx(expected, rel=rel, abs=1e-12), key
    assert result["top_eigenvalues"] == pytest.approx(ref.top_eigenvalues, rel=rel)


@pytest.mark.parametrize("layout", ["single", "sharded", "bf16"])
def test_folder_through_the_cli_equals_the_api_on_the_model(tmp_path, capsys, data_module, layout):
    model = tiny_gpt2()
    if layout == "bf16":
        model = model.to(torch.bfloat16)
    save(model, tmp_path / "m", **({"max_shard_size": "20KB"} if layout == "sharded" else {}))
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert ("model.safetensors.index.json" in files) == (layout == "sharded")
    args = ["analyze", tmp_path / "m", "--data", "hfdata:labels", *METRICS, "--dtype", "float64"]
    code, result, err = cli([*args, "--json", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    context = result["context"]
    assert context["model"] == "GPT2LMHeadModel" and context["checkpoint"] == str(tmp_path / "m")
    assert context["loss"] == "cross_entropy" and "shifted left by one" in context["note"]
    # the reference: the model as it is in memory (bf16 weights computed in float64), its own
    # loss from labels= (shifted inside), through the Python API
    reference = model.double()
    inputs, labels = data_module.labels()
    ref = analyze(
        reference,
        (inputs, labels),
        "model",
        "lambda_max,eigen,lambda_min,trace",
        dtype=torch.float64,
        top_k=1,
        trace_samples=8,
        max_iter=40,
        seed=0,
    )
    assert_same(result, ref)
    assert result["num_targets"] == 6 * 8 - 3  # the last position of every row and the padding
    with torch.no_grad():
        hf_loss = reference.eval()(**inputs, labels=labels).loss
    assert result["loss"] == pytest.approx(float(hf_loss), rel=1e-6)  # HF's loss upcasts to float32 only
    # tied lm_head: one parameter, counted once
    assert result["num_params"] == sum(p.numel() for p in reference.parameters())


def test_builtin_text_and_next_token_targets_keep_cross_entropy_unshifted(tmp_path, capsys, data_module):
    model = tiny_gpt2()
    save(model, tmp_path / "m")
    base = ["analyze", tmp_path / "m", "--metrics", "trace", "--trace-samples", "6", "--dtype", "float64"]
    code, result, err = cli(
        [*base, "--data", "hfdata:next_tokens", "--json", "--out", tmp_path / "a"], capsys
    )
    assert code == 0, err
    assert result["context"]["loss"] == "cross_entropy" and result["context"]["note"] is None
    assert result["num_targets"] == 5 * 9
    ref = analyze(
        model.double(), data_module.next_tokens(), "cross_entropy", "trace", trace_samples=6, seed=0
    )
    assert result["loss"] == pytest.approx(ref.loss, rel=1e-10)
    assert result["trace"] == pytest.approx(ref.trace, rel=1e-10)

    text = ["--data", "text", "--seq-len", "8", "--samples", "3"]
    code, result, err = cli([*base, *text, "--json", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert result["num_targets"] == 3 * 8 and result["context"]["loss"] == "cross_entropy"
    code, _, err = cli([*base, "--data", "text", "--seq-len", "32", "--out", tmp_path / "c"], capsys)
    assert_one_line_error(code, err, "32 tokens", f"at most {POSITIONS}", "--seq-len")


def test_a_sequence_classifier_defaults_to_its_own_loss(tmp_path, capsys, data_module):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=16, n_layer=1, n_head=2, num_labels=1, pad_token_id=0
    )
    model = transformers.GPT2ForSequenceClassification(config)
    save(model, tmp_path / "m")
    args = ["analyze", tmp_path / "m", "--data", "hfdata:regression", "--metrics", "trace"]
    code, result, err = cli([*args, "--trace-samples", "4", "--json", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert result["context"]["loss"] == "model"
    x, y = data_module.regression()
    with torch.no_grad():
        hf_loss = model.eval()(x, labels=y).loss  # mse for one label
    assert result["loss"] == pytest.approx(float(hf_loss), rel=1e-5)


def test_peft_adapter_folder_analyses_the_adapter_parameters(tmp_path, capsys, data_module):
    peft = pytest.importorskip("peft")
    save(tiny_gpt2(), tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = peft.get_peft_model(
            tiny_gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
        )
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    save(adapted, tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = "../base"  # relative to the adapter folder
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(settings))
    args = ["analyze", tmp_path / "adapter", "--data", "hfdata:labels", *METRICS, "--dtype", "float64"]
    code, result, err = cli([*args, "--json", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    lora = sum(p.numel() for n, p in adapted.named_parameters() if "lora_" in n)
    assert result["num_params"] == lora == 2 * 2 * (16 + 48)  # A and B of c_attn in 2 layers
    assert "shifted left by one" in result["context"]["note"]
    inputs, labels = data_module.labels()
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    ref = analyze(
        adapted.double(),
        (inputs, shifted),
        "cross_entropy",
        "lambda_max,eigen,lambda_min,trace",
        dtype=torch.float64,
        top_k=1,
        trace_samples=8,
        max_iter=40,
        seed=0,
    )
    assert_same(result, ref)


def test_torch_compile_prefixed_weights_in_a_folder(tmp_path, capsys, data_module):
    from safetensors.torch import save_file

    model = tiny_gpt2()
    save(model, tmp_path / "m")
    state = torch.compile(model).state_dict()  # every key _orig_mod.<name>
    assert all(k.startswith("_orig_mod.") for k in state)
    state = {k: v.clone() for k, v in state.items() if not k.endswith("lm_head.weight")}  # tied
    save_file(state, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    args = ["analyze", tmp_path / "m", "--data", "hfdata:labels", *METRICS, "--dtype", "float64"]
    code, result, err = cli([*args, "--json", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    inputs, labels = data_module.labels()
    ref = analyze(
        model.double(),
        (inputs, labels),
        "model",
        "lambda_max,eigen,lambda_min,trace",
        dtype=torch.float64,
        top_k=1,
        trace_samples=8,
        max_iter=40,
        seed=0,
    )
    assert_same(result, ref)


def test_a_run_folder_stands_for_its_final_checkpoint(tmp_path, capsys):
    from landscape.models import build_model

    torch.manual_seed(3)
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": "mlp", "data": "digits", "loss": "cross_entropy"}
    (run / "config.json").write_text(json.dumps(config))
    torch.save({"model": build_model("mlp").state_dict(), "config": config}, run / "final.pt")
    args = ["--metrics", "trace", "--trace-samples", "4", "--samples", "40", "--json"]
    code, by_folder, err = cli(["analyze", run, *args, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    code, by_file, err = cli(["analyze", run / "final.pt", *args, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert by_folder["trace"] == by_file["trace"] and by_folder["loss"] == by_file["loss"]
    assert by_folder["context"]["checkpoint"] == str(run / "final.pt")
    (run / "final.pt").unlink()
    (run / "metrics.jsonl").write_text("")
    code, _, err = cli(["analyze", run, *args, "--out", tmp_path / "c"], capsys)
    assert_one_line_error(code, err, "has not finished", "final.pt")


def test_refusals_are_one_line(tmp_path, capsys, data_module, monkeypatch):
    save(tiny_gpt2(), tmp_path / "m")
    out = ["--out", tmp_path / "out"]
    data = ["--data", "hfdata:labels", "--metrics", "trace", "--trace-samples", "2"]
    # not a folder of a known kind: empty, or a config.json without weights
    (tmp_path / "empty").mkdir()
    code, _, err = cli(["analyze", tmp_path / "empty", *data, *out], capsys)
    assert_one_line_error(
        code, err, "is not a file", "neither a landscape run folder", "save_pretrained folder"
    )
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tmp_path / "m" / "config.json").read_text())
    code, _, err = cli(["analyze", tmp_path / "noweights", *data, *out], capsys)
    assert_one_line_error(code, err, "is not a file", "neither a landscape run folder", "model.safetensors")
    # the folder builds its own model and needs data
    code, _, err = cli(["analyze", tmp_path / "m", "--model", "mlp", *data, *out], capsys)
    assert_one_line_error(code, err, "drop --model mlp")
    code, _, err = cli(["analyze", tmp_path / "m", "--metrics", "trace", *out], capsys)
    assert_one_line_error(code, err, "--data is required")
    code, _, err = cli(["analyze", tmp_path / "m", "--data", "hfdata:too_big", *out], capsys)
    assert_one_line_error(code, err, "token id 300", f"vocabulary of {VOCAB}")
    # custom code: refused unless trusted (and then transformers is asked, here in vain)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, auto_map={"AutoConfig": "x.Y"})))
    code, _, err = cli(["analyze", tmp_path / "m", *data, *out], capsys)
    assert_one_line_error(code, err, "custom model code (auto_map)", "--trust-checkpoint")
    code, _, err = cli(["analyze", tmp_path / "m", *data, "--trust-checkpoint", *out], capsys)
    assert_one_line_error(code, err)
    assert "auto_map" not in err
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    # transformers missing: the extra to install
    monkeypatch.setitem(sys.modules, "transformers", None)
    code, _, err = cli(["analyze", tmp_path / "m", *data, *out], capsys)
    assert_one_line_error(code, err, "pip install 'landscape[hf]'")
    assert not (tmp_path / "out" / "analysis.json").exists()  # nothing half-written
