"""The probe batch: a fixed set of training items on which sharpness is measured at every step.

Curvature numbers measured on the current training batch move with the batch as much as with the
weights. Measured on one fixed batch, chosen once, they follow the weights only: the trend over
training is the trend of the landscape (as ``landscape train`` measures on a fixed subset of the
training data). :func:`choose_probe` draws ``size`` items of a data set with a generator of its
own seed (the same seed, the same items, whatever else the program draws) and collates them;
:func:`split_batch` tells the inputs from the targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from landscape.errors import UserError
from landscape.optim.step import split_labels
from landscape.preserve import RandomState

__all__ = ["DEFAULT_PROBE_SIZE", "choose_probe", "probe_from_loader", "split_batch"]

DEFAULT_PROBE_SIZE = 64
"""Items in a probe batch drawn from the training data when none is given."""


def choose_probe(
    dataset: Any,
    size: int = DEFAULT_PROBE_SIZE,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Any:
    """``size`` items of ``dataset`` (indexable, with ``len``) drawn without replacement by a
    generator seeded with ``seed`` and kept in data-set order, collated by ``collate_fn`` (default:
    torch's ``default_collate``) into one batch.

    The global RNG is left as found; a collator that draws random numbers (masked-language-model
    masking) draws them from the global RNG seeded with ``seed`` for this call, so the batch is
    the same for the same seed.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"the probe size must be a positive integer, got {size!r}")
    try:
        count = len(dataset)
    except TypeError:
        raise UserError(
            f"cannot draw a probe batch from a {type(dataset).__name__} without a length (an iterable "
            "data set): pass probe=(inputs, targets) yourself"
        ) from None
    if count == 0:
        raise UserError("cannot draw a probe batch from an empty data set")
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.randperm(count, generator=generator)[:size].sort().values.tolist()
    collate = collate_fn or torch.utils.data.default_collate
    state = RandomState()
    try:
        torch.manual_seed(int(seed))
        return collate([dataset[i] for i in index])
    finally:
        state.restore()


def probe_from_loader(loader: Any, size: int = DEFAULT_PROBE_SIZE, seed: int = 0) -> Any:
    """:func:`choose_probe` on a ``DataLoader``'s data set with its collate function."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise UserError(
            f"cannot draw a probe batch from a {type(loader).__name__} (no .dataset): pass probe= yourself"
        )
    return choose_probe(dataset, size, seed, getattr(loader, "collate_fn", None))


def split_batch(batch: Any) -> tuple[Any, Tensor, bool]:
    """``(inputs, targets, from_labels)`` of a batch: an ``(inputs, targets)`` pair, or a dict with
    a ``labels`` entry (Hugging Face style: the rest are the model's keyword inputs, and
    ``from_labels`` is true). Dict inputs keep only their tensors (the model's keyword inputs)."""
    if isinstance(batch, Mapping):
        inputs, targets, from_labels = split_labels(dict(batch), None)
        if not from_labels:
            raise UserError(
                f"the probe batch is a dict without 'labels' (keys: {', '.join(map(str, batch))}): "
                "give probe=(inputs, targets) or a dict with labels"
            )
        return {k: v for k, v in inputs.items() if isinstance(v, Tensor)}, targets, True
    if isinstance(batch, Sequence) and not isinstance(batch, str | Tensor) and len(batch) == 2:
        inputs, targets = batch
        if isinstance(inputs, Mapping):
            inputs = {k: v for k, v in inputs.items() if isinstance(v, Tensor)}
        if not isinstance(targets, Tensor):
            raise UserError(f"the probe batch's targets are a {type(targets).__name__}, not a tensor")
        return inputs, targets, False
    raise UserError(
        f"cannot tell the inputs from the targets in a probe batch of type {type(batch).__name__}: "
        "give probe=(inputs, targets) or a dict with labels"
    )
