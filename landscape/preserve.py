"""What a public function gives back: the model's training modes, ``requires_grad`` flags and the
global random state, as the caller had them.

Public functions of landscape (``analyze``, the operators, ``surface``, ``evaluate``,
``prune_eval``, ``m_sharpness``, ...) must leave the caller's model, flags and random streams as
they found them. Two tools:

* :func:`eval_mode` runs a block with every module in eval mode (dropout off, BatchNorm running
  statistics) and puts each module's own mode back afterwards (``model.train(was_training)``
  would not: it overwrites a submodule kept in eval mode on purpose, e.g. a frozen BatchNorm);
* :func:`preserved` runs a block and afterwards restores the modes, the ``requires_grad`` flags
  of the parameters and the global RNG state (CPU and every initialised CUDA device).

Parameters are not copied here (that would cost a copy of the model): functions that move them
restore them bit for bit themselves (``copy_`` of saved values, never ``theta + e - e``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["RandomState", "eval_mode", "preserved", "restore_modes", "training_modes"]


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Each module of ``model`` with its ``training`` flag."""
    return [(module, module.training) for module in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Put back what :func:`training_modes` recorded (each module's own flag)."""
    for module, training in modes:
        module.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The block runs with ``model`` in eval mode; every module's own mode is restored after it."""
    modes = training_modes(model)
    try:
        model.eval()
        yield
    finally:
        restore_modes(modes)


class RandomState:
    """The global torch RNG state (CPU and the initialised CUDA devices), to put back later."""

    def __init__(self) -> None:
        self.cpu = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        """Put the global RNG back to this snapshot."""
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@contextmanager
def preserved(model: nn.Module | None, *, rng: bool = True) -> Iterator[None]:
    """After the block (also on error): ``model``'s training modes and ``requires_grad`` flags as
    before it and, with ``rng``, the global RNG state as before it."""
    modes = training_modes(model) if model is not None else []
    flags = [(p, p.requires_grad) for p in model.parameters()] if model is not None else []
    state = RandomState() if rng else None
    try:
        yield
    finally:
        restore_modes(modes)
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        if state is not None:
            state.restore()
