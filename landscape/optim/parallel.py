"""Data-parallel averaging of a rule's batch means under ``torch.distributed``.

Each process r holds ``n_r`` of the ``N`` counted targets of the global batch and computes means
over its own part. The global-batch mean of any such quantity x (the loss, a gradient, ``g`` for
eps*) is ``sum_r (n_r / N) x_r``: every process scales its own by its share ``n_r / N`` and one
all-reduce sums them. :class:`BatchShare` holds that share while one rule call runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from landscape import distributed as _dist
from landscape.optim.tensors import write_grads

__all__ = ["BatchShare"]


class BatchShare:
    """This process's share ``n_r / N`` of the global batch while a data-parallel call runs.

    ``share`` is ``None`` outside such a call (one process, or no call running); then every
    method returns its input as it is.
    """

    def __init__(self) -> None:
        self.share: float | None = None

    @property
    def active(self) -> bool:
        """Whether a data-parallel call is running (the batch is split over processes)."""
        return self.share is not None

    def begin(self, count: float | None) -> None:
        """Start a call in which this process counts ``count`` targets (all-reduced to N).

        ``count=None`` (a closure: the batch is unknown): the processes' batches count alike.
        """
        if count is None:
            self.share = 1.0 / _dist.world_size()
            return
        total = _dist.all_reduce_sum_(torch.tensor([count], dtype=torch.float64))
        self.share = count / float(total) if float(total) > 0 else 0.0

    def end(self) -> None:
        """Leave the call (also after an error)."""
        self.share = None

    def global_mean(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Data-parallel: ``sum_r (n_r / N) t_r`` of per-process batch means (the global-batch
        mean); otherwise ``tensors`` as they are."""
        if self.share is None:
            return list(tensors)
        present = [t for t in tensors if t is not None]
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in present]).mul_(self.share)
        _dist.all_reduce_sum_(flat)
        pieces = iter(flat.split([t.numel() for t in present]))
        return [None if t is None else next(pieces).view_as(t).to(t.dtype) for t in tensors]

    def finish(self, params: Sequence[Tensor], value: Tensor) -> Tensor:
        """The global-batch mean of the gradients in ``p.grad`` (written back) and of the loss."""
        if self.share is None:
            return value
        # one collective for every gradient and the loss
        *grads, total = self.global_mean([p.grad for p in params] + [value.detach().reshape(1)])
        self.share = None
        write_grads(params, grads)
        assert total is not None
        return total.reshape(()).to(value.dtype)
