"""The processes of a data-parallel run: which one writes files, and how they agree."""

from __future__ import annotations

import torch

from landscape import distributed

__all__ = ["any_process", "barrier", "is_leader"]


def is_leader() -> bool:
    """Rank 0 of a data-parallel run (or the only process): the one that writes files."""
    return distributed.rank() == 0


def any_process(flag: bool) -> bool:
    """``flag`` of any process (one small all-reduce per call when data-parallel), so that every
    process stops after the same step."""
    if not distributed.is_distributed():
        return flag
    return bool(distributed.all_reduce_max_(torch.tensor([int(flag)]))[0])


def barrier() -> None:
    """Wait for every process (a no-op with one): files rank 0 wrote are there afterwards."""
    if distributed.is_distributed():
        torch.distributed.barrier()
