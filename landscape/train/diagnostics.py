"""Cheap curvature diagnostics during training and the unigram baseline (held-out evaluation:
:mod:`landscape.evaluation`).

Every ``diagnose_every`` steps the training loop records, on a fixed subset of the training data
(the same items at every step and for every method of a suite):

* ``diag_loss`` and ``grad_norm``: the full-subset loss and gradient norm;
* the keys of every metric of the registry that declares a training diagnostic
  (:func:`landscape.metrics.diagnostic_keys`), measured by one :func:`landscape.analysis.analyze`
  call with the metrics' diagnostic budgets (:func:`landscape.metrics.diagnostic_budget`). Built
  in: ``lambda_max`` and ``lambda_max_residual`` (Lanczos, relative tolerance 1e-2, at most
  ``max_iter`` = 20 steps), ``trace`` (tr H) and ``trace_stderr``, ``ggn_lambda_max``,
  ``ggn_trace`` (tr G) with ``ggn_trace_stderr`` and ``functional_trace`` (tr H_F = tr(H - G))
  with ``functional_trace_stderr`` (Singh, Mobahi, Agarwala & Dauphin 2025, arXiv 2502.02407,
  Eq. 8), XTrace with ``trace_samples`` = 24 products each, and ``tau_logit``, ``tau_func``, ``tau_cross`` (the normalised split of the
  sharpness gradient ``H g`` into its Gauss-Newton and functional parts, Eq. 9 of that paper;
  they sum to 1);
* ``weight_norm``: ``||theta||_2`` over the trained parameters;
* ``eval_loss`` and ``eval_accuracy`` on the whole held-out set;
* for the LoRA methods (``lora``, ``fmlora``, ``efmlora``) also :data:`LORA_DIAGNOSTIC_KEYS`:
  ``cond_A_max`` and ``cond_A_mean`` (the condition numbers of the adapters' A, the paper's
  failure signature when they grow), ``perturbation_norm`` (the realised ``||s E A||`` of the last
  step; 0 for ``lora``) and, for ``efmlora``, ``ema_sharpness_gap`` (``|S_EMA - S_SAM|`` on the
  diagnostic subset, Theorem 2 of Deng, Zhu, Pang, Yang, Fu & Zhang 2025, arXiv 2508.00522).

For the LoRA methods the trained parameters are the adapters, so the curvature numbers and
``weight_norm`` are those of the loss restricted to the adapters.

Measured on one CPU thread: 0.3-0.4 s per diagnostic for the built-in MLP on 1024 digits, 3.6-4.5
s for the built-in transformer on 16 sequences of 64 bytes (69 Hessian and 59 GGN products). The
estimates are rough (XTrace with 24 products has a few percent standard error on these models);
they are for watching trends, and the final analysis of ``final.pt`` uses analyze's full budgets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from landscape import metrics
from landscape.analysis import analyze
from landscape.data import IGNORE_INDEX, Dataset
from landscape.errors import UserError
from landscape.evaluation import evaluate
from landscape.losses import LossLike
from landscape.optim import EFMLoRA, FMLoRA, GradientRule, LoRAGradient
from landscape.preserve import preserved

__all__ = [
    "DIAGNOSTIC_KEYS",
    "LORA_DIAGNOSTIC_KEYS",
    "check_diagnostic_metrics",
    "diagnose",
    "is_diagnostic",
    "lora_diagnostics",
    "unigram_baseline",
    "weight_norm",
]

_BEFORE = ("diag_loss", "grad_norm")
_AFTER = ("weight_norm", "eval_loss", "eval_accuracy")

DIAGNOSTIC_KEYS = metrics.LiveNames(lambda: (*_BEFORE, *metrics.diagnostic_keys(), *_AFTER))
"""The keys a diagnostic adds to a ``metrics.jsonl`` record (plus the timing field ``diag_time_s``):
the loss and gradient norm, the diagnostic metrics' keys (read from the registry when used), the
weight norm and the held-out evaluation."""

LORA_DIAGNOSTIC_KEYS = ("cond_A_max", "cond_A_mean", "perturbation_norm", "ema_sharpness_gap")
"""What a diagnostic adds for the LoRA rules (``ema_sharpness_gap`` for ``efmlora`` only)."""


def weight_norm(model: nn.Module) -> float:
    """``||theta||_2`` over the trained parameters (``requires_grad``), in float64."""
    total = 0.0
    for p in model.parameters():
        if p.requires_grad:
            total += float(p.detach().double().pow(2).sum())
    return math.sqrt(total)


def unigram_baseline(train: Dataset, eval_data: Dataset | None = None) -> dict[str, float] | None:
    """The loss of predicting every target from the training targets' marginal distribution.

    For a byte-level language model this is the unigram model; for a classifier the class
    prior. Returns ``unigram_entropy`` (nats: ``H(p) = -sum_v p_v log p_v`` with ``p`` the
    frequencies of the training targets, the training loss of the best constant prediction) and,
    given ``eval_data``, ``unigram_eval_loss``: the cross-entropy of the eval targets under ``p``
    with add-one (Laplace) smoothing, so that a value never seen in training costs a finite
    amount. ``None`` for regression targets.
    """
    if train.y.is_floating_point() or train.num_classes is None:
        return None
    vocab = int(train.num_classes)
    ys = train.y.reshape(-1)
    ys = ys[ys != IGNORE_INDEX]
    counts = torch.bincount(ys, minlength=vocab).double()
    p = counts / counts.sum()
    nonzero = p[p > 0]
    out = {"unigram_entropy": float(-(nonzero * nonzero.log()).sum())}
    if eval_data is not None and not eval_data.y.is_floating_point():
        ye = eval_data.y.reshape(-1)
        ye = ye[ye != IGNORE_INDEX]
        if ye.numel():
            smoothed = (counts + 1.0) / (counts.sum() + vocab)
            out["unigram_eval_loss"] = float(-smoothed.log()[ye].mean())
    return out


def is_diagnostic(record: dict[str, Any]) -> bool:
    """Whether a ``metrics.jsonl`` record carries the curvature diagnostics."""
    return any(record.get(key) is not None for key in metrics.diagnostic_keys())


def diagnose(
    model: nn.Module,
    subset: Dataset,
    eval_data: Dataset | None,
    loss: LossLike,
    *,
    max_iter: int | None = None,
    trace_samples: int | None = None,
    seed: int = 0,
    rule: GradientRule | None = None,
    chosen: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """One diagnostic record (keys ``DIAGNOSTIC_KEYS`` and ``diag_time_s``), see the module docstring.

    The curvature comes from the registry's diagnostic metrics with their budgets (``chosen``:
    the names of some of them instead of all, :func:`check_diagnostic_metrics`);
    ``max_iter`` and ``trace_samples`` (when given) replace the budgets' Lanczos steps and trace
    products. ``eval_data=None`` leaves out ``eval_loss`` and ``eval_accuracy``. ``rule``: the
    run's gradient rule; a LoRA rule adds :func:`lora_diagnostics`. Leaves the model as it was:
    weights, every module's train/eval mode, ``requires_grad`` flags, gradients and the global
    RNG state (so that training with and without diagnostics follows the same trajectory).
    """
    started = time.perf_counter()
    selected = check_diagnostic_metrics(chosen)
    budget = metrics.diagnostic_budget(selected)
    budget |= {k: v for k, v in (("max_iter", max_iter), ("trace_samples", trace_samples)) if v is not None}
    with preserved(model):  # modes, flags and the global RNG (Problem works on copies of the weights)
        result = analyze(model, subset, loss, [m.name for m in selected], **budget, seed=seed)
        evaluation = evaluate(model, eval_data, loss) if eval_data is not None else None
        adapters = lora_diagnostics(rule, model, subset, loss) if rule is not None else {}
    keys = [key for metric in selected if metric.diagnostic for key in metric.diagnostic.keys]
    record: dict[str, Any] = {
        "diag_loss": result.loss,
        "grad_norm": result.grad_norm,
        **{key: getattr(result, key) for key in dict.fromkeys(keys)},
        "weight_norm": weight_norm(model),
    }
    if evaluation is not None:
        record |= {"eval_loss": evaluation.loss, "eval_accuracy": evaluation.accuracy}
    record |= {**adapters, "diag_time_s": time.perf_counter() - started}
    return record


def check_diagnostic_metrics(chosen: str | Sequence[str] | None) -> tuple[metrics.Metric, ...]:
    """The diagnostic metrics named in ``chosen`` (comma-separated or a list; registry order), or all
    of them for ``None``; a name that is no diagnostic metric is a one-line ``UserError`` listing
    those there are."""
    available = metrics.diagnostic_metrics()
    if chosen is None:
        return available
    items = [m.strip() for m in (chosen.split(",") if isinstance(chosen, str) else chosen) if m.strip()]
    unknown = [name for name in items if name not in {m.name for m in available}]
    if unknown or not items:
        listed = ", ".join(m.name for m in available)
        raise UserError(
            f"not a training diagnostic: {', '.join(unknown) or 'nothing chosen'} (choose among {listed})"
        )
    return tuple(m for m in available if m.name in items)


def lora_diagnostics(rule: GradientRule, model: nn.Module, subset: Dataset, loss: str) -> dict[str, float]:
    """The LoRA rule's own diagnostics (keys :data:`LORA_DIAGNOSTIC_KEYS`); ``{}`` for other rules.

    ``cond_A_max``/``cond_A_mean`` are read from the model now, ``perturbation_norm`` is that of the
    last step. For ``efmlora`` the EMA sharpness gap is measured first on all of ``subset`` as one
    batch, in eval mode like the curvature numbers (no dropout noise; the gap is a property of the
    loss, not of one mask). It leaves parameters, gradients, the EMA and the global RNG as they were.
    """
    if not isinstance(rule, LoRAGradient | FMLoRA | EFMLoRA):
        return {}
    was_training = model.training
    try:
        if isinstance(rule, EFMLoRA):
            with torch.random.fork_rng(devices=[]):
                model.eval()
                device = next((p.device for p in model.parameters()), subset.x.device)
                rule.ema_sharpness_gap(model, subset.x.to(device), subset.y.to(device), loss)
        return rule.diagnostics(model).as_dict()
    finally:
        model.train(was_training)
