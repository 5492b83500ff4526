"""Evaluating a model on a data set: the mean loss and accuracy of its weights as they are.

Below the training loop (held-out evaluation during and after training) and the report (the
final weights on the training data, pruned weights on the held-out data), so both use one
definition of what a run's "eval loss" is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from landscape.data import IGNORE_INDEX, Dataset
from landscape.models import unwrap_output

__all__ = ["EVAL_CHUNK_TARGETS", "EvalResult", "evaluate", "fixed_subset", "target_subset"]

EVAL_CHUNK_TARGETS = 65536  # targets per forward pass of the evaluation (memory only)


@dataclass(frozen=True)
class EvalResult:
    """Mean loss over all counted targets, and accuracy (``None`` for regression)."""

    loss: float
    accuracy: float | None
    num_targets: int


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, loss: str) -> EvalResult:
    """The mean loss of ``model`` on all of ``data`` (eval mode), and its accuracy.

    Cross-entropy: the mean over targets that are not ``-100``, accuracy = share of those whose
    arg-max logit is the target. MSE: the mean squared error over all elements, no accuracy.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        per_item = max(1, int(data.y[:1].numel()))
        chunk = max(1, EVAL_CHUNK_TARGETS // per_item)
        loss_sum = 0.0
        correct = 0
        count = 0
        for start in range(0, len(data), chunk):
            x, y = data.x[start : start + chunk], data.y[start : start + chunk]
            out = unwrap_output(model(x))
            if loss == "cross_entropy":
                logits = out.reshape(-1, out.shape[-1])
                flat = y.reshape(-1)
                keep = flat != IGNORE_INDEX
                loss_sum += float(
                    torch.nn.functional.cross_entropy(
                        logits.double(), flat, ignore_index=IGNORE_INDEX, reduction="sum"
                    )
                )
                correct += int((logits.argmax(-1) == flat)[keep].sum())
                count += int(keep.sum())
            else:
                loss_sum += float(torch.nn.functional.mse_loss(out.double(), y.double(), reduction="sum"))
                count += int(y.numel())
    finally:
        model.train(was_training)
    if count == 0:
        return EvalResult(float("nan"), None, 0)
    return EvalResult(loss_sum / count, correct / count if loss == "cross_entropy" else None, count)


def fixed_subset(data: Dataset, num_samples: int, seed: int) -> Dataset:
    """``num_samples`` items of ``data`` drawn once with their own generator (kept in data order)."""
    if num_samples >= len(data):
        return data
    gen = torch.Generator().manual_seed(int(seed))
    index: Tensor = torch.randperm(len(data), generator=gen)[:num_samples].sort().values
    return data.subset(index)


def target_subset(data: Dataset, max_targets: int, seed: int) -> Dataset:
    """At most ``max_targets`` targets of ``data`` (tokens of a sequence count one each): the
    :func:`fixed_subset` of ``max(1, max_targets // targets per item)`` items."""
    per_item = max(1, int(data.y[:1].numel()))
    return fixed_subset(data, max(1, max_targets // per_item), seed)
