"""Random numbers of the rules: the global RNG snapshot, seeded generators and reused Gaussian noise.

Two kinds of randomness meet in a rule. The *global* torch RNG draws the model's dropout masks;
SAM-type rules replay it (:class:`RngState`) so that both passes of a step see the same masks.
The rule's *own* draws (fSGLD's perturbation, SGLD's noise) come from a :class:`SeededGenerator`
whose state is checkpointed, so that a resumed run draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["GaussianNoise", "GaussianPerturbation", "RngState", "SeededGenerator"]


class RngState:
    """Snapshot of the global torch RNG (CPU, and the CUDA device in use) to replay dropout masks.

    SAM-type rules run a second forward pass on the same batch. Restoring this snapshot before it
    makes every random draw of that pass (dropout masks) equal to the first pass's, which both
    Functional-SAM (r of pass 1 paired with J of pass 2) and SAM itself need (google-research/sam
    uses one PRNG key for both passes).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        """Put the global RNG back to the snapshot."""
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class SeededGenerator:
    """A ``torch.Generator`` seeded once and created on the device of the tensors it draws for.

    Its state goes into ``state_dict()`` so that a run resumed from a checkpoint draws the same
    numbers as the uninterrupted run.
    """

    def __init__(self, seed: int = 0, generator: torch.Generator | None = None) -> None:
        self.seed = int(seed)
        self._generator = generator

    def get(self, device: torch.device) -> torch.Generator:
        """The generator on ``device`` (created from the seed on first use)."""
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generator = gen
        return gen

    def state_dict(self) -> dict[str, Any]:
        """Seed, device and generator state (``None`` before the first draw)."""
        gen = self._generator
        return {
            "seed": self.seed,
            "device": None if gen is None else str(gen.device),
            "state": None if gen is None else gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.seed = int(state["seed"])
        if state["state"] is None:
            self._generator = None
            return
        gen = torch.Generator(device=torch.device(state["device"]))
        gen.set_state(state["state"].clone())
        self._generator = gen


class GaussianNoise:
    """Reusable storage for Gaussian draws shaped like a list of tensors (a step's noise).

    ``draw`` fills one flat buffer per (device, dtype) with ``N(0, std^2)`` from the generator and
    returns views of it shaped like the tensors. The buffers and views are kept between calls, so
    a training step pays for the random numbers only: no allocation, no per-tensor split or view
    (on a small model those cost as much as the draw). The returned views are overwritten by the
    next ``draw``: use them before drawing again. Same generator state, same numbers as
    ``torch.randn`` of the flat size.
    """

    def __init__(self) -> None:
        self._key: tuple[tuple[torch.Size, torch.dtype, torch.device], ...] | None = None
        self._flats: list[Tensor] = []
        self._views: list[Tensor] = []

    def _build(self, tensors: Sequence[Tensor]) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.device, t.dtype), []).append(i)
        views: list[Tensor] = [torch.empty(0)] * len(tensors)
        flats: list[Tensor] = []
        for (device, dtype), idx in groups.items():
            numels = [tensors[i].numel() for i in idx]
            flat = torch.empty(sum(numels), device=device, dtype=dtype)
            flats.append(flat)
            for i, chunk in zip(idx, flat.split(numels), strict=True):
                views[i] = chunk.view(tensors[i].shape)
        self._flats, self._views = flats, views

    @property
    def layout(self) -> object:
        """The shapes the buffers were built for; a new object whenever they are rebuilt."""
        return self._key

    def draw(self, tensors: Sequence[Tensor], generator: SeededGenerator, std: float = 1.0) -> list[Tensor]:
        """``N(0, std^2)`` tensors shaped like ``tensors`` (views of this object's buffers)."""
        key = tuple((t.shape, t.dtype, t.device) for t in tensors)
        if key != self._key:
            self._build(tensors)
            self._key = key
        for flat in self._flats:
            flat.normal_(0.0, std, generator=generator.get(flat.device))
        return self._views


class GaussianPerturbation:
    """``theta <- theta + std xi`` in place, ``xi ~ N(0, I)``, and back bit for bit (fSGLD's e).

    :meth:`apply_` draws xi into reused storage (:class:`GaussianNoise`), copies theta into a
    reused stash and adds the noise; :meth:`restore_` copies theta back. Three memory passes and
    no allocation per step: on a small model the Python and allocation overhead of the generic
    :func:`perturb_` is as large as the draw itself. Like :func:`perturb_` it writes through
    ``.data``, so autograd version counters do not move.
    """

    def __init__(self) -> None:
        self._noise = GaussianNoise()
        self._stash: list[Tensor] = []
        self._stash_layout: object = None
        self._applied: list[Tensor] | None = None

    def apply_(self, params: Sequence[Tensor], generator: SeededGenerator, std: float) -> None:
        """Perturb ``params`` by ``N(0, std^2 I)`` drawn from ``generator``; remember theta."""
        if self._applied is not None:
            raise RuntimeError("GaussianPerturbation.apply_ called twice without restore_")
        noise = self._noise.draw(params, generator, std=std)
        data = [p.data for p in params]
        if self._stash_layout is not self._noise.layout:  # first call, or the shapes changed
            self._stash = list(torch._foreach_clone(data))
            self._stash_layout = self._noise.layout
        else:
            torch._foreach_copy_(self._stash, data)
        torch._foreach_add_(data, noise)
        self._applied = data

    def restore_(self) -> None:
        """Copy the theta saved by :meth:`apply_` back (exact)."""
        if self._applied is not None:
            torch._foreach_copy_(self._applied, self._stash)
            self._applied = None
