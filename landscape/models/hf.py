"""Hugging Face ``save_pretrained`` folders as checkpoints, rebuilt from their config with no download.

A *pretrained folder* holds ``config.json`` and the weights as ``model.safetensors``, a sharded
``model.safetensors.index.json`` (or the ``pytorch_model.bin`` equivalents, read with
``torch.load(weights_only=True)``). The model is built from the config by the ``transformers``
class its ``architectures`` entry names (only classes of the ``transformers`` package itself; a
config that asks for custom code through ``auto_map`` is refused unless the caller trusts the
folder), in the dtype asked for, and the weights are copied in (bf16/fp16 files are upcast on the
copy). Tied weights the file leaves out (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``)
are accepted; every other missing or unexpected tensor is an error.

A peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) is built over its
base model, which must itself be a local pretrained folder (``base_model_name_or_path``, absolute
or relative to the adapter folder): nothing is downloaded. As in the fine-tuning that made it, the
adapter's parameters require gradients and the base's do not, so curvature is measured in the
adapter's parameter space.

``transformers`` and ``peft`` are optional: they are imported only when such a folder is loaded.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import UserError, one_line

__all__ = ["is_pretrained_folder", "load_pretrained_folder", "pretrained_weight_files"]

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_CONFIG_FILE = "config.json"
"""The model config of a Hugging Face folder (their layout, not a landscape run folder's)."""
_ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# buffers that older transformers versions saved and newer ones rebuild (GPT-2's causal mask)
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def is_pretrained_folder(path: str | Path) -> bool:
    """Whether ``path`` is a ``save_pretrained`` folder (model or peft adapter)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / _ADAPTER_CONFIG).is_file():
        return True
    return (p / HF_CONFIG_FILE).is_file() and any((p / name).is_file() for name in _WEIGHT_FILES)


def pretrained_weight_files(folder: Path) -> list[Path]:
    """The weight files of a pretrained folder: one file, or the shards its index lists."""
    for name in _WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"cannot read the shard index {path}: {one_line(exc, 120)}") from None
        files = [folder / shard for shard in shards]
        missing = [f.name for f in files if not f.is_file() or f.parent.resolve() != folder.resolve()]
        if missing:
            raise UserError(f"{path} lists shard(s) missing from {folder}: {', '.join(missing[:3])}")
        return files
    raise UserError(f"{folder} has a config.json but no weights ({', '.join(_WEIGHT_FILES)})")


def _read_weights(files: list[Path]) -> dict[str, Tensor]:
    from landscape.checkpoints import load_state_dict

    state: dict[str, Tensor] = {}
    for path in files:
        # safetensors, or torch files through weights-only loading: a file never runs code
        state.update(load_state_dict(path))
    return state


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[Any]:
    """Import transformers with its info/warning logging and Python warnings silenced, then restore."""
    try:
        import transformers
    except ImportError:
        raise UserError(
            "loading a Hugging Face folder needs the optional package transformers: "
            "pip install 'landscape[hf]' (or pip install transformers)"
        ) from None
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield transformers
    finally:
        logging.set_verbosity(level)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {one_line(exc, 120)}") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return payload


def _model_class(transformers: Any, config: dict[str, Any], folder: Path) -> Any:
    names = config.get("architectures") or []
    if not isinstance(names, list) or not names:
        return transformers.AutoModelForCausalLM
    cls = getattr(transformers, str(names[0]), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UserError(
            f"{folder / HF_CONFIG_FILE} names architecture '{names[0]}', which is not a transformers model class"
        )
    return cls


def _load_weights(model: nn.Module, state: dict[str, Tensor], folder: Path) -> None:
    """Copy ``state`` into ``model``: tied parameters may be absent, nothing else."""
    from landscape.checkpoints import strip_common_prefix

    for key, value in state.items():
        if value.is_complex():
            raise UserError(f"{folder}: tensor '{key}' is complex; landscape analyses real parameters")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{folder}: tensor '{key}' contains NaN or infinite values")
    expected = model.state_dict()
    if not set(state) & set(expected):
        state = strip_common_prefix(state)
    state = {k: v for k, v in state.items() if not (k not in expected and k.endswith(_IGNORED_SUFFIXES))}
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if unexpected or shapes:
        what = (
            f"unexpected tensor(s) {', '.join(unexpected[:3])}"
            if unexpected
            else f"shape mismatch for {shapes[0]}: file {list(state[shapes[0]].shape)} vs model "
            f"{list(expected[shapes[0]].shape)}"
        )
        raise UserError(f"the weights in {folder} do not match its config.json: {what}")
    result = model.load_state_dict(state, strict=False)
    # a missing parameter is fine when it is tied to one that was loaded (the same tensor object);
    # missing buffers keep the values the config built
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in result.missing_keys if k in params and id(params[k]) not in loaded]
    if missing:
        raise UserError(
            f"the weights in {folder} lack tensor(s) {', '.join(missing[:3])} that the model needs"
        )


def _build_model(folder: Path, dtype: torch.dtype, trust: bool) -> nn.Module:
    config = _read_json(folder / HF_CONFIG_FILE)
    if config.get("auto_map") and not trust:
        raise UserError(
            f"{folder / HF_CONFIG_FILE} asks for custom model code (auto_map); a file never chooses code "
            "to run: pass --trust-checkpoint if you trust the folder"
        )
    files = pretrained_weight_files(folder)
    with _quiet_transformers() as transformers:
        try:
            hf_config = transformers.AutoConfig.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=trust
            )
        except Exception as exc:
            raise UserError(f"cannot read the model config in {folder}: {one_line(exc, 200)}") from None
        cls = _model_class(transformers, config, folder)
        with _default_dtype(dtype):
            try:
                if cls is transformers.AutoModelForCausalLM:
                    model = cls.from_config(hf_config, trust_remote_code=trust)
                else:
                    model = cls(hf_config)
            except Exception as exc:
                raise UserError(f"cannot build the model of {folder}: {one_line(exc, 200)}") from None
    model = model.to(dtype)
    _load_weights(model, _read_weights(files), folder)
    return model


def _base_folder(adapter: Path, base: Any) -> Path:
    if not isinstance(base, str) or not base:
        raise UserError(f"{adapter / _ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    for candidate in (Path(base).expanduser(), adapter / base):
        if candidate.is_absolute() or candidate.exists():
            if is_pretrained_folder(candidate):
                return candidate
    raise UserError(
        f"the base model '{base}' of the adapter {adapter} is not a local save_pretrained folder "
        "(nothing is downloaded: save the base model with save_pretrained and point "
        "base_model_name_or_path at it)"
    )


def _build_adapter(folder: Path, dtype: torch.dtype, trust: bool) -> nn.Module:
    settings = _read_json(folder / _ADAPTER_CONFIG)
    base = _build_model(_base_folder(folder, settings.get("base_model_name_or_path")), dtype, trust)
    weights = [folder / name for name in _ADAPTER_WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise UserError(f"{folder} has an adapter_config.json but no {' or '.join(_ADAPTER_WEIGHTS)}")
    try:
        import peft
    except ImportError:
        raise UserError(
            "loading a peft adapter folder needs the optional package peft: pip install peft"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = peft.PeftConfig.from_pretrained(str(folder))
            # as in the fine-tuning: the adapter's parameters trainable, the base frozen (a saved
            # adapter says inference_mode=True, which would freeze everything)
            config.inference_mode = False
            model = peft.get_peft_model(base, config)
        except Exception as exc:
            raise UserError(f"cannot build the adapter of {folder}: {one_line(exc, 200)}") from None
        state = _read_weights(weights[:1])
        result = peft.set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise UserError(f"the adapter weights in {folder} lack {', '.join(missing[:3])}")
    return model.to(dtype)


def load_pretrained_folder(
    path: str | Path, *, dtype: torch.dtype = torch.float32, trust_checkpoint: bool = False
) -> nn.Module:
    """Rebuild the model saved in a ``save_pretrained`` folder (or a peft adapter folder over its base).

    The model is built in ``dtype`` before its weights are copied in, so a float64 folder keeps
    every bit and a bf16/fp16 one is computed in ``dtype``. Raises ``UserError`` for a folder that
    is not one, lacks weights, asks for custom code without ``trust_checkpoint``, or whose
    weights do not match its config.
    """
    folder = Path(path).expanduser()
    if not is_pretrained_folder(folder):
        raise UserError(
            f"{folder} is not a save_pretrained folder (config.json with model.safetensors, a shard "
            "index or pytorch_model.bin; or adapter_config.json)"
        )
    if (folder / _ADAPTER_CONFIG).is_file():
        model = _build_adapter(folder, dtype, trust_checkpoint)
    else:
        model = _build_model(folder, dtype, trust_checkpoint)
    return model.eval()  # as from_pretrained returns it: dropout off
