"""How ``landscape report`` rebuilds a user's model from a run folder: the model spec stored in it.

``final.pt`` holds the weights; ``config.json`` names the code that builds the architecture they
load into (``model``, an import path ``package.module:factory``, called with ``model_kwargs``), as
for ``landscape train --model package.module:factory``. :func:`model_spec` finds one:

* a Hugging Face ``transformers`` model: :func:`transformers_model` with the class name and the
  model's config (nothing of the user's code is needed, nothing is downloaded);
* a Lightning module that saved its hyperparameters (``save_hyperparameters()``): its class, called
  with them;
* another module whose class is importable (not defined in ``__main__``) and takes no required
  argument: its class.

Otherwise, or to choose yourself, pass ``model_spec=`` (and ``model_kwargs=``). A report imports and
runs that code only when asked to (``landscape report --trust-checkpoint``): a file never chooses
code to run (:mod:`landscape.trust`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from landscape.errors import UserError

__all__ = ["TRANSFORMERS_FACTORY", "class_path", "model_spec", "transformers_model"]

TRANSFORMERS_FACTORY = "landscape.integrations.rebuild:transformers_model"
"""The model spec of a ``transformers`` model (with ``architecture`` and ``config`` as kwargs)."""


def class_path(obj: Any) -> str:
    """``package.module.Class`` of an object's class (for records)."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def transformers_model(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised ``transformers.<architecture>`` built from its config dict.

    Only classes of the ``transformers`` package itself; a config that asks for custom code
    (``auto_map``) is refused, as for a ``save_pretrained`` folder (:mod:`landscape.models.hf`).
    """
    from landscape.integrations.optional import require

    transformers = require("transformers", "rebuilding a Hugging Face model")
    cls = getattr(transformers, str(architecture), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UserError(f"'{architecture}' is not a model class of transformers")
    if not isinstance(config, Mapping) or config.get("auto_map"):
        raise UserError(
            f"the stored config of {architecture} asks for custom model code (auto_map) or is no dict"
        )
    return cls(cls.config_class.from_dict(dict(config)))


def _is_transformers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(
        getattr(model, "config", None), "to_json_string"
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _takes_no_required_argument(cls: type, given: Mapping[str, Any]) -> bool:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty and parameter.name not in given:
            return False
    return True


def model_spec(model: nn.Module) -> tuple[str | None, dict[str, Any]]:
    """``(import path, kwargs)`` that rebuild ``model``'s architecture (see the module docstring);
    ``(None, {})`` when none is found."""
    if _is_transformers_model(model):
        config = json.loads(model.config.to_json_string(use_diff=False))  # type: ignore[operator, union-attr]
        return TRANSFORMERS_FACTORY, {"architecture": type(model).__name__, "config": config}
    cls = type(model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None, {}
    hparams = getattr(model, "hparams", None)
    kwargs = dict(hparams) if isinstance(hparams, Mapping) else {}
    if not _jsonable(kwargs) or not _takes_no_required_argument(cls, kwargs):
        return None, {}
    return f"{cls.__module__}:{cls.__qualname__}", kwargs
