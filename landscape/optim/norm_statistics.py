"""The BatchNorm guard: a perturbed forward pass leaves the running statistics as they were."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

__all__ = ["frozen_norm_statistics"]


@contextmanager
def frozen_norm_statistics(model: nn.Module | None) -> Iterator[None]:
    """Leave BatchNorm/InstanceNorm running statistics as they were before the block.

    The perturbed pass of SAM-type rules must not update ``running_mean``, ``running_var`` or
    ``num_batches_tracked`` (davda54/sam sets BN momentum to 0, which misses ``momentum=None``,
    the cumulative average). Inside the block each norm module works on throw-away copies of its
    buffers; the originals are put back untouched afterwards, so not even their autograd version
    counters move (a kept pass-1 graph that saved them stays valid). Batch statistics are still
    used in the pass, as in training.
    """
    swapped: list[tuple[nn.Module, str, Tensor]] = []
    if model is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    buf = module._buffers.get(name)
                    if buf is not None:
                        swapped.append((module, name, buf))
                        module._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for module, name, buf in swapped:
            module._buffers[name] = buf
