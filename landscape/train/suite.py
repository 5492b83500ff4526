"""A suite of runs: several methods (or a rho sweep) from the same seed, one run folder each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from landscape import runs
from landscape.errors import UserError
from landscape.train import ranks
from landscape.train.config import RunConfig
from landscape.train.final import RunSummary
from landscape.train.interrupt import TrainingInterrupted
from landscape.train.loop import ProgressCallback
from landscape.train.run import check_resumed_specs, train_run

__all__ = ["train_suite"]


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
    :func:`landscape.train.train_run`, for every run of the suite.

    The suite folder is held for this process throughout, and each run folder while it trains
    (:func:`landscape.runs.locked_output_dir`): a second writer gets one line and changes nothing.
    """
    suite_dir = Path(out_dir)
    if resume and not suite_dir.is_dir():
        raise UserError(f"{suite_dir} is not a suite folder (there is no such folder)")
    with runs.locked_output_dir(suite_dir):
        return _train_suite_held(configs, suite_dir, progress, resume, trust_checkpoint, named_specs)


def _train_suite_held(
    configs: Sequence[RunConfig] | None,
    suite_dir: Path,
    progress: ProgressCallback | None,
    resume: bool,
    trust_checkpoint: bool,
    named_specs: Mapping[str, str] | None,
) -> list[RunSummary]:
    """:func:`train_suite` once the suite folder is held."""
    if resume:
        configs = _resumed_configs(suite_dir, trust_checkpoint, named_specs)
    else:
        configs = _fresh_configs(configs, suite_dir, trust_checkpoint)
    summaries: dict[str, RunSummary] = {}
    try:
        for config in configs:
            assert config.name is not None
            run_dir = suite_dir / config.name
            ranks.barrier()  # the previous run's files are written ...
            started = runs.is_run_folder(run_dir)
            ranks.barrier()  # ... and every process has looked before rank 0 creates this run's folder
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
    except BaseException:
        # a fresh suite whose first run failed before it began leaves no suite behind
        unstarted = not any(runs.is_run_folder(suite_dir / str(c.name)) for c in configs)
        if not resume and unstarted and ranks.is_leader():
            (suite_dir / runs.SUITE_FILE).unlink(missing_ok=True)
        raise
    if ranks.is_leader():
        runs.write_suite(suite_dir, _entries(configs, summaries))
    return [summaries[c.name] for c in configs if c.name is not None]


def _resumed_configs(suite_dir: Path, trust: bool, named: Mapping[str, str] | None) -> list[RunConfig]:
    """The runs listed in ``suite.json``, their stored specs vetted (:mod:`landscape.trust`)."""
    listing = runs.read_suite(suite_dir)
    source = suite_dir / runs.SUITE_FILE
    configs = []
    for i, entry in enumerate(listing["runs"]):
        if "config" not in entry:
            raise UserError(f"{source}: run {i} has no config")
        configs.append(RunConfig.from_dict(entry["config"], f"{source} run {i}"))
    for config in configs:
        check_resumed_specs(config.to_dict(), source, named, trust)
    return configs


def _fresh_configs(configs: Sequence[RunConfig] | None, suite_dir: Path, trust: bool) -> list[RunConfig]:
    """The suite's runs resolved, names checked, and ``suite.json`` written (by the leading process)."""
    if not configs:
        raise ValueError("a suite needs at least one config")
    resolved = [c.resolved(strict=False, trust_checkpoint=trust) for c in configs]
    names = [c.name for c in resolved]
    if len(set(names)) != len(names):
        raise UserError(f"run names repeat in the suite: {', '.join(str(n) for n in names)}")
    if ranks.is_leader():
        runs.check_fresh_folder(suite_dir)
        runs.write_suite(suite_dir, _entries(resolved, {}))
    return resolved


def _entries(configs: Sequence[RunConfig], summaries: dict[str, RunSummary]) -> list[dict[str, Any]]:
    """The run entries of ``suite.json``: name, folder, method, rho, config and (once done) summary."""
    return [
        {
            "name": c.name,
            "folder": c.name,
            "method": c.method,
            "rho": c.rho,
            "config": c.to_dict(),
            "summary": summaries[c.name].to_dict() if c.name in summaries else None,
        }
        for c in configs
    ]
