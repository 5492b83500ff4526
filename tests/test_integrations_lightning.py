"""landscape.integrations with Lightning: LightningSharpnessCallback on a tiny LightningModule trained
with Functional-SAM through automatic optimization, logged to a CSVLogger and to run folders that
``landscape report`` compares."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import Tensor, nn

from integration_helpers import (
    QUICK,
    SMALL,
    TRAIN_FIGURES,
    comparison_rows,
    figure_kinds,
    readme_examples,
    run_example,
    same_weights,
    weights,
)
from landscape.data import load_data
from landscape.errors import UserError
from landscape.integrations import LightningSharpnessCallback
from landscape.optim import SharpnessAwareOptimizer
from landscape.report.build import build_report
from landscape.runs import read_config, read_metrics, read_summary

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

STEPS = 10


class TinyLit(L.LightningModule):
    """A classifier with dropout; its hyperparameters rebuild it (the report imports it by name)."""

    def __init__(self, hidden: int = 12, rule: str = "func-sam") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Dropout(0.2), nn.Linear(hidden, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.opt.loss(self(x), y)  # opt.loss: every rule, rwsam and msam included
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        rho = None if self.hparams.rule == "adamw" else 0.05
        self.opt = SharpnessAwareOptimizer(self, "adamw", rule=self.hparams.rule, rho=rho, lr=0.05)
        return self.opt


GEN = torch.Generator().manual_seed(3)
X = torch.randn(160, 6, generator=GEN)
Y = (X[:, :3] + 0.3 * torch.randn(160, 3, generator=GEN)).argmax(1)
TRAIN = torch.utils.data.TensorDataset(X[:128], Y[:128])
HELD_OUT = (X[128:], Y[128:])


def fit(rule: str, callback=None, logs=None, accumulate: int = 1) -> TinyLit:
    L.seed_everything(0, verbose=False)
    model = TinyLit(rule=rule)
    loader = torch.utils.data.DataLoader(TRAIN, batch_size=16, shuffle=True)
    trainer = L.Trainer(
        max_steps=STEPS,
        logger=CSVLogger(logs, name=rule) if logs is not None else False,
        callbacks=[callback] if callback is not None else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=5,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(model, loader)
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("lightning")
    out = {}
    for rule in ("adamw", "func-sam"):
        callback = LightningSharpnessCallback(
            every=5, out=base / rule, probe_size=32, eval_batch=HELD_OUT, final_options=QUICK
        )
        model = fit(rule, callback=callback, logs=base / "logs")
        out[rule] = (base / rule, model, base / "logs" / rule / "version_0" / "metrics.csv")
    return out


def test_sharpness_reaches_the_trainers_logger_and_the_run_folder(runs):
    for rule, (folder, model, csv_file) in runs.items():
        assert model.opt.rule.name == rule and model.opt.rule.step == STEPS
        with open(csv_file, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("sharpness/lambda_max")]
        assert [int(r["step"]) for r in rows] == [0, 5, 10]
        records = read_metrics(folder)
        assert [r["step"] for r in records] == [0, 5, 10]
        for record, row in zip(records, rows, strict=True):
            assert float(row["sharpness/lambda_max"]) == pytest.approx(record["lambda_max"], rel=1e-6)
            assert float(row["sharpness/tau_func"]) == pytest.approx(record["tau_func"], rel=1e-6)
        assert "train_loss" in records[1] and "eval_loss" in records[0]
        config = read_config(folder)
        assert config["method"] == rule and config["model"] == f"{__name__}:TinyLit"
        assert config["model_kwargs"] == {"hidden": 12, "rule": rule} and config["steps"] == STEPS
        summary = read_summary(folder)
        assert summary["completed"] and summary["steps"] == STEPS and summary["eval_loss"] > 0


def test_landscape_report_compares_the_lightning_runs_as_training_runs(runs, tmp_path):
    folders = [runs[rule][0] for rule in ("adamw", "func-sam")]
    out = tmp_path / "report"
    build_report(folders, out, trust_checkpoint=True, slice_settings=SMALL, sparsities=(0.5,))
    assert figure_kinds(out) == TRAIN_FIGURES
    rows = comparison_rows(out)
    assert set(rows) == {"AdamW", "Functional-SAM"}
    for folder, label in zip(folders, ("AdamW", "Functional-SAM"), strict=True):
        assert rows[label]["eval loss"] == f"{read_summary(folder)['eval_loss']:.4f}"


def test_tracking_changes_nothing_about_training():
    tracked = fit("func-sam", callback=LightningSharpnessCallback(every=2, probe_size=16, final_metrics=None))
    plain = fit("func-sam")
    assert same_weights(weights(tracked), weights(plain))


def test_a_submodule_can_be_measured_and_what_cannot_work_is_one_line(tmp_path):
    callback = LightningSharpnessCallback(every=5, module="net", out=tmp_path / "net", final_metrics=None)
    fit("sam", callback=callback)
    assert read_config(tmp_path / "net")["model_class"] == "torch.nn.modules.container.Sequential"
    with pytest.raises(UserError, match="no submodule"):
        fit("sam", callback=LightningSharpnessCallback(every=5, module="head"))
    with pytest.raises(UserError, match="accumulate_grad_batches=2"):
        fit("sam", callback=LightningSharpnessCallback(every=5), accumulate=2)


def test_the_readme_lightning_example_runs(tmp_path, monkeypatch):
    """The README's Lightning example, as written but for 50 steps instead of 500."""
    monkeypatch.chdir(tmp_path)
    digits = load_data("digits")
    train_set = torch.utils.data.TensorDataset(digits.x[:800], digits.y[:800])
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=16, shuffle=True)
    code = readme_examples()[2]
    assert "max_steps=500" in code
    run_example(code.replace("max_steps=500", "max_steps=50"), {"loader": loader})
    folder = tmp_path / "runs" / "lit" / "func-sam"
    assert [r["step"] for r in read_metrics(folder) if "lambda_max" in r] == [0, 50]
    assert read_config(folder)["model_kwargs"] == {"hidden": 32}
    assert list((tmp_path / "runs" / "lit" / "logs").rglob("metrics.csv"))
