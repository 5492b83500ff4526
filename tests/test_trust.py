"""A file never chooses code to run: stored import paths need the user's own flag or --trust-checkpoint.

Every entry point that reads a stored config (a checkpoint's ``config``, safetensors metadata, a
run's ``config.json``, a suite's ``suite.json``) is attacked with an import path that would leave
a marker file if it ran.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cli.main import main
from landscape.checkpoints import save_atomic
from landscape.errors import UserError
from landscape.trust import check_stored_specs, runs_code

FACTORY = """
import pathlib

HERE = pathlib.Path(__file__).parent


def make(**kwargs):
    (HERE / "RAN_MODEL").write_text("model factory ran")
    from landscape.models import build_model

    return build_model("mlp")


def load():
    (HERE / "RAN_DATA").write_text("data function ran")
    from landscape.data import load_data

    data = load_data("digits", samples=64)
    return data.x, data.y
"""


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code, err, *fragments):
    # without a terminal, the stages already under way are logged first (``  elapsed ...`` lines)
    *progress, last = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 1 and all(re.search(r"  elapsed [\dhms.]+$", line) for line in progress), err
    assert last.startswith("error: ") and "names code to import and run" in last, last
    assert "--trust-checkpoint" in last
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 2-step run folder and a folder with a marker-writing factory module."""
    root = tmp_path_factory.mktemp("trust")
    code = main(
        [
            "train",
            "--model",
            "mlp",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--out",
            str(root / "run"),
            "--json",
        ]
    )
    assert code == 0
    (root / "evil").mkdir()
    (root / "evil" / "factory.py").write_text(FACTORY)
    return root


@pytest.fixture
def evil(base, tmp_path):
    """Per test: a fresh marker folder, its specs, and helpers to plant them in files."""
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "factory.py").write_text(FACTORY)
    model_spec = f"{folder / 'factory.py'}:make"
    data_spec = f"{folder / 'factory.py'}:load"

    def checkpoint(name="evil_final.pt", **changes):
        payload = torch.load(base / "run" / "final.pt", weights_only=True)
        payload["config"] = dict(payload["config"], **changes)
        path = tmp_path / name
        torch.save(payload, path)
        return path

    class Evil:
        pass

    e = Evil()
    e.folder, e.model, e.data, e.checkpoint = folder, model_spec, data_spec, checkpoint
    e.ran = lambda: sorted(p.name for p in folder.glob("RAN_*"))
    return e


def test_the_reported_attack_runs_nothing(evil, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    path = evil.checkpoint(model="os:system", model_kwargs={"command": f"touch {marker}"})
    code, _, err = run(["analyze", path, "--metrics", "tau", "--out", tmp_path / "a"], capsys)
    refused(code, err, "model factory 'os:system'", "--model os:system")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["analyze", "surface", "prune-eval"])
def test_checkpoint_model_import_path_is_refused(evil, tmp_path, capsys, command):
    path = evil.checkpoint(model=evil.model)
    extra = {"analyze": ["--metrics", "tau"], "surface": ["--kind", "1d", "--steps", "3"], "prune-eval": []}
    code, _, err = run([command, path, *extra[command], "--out", tmp_path / "o"], capsys)
    refused(code, err, f"model factory '{evil.model}'", f"checkpoint {path}")
    assert evil.ran() == []


