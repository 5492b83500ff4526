"""Training runs with curvature diagnostics: ``landscape train`` and ``landscape prune-eval``.

Train one model with one optimizer (or a suite: several methods, a rho sweep) and watch the
curvature evolve, as in Functional-SAM (Singh, Mobahi, Agarwala & Dauphin, ICML 2025) Fig. 2 and
Table 4::

    from landscape.train import RunConfig, train_run
    summary = train_run(RunConfig(model="mlp", method="func-sam", steps=300, diagnose_every=50), "runs/fsam")

The modules, one idea each: :mod:`~landscape.train.config` (the run configuration and its
defaults), :mod:`~landscape.train.setup` (building model, data, rule and optimizer),
:mod:`~landscape.train.batches` (the data order), :mod:`~landscape.train.loop` (the step loop and
its records), :mod:`~landscape.train.diagnostics` (what is measured during training),
:mod:`~landscape.train.interrupt` (Ctrl-C), :mod:`~landscape.train.final` (``final.pt``, the final
analysis, ``summary.json``), :mod:`~landscape.train.run` and :mod:`~landscape.train.suite` (one run,
several runs). The run folder's files are spelled, written and read in :mod:`landscape.runs`;
``evaluate`` lives in :mod:`landscape.evaluation` and ``prune_eval`` in :mod:`landscape.prune`
(both re-exported here).
"""

from landscape.evaluation import EvalResult, evaluate
from landscape.prune import PruneResult, parse_sparsities, prune_eval
from landscape.runs import TIMING_FIELDS, read_metrics, strip_timing
from landscape.train.config import RunConfig, expand_suite, learning_rate_at, parse_float_list
from landscape.train.diagnostics import DIAGNOSTIC_KEYS, diagnose, unigram_baseline
from landscape.train.final import RunSummary, analyse_final
from landscape.train.interrupt import TrainingInterrupted
from landscape.train.loop import TrainProgress
from landscape.train.run import read_run_config, train_run
from landscape.train.suite import train_suite

__all__ = [
    "DIAGNOSTIC_KEYS",
    "TIMING_FIELDS",
    "EvalResult",
    "PruneResult",
    "RunConfig",
    "RunSummary",
    "TrainProgress",
    "TrainingInterrupted",
    "analyse_final",
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
