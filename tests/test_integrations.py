"""landscape.integrations without the optional packages: SharpnessTracker in a hand-written loop, the
probe batch, the run folder it writes (and the report drawn from it), and the lazy imports.

The Hugging Face and Lightning integrations are tested in test_integrations_hf.py and
test_integrations_lightning.py, end to end with the real libraries.
"""

from __future__ import annotations

import json
import subprocess
import sys

import metric_plugin
import pytest
import torch
from torch import Tensor, nn

import landscape.integrations as integrations
from helpers import dense_hessian
from integration_helpers import (
    QUICK,
    ROOT,
    SMALL,
    TRAIN_FIGURES,
    assert_untouched,
    comparison_rows,
    figure_kinds,
    readme_examples,
    run_example,
    same_weights,
    snapshot,
    weights,
)
from landscape import metrics
from landscape.data import load_data
from landscape.errors import UserError
from landscape.evaluation import evaluate
from landscape.integrations import SharpnessTracker, choose_probe, split_batch
from landscape.optim import SharpnessAwareOptimizer
from landscape.problem import Problem
from landscape.report.build import build_report
from landscape.resolve import resolve_inputs
from landscape.runs import read_config, read_metrics, read_summary


class Net(nn.Module):
    """Dropout (the RNG matters), a BatchNorm kept in eval mode on purpose and a frozen parameter
    (modes and flags matter)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(torch.tanh(self.norm(self.embed(x)))))


def make_net() -> Net:
    torch.manual_seed(0)
    model = Net().double().train()
    model.norm.eval()
    model.embed.bias.requires_grad_(False)
    return model


GEN = torch.Generator().manual_seed(3)
X = torch.randn(96, 6, generator=GEN, dtype=torch.float64)
Y = torch.randint(0, 3, (96,), generator=GEN)
PROBE = (X[:24], Y[:24])
HELD_OUT = (X[72:], Y[72:])


def train(out=None, rule: str = "func-sam", steps: int = 8, check=None, **options):
    """A hand loop of ``steps`` updates on batches of 16; with ``out`` (or options) a tracker
    measures every 3 steps. Returns the model and the tracker."""
    model = make_net()
    opt = SharpnessAwareOptimizer(model, "adamw", rule=rule, lr=0.05)
    tracker = None
    if out is not None or options:
        tracker = SharpnessTracker(model, PROBE, "cross_entropy", every=3, out=out, optimizer=opt, **options)
        tracker.step(0)
    order = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        i = torch.randint(0, 72, (16,), generator=order)
        loss = opt.step(inputs=X[i], targets=Y[i])
        if tracker is not None:
            before = snapshot(model)
            tracker.step(step, loss)
            if check is not None:
                check(before, snapshot(model))
    if tracker is not None:
        tracker.finish()
    return model, tracker


# ---------------------------------------------------------------------------- measuring changes nothing
def test_a_tracked_loop_ends_with_the_weights_of_an_untracked_one(tmp_path):
    """Every measurement leaves modes, flags, weights, gradients and the global RNG as found
    (dropout draws the same masks afterwards), so the two runs end bit for bit alike."""
    tracked, tracker = train(
        tmp_path / "run", check=assert_untouched, eval_batch=HELD_OUT, final_metrics=None
    )
    plain, _ = train()
    assert same_weights(weights(tracked), weights(plain))
    assert tracker._measured == 6 and (tmp_path / "run" / "final.pt").is_file()


# ---------------------------------------------------------------------------- what is measured and written
def test_the_tracker_measures_the_probe_batch_and_writes_a_run_folder(tmp_path):
    out = tmp_path / "run"
    model, tracker = train(out, eval_batch=HELD_OUT, log_every=2, final_options=QUICK)
    records = read_metrics(out)
    assert [r["step"] for r in records] == [0, 2, 3, 4, 6, 8]
    diagnostic = [r for r in records if "lambda_max" in r]
    assert [r["step"] for r in diagnostic] == [0, 3, 6]
    assert all("train_loss" in r for r in records[1:]) and "train_loss" not in records[0]
    for record in diagnostic:
        assert {"lambda_max_residual", "trace_stderr", "tau_logit", "tau_func", "eval_loss"} <= set(record)
        assert record["tau_logit"] + record["tau_func"] + record["tau_cross"] == pytest.approx(1.0)
        assert record["lr"] == 0.05 and record["rho"] == 0.05

    # the numbers are those of the probe batch in eval mode: the last one against a dense H
    problem = Problem(model, PROBE, "cross_entropy")
    top = float(torch.linalg.eigvalsh(dense_hessian(problem, *PROBE))[-1])
    final = SharpnessTracker(model, PROBE, every=1, eval_batch=HELD_OUT).measure(8)
    assert final["lambda_max"] == pytest.approx(top, rel=1e-2)
    assert final["diag_loss"] == pytest.approx(float(problem.loss_value()), rel=1e-12)
    assert final["eval_loss"] == pytest.approx(evaluate(model, final_dataset(HELD_OUT), "cross_entropy").loss)

    config = read_config(out)
    assert config["method"] == "func-sam" and config["base"] == "adamw" and config["rho"] == 0.05
    assert config["model"] == f"{__name__}:Net" and config["steps"] == 8 and config["loss"] == "cross_entropy"
    assert config["diagnose_every"] == 3 and config["diagnose_samples"] == 24
    assert config["group"].startswith("Net on probe ") and config["provenance"]["landscape_version"]
    probe = load_data(config["data"], dtype=torch.float64)
    assert torch.equal(probe.x, PROBE[0]) and torch.equal(probe.y, PROBE[1])

    summary = read_summary(out)
    assert summary["completed"] and summary["steps"] == 8 and summary["method"] == "func-sam"
    assert summary["eval_loss"] == pytest.approx(
        evaluate(model, final_dataset(HELD_OUT), "cross_entropy").loss
    )
    assert summary["train_loss"] == records[-1]["train_loss"]
    analysis = json.loads((out / "analysis.json").read_text())
    assert summary["lambda_max"] == analysis["lambda_max"] and analysis["num_samples"] == 24

    final = torch.load(out / "final.pt", weights_only=True)
    assert same_weights(final["model"], weights(model)) and final["config"]["steps"] == 8
    rebuilt = resolve_inputs(out / "final.pt", dtype=torch.float64, allowed_code=[config["model"]]).model
    for key, value in weights(model).items():  # the rebuilt model is built in float32, then converted
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=1e-6, atol=1e-7)


def final_dataset(batch):
    from landscape.data import Dataset

    return Dataset(batch[0], batch[1], name="held-out", task="classification")


def test_a_report_compares_tracked_runs_as_it_compares_training_runs(tmp_path):
    """Two hand loops (AdamW, Functional-SAM) with the same probe batch form one group; the report
    draws the figures and the comparison table of a ``landscape train`` suite."""
    folders = [tmp_path / rule for rule in ("adamw", "func-sam")]
    for folder in folders:
        train(folder, rule=folder.name, eval_batch=HELD_OUT, log_every=1, final_options=QUICK)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        build_report(folders, tmp_path / "refused", slice_settings=SMALL, sparsities=(0.5,))
    out = tmp_path / "report"
    build_report(folders, out, trust_checkpoint=True, slice_settings=SMALL, sparsities=(0.5,))
    assert figure_kinds(out) == TRAIN_FIGURES
    rows = comparison_rows(out)
    assert set(rows) == {"AdamW", "Functional-SAM"}
    for folder, label in zip(folders, ("AdamW", "Functional-SAM"), strict=True):
        summary = read_summary(folder)
        assert rows[label]["eval loss"] == f"{summary['eval_loss']:.4f}"
        assert rows[label]["λmax(H)"] == f"{summary['lambda_max']:.4g}"


# ---------------------------------------------------------------------------- which metrics
def test_a_diagnostic_metric_registered_later_is_tracked_and_metrics_chooses():
    """The gradient-noise trace joins the diagnostics as a registered metric does: one name more."""
    model = make_net()
    with metrics.registered(metric_plugin.METRIC):
        values = SharpnessTracker(model, PROBE, every=1).step(0)
    assert metric_plugin.GRAD_NORM_SQ in values and "lambda_max" in values
    only = SharpnessTracker(model, PROBE, metrics="lambda_max").measure(0)
    assert "lambda_max" in only and "trace" not in only and "tau_logit" not in only
    with pytest.raises(UserError, match="not a training diagnostic: density"):
        SharpnessTracker(model, PROBE, metrics="density")


def test_values_reach_the_loggers():
    seen = []
    tracker = SharpnessTracker(
        make_net(), PROBE, every=2, loggers=[lambda values, step: seen.append((step, values))]
    )
    for step in range(5):
        tracker.step(step)
    assert [step for step, _ in seen] == [0, 2, 4]
    assert all(isinstance(v, float) for _, values in seen for v in values.values())


# ---------------------------------------------------------------------------- the probe batch
def test_the_probe_batch_is_drawn_once_from_its_seed_and_leaves_the_rng_alone():
    data = torch.utils.data.TensorDataset(X, Y)
    state = torch.get_rng_state()
    a, b, c = (choose_probe(data, 16, seed) for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    inputs, targets, from_labels = split_batch({"input_ids": a[1], "labels": a[1], "note": "x"})
    assert set(inputs) == {"input_ids"} and targets is a[1] and from_labels
    with pytest.raises(UserError, match="without a length"):
        choose_probe(iter(data), 4)
    with pytest.raises(UserError, match="without 'labels'"):
        split_batch({"input_ids": a[1]})
    with pytest.raises(UserError, match="cannot tell the inputs"):
        split_batch(X)


# ---------------------------------------------------------------------------- the folder
def test_a_folder_that_holds_a_run_is_refused_unless_resumed(tmp_path):
    out = tmp_path / "run"
    model = make_net()
    first = SharpnessTracker(model, PROBE, every=2, out=out, final_metrics=None)
    for step in range(5):
        first.step(step, loss=float(step))
    first.close()  # interrupted: no final.pt
    assert not (out / "final.pt").exists()
    with pytest.raises(UserError, match="already holds a run") as info:
        SharpnessTracker(model, PROBE, every=2, out=out)
    assert "\n" not in str(info.value)
    resumed = SharpnessTracker(model, PROBE, every=2, out=out, final_metrics=None, resume=True)
    for step in range(2, 7):
        resumed.step(step, loss=float(step))
    resumed.finish()
    assert [r["step"] for r in read_metrics(out)] == [0, 2, 4, 6]
    assert read_summary(out)["steps"] == 6 and (out / "final.pt").is_file()


def test_bad_input_is_one_line():
    model = make_net()
    for kwargs, message in (
        ({"every": -1}, "every must be"),
        ({"log_every": 1.5}, "log_every must be"),
    ):
        with pytest.raises(UserError, match=message):
            SharpnessTracker(model, PROBE, **kwargs)
    with pytest.raises(UserError, match="torch.nn.Module"):
        SharpnessTracker(lambda x: x, PROBE)


# ---------------------------------------------------------------------------- optional packages
def test_importing_the_integrations_needs_neither_transformers_nor_lightning():
    code = (
        "import sys, landscape, landscape.integrations as i\n"
        "i.SharpnessTracker, i.choose_probe\n"
        "loaded = [m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("name", "module", "package", "extra"),
    [
        ("SharpnessAwareTrainer", "landscape.integrations.hf", "transformers", "hf"),
        ("HFSharpnessCallback", "landscape.integrations.hf", "transformers", "hf"),
        ("LightningSharpnessCallback", "landscape.integrations.lightning", "lightning.pytorch", "lightning"),
    ],
)
def test_without_the_optional_package_a_class_is_one_line_saying_what_to_install(
    monkeypatch, name, module, package, extra
):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.delitem(vars(integrations), name, raising=False)
    with pytest.raises(UserError, match=rf"pip install 'landscape\[{extra}\]'") as info:
        getattr(integrations, name)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- the README's example
def test_the_readme_hand_loop_runs(tmp_path, monkeypatch):
    """The README's hand-written loop, as written, on the built-in MLP and digits (50 steps)."""
    from landscape.models import build_model

    monkeypatch.chdir(tmp_path)
    digits = load_data("digits")
    train_set = torch.utils.data.TensorDataset(digits.x[:800], digits.y[:800])
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=16, shuffle=True)
    code = readme_examples()[0]
    run_example(code, {"model": build_model("mlp"), "train_set": train_set, "loader": loader})
    folder = tmp_path / "runs" / "mine" / "func-sam"
    assert [r["step"] for r in read_metrics(folder) if "lambda_max" in r] == [0, 50]
    assert read_config(folder)["model"] == "landscape.models.zoo:MLP"
    assert read_summary(folder)["steps"] == 50
