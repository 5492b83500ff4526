"""landscape in your own training loop: a Hugging Face ``Trainer`` that trains with any gradient
rule, and sharpness tracked while you train (Hugging Face, Lightning or a hand-written loop).

* :class:`SharpnessTracker` (:mod:`~landscape.integrations.tracker`): every ``every`` steps it
  measures the curvature of the model on a FIXED probe batch (the registry's training diagnostics:
  lambda_max with its Lanczos residual, tr(H) with its standard error, tr(G), tr(H_F), the tau
  split, and any metric that declares a diagnostic) and writes a run folder that
  ``landscape report`` reads like a ``landscape train`` run;
* :class:`HFSharpnessCallback` and :class:`SharpnessAwareTrainer`
  (:mod:`~landscape.integrations.hf`, needs ``transformers``): a ``TrainerCallback`` that logs
  through the Trainer's own ``log`` (so TensorBoard, W&B and CSV callbacks see the values), and a
  ``Trainer`` whose optimizer is a :class:`~landscape.optim.SharpnessAwareOptimizer`;
* :class:`LightningSharpnessCallback` (:mod:`~landscape.integrations.lightning`, needs
  ``lightning``): a Lightning ``Callback`` that logs to the trainer's loggers.

The probe batch is chosen once, reproducibly from a seed (:func:`choose_probe`). Measuring changes
nothing about training: the model's modes, ``requires_grad`` flags, parameters, gradients and the
global RNG are left as found, so a run with a callback and one without end with the same weights.

``import landscape.integrations`` imports neither ``transformers`` nor ``lightning``: the classes
that subclass theirs are imported on first use, and without the package they are a one-line
``UserError`` that says what to install (``pip install 'landscape[hf]'`` or ``'landscape[lightning]'``).
See ``docs/integrations.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from landscape.integrations.hf import HFSharpnessCallback, SharpnessAwareTrainer
    from landscape.integrations.lightning import LightningSharpnessCallback
    from landscape.integrations.probe import choose_probe, probe_from_loader, split_batch
    from landscape.integrations.tracker import SharpnessTracker

__all__ = [
    "HFSharpnessCallback",
    "LightningSharpnessCallback",
    "SharpnessAwareTrainer",
    "SharpnessTracker",
    "choose_probe",
    "probe_from_loader",
    "split_batch",
]

_LAZY = {
    "HFSharpnessCallback": "landscape.integrations.hf",
    "SharpnessAwareTrainer": "landscape.integrations.hf",
    "LightningSharpnessCallback": "landscape.integrations.lightning",
    "SharpnessTracker": "landscape.integrations.tracker",
    "choose_probe": "landscape.integrations.probe",
    "probe_from_loader": "landscape.integrations.probe",
    "split_batch": "landscape.integrations.probe",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
