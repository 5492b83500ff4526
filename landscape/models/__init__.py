"""Models: the built-in zoo (``mlp``, ``cnn``, ``transformer``), import-path specs, output unwrapping."""

from landscape.models.transformer import TransformerLM
from landscape.models.zoo import (
    CNN,
    MLP,
    ModelInfo,
    build_model,
    list_models,
    model_info,
    model_spec_kind,
    resolve_import_path,
    unwrap_output,
)

__all__ = [
    "CNN",
    "MLP",
    "ModelInfo",
    "TransformerLM",
    "build_model",
    "list_models",
    "model_info",
    "model_spec_kind",
    "resolve_import_path",
    "unwrap_output",
]
