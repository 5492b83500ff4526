"""Built-in models, model specs and model-output unwrapping.

A *model spec* is either a built-in name (``mlp``, ``cnn``, ``transformer``, see ``list_models``)
or an import path ``package.module:factory`` naming a zero-argument callable that returns an
``nn.Module`` (``path/to/file.py:factory`` also works). The current working directory is put on
``sys.path`` first, so a ``my_models.py`` next to where the command runs can be named directly.

The built-ins are small on purpose (a few thousand to ~44k parameters) so that exact Hessian
spectra and many Hessian-vector products run in seconds on a CPU. Their weights depend only on
``torch.manual_seed``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from landscape.errors import UserError
from landscape.models.transformer import TransformerLM

__all__ = [
    "MLP",
    "CNN",
    "TransformerLM",
    "ModelInfo",
    "build_model",
    "list_models",
    "model_info",
    "model_spec_kind",
    "resolve_import_path",
    "unwrap_output",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}


def _activation(name: str | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(name, str):
        key = name.lower()
        if key not in ACTIVATIONS:
            raise UserError(f"unknown activation '{name}' (choose from: {', '.join(ACTIVATIONS)})")
        return ACTIVATIONS[key]()
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name()
    raise UserError(f"activation must be a name ({', '.join(ACTIVATIONS)}), got {name!r}")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


class MLP(nn.Module):
    """Fully connected classifier: ``in_features -> hidden... -> num_classes`` with one activation.

    Inputs of any shape ``[B, ...]`` are flattened to ``[B, in_features]``. The default
    ``64 -> 64 -> 64 -> 10`` with tanh (8,970 parameters) fits the 8x8 digits.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (64, 64),
        num_classes: int = 10,
        activation: str | Callable[[], nn.Module] = "tanh",
    ) -> None:
        super().__init__()
        _positive_int(in_features, "mlp in_features")
        _positive_int(num_classes, "mlp num_classes")
        if isinstance(hidden, int):
            hidden = (hidden,)
        hidden = tuple(_positive_int(h, "mlp hidden width") for h in hidden)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _activation(activation)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes]`` for inputs ``[B, in_features]`` (or any ``[B, ...]``)."""
        return self.net(x.reshape(x.shape[0], -1))


class CNN(nn.Module):
    """Small convolutional classifier for 1x8x8 digits (3,818 parameters by default).

    ``conv(1->8, 3x3, pad 1) -> GELU -> conv(8->16, 3x3, pad 1) -> GELU -> avg-pool 2 ->
    linear(16*4*4 -> num_classes)``. Accepts ``[B, 64]``, ``[B, 8, 8]`` or ``[B, 1, 8, 8]``.
    """

    def __init__(self, num_classes: int = 10, channels: Sequence[int] = (8, 16), image_size: int = 8) -> None:
        super().__init__()
        _positive_int(num_classes, "cnn num_classes")
        _positive_int(image_size, "cnn image_size")
        if image_size % 2:
            raise UserError(f"cnn image_size must be even (it is pooled by 2), got {image_size}")
        c1, c2 = (_positive_int(c, "cnn channel count") for c in channels)
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.GELU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Linear(c2 * (image_size // 2) ** 2, num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes]``; flat ``[B, 64]`` inputs are reshaped to ``[B, 1, 8, 8]``."""
        s = self.image_size
        if x.dim() == 2 or x.dim() == 3:
            x = x.reshape(x.shape[0], 1, s, s)
        return self.classifier(self.features(x).flatten(1))


@dataclass(frozen=True)
class ModelInfo:
    """What a built-in model is for: its default data set, loss and task."""

    name: str
    description: str
    default_data: str
    loss: str
    task: str

    def as_dict(self) -> dict[str, str]:
        """The fields as a plain (JSON-serialisable) dict."""
        return asdict(self)


_BUILTINS: dict[str, tuple[Callable[..., nn.Module], ModelInfo, tuple[str, ...]]] = {
    "mlp": (
        MLP,
        ModelInfo(
            "mlp",
            "tanh MLP 64-64-64-10 for 8x8 digits (8,970 params)",
            "digits",
            "cross_entropy",
            "classification",
        ),
        ("in_features", "hidden", "num_classes", "activation"),
    ),
    "cnn": (
        CNN,
        ModelInfo(
            "cnn",
            "2-layer GELU conv net for 1x8x8 digits (3,818 params)",
            "digits",
            "cross_entropy",
            "classification",
        ),
        ("num_classes", "channels", "image_size"),
    ),
    "transformer": (
        TransformerLM,
        ModelInfo(
            "transformer",
            "byte-level decoder-only LM, 2 layers, 2 heads, d_model 32 (~44k params)",
            "text",
            "cross_entropy",
            "language_model",
        ),
        ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "mlp_ratio", "dropout"),
    ),
}


