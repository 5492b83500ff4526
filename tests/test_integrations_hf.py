"""landscape.integrations with Hugging Face's own Trainer: SharpnessAwareTrainer trains a tiny GPT-2
(built from a config, nothing downloaded) with Functional-SAM, HFSharpnessCallback logs through the
Trainer's log machinery and writes run folders, and ``landscape report`` compares them."""

from __future__ import annotations

import pytest
import torch

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
from landscape.errors import UserError
from landscape.integrations import HFSharpnessCallback, SharpnessAwareTrainer
from landscape.integrations.rebuild import TRANSFORMERS_FACTORY
from landscape.optim import SharpnessAwareOptimizer
from landscape.report.build import build_report
from landscape.runs import read_config, read_metrics, read_summary

transformers = pytest.importorskip("transformers")

STEPS = 6


def tiny_gpt2() -> torch.nn.Module:
    """GPT-2 with dropout on (the RNG matters), 1 layer, vocabulary 13."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def lm_data(n: int = 32) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    items = []
    for _ in range(n):
        ids = torch.randint(0, 13, (6,), generator=gen)
        items.append({"input_ids": ids, "labels": ids})
    return items


HELD_OUT = transformers.default_data_collator(lm_data(40)[32:])


def hf_args(folder, steps: int = STEPS, **options) -> transformers.TrainingArguments:
    settings = {
        "output_dir": str(folder),
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "report_to": [],
        "use_cpu": True,
        "logging_steps": 2,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "max_grad_norm": 1.0,
    }
    return transformers.TrainingArguments(**(settings | options))


class Recorder(transformers.TrainerCallback):
    """What every logging callback (TensorBoard, W&B, CSV) receives: the logs of ``on_log``."""

    def __init__(self) -> None:
        self.logs: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs or {})))


def tracking(folder, every: int = 3) -> HFSharpnessCallback:
    return HFSharpnessCallback(
        every=every, out=folder, probe_size=8, eval_batch=HELD_OUT, final_options=QUICK
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An AdamW run (the plain Trainer, the callback attached) and a Functional-SAM run
    (SharpnessAwareTrainer, the callback among its callbacks) on the same data."""
    base = tmp_path_factory.mktemp("hf")
    out = {}
    recorder = Recorder()
    plain = transformers.Trainer(model=tiny_gpt2(), args=hf_args(base / "t1"), train_dataset=lm_data())
    tracking(base / "adamw").attach(plain)
    plain.add_callback(recorder)
    plain.train()
    out["adamw"] = (base / "adamw", plain, recorder)
    recorder = Recorder()
    sam = SharpnessAwareTrainer(
        model=tiny_gpt2(),
        args=hf_args(base / "t2", weight_decay=0.1),
        train_dataset=lm_data(),
        rule="func-sam",
        rho=0.05,
        callbacks=[tracking(base / "func-sam"), recorder],
    )
    sam.train()
    out["func-sam"] = (base / "func-sam", sam, recorder)
    return out


def test_the_trainer_trains_with_the_rule_and_its_schedule_clipping_and_groups(runs):
    _, trainer, _ = runs["func-sam"]
    opt = trainer.optimizer.optimizer  # accelerate's wrapper around ours
    assert isinstance(opt, SharpnessAwareOptimizer) and opt.rule.name == "func-sam" and opt.rule.step == STEPS
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # the Trainer's no-decay group
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # its linear schedule, at the last step
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4] and all(h["grad_norm"] > 0 for h in logged)


