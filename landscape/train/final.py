"""The end of a run: ``final.pt``, the final evaluation, the final analysis and ``summary.json``.

:func:`analyse_final` is the one final analysis of a run folder's ``final.pt``: the training loop
calls it with the run's ``final_metrics`` and analyze's default budgets, the demo with its own
budgets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from landscape import metrics, runs
from landscape.evaluation import evaluate
from landscape.train import ranks
from landscape.train.diagnostics import weight_norm
from landscape.train.loop import ProgressCallback, TrainProgress
from landscape.train.setup import PreparedRun

if TYPE_CHECKING:
    from landscape.analysis import AnalysisResult

__all__ = ["RunSummary", "analyse_final", "finish_run"]


@dataclass
class RunSummary:
    """The outcome of one run (the contents of ``summary.json``).

    ``curvature`` holds the numbers of the final analysis that the metrics declare as headlines
    (:func:`landscape.metrics.headlines`); ``summary.json`` has them as top-level keys after
    ``weight_norm``, and they read as attributes (``summary.lambda_max``).
    """

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
    curvature: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("__") and name in {h.key for h in metrics.headlines()}:
            return self.__dict__.get("curvature", {}).get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the headline numbers flat, after ``weight_norm``)."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "curvature":
                out |= {h.key: value.get(h.key) for h in metrics.headlines()}
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunSummary:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"curvature"}
        curvature = {h.key: payload.get(h.key) for h in metrics.headlines() if h.key in payload}
        return cls(**{k: v for k, v in payload.items() if k in names}, curvature=curvature)


def analyse_final(
    run_dir: Path,
    *,
    run: str,
    metrics: str,
    seed: int,
    samples: int | None = None,
    dtype: torch.dtype = torch.float32,
    allowed_code: Collection[str | None] = (),
    options: Mapping[str, Any] | None = None,
    step: int | None = None,
    context: Mapping[str, Any] | None = None,
    figures: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[AnalysisResult, list[Path]]:
    """Analyze the run's ``final.pt`` as ``landscape analyze`` would and write ``analysis.json``.

    The model and the data come from the checkpoint's stored configuration (the run's training
    split, ``samples`` items or analyze's default cap; import paths only when listed in
    ``allowed_code``, see :mod:`landscape.trust`); ``metrics`` and ``options`` (keyword arguments
    of :func:`landscape.analysis.analyze`: budgets such as ``max_iter``) choose what is measured.
    ``analysis.json``'s context names the run, its ``step`` (when given), the number of items and
    ``context``. ``figures=False`` leaves out ``density.png``. Only the leading process writes.
    Returns the result and the files written.
    """
    from landscape.analysis import analyze
    from landscape.resolve import resolve_inputs

    inputs = resolve_inputs(
        Path(run_dir) / runs.FINAL_FILE, samples=samples, seed=seed, dtype=dtype, allowed_code=allowed_code
    )
    result = analyze(
        inputs.model, inputs.data, inputs.loss, metrics, **dict(options or {}), seed=seed, progress=progress
    )
    about: dict[str, Any] = inputs.context() | {"seed": seed, "run": run}
    if step is not None:
        about["step"] = step
    about |= {"samples": len(inputs.data), **dict(context or {})}
    written = runs.write_analysis(result, run_dir, about, figures=figures) if ranks.is_leader() else []
    return result, written


def finish_run(
    run: PreparedRun, run_dir: Path, last_diag: dict[str, Any] | None, report: ProgressCallback
) -> RunSummary:
    """``final.pt``, final evaluation, the optional final analysis and ``summary.json``."""
    config, model = run.config, run.model
    assert config.name is not None and config.loss is not None
    if ranks.is_leader():
        runs.save_final(run_dir, model, runs.jsonable(config.checkpoint_config()))
    ranks.barrier()  # final.pt and the whole metrics log are written
    evaluation = evaluate(model, run.eval, config.loss)
    records = runs.read_metrics(run_dir)
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
    files = runs.run_files(run_dir)
    if config.final_analysis:
        files += _final_analysis(run, run_dir, summary, report)
    summary.files = [str(p) for p in [*files, run_dir / runs.SUMMARY_FILE]]
    if ranks.is_leader():
        runs.write_summary(run_dir, summary.to_dict())
    ranks.barrier()
    report(TrainProgress(config.name, config.steps, config.steps, "done", train_loss, last_diag))
    return summary


def _final_analysis(
    run: PreparedRun, run_dir: Path, summary: RunSummary, report: ProgressCallback
) -> list[Path]:
    """The run's own final analysis (its ``final_metrics`` on at most ``final_samples`` training
    items, analyze's default budgets, on the run's ``device`` within its ``max_memory``); copies
    the headline numbers into ``summary``."""
    config = run.config
    name = config.name or ""

    def stage(label: str) -> None:
        report(TrainProgress(name, config.steps, config.steps, "analysis", summary.train_loss, None, label))

    result, written = analyse_final(
        run_dir,
        run=name,
        metrics=config.final_metrics,
        seed=config.seed,
        samples=config.final_samples,
        dtype=config.torch_dtype(),
        allowed_code=[config.model, config.data, config.loss],  # the run's own, vetted when it started
        step=config.steps,
        options={"device": config.device, "max_memory": config.max_memory},
        context={
            "eval_loss": summary.eval_loss,
            "eval_accuracy": summary.eval_accuracy,
            "unigram_entropy": summary.unigram_entropy,
            "unigram_eval_loss": summary.unigram_eval_loss,
        },
        progress=stage,
    )
    summary.curvature = {h.key: getattr(result, h.key) for h in metrics.headlines()}
    return written
