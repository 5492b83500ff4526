"""``--device`` on every command that computes, and ``device=`` in the API, on the devices this
machine has (``tests/helpers.py``: the CPU always, CUDA when present)."""

from __future__ import annotations

import json

import pytest
import torch

from cli.main import main
from helpers import DEVICES, tiny_case
from landscape.data import Dataset
from landscape.prune import prune_eval


@pytest.mark.parametrize(
    "command",
    [
        ["analyze", "--model", "mlp"],
        ["surface", "--model", "mlp"],
        ["train", "--model", "mlp", "--data", "digits", "--steps", "1"],
        ["prune-eval", "missing.pt", "--model", "mlp", "--sparsity", "0.5"],
        ["demo", "--quick"],
    ],
)
@pytest.mark.parametrize("spec", ["tpu", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_a_bad_device_is_a_usage_error_and_writes_nothing(command, spec, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([*command, "--device", spec, "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--device" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("device", DEVICES)
def test_train_on_a_device_saves_cpu_checkpoints(device, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--data", "digits", "--steps", "3", "--batch-size", "32"]
    code = main([*args, "--device", device, "--out", str(out), "--final-analysis"])
    assert code == 0, capsys.readouterr().err
    config = json.loads(next(out.rglob("config.json")).read_text())
    assert config["device"] == device
    final = torch.load(next(out.rglob("final.pt")), weights_only=True)
    assert all(t.device.type == "cpu" for t in final["model"].values())


@pytest.mark.parametrize("device", DEVICES)
def test_prune_eval_on_a_device_leaves_the_model_where_it_was(device):
    model, (x, y), loss = tiny_case("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = prune_eval(
        model, Dataset(x, y, name="tiny", task="classification"), loss, [0.0, 0.5], device=device
    )
    here = prune_eval(model, Dataset(x, y, name="tiny", task="classification"), loss, [0.0, 0.5])
    assert [r.eval_loss for r in results] == pytest.approx([r.eval_loss for r in here], rel=1e-9)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("device", DEVICES)
def test_analyze_and_surface_record_their_device(device, tmp_path, capsys):
    common = ["--model", "mlp", "--samples", "32", "--device", device]
    code = main(["analyze", *common, "--metrics", "lambda_max,trace", "--out", str(tmp_path / "a")])
    assert code == 0, capsys.readouterr().err
    analysis = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert analysis["device"].startswith(device) and analysis["memory_plans"]["trace"]["fits"]
    code = main(["surface", *common, "--kind", "1d", "--steps", "3", "--out", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().err


def test_train_records_max_memory_and_the_final_analysis_follows_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--data", "digits", "--steps", "2", "--batch-size", "32"]
    code = main([*args, "--device", "cpu", "--max-memory", "64GB", "--out", str(out), "--final-analysis"])
    assert code == 0, capsys.readouterr().err
    config = json.loads(next(out.rglob("config.json")).read_text())
    analysis = json.loads(next(out.rglob("analysis.json")).read_text())
    assert config["max_memory"] == "64GB" and analysis["device"] == "cpu"
    assert analysis["memory_plans"] and analysis["lambda_min"] is not None  # the default final metrics
    code = main(["train", "--resume", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "drop --device" in err


def test_report_measures_on_the_device_it_is_given(tmp_path):
    from landscape.report.measure import MeasureSettings, _load

    code = main(["train", "--model", "mlp", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "r")])
    assert code == 0
    from landscape.report.runs import load_run

    run = load_run(tmp_path / "r")
    item = _load(run, MeasureSettings(device=DEVICES[-1]))
    assert next(item.model.parameters()).device.type == DEVICES[-1]
    assert item.train.x.device.type == "cpu"  # the data stays on the host
