"""The LoRA adapters of a training run, rebuilt from its configuration (``config.json`` or the
``config`` stored in its checkpoints).

One home for what a run's configuration says about adapters, used where a run's model is built
(:mod:`landscape.train`) and where a stored run's model is rebuilt (:mod:`landscape.resolve`):
which methods train adapters, which configuration fields are the adapters' own options, and how
the adapters are added (low-rank adaptation, Hu et al. 2021, arXiv:2106.09685, Eq. 3:
``h = W0 x + (alpha / r) B A x`` with ``B = 0`` at the start).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from landscape.optim.options import ADAPTER_OPTIONS
from landscape.optim.rules import RULES

__all__ = ["ADAPTER_KEYWORDS", "LORA_METHODS", "add_run_adapters"]

LORA_METHODS = tuple(name for name, spec in RULES.items() if any(o in ADAPTER_OPTIONS for o in spec.options))
"""Methods that train low-rank adapters (their rule specs take the adapter options): the run adds
them to the model (``add_lora``)."""

ADAPTER_KEYWORDS = {option.name: option.kwarg for option in ADAPTER_OPTIONS}
"""Options of the adapters themselves (read by ``add_lora``, not by the rule): field -> keyword."""

# Mixed into the seed of the generator that draws the adapters' A: seeded with the run seed itself,
# its stream would repeat the model's own initialisation (torch.manual_seed(seed)), and A would
# start as a copy of rows of the first Linear weight.
_ADAPTER_SEED_SALT = 0x10_2A_A0


def add_run_adapters(model: nn.Module, config: Any) -> list[str]:
    """Give ``model`` the LoRA adapters of a run, in place; returns the wrapped layers' paths.

    ``config``: a run configuration (anything with ``to_dict()``, such as
    :class:`landscape.train.RunConfig`) or the ``config`` dict stored in a run's checkpoints (so
    that ``landscape analyze final.pt`` rebuilds the trained model, adapters included). Nothing
    happens unless the method is one of :data:`LORA_METHODS`, nor when the model already has LoRA
    layers (an import-path factory returning a peft model brings its own). Otherwise ``add_lora``
    wraps the ``lora_targets`` layers with rank ``lora_rank`` and ``lora_alpha`` and freezes every
    other parameter; A is drawn from its own generator, seeded from ``seed``, so the global RNG is
    left alone and the same config always gives the same adapters.
    """
    from landscape.optim import add_lora, lora_layers

    stored: Mapping[str, Any] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if stored.get("method") not in LORA_METHODS or lora_layers(model):
        return []
    options = {
        keyword: stored[field_name]
        for field_name, keyword in ADAPTER_KEYWORDS.items()
        if stored.get(field_name) is not None
    }
    seed = (int(stored.get("seed") or 0) + _ADAPTER_SEED_SALT) % (2**63)
    return add_lora(model, **options, generator=torch.Generator().manual_seed(seed))