def list_models() -> dict[str, str]:
    """Built-in model names mapped to a one-line description each."""
    return {name: info.description for name, (_, info, _) in _BUILTINS.items()}


def model_info(name: str) -> ModelInfo:
    """Default data set, loss and task of the built-in model ``name``."""
    if name not in _BUILTINS:
        raise UserError(f"unknown built-in model '{name}' (choose from: {', '.join(_BUILTINS)})")
    return _BUILTINS[name][1]


def _is_import_path(spec: str) -> bool:
    return ":" in spec or "." in spec


def model_spec_kind(spec: str) -> str:
    """What ``build_model`` does with ``spec``: ``"builtin"``, ``"import"`` (imports Python code and
    calls it) or ``"unknown"`` (an error)."""
    spec = spec.strip()
    if spec in _BUILTINS:
        return "builtin"
    return "import" if _is_import_path(spec) else "unknown"


def resolve_import_path(spec: str, what: str = "object") -> Any:
    """Import the object named by ``package.module:attr`` (or ``package.module.attr``).

    ``path/to/file.py:attr`` loads that file as a module. The current working directory is added
    to ``sys.path`` if missing. Any failure raises ``UserError`` naming ``spec``; ``what`` says
    what was being looked for ("model factory", "data function") in that message.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    module_part, sep, attr = spec.partition(":")
    try:
        if sep and module_part.endswith(".py"):
            return _resolve_from_file(Path(module_part), attr)
        return pkgutil.resolve_name(spec)
    except UserError:
        raise
    except Exception as exc:  # ImportError, AttributeError, ValueError, errors raised by the module itself
        raise UserError(f"cannot import {what} '{spec}': {type(exc).__name__}: {exc}") from exc


def _resolve_from_file(path: Path, attr: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no such file {str(path)!r}")
    name = "_landscape_user_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always get a loader
        raise ImportError(f"cannot load {str(path)!r} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    obj: Any = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build the model named by ``spec``: a built-in name or an import path ``module:factory``.

    For built-ins, ``kwargs`` override constructor defaults (``mlp``: in_features, hidden,
    num_classes, activation; ``cnn``: num_classes, channels, image_size; ``transformer``:
    vocab_size, block_size, n_layer, n_head, d_model, mlp_ratio, dropout). For an import path the
    factory is called with ``kwargs`` (none by default); if the path names an ``nn.Module``
    instance it is returned as is. Weights are initialised from the global torch RNG, so call
    ``torch.manual_seed`` first for reproducible models. Raises ``UserError`` on any bad spec.
    """
    spec = spec.strip() if isinstance(spec, str) else spec
    if not isinstance(spec, str) or not spec:
        raise UserError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in _BUILTINS:
        factory, _, allowed = _BUILTINS[spec]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise UserError(
                f"unknown option(s) {', '.join(unknown)} for model '{spec}' (allowed: {', '.join(allowed)})"
            )
        if isinstance(kwargs.get("hidden"), list):
            kwargs["hidden"] = tuple(kwargs["hidden"])
        try:
            return factory(**kwargs)
        except UserError:
            raise
        except (TypeError, ValueError) as exc:
            raise UserError(f"cannot build model '{spec}' with {kwargs}: {exc}") from exc
    if not _is_import_path(spec):
        raise UserError(
            f"unknown model '{spec}' (built-ins: {', '.join(_BUILTINS)}; "
            "or an import path package.module:factory)"
        )
    obj = resolve_import_path(spec, "model factory")
    if isinstance(obj, nn.Module):
        if kwargs:
            raise UserError(f"model '{spec}' is a module instance and takes no options, got {sorted(kwargs)}")
        return obj
    if not callable(obj):
        raise UserError(f"model '{spec}' is a {type(obj).__name__}, not a callable returning an nn.Module")
    try:
        model = obj(**kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"model factory '{spec}' failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory '{spec}' returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def unwrap_output(out: Any) -> Tensor:
    """The prediction tensor inside a model's output.

    Plain tensors pass through. Tuples/lists give their first element (e.g. ``(logits, aux)``),
    mappings their ``"logits"`` entry or else their first value, and objects with a ``.logits``
    attribute (Hugging Face ``ModelOutput``) that attribute; nesting is unwrapped repeatedly.
    Anything else raises ``UserError``.
    """
    for _ in range(8):
        if isinstance(out, Tensor):
            return out
        if isinstance(out, Mapping):
            if "logits" in out:
                out = out["logits"]
            elif len(out) > 0:
                out = next(iter(out.values()))
            else:
                raise UserError("model returned an empty dict; expected logits")
        elif isinstance(out, (tuple, list)):
            if not out:
                raise UserError("model returned an empty tuple; expected logits")
            out = out[0]
        elif hasattr(out, "logits"):
            out = out.logits
        else:
            break
    raise UserError(f"model output of type {type(out).__name__} has no tensor of logits")
