"""``landscape train`` on the command line: suites, options, progress and one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

import cli.train
from cli.main import main
from landscape.train import TrainProgress, read_metrics

FAST = ["--model", "mlp", "--steps", "6", "--batch-size", "16", "--log-every", "3"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_single_run_with_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["train", *FAST, "--method", "sgd", "--dtype", "float64", "--no-shuffle"], capsys)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "sgd"  # default folder: runs/<method>
    assert "training summary" in out and "wrote runs/sgd" in out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["base"] == "sgd" and config["lr"] == 0.1 and config["momentum"] == 0.9
    assert config["shuffle"] is False and config["dtype"] == "float64" and config["eval_fraction"] == 0.1
    assert [r["step"] for r in read_metrics(run_dir)] == [3, 6]
    assert not (run_dir / "analysis.json").exists()  # no diagnostics: no final analysis
    weights = torch.load(run_dir / "final.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float64 for v in weights.values())


def test_rho_sweep_suite_and_json(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [
        "train",
        *FAST,
        "--method",
        "adamw",
        "--method",
        "sam",
        "--rho",
        "0.01,0.1",
        "--out",
        out,
        "--json",
    ]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    summaries = json.loads(stdout)
    assert [s["name"] for s in summaries] == ["adamw", "sam-rho0.01", "sam-rho0.1"]
    assert [s["rho"] for s in summaries] == [None, 0.01, 0.1]
    listing = json.loads((out / "suite.json").read_text())
    assert [r["folder"] for r in listing["runs"]] == ["adamw", "sam-rho0.01", "sam-rho0.1"]
    for name in ("adamw", "sam-rho0.01", "sam-rho0.1"):
        assert (out / name / "final.pt").is_file()
    assert json.loads((out / "sam-rho0.1" / "config.json").read_text())["rho"] == 0.1
    records = read_metrics(out / "sam-rho0.01")
    assert all(r["rho"] == 0.01 for r in records)
    # the suite resumes as a whole (here: everything is done already)
    code, stdout, err = run(["train", "--resume", out, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout) == summaries


def test_init_takes_model_and_weights_from_a_run(tmp_path, capsys):
    first = tmp_path / "first"
    code, _, err = run(["train", *FAST, "--out", first], capsys)
    assert code == 0, err
    second = tmp_path / "second"
    # no --model: it comes from the checkpoint's config; a tiny SGD step keeps the weights
    args = ["train", "--init", first / "final.pt", "--method", "sgd", "--momentum", "0", "--lr", "1e-12"]
    code, _, err = run([*args, "--steps", "1", "--out", second], capsys)
    assert code == 0, err
    assert json.loads((second / "config.json").read_text())["model"] == "mlp"
    a = torch.load(first / "final.pt", weights_only=True)["model"]
    b = torch.load(second / "final.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-9)


def test_progress_bar_shows_loss_and_diagnostics(tmp_path, capsys, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli.train, "err_console", Console(file=screen, force_terminal=True, width=250))
    args = ["train", *FAST, "--diagnose-every", "3", "--diagnose-samples", "32", "--no-final-analysis"]
    code, _, err = run([*args, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    text = screen.getvalue()
    assert "adamw" in text and "loss " in text and "lmax" in text and "tau_logit" in text
    status = cli.train._status(
        TrainProgress("r", 5, 10, "analysis", 0.5, {"eval_loss": 1.0, "lambda_max": 2.0}, "trace")
    )
    assert (
        status.startswith("loss 0.5000") and "lmax 2" in status and status.endswith("final analysis: trace")
    )


USAGE_ERRORS = {
    "unknown method 'nope'",
    "--rho must be a number",
    "needs --base adamw",
    "brings its own update",
    "unknown base optimizer 'lion'",
    "not both",
    "strictly between 0 and 1",
    "unknown schedule 'linear'",
    "--steps must be a positive integer",
    "--warmup (900) exceeds --steps (500)",
    "unknown dtype 'float16'",
}
"""Values of the options themselves: usage errors (exit status 2) before any work."""


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "mlp", "--method", "nope"], "unknown method 'nope'"),
        (["--model", "mlp", "--rho", "0.1"], "--rho is not used by method adamw"),
        (["--model", "mlp", "--method", "sam", "--rho", "a,b"], "--rho must be a number"),
        (["--model", "mlp", "--momentum", "0.9"], "--momentum is not used by method adamw"),
        (["--model", "mlp", "--method", "precond-func-sam", "--base", "sgd"], "needs --base adamw"),
        (["--model", "mlp", "--method", "fsgld", "--base", "adamw"], "brings its own update"),
        (["--model", "mlp", "--base", "lion"], "unknown base optimizer 'lion'"),
        (["--model", "mlp", "--batch-size", "5000"], "exceeds the 1617 training items"),
        (["--model", "mlp", "--eval-data", "digits", "--eval-fraction", "0.2"], "not both"),
        (["--model", "mlp", "--eval-fraction", "1.5"], "strictly between 0 and 1"),
        (["--model", "mlp", "--schedule", "linear"], "unknown schedule 'linear'"),
        (["--model", "mlp", "--steps", "0"], "--steps must be a positive integer"),
        (["--model", "mlp", "--warmup", "900"], "--warmup (900) exceeds --steps (500)"),
        (["--model", "mlp", "--dtype", "float16"], "unknown dtype 'float16'"),
        (["--model", "mlp", "--init", "missing.pt"], "checkpoint not found"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "mlp", "--data", "nope"], "unknown data set 'nope'"),
        ([], "--model is required"),
        (["--resume", "nothing"], "nothing is not a run folder"),
    ],
)
def test_bad_input_gives_one_line_error_and_writes_nothing(args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(
        ["train", *args, "--out", "out"] if "--resume" not in args else ["train", *args], capsys
    )
    assert code == (2 if fragment in USAGE_ERRORS else 1)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert fragment in err, err
    assert not Path("out").exists() and not Path("runs").exists()


FLAKY_MODEL = """
import torch
from landscape.errors import UserError


class Flaky(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:
            raise UserError("this model only runs once")
        return self.linear(x)


def build():
    return Flaky()
"""


def test_a_start_that_fails_in_the_first_step_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flaky.py").write_text(FLAKY_MODEL)
    code, _, err = run(["train", "--model", "flaky:build", "--data", "digits", "--out", "run"], capsys)
    assert code == 1 and err == "error: this model only runs once\n"
    assert not Path("run").exists()


def test_resume_refuses_other_options_and_existing_runs_refuse_fresh_starts(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", *FAST, "--out", out], capsys)[0] == 0
    code, _, err = run(["train", "--resume", out, "--lr", "0.1", "--steps", "9"], capsys)
    assert code == 1 and "drop --lr, --steps" in err
    code, _, err = run(["train", *FAST, "--out", out], capsys)
    assert code == 1 and f"already holds a run; resume it with --resume {out}" in err
