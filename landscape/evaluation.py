"""Evaluating a model on a data set: the mean loss and accuracy of its weights as they are.

Below the training loop (held-out evaluation during and after training) and the report (the
final weights on the training data, pruned weights on the held-out data), so both use one
definition of what a run's "eval loss" is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape.data import Dataset, take_inputs
from landscape.losses import LossLike, as_loss
from landscape.models import unwrap_output
from landscape.preserve import eval_mode

__all__ = ["EVAL_CHUNK_TARGETS", "EvalResult", "evaluate", "fixed_subset", "target_subset"]

EVAL_CHUNK_TARGETS = 65536  # targets per forward pass of the evaluation (memory only)


@dataclass(frozen=True)
class EvalResult:
    """Mean loss over all counted targets, and accuracy (``None`` for regression)."""

    loss: float
    accuracy: float | None
    num_targets: int | float


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, loss: LossLike) -> EvalResult:
    """The mean loss of ``model`` on all of ``data`` (eval mode), and its accuracy.

    ``loss`` is any loss of :func:`landscape.losses.as_loss` (a name, a ``torch.nn`` loss module,
    a callable): the mean of its per-target losses over the counted targets (cross-entropy:
    targets that are not ``-100``; mse: every element), summed in float64; the accuracy (share of
    counted targets whose arg-max output is the target) for class-id losses, else ``None``.

    Touches nothing: every module's train/eval mode is put back afterwards, no gradient is made.
    The data may stay on the host: each chunk moves to the device of the model's parameters.
    """
    loss_object = as_loss(loss, model=model)
    device = next((p.device for p in model.parameters()), None)
    loss_sum = 0.0
    correct: int | None = 0
    count: int | float = 0
    with eval_mode(model):
        per_item = max(1, int(data.y[:1].numel()))
        chunk = max(1, EVAL_CHUNK_TARGETS // per_item)
        for start in range(0, len(data), chunk):
            x, y = take_inputs(data.x, slice(start, start + chunk)), data.y[start : start + chunk]
            if device is not None:
                x, y = _to(x, device), y.to(device)
            out = model(**x) if isinstance(x, Mapping) else model(x)
            sums = loss_object.evaluate(unwrap_output(out), y)
            loss_sum += sums.loss_sum
            count += sums.count
            correct = None if correct is None or sums.correct is None else correct + sums.correct
    if count == 0:
        return EvalResult(float("nan"), None, 0)
    accuracy = None if correct is None else correct / count
    return EvalResult(loss_sum / count, accuracy, int(count) if float(count).is_integer() else count)


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, torch.Tensor) else x


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
