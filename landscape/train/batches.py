"""The order in which training items are drawn: one generator of its own per run."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["BatchOrder"]

# Mixed into the seed of the data-order generator so that its stream differs from the rule's and
# SGLD's generators, which are seeded with the run seed itself.
_DATA_ORDER_SALT = 0x5EED_0DA7A


class BatchOrder:
    """The training items of each step, from a dedicated generator.

    Shuffled: each epoch is a fresh ``randperm`` of the training items, cut into batches of
    ``batch_size``; the last ``n mod batch_size`` items of a permutation are skipped, so every
    batch has the same size (different items are skipped each epoch). Not shuffled: consecutive
    slices of the data in its own order, wrapping around at the end.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, shuffle: bool) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed((int(seed) + _DATA_ORDER_SALT) % (2**63))
        self.permutation: Tensor | None = None
        self.position = 0

    def next_indices(self) -> Tensor:
        """Indices of the next batch."""
        n, b = self.num_items, self.batch_size
        if not self.shuffle:
            index = (torch.arange(b) + self.position) % n
            self.position = (self.position + b) % n
            return index
        if self.permutation is None or self.position + b > n:
            self.permutation = torch.randperm(n, generator=self.generator)
            self.position = 0
        index = self.permutation[self.position : self.position + b]
        self.position += b
        return index

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation and position."""
        return {
            "generator": self.generator.get_state(),
            "permutation": self.permutation,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"]
        self.position = int(state["position"])
