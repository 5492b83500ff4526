"""Training runs with curvature diagnostics: ``landscape train`` and ``landscape prune-eval``.

Train one model with one optimizer (or a suite: several methods, a rho sweep) and watch the
curvature evolve, as in Functional-SAM Fig. 2 and Table 4::

    from landscape.train import RunConfig, train_run
    summary = train_run(RunConfig(model="mlp", method="func-sam", steps=300, diagnose_every=50), "runs/fsam")

See :mod:`landscape.train.loop` for the run folder's files, :mod:`landscape.train.config` for the
defaults, :mod:`landscape.train.diagnostics` for what is measured and :mod:`landscape.train.prune`
for one-shot global magnitude pruning.
"""

from landscape.train.config import RunConfig, expand_suite, learning_rate_at, parse_float_list
from landscape.train.diagnostics import DIAGNOSTIC_KEYS, EvalResult, diagnose, evaluate, unigram_baseline
from landscape.train.loop import (
    TIMING_FIELDS,
    RunSummary,
    TrainingInterrupted,
    TrainProgress,
    read_metrics,
    read_run_config,
    strip_timing,
    train_run,
    train_suite,
)
from landscape.train.prune import PruneResult, parse_sparsities, prune_eval

__all__ = [
    "DIAGNOSTIC_KEYS",
    "TIMING_FIELDS",
    "EvalResult",
    "PruneResult",
    "RunConfig",
    "RunSummary",
    "TrainProgress",
    "TrainingInterrupted",
    "diagnose",
    "evaluate",
    "expand_suite",
    "learning_rate_at",
    "parse_float_list",
    "parse_sparsities",
    "prune_eval",
    "read_metrics",
    "read_run_config",
    "strip_timing",
    "train_run",
    "train_suite",
    "unigram_baseline",
]
