"""Version and provenance: ``landscape --version``; versions and the command line in every
analysis.json, run config.json and report; old config.json files without them load and resume;
``--loss`` names every loss and takes import paths under the trust rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import landscape
from cli.console import LOSS_HELP
from cli.main import main
from landscape.losses import LOSSES
from landscape.provenance import PROVENANCE_KEYS, provenance, version_line
from landscape.train import RunConfig, read_metrics, train_run

SMALL = dict(model="mlp", steps=8, batch_size=16, log_every=2, checkpoint_every=4, final_analysis=False)
FAST = [
    "--samples",
    "60",
    "--trace-samples",
    "6",
    "--max-iter",
    "10",
    "--top-k",
    "1",
    "--metrics",
    "eigen,trace",
]


def test_version_line_and_cli_flag(capsys):
    assert landscape.__version__ == provenance()["landscape_version"]
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == version_line() and out.startswith(
        f"landscape {landscape.__version__} (torch {torch.__version__}"
    )
    made = provenance(["/usr/bin/landscape", "analyze", "--model", "my model"])
    assert set(made) == set(PROVENANCE_KEYS) and made["command"] == "landscape analyze --model 'my model'"


def test_analysis_json_and_run_config_record_provenance(tmp_path, capsys):
    assert main(["analyze", "--model", "mlp", "--out", str(tmp_path / "a"), *FAST]) == 0
    context = json.loads((tmp_path / "a" / "analysis.json").read_text())["context"]
    assert (
        context["landscape_version"] == landscape.__version__
        and context["torch_version"] == torch.__version__
    )
    assert context["command"].startswith("landscape ") or context["command"]
    train_run(RunConfig(**SMALL), tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["provenance"]["landscape_version"] == landscape.__version__


def test_an_old_config_json_without_provenance_loads_and_resumes(tmp_path):
    config = RunConfig(**SMALL)
    train_run(config, tmp_path / "reference")

    def stop(event):
        if event.step == 5:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        train_run(config, tmp_path / "run", progress=stop)
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    del old["provenance"]  # as written before provenance was recorded
    path.write_text(json.dumps(old))
    summary = train_run(None, tmp_path / "run", resume=True)
    assert summary.completed and summary.steps == 8
    reference = [r["loss"] for r in read_metrics(tmp_path / "reference") if "loss" in r]
    assert [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r] == reference


def test_report_names_its_version_and_the_runs(tmp_path, capsys):
    for method in ("adamw", "sam"):
        train_run(RunConfig(**{**SMALL, "method": method}), tmp_path / method)
    out = tmp_path / "report"
    code = main(
        [
            "report",
            str(tmp_path / "adamw"),
            str(tmp_path / "sam"),
            "--out",
            str(out),
            "--no-slices",
            "--no-pruning",
        ]
    )
    assert code == 0, capsys.readouterr().err
    text = next(out.glob("*.md")).read_text()
    assert f"Made by landscape {landscape.__version__}" in text
    assert f"trained with landscape {landscape.__version__}, torch {torch.__version__}" in text


# ---------------------------------------------------------------------------------- --loss
def test_loss_help_names_every_loss():
    for name in LOSSES:
        assert name in LOSS_HELP


def test_loss_option_takes_names_and_import_paths(tmp_path, capsys, monkeypatch):
    module = tmp_path / "myloss.py"
    module.write_text(
        "import torch.nn.functional as F\n"
        "def smooth(outputs, targets):\n"
        "    return F.cross_entropy(outputs, targets, label_smoothing=0.1)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "--model", "mlp", "--loss", "myloss.py:smooth", "--out", "a", *FAST]) == 0
    context = json.loads((tmp_path / "a" / "analysis.json").read_text())["context"]
    assert context["loss"] == "myloss.py:smooth"
    assert (
        main(["analyze", "--model", "mlp", "--loss", "nll", "--out", "b", *FAST[:-2], "--metrics", "ggn"])
        == 0
    )
    result = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert result["ggn_trace"] == 0  # nll is linear in the outputs: G = 0
    capsys.readouterr()
    assert main(["analyze", "--model", "mlp", "--loss", "hinge", "--out", "c", *FAST]) != 0
    assert "unknown loss 'hinge'" in capsys.readouterr().err


def test_a_stored_import_path_loss_is_refused_unless_named(tmp_path, capsys, monkeypatch):
    module = tmp_path / "myloss.py"
    module.write_text("import torch.nn.functional as F\ndef plain(o, t):\n    return F.cross_entropy(o, t)\n")
    monkeypatch.chdir(tmp_path)
    train_run(RunConfig(**{**SMALL, "loss": "myloss.py:plain"}), tmp_path / "run")
    capsys.readouterr()
    assert main(["analyze", str(Path("run") / "final.pt"), "--out", "a", *FAST]) != 0
    err = capsys.readouterr().err
    assert "myloss.py:plain" in err and "--loss" in err and len(err.strip().splitlines()) == 1
    assert (
        main(["analyze", str(Path("run") / "final.pt"), "--loss", "myloss.py:plain", "--out", "b", *FAST])
        == 0
    )
