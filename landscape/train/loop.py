"""The training loop: one run (:func:`train_run`) or a suite of runs (:func:`train_suite`).

A run folder holds::

    config.json          the resolved RunConfig (rebuilds model, data and optimizer)
    metrics.jsonl        one JSON object per logged step (see below)
    checkpoints/step-N.pt  model, optimizer, rule and RNG states every checkpoint_every steps + at the end
    final.pt             {"model": state_dict, "config": ...}: `landscape analyze final.pt` needs nothing else
    summary.json         final train/eval loss, accuracy, unigram baseline, curvature; marks the run complete
    analysis.json        the final analysis of final.pt (when diagnosing, or with final_analysis=True)

A ``metrics.jsonl`` record has ``step`` (updates done), ``lr`` and ``rho`` (of the last update),
``train_loss`` (the mean batch loss of the updates since the previous record), ``time_s``
(training wall-clock seconds so far) and, at diagnostic steps (0, every ``diagnose_every``, and
the last), the keys of :data:`landscape.train.diagnostics.DIAGNOSTIC_KEYS` and ``diag_time_s``
(LoRA methods also :data:`~landscape.train.diagnostics.LORA_DIAGNOSTIC_KEYS`).
Wall-clock fields (:data:`TIMING_FIELDS`) are the only ones that differ between two runs with the
same configuration.

LoRA methods (``lora``, ``fmlora``, ``efmlora``): the model is built, ``init``'s weights are loaded
and then the adapters are added (:func:`landscape.train.config.add_run_adapters`); only they train.
``final.pt``'s config names them, so the model rebuilt from it has them too.

Determinism: the model is built after ``torch.manual_seed(seed)``; the data order comes from its
own ``torch.Generator`` (seeded from ``seed``); rules and SGLD draw from generators seeded with
``seed``; diagnostics leave the global RNG untouched. Checkpoints save all of these (and the global
RNG, for dropout), so a run resumed from any checkpoint, even after the process was killed, ends
with the same weights and the same metrics as one that was never interrupted. On resume
``metrics.jsonl`` is cut back to the checkpoint's step.

Ctrl-C (SIGINT) during training is deferred to the end of the current step; the loop then writes a
checkpoint and raises :class:`TrainingInterrupted`. A second Ctrl-C interrupts at once (the last
periodic checkpoint stays valid).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from landscape import distributed
from landscape.checkpoints import load_into_model, save_atomic
from landscape.data import Dataset, validate_labels
from landscape.errors import UserError, one_line
from landscape.models import build_model, unwrap_output
from landscape.optim import GradientRule, PerturbationRule, make_base_optimizer, make_rule
from landscape.report.files import dumps_json, ensure_writable_dir, jsonable, write_text_atomic
from landscape.train.checkpoint import (
    checkpoint_path,
    final_payload,
    latest_checkpoint,
    load_run_checkpoint,
    model_state,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from landscape.train.config import (
    DEFAULT_BATCH_SIZE,
    DIAGNOSE_TARGETS,
    FINAL_ANALYSIS_TARGETS,
    RunConfig,
    add_run_adapters,
    learning_rate_at,
    load_splits,
)
from landscape.train.diagnostics import diagnose, evaluate, fixed_subset, unigram_baseline, weight_norm
from landscape.trust import check_stored_specs

__all__ = [
    "TIMING_FIELDS",
    "BatchOrder",
    "RunSummary",
    "TrainProgress",
    "TrainingInterrupted",
    "read_metrics",
    "read_run_config",
    "strip_timing",
    "train_run",
    "train_suite",
]

TIMING_FIELDS = ("time_s", "diag_time_s")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
FINAL_FILE = "final.pt"
SUITE_FILE = "suite.json"
# Mixed into the seed of the data-order generator so that its stream differs from the rule's and
# SGLD's generators, which are seeded with the run seed itself.
_DATA_ORDER_SALT = 0x5EED_0DA7A


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


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C once a checkpoint at ``step`` is on disk; ``resume_dir`` continues it."""

    def __init__(self, resume_dir: Path, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.resume_dir = Path(resume_dir)
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class RunSummary:
    """The outcome of one run (the contents of ``summary.json``)."""

    name: str
    run_dir: str
    method: str
    rho: float | None
    steps: int
    completed: bool
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    unigram_entropy: float | None = None
    unigram_eval_loss: float | None = None
    weight_norm: float | None = None
    lambda_max: float | None = None
    trace: float | None = None
    ggn_trace: float | None = None
    tau_logit: float | None = None
    tau_func: float | None = None
    tau_cross: float | None = None
    train_seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunSummary:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})


