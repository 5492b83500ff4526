"""The step loop of a run: updates, the ``metrics.jsonl`` records, diagnostics and checkpoints.

A ``metrics.jsonl`` record has ``step`` (updates done), ``lr`` and ``rho`` (of the last update),
``train_loss`` (the mean batch loss of the updates since the previous record), ``time_s``
(training wall-clock seconds so far) and, at diagnostic steps (0, every ``diagnose_every``, and
the last), the keys of :data:`landscape.train.diagnostics.DIAGNOSTIC_KEYS` and ``diag_time_s``
(LoRA methods also :data:`~landscape.train.diagnostics.LORA_DIAGNOSTIC_KEYS`).
Wall-clock fields (:data:`landscape.runs.TIMING_FIELDS`) are the only ones that differ between two
runs with the same configuration.

Ctrl-C (:mod:`landscape.train.interrupt`) is deferred to the end of the current step; the loop
then writes a checkpoint (unless the step just wrote one) and raises ``TrainingInterrupted``.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape import distributed, runs
from landscape.errors import UserError
from landscape.optim import PerturbationRule
from landscape.train import ranks
from landscape.train.config import learning_rate_at
from landscape.train.diagnostics import diagnose, is_diagnostic
from landscape.train.interrupt import StopRequest, TrainingInterrupted
from landscape.train.setup import PreparedRun

__all__ = ["ProgressCallback", "TrainProgress", "train_steps"]


@dataclass(frozen=True)
class TrainProgress:
    """What the loop reports to a progress callback (after each step and at phase changes).

    ``phase``: ``train``, ``diagnose`` (before a diagnostic), ``analysis`` (final analysis; then
    ``label`` names its stage), ``done``. ``loss`` is the last batch loss, ``diagnostics`` the
    last diagnostic record (``None`` before the first).
    """

    run: str
    step: int
    steps: int
    phase: str
    loss: float | None = None
    diagnostics: dict[str, Any] | None = None
    label: str = ""


ProgressCallback = Callable[[TrainProgress], None]


def train_steps(
    run: PreparedRun,
    run_dir: Path,
    start_step: int,
    pending: list[float],
    elapsed: float,
    stop: StopRequest,
    report: ProgressCallback,
) -> dict[str, Any] | None:
    """Updates ``start_step + 1 .. steps``: log, diagnose, checkpoint; returns the last diagnostics.

    ``pending``: the batch losses since the last record (restored from a checkpoint on resume);
    ``elapsed``: the training seconds before ``start_step``.
    """
    config, model, rule, optimizer = run.config, run.model, run.rule, run.optimizer
    assert config.name is not None and config.loss is not None
    loss_name = config.loss
    steps = config.steps
    last_diag: dict[str, Any] | None = None
    last_loss: float | None = None
    started = time.perf_counter() - elapsed
    model.train()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def elapsed_now() -> float:
        return time.perf_counter() - started

    def save(step: int) -> Path:
        if not ranks.is_leader():
            return runs.checkpoint_path(run_dir, step)
        state = {
            "step": step,
            "model": runs.model_state(model),
            "optimizer": optimizer.state_dict(),
            "rule": rule.state_dict(),
            "rng": runs.rng_state(),
            "data_order": run.order.state_dict(),
            "pending_losses": list(pending),
            "elapsed_s": elapsed_now(),
            "config": runs.jsonable(config.checkpoint_config()),
        }
        return runs.save_run_checkpoint(run_dir, step, state)

    def diagnostics(step: int) -> dict[str, Any]:
        assert run.subset is not None
        report(TrainProgress(config.name or "", step, steps, "diagnose", last_loss, last_diag))
        return diagnose(
            model,
            run.subset,
            run.eval,
            loss_name,
            max_iter=config.diagnose_max_iter,
            trace_samples=config.diagnose_trace_samples,
            seed=config.seed,
            rule=rule,
        )

    # rank 0 keeps the log; the other processes of a data-parallel run write nowhere
    sink = runs.open_metrics(run_dir) if ranks.is_leader() else contextlib.nullcontext(io.StringIO())
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1 and config.batch_size is not None and config.batch_size < world:
        raise UserError(f"--batch-size {config.batch_size} cannot be shared out over {world} processes")
    with sink as log:
        if start_step == 0 and config.diagnose_every:
            with stop.deferred():
                last_diag = diagnostics(0)
                runs.append_record(log, {"step": 0, **last_diag, "time_s": elapsed_now()})
        report(TrainProgress(config.name, start_step, steps, "train", last_loss, last_diag))
        step = start_step
        while step < steps:
            with stop.deferred():
                lr = learning_rate_at(config, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                rho = rule.current_rho() if isinstance(rule, PerturbationRule) else None
                index = run.order.next_indices()
                if world > 1:  # this process's part of the batch; the rule forms the global gradient
                    index = index[rank::world]
                inputs, targets = run.train.x[index].to(device), run.train.y[index].to(device)
                loss = rule.compute_gradient(model, inputs, targets, loss_fn=loss_name, optimizer=optimizer)
                last_loss = float(loss)
                if not math.isfinite(last_loss):
                    raise UserError(
                        f"training diverged at step {step + 1}: the batch loss is {last_loss} "
                        "(try a smaller --lr)"
                    )
                optimizer.step()
                step += 1
                pending.append(last_loss)
                diagnose_now = config.diagnose_every > 0 and (
                    step % config.diagnose_every == 0 or step == steps
                )
                if diagnose_now or step % config.log_every == 0 or step == steps:
                    record: dict[str, Any] = {"step": step, "lr": lr}
                    if rho is not None:
                        record["rho"] = rho
                    record["train_loss"] = sum(pending) / len(pending)
                    pending.clear()
                    if diagnose_now:
                        last_diag = diagnostics(step)
                        record.update(last_diag)
                    record["time_s"] = elapsed_now()
                    runs.append_record(log, record)
                saved_now = False
                if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == steps:
                    save(step)
                    saved_now = True
                report(TrainProgress(config.name, step, steps, "train", last_loss, last_diag))
                # inside the deferred block: a Ctrl-C between steps still lets every process agree
                # on the step to stop after (it reaches the ranks at different moments)
                if ranks.any_process(stop.requested):
                    path = runs.checkpoint_path(run_dir, step) if saved_now else save(step)
                    raise TrainingInterrupted(run_dir, step, path)
    if start_step >= steps:  # resumed after the last step: the last record holds the diagnostics
        records = runs.read_metrics(run_dir)
        last_diag = next((r for r in reversed(records) if is_diagnostic(r)), None)
    return last_diag
