"""``landscape analyze`` end to end: outputs, checkpoints, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from landscape.models import build_model

REQUIRED_KEYS = {
    "loss",
    "grad_norm",
    "num_params",
    "num_samples",
    "lambda_max",
    "top_eigenvalues",
    "lambda_min",
    "trace",
    "trace_stderr",
    "ggn_lambda_max",
    "ggn_trace",
    "ggn_trace_stderr",
    "functional_trace",
    "tau_logit",
    "tau_func",
    "tau_cross",
    "hvp_count",
    "seconds",
}
FAST = ["--samples", "120", "--trace-samples", "12", "--max-iter", "40", "--top-k", "2"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_analyze_builtin_writes_all_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["analyze", "--model", "mlp", "--out", out, *FAST], capsys)
    assert code == 0, err
    result = json.loads((out / "analysis.json").read_text())
    assert REQUIRED_KEYS <= set(result)
    assert result["num_samples"] == 120 and result["num_params"] == 8970
    assert result["top_eigenvalues"] == sorted(result["top_eigenvalues"], reverse=True)
    assert result["lambda_max"] == result["top_eigenvalues"][0]
    assert abs(result["tau_logit"] + result["tau_func"] + result["tau_cross"] - 1) < 1e-9
    assert result["context"]["model"] == "mlp" and result["context"]["data"] == "digits"
    layers = (out / "layers.csv").read_text().splitlines()
    assert layers[0].startswith("name,num_params,trace")
    assert len(layers) == 1 + 6
    assert (out / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lambda_max(H)" in stdout
    assert not list(out.glob(".staging-*"))


def test_checkpoint_json_seed_and_metrics(tmp_path, capsys):
    torch.manual_seed(7)
    model = build_model("cnn")
    ckpt = tmp_path / "cnn.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    args = ["analyze", ckpt, "--model", "cnn", "--metrics", "eigen,lambda_min,tau", "--json", *FAST]
    code, first, err = run([*args, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    code, second, err = run([*args, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    a, b = json.loads(first), json.loads(second)
    assert a["trace"] is None and a["lambda_max"] is not None
    for key in ("loss", "lambda_max", "lambda_min", "tau_logit"):
        assert a[key] == b[key]


def test_analysis_uses_checkpoint_weights(tmp_path, capsys):
    from landscape.data import load_data

    torch.manual_seed(3)
    model = build_model("mlp")
    ckpt = tmp_path / "mlp.safetensors"
    from safetensors.torch import save_file

    save_file(model.state_dict(), ckpt)
    ds = load_data("digits", samples=50)
    expected = torch.nn.functional.cross_entropy(model(ds.x), ds.y).item()
    code, out, err = run(
        [
            "analyze",
            ckpt,
            "--model",
            "mlp",
            "--samples",
            50,
            "--metrics",
            "tau",
            "--json",
            "--seed",
            99,
            "--out",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["loss"] == pytest.approx(expected, rel=1e-5)


def test_models_returning_dicts_and_hf_style_objects(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class Out:\n"
        "    def __init__(self, logits): self.logits = logits\n"
        "class HF(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lin = nn.Linear(64, 10)\n"
        "    def forward(self, x): return Out(self.lin(x))\n"
        "class D(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lin = nn.Linear(64, 10)\n"
        "    def forward(self, x): return {'logits': self.lin(x), 'aux': 0}\n"
        "def hf(): return HF()\n"
        "def dictmodel(): return D()\n"
    )
    monkeypatch.chdir(tmp_path)
    for factory in ("mymodels:hf", "mymodels:dictmodel"):
        code, out, err = run(
            ["analyze", "--model", factory, "--data", "digits", "--metrics", "eigen", "--json", *FAST], capsys
        )
        assert code == 0, err
        assert json.loads(out)["num_params"] == 650


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    good = build_model("mlp").state_dict()
    paths = {}
    paths["corrupt"] = tmp_path / "corrupt.pt"
    paths["corrupt"].write_bytes(b"this is not a checkpoint at all")
    paths["mismatch"] = tmp_path / "mismatch.pt"
    torch.save(build_model("cnn").state_dict(), paths["mismatch"])
    bad = {k: v.clone() for k, v in good.items()}
    bad["net.0.weight"][0, 0] = float("nan")
    paths["nan_weights"] = tmp_path / "nan.pt"
    torch.save(bad, paths["nan_weights"])
    paths["pickled"] = tmp_path / "module.pt"
    torch.save(build_model("mlp"), paths["pickled"])
    x = np.random.rand(20, 64).astype(np.float32)
    paths["labels"] = tmp_path / "labels.npz"
    np.savez(paths["labels"], x=x, y=np.full(20, 42))
    xn = x.copy()
    xn[3, 3] = np.nan
    paths["nan_inputs"] = tmp_path / "naninputs.npz"
    np.savez(paths["nan_inputs"], x=xn, y=np.zeros(20, dtype=np.int64))
    paths["empty"] = tmp_path / "empty.npz"
    np.savez(paths["empty"], x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    paths["afile"] = tmp_path / "afile.txt"
    paths["afile"].write_text("x")
    return paths


BAD_INPUTS = [
    ("missing checkpoint", ["analyze", "{tmp}/nope.pt", "--model", "mlp"], "nope.pt"),
    ("corrupt checkpoint", ["analyze", "{corrupt}", "--model", "mlp"], "corrupt.pt"),
    ("mismatched state dict", ["analyze", "{mismatch}", "--model", "mlp"], "missing"),
    ("NaN weights", ["analyze", "{nan_weights}", "--model", "mlp"], "net.0.weight"),
    ("pickled module", ["analyze", "{pickled}", "--model", "mlp"], "--trust-checkpoint"),
    ("labels out of range", ["analyze", "--model", "mlp", "--data", "{labels}"], "out of range"),
    ("NaN inputs", ["analyze", "--model", "mlp", "--data", "{nan_inputs}"], "NaN"),
    ("empty data", ["analyze", "--model", "mlp", "--data", "{empty}"], "empty"),
    ("unknown model", ["analyze", "--model", "resnet9000"], "resnet9000"),
    ("unknown data", ["analyze", "--model", "mlp", "--data", "imagenet"], "imagenet"),
    ("bad dtype", ["analyze", "--model", "mlp", "--dtype", "float16"], "float16"),
    ("bad metric", ["analyze", "--model", "mlp", "--metrics", "eigen,vibes"], "vibes"),
    ("bad trace method", ["analyze", "--model", "mlp", "--trace-method", "guess"], "guess"),
    ("bad top-k", ["analyze", "--model", "mlp", "--top-k", "0"], "top-k"),
    ("non-integer option", ["analyze", "--model", "mlp", "--top-k", "many"], "--top-k"),
    ("unknown option", ["analyze", "--model", "mlp", "--colour", "red"], "--colour"),
    ("bad tol", ["analyze", "--model", "mlp", "--tol", "2"], "tol"),
    ("bad params pattern", ["analyze", "--model", "mlp", "--params", "nothing_here"], "nothing_here"),
    ("unwritable output", ["analyze", "--model", "mlp", "--out", "{afile}/sub"], "afile.txt"),
    ("exact too big", ["analyze", "--model", "mlp", "--exact"], "--exact"),
]


@pytest.mark.parametrize("label,args,fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_one_line_error_and_writes_nothing(label, args, fragment, files, tmp_path, capsys):
    out = tmp_path / "results"
    fmt = {k: str(v) for k, v in files.items()} | {"tmp": str(tmp_path)}
    argv = [a.format(**fmt) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_trusted_pickle_loads(files, tmp_path, capsys):
    code, out, err = run(
        [
            "analyze",
            files["pickled"],
            "--model",
            "mlp",
            "--trust-checkpoint",
            "--metrics",
            "tau",
            "--json",
            *FAST,
            "--out",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 0, err


def test_console_script_runs_in_a_real_process(tmp_path):
    """The installed entry point: help works; a bad input exits 1 with one line and no traceback."""
    exe = Path(sys.executable).with_name("landscape")
    ok = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "analyze" in ok.stdout
    bad = subprocess.run(
        [exe, "analyze", str(tmp_path / "missing.pt"), "--model", "mlp"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "missing.pt" in bad.stderr
    debug = subprocess.run(
        [exe, "analyze", str(tmp_path / "missing.pt"), "--model", "mlp", "--debug"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