# ----------------------------------------------------------------------------------------------
# Data order


class BatchOrder:
    """The training items of each step, from a dedicated generator.

    Shuffled: each epoch is a fresh ``randperm`` of the training items, cut into batches of
    ``batch_size``; the last ``n mod batch_size`` items of a permutation are skipped, so every
    batch has the same size (different items are skipped each epoch). Not shuffled: consecutive
    slices of the data in its own order, wrapping around at the end.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, shuffle: bool) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed((int(seed) + _DATA_ORDER_SALT) % (2**63))
        self.permutation: Tensor | None = None
        self.position = 0

    def next_indices(self) -> Tensor:
        """Indices of the next batch."""
        n, b = self.num_items, self.batch_size
        if not self.shuffle:
            index = (torch.arange(b) + self.position) % n
            self.position = (self.position + b) % n
            return index
        if self.permutation is None or self.position + b > n:
            self.permutation = torch.randperm(n, generator=self.generator)
            self.position = 0
        index = self.permutation[self.position : self.position + b]
        self.position += b
        return index

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation and position."""
        return {
            "generator": self.generator.get_state(),
            "permutation": self.permutation,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"]
        self.position = int(state["position"])


# ----------------------------------------------------------------------------------------------
# Ctrl-C


class _StopRequest:
    """SIGINT handling: while ``deferring``, Ctrl-C only sets ``requested``; otherwise (or the
    second time) it raises ``KeyboardInterrupt`` as usual. Installed in the main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False


# ----------------------------------------------------------------------------------------------
# Files


def _leader() -> bool:
    """Rank 0 of a data-parallel run (or the only process): the one that writes files."""
    return distributed.rank() == 0


def _any_process(flag: bool) -> bool:
    """``flag`` of any process (one small all-reduce per call when data-parallel), so that every
    process stops after the same step."""
    if not distributed.is_distributed():
        return flag
    return bool(distributed.all_reduce_max_(torch.tensor([int(flag)]))[0])


def _barrier() -> None:
    """Wait for every process (a no-op with one): files rank 0 wrote are there afterwards."""
    if distributed.is_distributed():
        torch.distributed.barrier()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def strip_timing(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the wall-clock fields (for comparing runs)."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def read_run_config(run_dir: Path) -> RunConfig:
    """The ``config.json`` of a run folder."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    try:
        payload = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    return RunConfig.from_dict(payload, str(path))


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step``; drop later ones and a torn last line (killed mid-write)."""
    if not path.exists():
        path.write_text("")
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            break  # only the last line can be torn: nothing valid follows it
        if not isinstance(record, dict) or record.get("step", math.inf) > step:
            break
        kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(jsonable(record), allow_nan=False) + "\n"


def _holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (CONFIG_FILE, METRICS_FILE, "checkpoints", SUITE_FILE))


# ----------------------------------------------------------------------------------------------
# Building a run


@dataclass
class _Run:
    config: RunConfig
    model: nn.Module
    train: Dataset
    eval: Dataset
    subset: Dataset | None
    rule: GradientRule
    optimizer: torch.optim.Optimizer
    order: BatchOrder
    baseline: dict[str, float] | None


def _targets_per_item(data: Dataset) -> int:
    return max(1, int(data.y[:1].numel()))


def _build_model(config: RunConfig) -> nn.Module:
    """The run's model: built after ``torch.manual_seed(seed)``, ``init``'s weights loaded, then the
    adapters of a LoRA method added (on the loaded weights, which they leave unchanged at the start
    since B = 0), then cast to the run's dtype. A resumed run rebuilds the same model before its
    checkpoint's state (adapters included) is loaded into it."""
    assert config.model is not None, "resolve the config first"
    torch.manual_seed(config.seed)
    model = build_model(config.model, **config.model_kwargs)
    if config.init is not None:
        _load_init(model, config.init)
    if config.uses_lora:
        add_run_adapters(model, config)
    return model.to(config.torch_dtype())


def _load_init(model: nn.Module, path: str) -> None:
    """Load ``--init`` weights; those of a LoRA run (``final.pt`` with adapters) are first merged
    into the base weights, ``W0 + s B A``, so any method can go on from a fine-tuned model."""
    from landscape.checkpoints import load_checkpoint
    from landscape.optim import lora_layers, merge_lora

    state, stored = load_checkpoint(path)
    if lora_layers(model) or not any(".lora_A" in key for key in state):
        load_into_model(model, state)
        return
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    if not stored or not add_run_adapters(model, stored):
        raise UserError(
            f"--init {path} holds LoRA adapters, but no run configuration that says how to rebuild them"
        )
    load_into_model(model, state)
    merge_lora(model)
    # add_run_adapters froze the base weights for the old run; the parameters keep their names
    # through wrapping and merging, so the model's own flags come back by name
    for name, p in model.named_parameters():
        p.requires_grad_(trainable.get(name, True))


def _prepare(config: RunConfig) -> _Run:
    """Load data, fill the data-dependent defaults, build model, rule, optimizer and batch order."""
    train, eval_data = load_splits(config)
    per_item = _targets_per_item(train)
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE.get(train.task, 64)
    if batch_size > len(train):
        raise UserError(f"--batch-size {batch_size} exceeds the {len(train)} training items")
    config = dataclasses.replace(
        config,
        batch_size=batch_size,
        diagnose_samples=config.diagnose_samples or max(1, DIAGNOSE_TARGETS // per_item),
        final_samples=config.final_samples or max(1, FINAL_ANALYSIS_TARGETS // per_item),
        final_analysis=config.diagnose_every > 0 if config.final_analysis is None else config.final_analysis,
    )
    model = _build_model(config)
    _check_model_fits_data(model, train, eval_data, config.loss or "cross_entropy")
    try:
        rule = make_rule(config.method, **config.rule_options())
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_base_optimizer(config.base_optimizer, params, **config.optimizer_options())
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build method {config.method}: {exc}") from None
    subset = (
        fixed_subset(train, config.diagnose_samples or 1, config.split_seed)
        if config.diagnose_every
        else None
    )
    order = BatchOrder(len(train), batch_size, config.seed, config.shuffle)
    return _Run(
        config, model, train, eval_data, subset, rule, optimizer, order, unigram_baseline(train, eval_data)
    )


def _check_model_fits_data(model: nn.Module, train: Dataset, eval_data: Dataset, loss: str) -> None:
    """Run the model on two training items so that a mismatch fails now with a ``UserError``
    rather than after the first step; check every label against the number of outputs.

    In eval mode and on a forked RNG: no BatchNorm statistics move and no random draw is used up.
    """
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            out = unwrap_output(model(train.x[:2]))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the model cannot run on data '{train.name}': {one_line(exc, 200)}") from None
    finally:
        model.train(was_training)
    if loss == "cross_entropy":
        if out.shape[:-1] != train.y[:2].shape:
            raise UserError(
                f"model outputs of shape {tuple(out.shape)} do not match targets of shape "
                f"{tuple(train.y[:2].shape)} (cross-entropy expects logits [..., C] and targets [...])"
            )
        validate_labels(train.y, out.shape[-1])
        validate_labels(eval_data.y, out.shape[-1])
    elif out.numel() != train.y[:2].numel():
        raise UserError(
            f"model outputs of shape {tuple(out.shape)} do not match mse targets {tuple(train.y.shape)}"
        )


def _restore(run: _Run, state: dict[str, Any]) -> tuple[list[float], float]:
    load_into_model(run.model, state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.rule.load_state_dict(state["rule"])
    run.order.load_state_dict(state["data_order"])
    set_rng_state(state["rng"])
    return [float(x) for x in state.get("pending_losses", [])], float(state.get("elapsed_s", 0.0))


# ----------------------------------------------------------------------------------------------
# One run


def train_run(
    config: RunConfig | None,
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    *,
    trust_checkpoint: bool = False,
    named_specs: Mapping[str, str] | None = None,
) -> RunSummary:
    """Train one run into the folder ``out_dir`` (see the module docstring for its files).

    ``resume=True`` continues the run in ``out_dir`` from its last checkpoint (its
    ``config.json`` rules; ``config`` may be ``None`` or must equal it); a completed run is
    returned as it is. A fresh run refuses a folder that already holds one. Raises
    ``UserError`` for bad configurations and :class:`TrainingInterrupted` after Ctrl-C.

    A resumed run's ``config.json`` never chooses code to run (:mod:`landscape.trust`): an import
    path it stores for model, data or loss runs only when ``named_specs`` names the same spec
    (``{"model": "pkg.mod:factory"}``, the command line's ``--model``) or with
    ``trust_checkpoint``, which also lets an ``init`` checkpoint name the model.
    """
    run_dir = Path(out_dir)
    report = progress or (lambda _event: None)
    if resume:
        stored = read_run_config(run_dir)
        _check_resumed_specs(stored.to_dict(), run_dir / CONFIG_FILE, named_specs, trust_checkpoint)
        if config is not None:  # it may leave out what the run filled in (batch size, ...)
            given = config.resolved(strict=False, trust_checkpoint=trust_checkpoint).to_dict()
            differ = sorted(k for k, v in stored.to_dict().items() if given[k] is not None and given[k] != v)
            if differ:
                raise UserError(
                    f"the configuration differs from {run_dir / CONFIG_FILE} in {', '.join(differ)}"
                )
        summary_path = run_dir / SUMMARY_FILE
        if summary_path.is_file() and (run_dir / FINAL_FILE).is_file():
            summary = RunSummary.from_dict(json.loads(summary_path.read_text()))
            report(TrainProgress(summary.name, summary.steps, summary.steps, "done", summary.train_loss))
            return summary
        config = stored
    else:
        if config is None:
            raise ValueError("a fresh run needs a config")
        if _leader():
            ensure_writable_dir(run_dir)
            if run_dir.exists() and _holds_run(run_dir):
                raise UserError(
                    f"{run_dir} already holds a run; resume it with --resume {run_dir} or choose another --out"
                )
    config = config.resolved(trust_checkpoint=trust_checkpoint)
    run = _prepare(config)
    config = run.config
    metrics_path = run_dir / METRICS_FILE

    start_step = 0
    pending: list[float] = []
    elapsed = 0.0
    found = latest_checkpoint(run_dir) if resume else None
    created = False
    if found is not None:
        state = load_run_checkpoint(found[1])
        if state["config"] != jsonable(config.checkpoint_config()):
            raise UserError(
                f"checkpoint {found[1]} was written by a different configuration than {CONFIG_FILE}"
            )
        pending, elapsed = _restore(run, state)
        start_step = int(state["step"])
        if _leader():
            _truncate_metrics(metrics_path, start_step)
    elif _leader():
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_FILE, dumps_json(config.to_dict()))
        write_text_atomic(metrics_path, "")
    _barrier()  # every process starts from the same files

    with _StopRequest() as stop:
        try:
            last_diag = _train_steps(run, run_dir, metrics_path, start_step, pending, elapsed, stop, report)
        except BaseException as exc:
            fresh_start = not resume and latest_checkpoint(run_dir) is None
            if fresh_start and not isinstance(exc, TrainingInterrupted) and _leader():
                _remove_unstarted_run(run_dir, created)
            raise
        try:
            return _finish(run, run_dir, last_diag, report)
        except KeyboardInterrupt:
            final = latest_checkpoint(run_dir)
            raise TrainingInterrupted(run_dir, config.steps, final[1] if final else None) from None


def _check_resumed_specs(
    stored: Mapping[str, Any], source: Path, named: Mapping[str, str] | None, trust: bool
) -> None:
    """Specs named with ``--resume`` must be the stored ones; stored import paths need naming or trust."""
    named = {key: spec for key, spec in (named or {}).items() if spec is not None}
    for key, spec in named.items():
        if spec != stored.get(key):
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {spec} differs from {source} ({key}: {stored.get(key)!r})")
    check_stored_specs(stored, str(source), allowed=list(named.values()), trust=trust)


def _remove_unstarted_run(run_dir: Path, remove_folder: bool) -> None:
    """Undo a start that failed before its first checkpoint (a bad option that only the first step
    reveals): nothing would be resumable, and the folder should not block a corrected retry."""
    for name in (CONFIG_FILE, METRICS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (run_dir / "checkpoints", run_dir) if remove_folder else (run_dir / "checkpoints",):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _train_steps(
    run: _Run,
    run_dir: Path,
    metrics_path: Path,
    start_step: int,
    pending: list[float],
    elapsed: float,
    stop: _StopRequest,
    report: ProgressCallback,
) -> dict[str, Any] | None:
    """Updates ``start_step + 1 .. steps``: log, diagnose, checkpoint; returns the last diagnostics."""
    config, model, rule, optimizer = run.config, run.model, run.rule, run.optimizer
    assert config.name is not None and config.loss is not None
    loss_name = config.loss
    steps = config.steps
    last_diag: dict[str, Any] | None = None
    last_loss: float | None = None
    started = time.perf_counter() - elapsed
    model.train()

    def elapsed_now() -> float:
        return time.perf_counter() - started

    def save(step: int) -> Path:
        if not _leader():
            return checkpoint_path(run_dir, step)
        state = {
            "step": step,
            "model": model_state(model),
            "optimizer": optimizer.state_dict(),
            "rule": rule.state_dict(),
            "rng": rng_state(),
            "data_order": run.order.state_dict(),
            "pending_losses": list(pending),
            "elapsed_s": elapsed_now(),
            "config": jsonable(config.checkpoint_config()),
        }
        return save_run_checkpoint(checkpoint_path(run_dir, step), state)

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
    sink = open(metrics_path, "a", encoding="utf-8") if _leader() else contextlib.nullcontext(io.StringIO())
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1 and config.batch_size is not None and config.batch_size < world:
        raise UserError(f"--batch-size {config.batch_size} cannot be shared out over {world} processes")
    with sink as log:
        if start_step == 0 and config.diagnose_every:
            with stop.deferred():
                last_diag = diagnostics(0)
                _write(log, {"step": 0, **last_diag, "time_s": elapsed_now()})
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
                inputs, targets = run.train.x[index], run.train.y[index]
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
                    _write(log, record)
                saved_now = False
                if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == steps:
                    save(step)
                    saved_now = True
                report(TrainProgress(config.name, step, steps, "train", last_loss, last_diag))
                # inside the deferred block: a Ctrl-C between steps still lets every process agree
                # on the step to stop after (it reaches the ranks at different moments)
                if _any_process(stop.requested):
                    path = checkpoint_path(run_dir, step) if saved_now else save(step)
                    raise TrainingInterrupted(run_dir, step, path)
    if start_step >= steps:  # resumed after the last step: the last record holds the diagnostics
        records = read_metrics(metrics_path)
        last_diag = next((r for r in reversed(records) if "lambda_max" in r), None)
    return last_diag


def _write(log: TextIO, record: dict[str, Any]) -> None:
    log.write(_json_line(record))
    log.flush()  # a killed process leaves whole lines (and at most one torn last line)


def _finish(
    run: _Run, run_dir: Path, last_diag: dict[str, Any] | None, report: ProgressCallback
) -> RunSummary:
    """``final.pt``, final evaluation, the optional final analysis and ``summary.json``."""
    config, model = run.config, run.model
    assert config.name is not None and config.loss is not None
    final_path = run_dir / FINAL_FILE
    if _leader():
        save_atomic(final_payload(model, jsonable(config.checkpoint_config())), final_path)
    _barrier()  # final.pt and the whole metrics log are written
    evaluation = evaluate(model, run.eval, config.loss)
    records = read_metrics(run_dir / METRICS_FILE)
    train_loss = next((r["train_loss"] for r in reversed(records) if r.get("train_loss") is not None), None)
    elapsed = next((r["time_s"] for r in reversed(records) if "time_s" in r), 0.0)
    summary = RunSummary(
        name=config.name,
        run_dir=str(run_dir),
        method=config.method,
        rho=config.rho,
        steps=config.steps,
        completed=True,
        train_loss=train_loss,
        eval_loss=evaluation.loss,
        eval_accuracy=evaluation.accuracy,
        weight_norm=weight_norm(model),
        train_seconds=float(elapsed),
        **(run.baseline or {}),
    )
    files = [run_dir / "config.json", run_dir / METRICS_FILE, run_dir / "checkpoints", final_path]
    if config.final_analysis:
        files += _final_analysis(run, run_dir, summary, report)
    summary.files = [str(p) for p in [*files, run_dir / SUMMARY_FILE]]
    if _leader():
        write_text_atomic(run_dir / SUMMARY_FILE, dumps_json(summary.to_dict()))
    _barrier()
    report(TrainProgress(config.name, config.steps, config.steps, "done", train_loss, last_diag))
    return summary


def _final_analysis(run: _Run, run_dir: Path, summary: RunSummary, report: ProgressCallback) -> list[Path]:
    """Analyze ``final.pt`` as ``landscape analyze`` would (its training data, capped at
    ``final_samples`` items), write ``analysis.json`` and copy the headline numbers into ``summary``."""
    from landscape.analysis import analyze
    from landscape.report.analysis_files import write_analysis
    from landscape.resolve import resolve_inputs

    config = run.config
    name = config.name or ""

    def stage(label: str) -> None:
        report(TrainProgress(name, config.steps, config.steps, "analysis", summary.train_loss, None, label))

    inputs = resolve_inputs(
        run_dir / FINAL_FILE,
        samples=config.final_samples,
        seed=config.seed,
        dtype=config.torch_dtype(),
        allowed_code=[config.model, config.data, config.loss],  # the run's own, vetted when it started
    )
    result = analyze(
        inputs.model, inputs.data, inputs.loss, config.final_metrics, seed=config.seed, progress=stage
    )
    context = inputs.context() | {
        "seed": config.seed,
        "run": name,
        "step": config.steps,
        "samples": len(inputs.data),
        "eval_loss": summary.eval_loss,
        "eval_accuracy": summary.eval_accuracy,
        "unigram_entropy": summary.unigram_entropy,
        "unigram_eval_loss": summary.unigram_eval_loss,
    }
    written = write_analysis(result, run_dir, context) if _leader() else []
    summary.lambda_max = result.lambda_max
    summary.trace = result.trace
    summary.ggn_trace = result.ggn_trace
    summary.tau_logit, summary.tau_func, summary.tau_cross = (
        result.tau_logit,
        result.tau_func,
        result.tau_cross,
    )
    return written


# ----------------------------------------------------------------------------------------------
# Suites


def train_suite(
    configs: Sequence[RunConfig] | None,
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    *,
    trust_checkpoint: bool = False,
    named_specs: Mapping[str, str] | None = None,
) -> list[RunSummary]:
    """Train several runs, one folder each under ``out_dir`` (named by ``config.name``).

    Build the configs with :func:`landscape.train.config.expand_suite`: they share the seed, so
    every run starts from the same weights and sees the same batches. ``suite.json`` in
    ``out_dir`` lists the runs (with their configs) and, once they are done, their summaries.
    ``resume=True`` reads the runs from ``suite.json``, returns finished ones as they are and
    continues or starts the others. ``trust_checkpoint`` and ``named_specs``: as in
    :func:`train_run`, for every run of the suite.
    """
    suite_dir = Path(out_dir)
    suite_path = suite_dir / SUITE_FILE
    if resume:
        if not suite_path.is_file():
            raise UserError(f"{suite_dir} is not a suite folder (no {SUITE_FILE})")
        listing = json.loads(suite_path.read_text())
        runs = [
            RunConfig.from_dict(entry["config"], f"{suite_path} run {i}")
            for i, entry in enumerate(listing["runs"])
        ]
        for run in runs:
            _check_resumed_specs(run.to_dict(), suite_path, named_specs, trust_checkpoint)
    else:
        if not configs:
            raise ValueError("a suite needs at least one config")
        runs = [c.resolved(strict=False, trust_checkpoint=trust_checkpoint) for c in configs]
        names = [c.name for c in runs]
        if len(set(names)) != len(names):
            raise UserError(f"run names repeat in the suite: {', '.join(str(n) for n in names)}")
        if _leader():
            ensure_writable_dir(suite_dir)
            if suite_dir.exists() and _holds_run(suite_dir):
                raise UserError(
                    f"{suite_dir} already holds a run; resume it with --resume {suite_dir} "
                    "or choose another --out"
                )
            suite_dir.mkdir(parents=True, exist_ok=True)
            _write_suite(suite_path, runs, {})
    summaries: dict[str, RunSummary] = {}
    for config in runs:
        assert config.name is not None
        run_dir = suite_dir / config.name
        _barrier()  # the previous run's files are written ...
        started = (run_dir / CONFIG_FILE).is_file()
        _barrier()  # ... and every process has looked before rank 0 creates this run's folder
        try:
            summaries[config.name] = train_run(
                None if started else config,
                run_dir,
                progress,
                resume=resume and started,
                trust_checkpoint=trust_checkpoint,
                named_specs=named_specs,
            )
        except TrainingInterrupted as exc:
            raise TrainingInterrupted(suite_dir, exc.step, exc.checkpoint) from None
    if _leader():
        _write_suite(suite_path, runs, summaries)
    return [summaries[c.name] for c in runs if c.name is not None]


def _write_suite(path: Path, runs: Sequence[RunConfig], summaries: dict[str, RunSummary]) -> None:
    payload = {
        "version": 1,
        "runs": [
            {
                "name": c.name,
                "folder": c.name,
                "method": c.method,
                "rho": c.rho,
                "config": c.to_dict(),
                "summary": summaries[c.name].to_dict() if c.name in summaries else None,
            }
            for c in runs
        ],
    }
    write_text_atomic(path, dumps_json(payload))