def test_sharpness_goes_through_the_trainers_log_and_into_the_run_folder(runs):
    for method, (folder, trainer, recorder) in runs.items():
        history = [h for h in trainer.state.log_history if "sharpness/lambda_max" in h]
        assert [h["step"] for h in history] == [0, 3, 6]
        seen = [(step, logs) for step, logs in recorder.logs if "sharpness/lambda_max" in logs]
        assert [step for step, _ in seen] == [0, 3, 6]
        assert {
            "sharpness/trace",
            "sharpness/trace_stderr",
            "sharpness/tau_func",
            "sharpness/eval_loss",
        } <= set(seen[0][1])
        records = read_metrics(folder)
        assert [r["step"] for r in records] == [0, 2, 3, 4, 6]
        losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
        assert {r["step"]: r["train_loss"] for r in records if "train_loss" in r} == losses
        for record, logged in zip([r for r in records if "lambda_max" in r], history, strict=True):
            assert record["lambda_max"] == logged["sharpness/lambda_max"]
        config = read_config(folder)
        assert config["method"] == method and config["model"] == TRANSFORMERS_FACTORY
        assert config["loss"] == "model" and config["task"] == "language_model" and config["steps"] == STEPS
        assert config["model_kwargs"]["architecture"] == "GPT2LMHeadModel"
        summary = read_summary(folder)
        assert summary["completed"] and summary["method"] == method and summary["train_loss"] == losses[4]
    assert read_config(runs["func-sam"][0])["rho"] == 0.05
    assert read_config(runs["adamw"][0])["group"] == read_config(runs["func-sam"][0])["group"]


def test_landscape_report_compares_the_trainer_runs_as_training_runs(runs, tmp_path):
    folders = [runs[m][0] for m in ("adamw", "func-sam")]
    out = tmp_path / "report"
    build_report(folders, out, trust_checkpoint=True, slice_settings=SMALL, sparsities=(0.5,))
    assert figure_kinds(out) == TRAIN_FIGURES
    rows = comparison_rows(out)
    assert set(rows) == {"AdamW", "Functional-SAM"}
    for folder, label in zip(folders, ("AdamW", "Functional-SAM"), strict=True):
        summary = read_summary(folder)
        assert rows[label]["eval loss"] == f"{summary['eval_loss']:.4f}"
        assert rows[label]["λmax(H)"] == f"{summary['lambda_max']:.4g}"


def test_tracking_changes_nothing_about_training(tmp_path):
    """GPT-2's dropout is on: with measurements restoring the RNG, the runs stay bit for bit alike."""
    finals = []
    for tracked in (True, False):
        trainer = SharpnessAwareTrainer(
            model=tiny_gpt2(),
            args=hf_args(tmp_path / f"t{tracked}"),
            train_dataset=lm_data(),
            rule="func-sam",
            callbacks=[HFSharpnessCallback(every=2, probe_size=8, final_metrics=None)] if tracked else [],
        )
        trainer.train()
        finals.append(weights(trainer.model))
    assert same_weights(*finals)


def test_the_trainer_and_the_callback_refuse_what_they_cannot_do_in_one_line(tmp_path):
    model, data = tiny_gpt2(), lm_data()
    cases = [
        (
            dict(args=hf_args(tmp_path, gradient_accumulation_steps=2), rule="sam"),
            "gradient_accumulation_steps=1",
        ),
        (dict(args=hf_args(tmp_path)), "needs rule="),
        (
            dict(
                args=hf_args(tmp_path),
                rule="sam",
                optimizers=(SharpnessAwareOptimizer(model, rule="sam"), None),
            ),
            "not both",
        ),
        (
            dict(args=hf_args(tmp_path), optimizers=(torch.optim.AdamW(model.parameters()), None)),
            "steps a SharpnessAwareOptimizer",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message) as info:
            SharpnessAwareTrainer(model=model, train_dataset=data, **kwargs)
        assert "\n" not in str(info.value)
    unattached = transformers.Trainer(
        model=model, args=hf_args(tmp_path), train_dataset=data, callbacks=[HFSharpnessCallback(every=2)]
    )
    with pytest.raises(UserError, match=r"callback.attach\(trainer\)"):
        unattached.train()


def test_the_readme_trainer_example_runs(tmp_path, monkeypatch):
    """The README's Hugging Face example, as written, for 50 steps (measured at 0 and 50)."""
    monkeypatch.chdir(tmp_path)
    args = hf_args(tmp_path / "trainer", steps=50, logging_steps=10)
    run_example(readme_examples()[1], {"make_model": tiny_gpt2, "args": args, "train_set": lm_data(64)})
    for method in ("func-sam", "adamw"):
        folder = tmp_path / "runs" / "hf" / method
        assert [r["step"] for r in read_metrics(folder) if "lambda_max" in r] == [0, 50]
        assert read_config(folder)["method"] == method and read_summary(folder)["steps"] == 50