def test_named_or_trusted_import_path_runs(evil, tmp_path, capsys):
    path = evil.checkpoint(model=evil.model)
    code, _, err = run(
        ["analyze", path, "--model", evil.model, "--metrics", "tau", "--out", tmp_path / "a"], capsys
    )
    assert code == 0, err
    assert evil.ran() == ["RAN_MODEL"]
    (evil.folder / "RAN_MODEL").unlink()
    args = ["analyze", path, "--trust-checkpoint", "--metrics", "tau", "--out", tmp_path / "b"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert evil.ran() == ["RAN_MODEL"]


def test_stored_data_function_is_refused_unless_overridden(evil, tmp_path, capsys):
    path = evil.checkpoint(data=evil.data)
    code, _, err = run(["analyze", path, "--metrics", "tau", "--out", tmp_path / "a"], capsys)
    refused(code, err, f"data function '{evil.data}'", f"--data {evil.data}")
    assert evil.ran() == []
    # another --data: the stored function is never used, so nothing to refuse
    code, _, err = run(
        ["analyze", path, "--data", "digits", "--samples", "50", "--metrics", "tau", "--out", tmp_path / "b"],
        capsys,
    )
    assert code == 0, err
    assert evil.ran() == []


def test_prune_eval_refuses_stored_eval_data_function(evil, tmp_path, capsys):
    path = evil.checkpoint(eval_data=evil.data, train_split=None)
    code, _, err = run(["prune-eval", path, "--sparsity", "0.5", "--out", tmp_path / "p"], capsys)
    refused(code, err, f"data function '{evil.data}'", "--eval-data")
    assert evil.ran() == []


def test_safetensors_metadata_config_is_refused(evil, base, tmp_path, capsys):
    payload = torch.load(base / "run" / "final.pt", weights_only=True)
    config = dict(payload["config"], model=evil.model)
    path = save_atomic(
        payload["model"], tmp_path / "evil.safetensors", metadata={"config": json.dumps(config)}
    )
    code, _, err = run(["analyze", path, "--metrics", "tau", "--out", tmp_path / "a"], capsys)
    refused(code, err, f"model factory '{evil.model}'")
    assert evil.ran() == []


def test_train_init_refuses_stored_model(evil, tmp_path, capsys):
    path = evil.checkpoint(model=evil.model)
    code, _, err = run(["train", "--init", path, "--steps", "2", "--out", tmp_path / "r"], capsys)
    refused(code, err, f"--init checkpoint {path}")
    assert evil.ran() == [] and not (tmp_path / "r").exists()


def _copy_run(base: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(base / "run", dest)
    return dest


def test_train_resume_refuses_config_json_import_path(evil, base, tmp_path, capsys):
    run_dir = _copy_run(base, tmp_path / "run")
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(dict(config, model=evil.model)))
    (run_dir / "summary.json").unlink()  # an unfinished run: resuming would rebuild the model
    code, _, err = run(["train", "--resume", run_dir], capsys)
    refused(code, err, "config.json", f"--model {evil.model}")
    assert evil.ran() == []
    code, _, err = run(["train", "--resume", run_dir, "--model", "mlp"], capsys)
    assert code == 1 and "differs from" in err and evil.ran() == []


def test_train_resume_refuses_suite_json_import_path(evil, tmp_path, capsys):
    suite = tmp_path / "suite"
    args = ["train", "--model", "mlp", "--method", "sgd", "--method", "adamw", "--steps", "2"]
    code, _, err = run([*args, "--batch-size", "16", "--out", suite, "--json"], capsys)
    assert code == 0, err
    listing = json.loads((suite / "suite.json").read_text())
    for entry in listing["runs"]:
        entry["config"]["data"] = evil.data
    (suite / "suite.json").write_text(json.dumps(listing))
    code, _, err = run(["train", "--resume", suite], capsys)
    refused(code, err, "suite.json", f"--data {evil.data}")
    assert evil.ran() == []


def test_report_refuses_final_checkpoint_import_path(evil, base, tmp_path, capsys):
    run_dir = _copy_run(base, tmp_path / "run")
    payload = torch.load(run_dir / "final.pt", weights_only=True)
    payload["config"] = dict(payload["config"], model=evil.model)
    torch.save(payload, run_dir / "final.pt")
    code, _, err = run(["report", run_dir, "--no-slices", "--no-pruning", "--out", tmp_path / "rep"], capsys)
    refused(code, err, f"model factory '{evil.model}'")
    assert evil.ran() == []


def test_spec_kinds():
    assert not runs_code("model", "mlp") and runs_code("model", "os:system") and runs_code("model", "a.b")
    assert (
        not runs_code("data", "digits") and not runs_code("data", "x.npz") and not runs_code("data", "d.pt")
    )
    assert runs_code("data", "pkg.mod:load") and runs_code("data", "file.py:load")
    assert not runs_code("loss", "cross_entropy") and runs_code("loss", "pkg:my_loss")
    assert not runs_code("model", None) and not runs_code("model", 3)
    check_stored_specs({"model": "pkg:f"}, "x", allowed=["pkg:f"])
    check_stored_specs({"model": "pkg:f"}, "x", trust=True)
    with pytest.raises(UserError, match="model factory 'pkg:f', data function 'p.q:r'"):
        check_stored_specs({"model": "pkg:f", "data": "p.q:r", "loss": "mse"}, "x")
