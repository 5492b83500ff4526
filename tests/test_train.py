"""``landscape.train``: run folders, diagnostics, determinism, exact resume (also after SIGKILL/SIGINT)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli.main import main
from landscape.data import Dataset
from landscape.errors import UserError
from landscape.resolve import resolve_inputs
from landscape.train import (
    DIAGNOSTIC_KEYS,
    RunConfig,
    expand_suite,
    learning_rate_at,
    read_metrics,
    strip_timing,
    train_run,
    train_suite,
    unigram_baseline,
)
from landscape.train.batches import BatchOrder

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(
    model="mlp",
    steps=20,
    batch_size=32,
    log_every=5,
    checkpoint_every=10,
    diagnose_every=10,
    diagnose_samples=64,
    final_analysis=False,
)
SUITE_METHODS = ["adamw", "sam", "func-sam", "fsgld"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run_dir / "final.pt", weights_only=True)
    return payload["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def timeless(run_dir: Path) -> list[dict]:
    return [strip_timing(r) for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    config = RunConfig(**{**SMALL, "final_analysis": True, "final_samples": 48})
    train_suite(expand_suite(config, SUITE_METHODS, []), out)
    return out


# ----------------------------------------------------------------------------------------------
# Run folders and diagnostics


def test_suite_writes_complete_run_folders(suite):
    listing = json.loads((suite / "suite.json").read_text())
    assert [r["name"] for r in listing["runs"]] == SUITE_METHODS
    for entry in listing["runs"]:
        run = suite / entry["folder"]
        for name in ("config.json", "metrics.jsonl", "final.pt", "summary.json", "analysis.json"):
            assert (run / name).is_file(), (run, name)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-10.pt", "step-20.pt"]
        assert not list(run.rglob(".*"))  # no temporary files left behind
        summary = json.loads((run / "summary.json").read_text())
        assert summary == entry["summary"] and summary["completed"]
        assert math.isfinite(summary["eval_loss"]) and summary["eval_loss"] < summary["unigram_eval_loss"]
        assert summary["lambda_max"] > 0 and summary["ggn_trace"] > 0
        config = json.loads((run / "config.json").read_text())
        assert config["method"] == entry["method"] and config["batch_size"] == 32
        # step checkpoints and final.pt are plain data: weights-only loading reads them
        step = torch.load(run / "checkpoints" / "step-10.pt", weights_only=True)
        assert step["step"] == 10 and {"optimizer", "rule", "rng", "data_order"} <= set(step)
        final = torch.load(run / "final.pt", weights_only=True)
        assert set(final) == {"model", "config"}
        assert {"model", "model_kwargs", "data", "loss", "seq_len"} <= set(final["config"])
    sam = json.loads((suite / "sam" / "config.json").read_text())
    assert sam["rho"] == 0.05 and sam["base"] == "adamw"  # the method's default, written out
    fsgld = json.loads((suite / "fsgld" / "config.json").read_text())
    assert fsgld["base"] is None and fsgld["rho"] is None and fsgld["beta"] == 1e8


def test_metrics_have_diagnostics_at_the_asked_steps(suite):
    for method in SUITE_METHODS:
        records = read_metrics(suite / method)
        assert [r["step"] for r in records] == [0, 5, 10, 15, 20]
        diagnosed = [r for r in records if "lambda_max" in r]
        assert [r["step"] for r in diagnosed] == [0, 10, 20]
        for r in diagnosed:
            assert all(r[key] is not None for key in DIAGNOSTIC_KEYS if key != "tau_note"), r
            assert r["tau_note"] is None  # the split is defined (a gradient above its rounding floor)
            assert abs(r["tau_logit"] + r["tau_func"] + r["tau_cross"] - 1.0) < 1e-6
            assert r["trace"] > 0 and r["ggn_trace"] > 0 and r["weight_norm"] > 0
            assert 0.0 <= r["eval_accuracy"] <= 1.0
        assert all(r["train_loss"] > 0 for r in records if r["step"] > 0)
        lr = 0.1 if method == "fsgld" else 1e-3  # SGLD's default vs AdamW's
        assert [r["lr"] for r in records if r["step"] > 0] == [lr] * 4
    # same initial weights for every run of the suite: identical step-0 diagnostics
    first = [strip_timing(read_metrics(suite / m)[0]) for m in SUITE_METHODS]
    assert all(f == first[0] for f in first)
    # and different optimizers then go different ways
    finals = [final_weights(suite / m)["net.0.weight"] for m in SUITE_METHODS]
    assert not torch.equal(finals[0], finals[1]) and not torch.equal(finals[1], finals[2])


def test_analyze_final_pt_needs_no_other_argument(suite, tmp_path, capsys):
    out = tmp_path / "analysis"
    code = main(
        ["analyze", str(suite / "sam" / "final.pt"), "--out", str(out), "--metrics", "eigen,tau"]
        + ["--max-iter", "30", "--top-k", "1"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "analysis.json").read_text())
    # the curvature of the training loss: the run's training split (90% of 1797 digits)
    assert result["num_samples"] == 1617 and result["num_params"] == 8970
    assert result["context"]["model"] == "mlp" and "training split" in result["context"]["note"]
    inputs = resolve_inputs(suite / "sam" / "final.pt")
    weights = final_weights(suite / "sam")
    assert torch.equal(inputs.model.state_dict()["net.0.weight"], weights["net.0.weight"])


# ----------------------------------------------------------------------------------------------
# Determinism and resume


def test_same_seed_same_numbers_and_diagnostics_do_not_steer(tmp_path):
    config = RunConfig(**{**SMALL, "method": "fsgld", "steps": 12, "checkpoint_every": 0})
    train_run(config, tmp_path / "a")
    train_run(config, tmp_path / "b")
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    assert timeless(tmp_path / "a") == timeless(tmp_path / "b")
    assert [p.name for p in (tmp_path / "a" / "checkpoints").iterdir()] == ["step-12.pt"]
    # diagnostics use their own random streams: without them the trajectory is the same
    train_run(dataclasses.replace(config, diagnose_every=0), tmp_path / "c")
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "c"))
    train_run(dataclasses.replace(config, seed=1), tmp_path / "d")
    assert not torch.equal(
        final_weights(tmp_path / "a")["net.0.weight"], final_weights(tmp_path / "d")["net.0.weight"]
    )


def test_resume_after_a_crash_continues_bit_for_bit(tmp_path):
    # precond-func-sam reads AdamW's state; cosine schedule; log_every 3 leaves a pending loss at
    # the step-10 checkpoint; the crash happens between checkpoints, after records were written
    config = RunConfig(
        **{**SMALL, "method": "precond-func-sam", "log_every": 3, "schedule": "cosine", "warmup_steps": 4}
    )
    train_run(config, tmp_path / "reference")

    def crash(event):
        if event.step == 14:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(config, tmp_path / "run", progress=crash)
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 12
    assert not (tmp_path / "run" / "final.pt").exists()
    summary = train_run(None, tmp_path / "run", resume=True)
    assert summary.completed and summary.steps == 20
    assert_same_weights(final_weights(tmp_path / "reference"), final_weights(tmp_path / "run"))
    assert timeless(tmp_path / "reference") == timeless(tmp_path / "run")
    # a finished run resumes to itself
    again = train_run(None, tmp_path / "run", resume=True)
    assert again.to_dict() == summary.to_dict()


def test_suite_resumes_where_it_stopped(tmp_path):
    config = RunConfig(**{**SMALL, "steps": 10, "checkpoint_every": 5, "diagnose_every": 0})
    runs = expand_suite(config, ["adamw", "sam"], [])

    def crash(event):
        if event.run == "sam" and event.step == 7:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        train_suite(runs, tmp_path / "suite", progress=crash)
    assert (tmp_path / "suite" / "adamw" / "summary.json").is_file()
    assert not (tmp_path / "suite" / "sam" / "final.pt").exists()
    summaries = train_suite(None, tmp_path / "suite", resume=True)
    assert [s.name for s in summaries] == ["adamw", "sam"] and all(s.completed for s in summaries)
    train_run(runs[1], tmp_path / "sam-alone")
    assert_same_weights(final_weights(tmp_path / "sam-alone"), final_weights(tmp_path / "suite" / "sam"))
    listing = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert [r["summary"]["completed"] for r in listing["runs"]] == [True, True]


def test_fresh_run_refuses_a_folder_holding_a_run(tmp_path):
    config = RunConfig(**{**SMALL, "steps": 2, "diagnose_every": 0})
    train_run(config, tmp_path / "x")
    with pytest.raises(UserError, match="already holds a run"):
        train_run(config, tmp_path / "x")
    with pytest.raises(UserError, match="not a run folder"):
        train_run(None, tmp_path / "nothing", resume=True)


KILL_ARGS = [
    "train",
    "--model",
    "mlp",
    "--method",
    "fsgld",
    "--steps",
    "400",
    "--batch-size",
    "32",
    "--checkpoint-every",
    "20",
    "--log-every",
    "7",
    "--diagnose-every",
    "100",
    "--diagnose-samples",
    "48",
    "--no-final-analysis",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main([*KILL_ARGS, "--out", str(out)]) == 0
    return out


def _start_and_stop(out: Path, sig: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *KILL_ARGS, "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = out / "checkpoints" / "step-20.pt"
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    result = _start_and_stop(out, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (out / "final.pt").exists(), "the process finished before it was killed"
    killed_at = max(r["step"] for r in read_metrics(out))
    with open(out / "metrics.jsonl", "a") as f:  # what a kill in the middle of a write leaves
        f.write('{"step": 9999, "train_lo')
    assert main(["train", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert_same_weights(final_weights(uninterrupted), final_weights(out))
    assert timeless(uninterrupted) == timeless(out)
    assert killed_at < 400


def test_ctrl_c_stops_at_a_checkpoint_and_resumes(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    result = _start_and_stop(out, signal.SIGINT)
    assert result.returncode == 130, result.stderr
    assert f"landscape train --resume {out}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "final.pt").exists()
    last = max(int(p.stem.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert last >= 20 and last >= max(r["step"] for r in read_metrics(out))  # stopped at a step
    assert main(["train", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert_same_weights(final_weights(uninterrupted), final_weights(out))
    assert timeless(uninterrupted) == timeless(out)


# ----------------------------------------------------------------------------------------------
# Pieces


def test_batch_order_shuffled_epochs_and_data_order():
    order = BatchOrder(10, 4, seed=0, shuffle=True)
    first_epoch = torch.cat([order.next_indices(), order.next_indices()])
    assert len(set(first_epoch.tolist())) == 8  # no repeats within an epoch
    state = order.state_dict()
    after = [order.next_indices() for _ in range(3)]
    again = BatchOrder(10, 4, seed=0, shuffle=True)
    again.load_state_dict(state)
    assert all(
        torch.equal(a, b) for a, b in zip(after, [again.next_indices() for _ in range(3)], strict=True)
    )
    plain = BatchOrder(10, 4, seed=0, shuffle=False)
    assert [plain.next_indices().tolist() for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


def test_learning_rate_schedules():
    cosine = RunConfig(model="mlp", lr=1.0, steps=10, schedule="cosine", warmup_steps=2)
    values = [learning_rate_at(cosine, s) for s in range(10)]
    assert values[:2] == [0.5, 1.0] and values[2] == 1.0
    assert all(a >= b for a, b in zip(values[1:], values[2:], strict=False))
    assert abs(learning_rate_at(cosine, 9) - 0.5 * (1 + math.cos(math.pi * 7 / 8))) < 1e-12
    assert learning_rate_at(RunConfig(model="mlp", lr=0.3), 7) == 0.3


def test_unigram_baseline_is_the_marginal_entropy():
    train = Dataset(
        torch.zeros(4, 1), torch.tensor([0, 0, 1, 1]), name="t", task="classification", num_classes=3
    )
    held = Dataset(torch.zeros(2, 1), torch.tensor([0, 2]), name="e", task="classification", num_classes=3)
    base = unigram_baseline(train, held)
    assert abs(base["unigram_entropy"] - math.log(2)) < 1e-12
    # add-one smoothing: p = (3/7, 3/7, 1/7)
    assert abs(base["unigram_eval_loss"] - (-(math.log(3 / 7) + math.log(1 / 7)) / 2)) < 1e-12


def test_suite_expansion_names_and_option_checks():
    runs = expand_suite(RunConfig(model="mlp", phi=0.3), ["adamw", "sam", "angle-sam"], [0.01, 0.1])
    assert [r.name for r in runs] == [
        "adamw",
        "sam-rho0.01",
        "sam-rho0.1",
        "angle-sam-rho0.01",
        "angle-sam-rho0.1",
    ]
    assert runs[0].rho is None and runs[0].phi is None and runs[3].phi == 0.3 and runs[2].rho == 0.1
    assert {r.seed for r in runs} == {0}
    with pytest.raises(UserError, match="--rho is not used by method adamw"):
        expand_suite(RunConfig(model="mlp"), ["adamw"], [0.1])
    with pytest.raises(UserError, match="--momentum is not used"):
        expand_suite(RunConfig(model="mlp", momentum=0.5), ["adamw", "sam"], [])
    with pytest.raises(UserError, match="needs --base adamw"):
        expand_suite(RunConfig(model="mlp", base="sgd"), ["precond-func-sam"], [])
    with pytest.raises(UserError, match="brings its own update"):
        expand_suite(RunConfig(model="mlp", base="sgd"), ["fsgld"], [])
    with pytest.raises(UserError, match="unknown method 'nope'"):
        expand_suite(RunConfig(model="mlp"), ["nope"], [])
    with pytest.raises(UserError, match="more than once"):
        expand_suite(RunConfig(model="mlp"), ["sam", "sam"], [])


def test_config_json_round_trip_and_unknown_keys():
    config = RunConfig(model="mlp", method="msam", micro_batch=8).resolved()
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.rule_options() == {"seed": 0, "rho": 0.05, "rho_warmup": 0, "m": 8}
    with pytest.raises(UserError, match="unknown key"):
        RunConfig.from_dict({**config.to_dict(), "learning_rate": 1})


def test_transformer_beats_the_unigram_baseline_quickly(tmp_path):
    config = RunConfig(
        model="transformer",
        data="text-train",
        eval_data="text-eval",
        steps=100,
        lr=3e-3,
        checkpoint_every=0,
        log_every=50,
    )
    summary = train_run(config, tmp_path / "lm")
    assert 3.0 < summary.unigram_eval_loss < 3.5
    assert summary.eval_loss < summary.unigram_eval_loss - 0.5, summary
