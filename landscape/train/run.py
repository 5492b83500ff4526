"""One training run into one run folder (:func:`train_run`), fresh or resumed.

The run folder's files are those of :mod:`landscape.runs.layout`; this module decides what goes
into them and in which order: ``config.json`` and an empty ``metrics.jsonl`` first, then the
records and checkpoints of the step loop (:mod:`landscape.train.loop`), then ``final.pt``, the
final analysis and ``summary.json`` (:mod:`landscape.train.final`).

Determinism: the model is built after ``torch.manual_seed(seed)``; the data order comes from its
own ``torch.Generator`` (seeded from ``seed``); rules and SGLD draw from generators seeded with
``seed``; diagnostics leave the global RNG untouched. Checkpoints save all of these (and the global
RNG, for dropout), so a run resumed from any checkpoint, even after the process was killed, ends
with the same weights and the same metrics as one that was never interrupted. On resume
``metrics.jsonl`` is cut back to the checkpoint's step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from landscape import runs
from landscape.errors import UserError
from landscape.provenance import provenance
from landscape.train import ranks
from landscape.train.config import PROVENANCE_KEY, RunConfig
from landscape.train.final import RunSummary, finish_run
from landscape.train.interrupt import StopRequest, TrainingInterrupted
from landscape.train.loop import ProgressCallback, TrainProgress, train_steps
from landscape.train.setup import PreparedRun, prepare, restore
from landscape.trust import check_stored_specs

__all__ = ["check_resumed_specs", "read_run_config", "train_run"]


def read_run_config(run_dir: Path) -> RunConfig:
    """The ``config.json`` of a run folder, as a :class:`RunConfig` (``UserError`` if it is none)."""
    return RunConfig.from_dict(runs.read_config(run_dir), str(Path(run_dir) / runs.CONFIG_FILE))


def check_resumed_specs(
    stored: Mapping[str, Any], source: Path, named: Mapping[str, str] | None, trust: bool
) -> None:
    """Specs named with ``--resume`` must be the stored ones; stored import paths need naming or trust."""
    named = {key: spec for key, spec in (named or {}).items() if spec is not None}
    for key, spec in named.items():
        if spec != stored.get(key):
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {spec} differs from {source} ({key}: {stored.get(key)!r})")
    check_stored_specs(stored, str(source), allowed=list(named.values()), trust=trust)


def train_run(
    config: RunConfig | None,
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    *,
    trust_checkpoint: bool = False,
    named_specs: Mapping[str, str] | None = None,
) -> RunSummary:
    """Train one run into the folder ``out_dir`` (see :mod:`landscape.runs.layout` for its files).

    ``resume=True`` continues the run in ``out_dir`` from its last checkpoint (its
    ``config.json`` rules; ``config`` may be ``None`` or must equal it); a completed run is
    returned as it is. A fresh run refuses a folder that already holds one. Raises
    ``UserError`` for bad configurations and :class:`TrainingInterrupted` after Ctrl-C.

    A resumed run's ``config.json`` never chooses code to run (:mod:`landscape.trust`): an import
    path it stores for model, data or loss runs only when ``named_specs`` names the same spec
    (``{"model": "pkg.mod:factory"}``, the command line's ``--model``) or with
    ``trust_checkpoint``, which also lets an ``init`` checkpoint name the model.

    The run folder is held for this process while it trains
    (:func:`landscape.runs.locked_output_dir`): a second writer, fresh or resuming, gets
    ``<folder> is in use by process N`` and changes nothing. A resumed run's checkpoint must hold
    the step its file name says, within the run's steps.
    """
    run_dir = Path(out_dir)
    if resume and not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder (there is no such folder)")
    with runs.locked_output_dir(run_dir):
        return _train_held(config, run_dir, progress, resume, trust_checkpoint, named_specs)


def _train_held(
    config: RunConfig | None,
    run_dir: Path,
    progress: ProgressCallback | None,
    resume: bool,
    trust_checkpoint: bool,
    named_specs: Mapping[str, str] | None,
) -> RunSummary:
    """:func:`train_run` once the run folder is held."""
    report = progress or (lambda _event: None)
    if resume:
        stored = _stored_config(run_dir, config, trust_checkpoint, named_specs)
        done = _finished_summary(run_dir)
        if done is not None:
            report(TrainProgress(done.name, done.steps, done.steps, "done", done.train_loss))
            return done
        config = stored
    elif config is None:
        raise ValueError("a fresh run needs a config")
    elif ranks.is_leader():
        runs.check_fresh_folder(run_dir)
    run = prepare(config.resolved(trust_checkpoint=trust_checkpoint))
    start_step, pending, elapsed, created = _start(run, run_dir, resume)
    ranks.barrier()  # every process starts from the same files

    with StopRequest() as stop:
        try:
            last_diag = train_steps(run, run_dir, start_step, pending, elapsed, stop, report)
        except BaseException as exc:
            fresh_start = not resume and runs.latest_checkpoint(run_dir) is None
            if fresh_start and not isinstance(exc, TrainingInterrupted) and ranks.is_leader():
                runs.remove_unstarted_run(run_dir, created)
            raise
        try:
            return finish_run(run, run_dir, last_diag, report)
        except KeyboardInterrupt:
            final = runs.latest_checkpoint(run_dir)
            raise TrainingInterrupted(run_dir, run.config.steps, final[1] if final else None) from None


def _stored_config(
    run_dir: Path,
    config: RunConfig | None,
    trust: bool,
    named: Mapping[str, str] | None,
) -> RunConfig:
    """The ``config.json`` of the run to resume, vetted (:mod:`landscape.trust`) and compared with
    ``config`` when one is given (it may leave out what the run filled in: batch size, ...)."""
    stored = read_run_config(run_dir)
    source = run_dir / runs.CONFIG_FILE
    check_resumed_specs(stored.to_dict(), source, named, trust)
    if config is not None:
        given = config.resolved(strict=False, trust_checkpoint=trust).to_dict()
        differ = sorted(k for k, v in stored.to_dict().items() if given[k] is not None and given[k] != v)
        if differ:
            raise UserError(f"the configuration differs from {source} in {', '.join(differ)}")
    return stored


def _finished_summary(run_dir: Path) -> RunSummary | None:
    """The summary of a run that has finished (``summary.json`` and ``final.pt``), else ``None``."""
    if not (run_dir / runs.FINAL_FILE).is_file():
        return None
    summary = runs.read_summary(run_dir)
    return RunSummary.from_dict(summary) if summary is not None else None


def _start(run: PreparedRun, run_dir: Path, resume: bool) -> tuple[int, list[float], float, bool]:
    """Restore the last checkpoint (resume) or start the folder's files (fresh): returns the first
    step, the pending batch losses, the training seconds so far and whether the folder was created."""
    found = runs.latest_checkpoint(run_dir) if resume else None
    if found is None:
        created = False
        if ranks.is_leader():
            written = run.config.to_dict() | {PROVENANCE_KEY: provenance()}  # what made the run
            try:
                created = runs.start_run(run_dir, written)
            except BaseException:  # a full disk, say: no config.json without its metrics.jsonl
                runs.remove_unstarted_run(run_dir, remove_folder=False)
                raise
        return 0, [], 0.0, created
    state = runs.load_run_checkpoint(found[1])
    if state["config"] != runs.jsonable(run.config.checkpoint_config()):
        raise UserError(
            f"checkpoint {found[1]} was written by a different configuration than {runs.CONFIG_FILE}"
        )
    start_step = runs.check_checkpoint_step(found[1], state, run.config.steps)
    pending, elapsed = restore(run, state)
    if ranks.is_leader():
        runs.truncate_metrics(run_dir, start_step)
    return start_step, pending, elapsed, False
