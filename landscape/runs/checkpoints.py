"""Run checkpoints: everything needed to continue a run bit for bit, written atomically.

``checkpoints/step-N.pt`` (after N updates) holds::

    {"format": "landscape.train", "version": 1, "step": N,
     "model": state_dict, "optimizer": base optimizer state, "rule": rule.state_dict(),
     "rng": {"torch": global CPU RNG state, "cuda": [per-device states] or None},
     "data_order": the batch sampler's state (its generator, permutation and position),
     "pending_losses": batch losses since the last logged step, "elapsed_s": training time so far,
     "config": the run configuration (see RunConfig.checkpoint_config)}

``final.pt`` is ``{"model": state_dict, "config": ...}``: the layout of
:mod:`landscape.checkpoints`, so ``landscape analyze runs/x/final.pt`` rebuilds model and data from
the stored config with no other argument. Everything is tensors, numbers, strings, lists and dicts,
so both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.checkpoints import save_atomic, torch_load
from landscape.errors import UserError
from landscape.runs.layout import FINAL_FILE, checkpoint_path, checkpoint_step

__all__ = [
    "FORMAT",
    "check_checkpoint_step",
    "final_payload",
    "load_run_checkpoint",
    "model_state",
    "rng_state",
    "save_final",
    "save_run_checkpoint",
    "set_rng_state",
]

FORMAT = "landscape.train"
VERSION = 1
_REQUIRED = ("step", "model", "optimizer", "rule", "rng", "data_order", "config")


def rng_state() -> dict[str, Any]:
    """The global torch RNG states: CPU, and every CUDA device when CUDA is initialised."""
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return {"torch": torch.random.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.random.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_run_checkpoint(run_dir: Path, step: int, state: Mapping[str, Any]) -> Path:
    """Write ``checkpoints/step-<step>.pt`` of ``run_dir`` atomically (temporary file + rename,
    see ``save_atomic``); returns its path."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"run checkpoint lacks {missing}")
    return save_atomic(payload, checkpoint_path(run_dir, step))


# A run checkpoint is never unpickled: landscape writes only tensors and plain values into it.
_NEVER_TRUSTED = (
    "landscape writes only tensors and plain values into a training checkpoint, so this one was "
    "altered or written by something else; training checkpoints are always read weights-only "
    "(--trust-checkpoint does not apply to them): start a new run, with --init for its weights"
)


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """Read a step checkpoint with ``torch.load(weights_only=True)``; ``UserError`` if it is not one.

    Always weights-only, whatever the caller trusts: a file that holds pickled objects is refused
    (a training checkpoint written by landscape holds none).
    """
    path = Path(path)
    obj = torch_load(path, trust_checkpoint=False, advice=_NEVER_TRUSTED)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not a landscape training checkpoint")
    if obj.get("version") != VERSION:
        raise UserError(f"{path} is a version {obj.get('version')} training checkpoint; expected {VERSION}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise UserError(f"training checkpoint {path} lacks {', '.join(missing)}")
    return obj


def check_checkpoint_step(path: Path, state: Mapping[str, Any], steps: int) -> int:
    """The step a run checkpoint holds, checked: an integer, the one in its file name
    (``step-N.pt``) and within the run's ``0 .. steps``; else a one-line ``UserError`` naming the file."""
    path = Path(path)
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise UserError(f"training checkpoint {path} holds step {step!r}, not a whole number")
    named = checkpoint_step(path)
    if named is not None and named != step:
        raise UserError(f"training checkpoint {path} holds step {step}, but its file name says step {named}")
    if not 0 <= step <= steps:
        raise UserError(f"training checkpoint {path} holds step {step}, outside the run's 0 to {steps} steps")
    return step


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state dict on the CPU (safe to save while training goes on;
    a checkpoint of a run on a GPU loads anywhere)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def final_payload(model: nn.Module, config: Mapping[str, Any]) -> dict[str, Any]:
    """``final.pt``: ``{"model": state_dict, "config": config}``."""
    return {"model": model_state(model), "config": dict(config)}


def save_final(run_dir: Path, model: nn.Module, config: Mapping[str, Any]) -> Path:
    """Write ``final.pt`` of ``run_dir`` atomically; returns its path."""
    return save_atomic(final_payload(model, config), Path(run_dir) / FINAL_FILE)
