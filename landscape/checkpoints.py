"""Safe checkpoint loading and atomic saving.

Checkpoints are read without running pickled code: ``.safetensors`` with safetensors, and
``.pt``/``.pth``/``.ckpt``/``.bin`` with ``torch.load(weights_only=True)``, which only rebuilds
tensors, containers and primitive values. A file that holds other Python objects (a whole
pickled ``nn.Module``, a Lightning checkpoint with custom classes, or a malicious payload) is
refused with a ``UserError`` listing the globals it would import; ``trust_checkpoint=True`` (the
CLI's ``--trust-checkpoint``) loads it with full unpickling, which can run arbitrary code, so
only for files you trust.

Accepted layouts: a plain state dict; ``{"state_dict": ...}`` (Lightning); ``{"model": ...}``
(landscape's own run checkpoints, which also hold a JSON-serialisable ``config``);
``{"model_state_dict": ...}``; a pickled ``nn.Module`` (trusted only). A ``module.`` (DDP),
``model.`` (Lightning) or ``_orig_mod.`` (a ``torch.compile`` model's state dict) prefix shared by
every key is removed. Complex tensors are refused where the model's are real (their imaginary
part would be dropped silently).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import pickletools
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import UserError, one_line, write_error

__all__ = [
    "SAFETENSORS_SUFFIXES",
    "TORCH_SUFFIXES",
    "load_checkpoint",
    "load_into_model",
    "load_state_dict",
    "read_checkpoint_metadata",
    "save_atomic",
    "torch_load",
    "strip_common_prefix",
    "unsafe_globals",
]

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, Lightning, torch.compile
_SHOW = 3  # how many keys an error message lists


def _checked_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise UserError(f"checkpoint path is not a file: {p}")
    suffix = p.suffix.lower()
    if suffix not in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES:
        raise UserError(
            f"unsupported checkpoint type '{suffix or p.name}' for {p} "
            f"(expected {', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)})"
        )
    return p


def _listing(items: list[str], limit: int = _SHOW) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------
# Finding unsafe globals without unpickling


def _allowed_globals() -> set[str]:
    try:  # private torch API; without it every global counts as unsafe, which only affects messages
        from torch import _weights_only_unpickler as wou

        return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:  # pragma: no cover - depends on the torch version
        return set()


def _scan_pickle_globals(data: bytes) -> list[str]:
    """Globals imported by the complete pickles at the start of ``data``, found statically."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        start = stream.tell()
        names: list[str] = []
        stack: list[Any] = []
        memo: dict[int, Any] = {}
        complete = False
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name == "GLOBAL" or name == "INST":
                    names.append(str(arg).replace(" ", "."))
                    stack.append(None)
                elif name == "STACK_GLOBAL":
                    module, attr = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
                    names.append(f"{module}.{attr}" if module and attr else "<dynamic global>")
                    stack.append(None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = stack[-1] if stack else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(int(arg)))
                elif name == "STOP":
                    complete = True
                else:
                    stack.append(arg if isinstance(arg, str) else None)
        except Exception:
            complete = False
        if not complete or stream.tell() == start:
            break
        found.extend(names)
    return found


def unsafe_globals(path: str | os.PathLike[str]) -> list[str]:
    """Python globals (``module.name``) a torch checkpoint would import that weights-only loading refuses.

    Found by reading the pickle opcodes, never by unpickling. Empty when there are none or the
    file cannot be parsed (for instance because it is truncated).
    """
    p = Path(path)
    if zipfile.is_zipfile(p):
        try:
            return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(p))))
        except Exception:
            return []
    allowed = _allowed_globals()
    return sorted({g for g in _scan_pickle_globals(p.read_bytes()) if g not in allowed})


# ----------------------------------------------------------------------------------------------
# Loading


TRUST_ADVICE = (
    "pass --trust-checkpoint to load it with full unpickling, only for files you trust "
    "(it can run arbitrary code)"
)


def torch_load(p: Path, trust_checkpoint: bool, *, advice: str = TRUST_ADVICE) -> Any:
    """``torch.load`` of ``p``: weights only unless ``trust_checkpoint``; one-line ``UserError``\\ s.

    A file holding pickled objects that weights-only loading refuses names the globals it would
    import and ends with ``advice`` (by default: how to trust it).
    """
    if trust_checkpoint:
        cwd = os.getcwd()
        if cwd not in sys.path:  # classes of a pickled model may live next to where the command runs
            sys.path.insert(0, cwd)
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(
                f"cannot load checkpoint {p} even with full unpickling ({_reason(exc, 200)})"
            ) from exc
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        bad = unsafe_globals(p)
        if bad:
            raise UserError(
                f"checkpoint {p} contains pickled Python objects that safe (weights-only) loading refuses "
                f"(unsafe globals: {_listing(bad, 5)}); {advice}"
            ) from exc
        raise UserError(
            f"cannot read checkpoint {p}: the file is corrupt or truncated, or holds data that "
            "weights-only loading cannot rebuild"
        ) from exc
    except Exception as exc:
        raise UserError(
            f"cannot read checkpoint {p}: the file is corrupt, truncated or not a torch.save file "
            f"({_reason(exc)})"
        ) from exc


def _reason(exc: BaseException, limit: int = 120) -> str:
    """``Type: first sentence of the message``, shortened for one-line errors."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". ")[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _extract_state_dict(obj: Any, p: Path) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint {p} holds a {type(obj).__name__}, not a dict of tensors")
    if not _is_tensor_dict(obj):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_tensor_dict(inner):
                obj = inner
                break
        else:
            if not obj:
                raise UserError(f"checkpoint {p} is an empty dict (no tensors)")
            bad = next(k for k, v in obj.items() if not isinstance(v, Tensor))
            raise UserError(
                f"checkpoint {p} is not a state dict: entry '{bad}' is a {type(obj[bad]).__name__} "
                f"(expected tensors, or a dict with a {', '.join(repr(k) for k in WRAPPER_KEYS)} entry)"
            )
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise UserError(f"checkpoint {p} has non-string state-dict key {bad_keys[0]!r}")
    return strip_common_prefix({k: v.detach() for k, v in obj.items()})


def strip_common_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove a ``module.`` (DDP), ``model.`` (Lightning) or ``_orig_mod.`` (``torch.compile``) prefix
    when every key has it (repeatedly)."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _load_safetensors(p: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        sd = load_file(str(p), device="cpu")
    except Exception as exc:
        raise UserError(
            f"cannot read checkpoint {p}: corrupt or not a safetensors file ({_reason(exc)})"
        ) from exc
    if not sd:
        raise UserError(f"checkpoint {p} holds no tensors")
    return strip_common_prefix(sd)


def _safetensors_metadata(p: Path) -> dict[str, Any] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata()
    except Exception as exc:
        raise UserError(
            f"cannot read checkpoint {p}: corrupt or not a safetensors file ({_reason(exc)})"
        ) from exc
    if not meta:
        return None
    config = meta.get("config")
    if config is not None:
        try:
            parsed = json.loads(config)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return dict(meta)


def _config_of(obj: Any) -> dict[str, Any] | None:
    if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping):
        return dict(obj["config"])
    return None


def load_checkpoint(
    path: str | os.PathLike[str], *, trust_checkpoint: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read a checkpoint once: ``(state_dict, config)``, see load_state_dict / read_checkpoint_metadata."""
    p = _checked_path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _load_safetensors(p), _safetensors_metadata(p)
    obj = torch_load(p, trust_checkpoint)
    return _extract_state_dict(obj, p), _config_of(obj)


def load_state_dict(path: str | os.PathLike[str], *, trust_checkpoint: bool = False) -> dict[str, Tensor]:
    """Load the model state dict in ``path`` (``.safetensors``, ``.pt``, ``.pth``, ``.ckpt``, ``.bin``).

    Torch files are read with ``weights_only=True`` unless ``trust_checkpoint`` (then full
    unpickling; a pickled ``nn.Module`` gives its ``state_dict()``). Wrappers ``state_dict``,
    ``model`` and ``model_state_dict`` are unwrapped and a common ``module.``/``model.`` key prefix
    removed. Raises ``UserError`` for a missing, corrupt or unsafe file, or one without tensors.
    """
    return load_checkpoint(path, trust_checkpoint=trust_checkpoint)[0]


def read_checkpoint_metadata(
    path: str | os.PathLike[str], *, trust_checkpoint: bool = False
) -> dict[str, Any] | None:
    """The run configuration stored with a checkpoint, or ``None``.

    For torch files: the ``config`` entry of a top-level dict (landscape's run checkpoints store
    a JSON-serialisable dict with keys such as ``model``, ``data``, ``loss``). For safetensors:
    the header metadata (``str -> str``); if it has a ``config`` entry holding a JSON object, that
    object is returned instead, so both formats give the same config dict. Loading is as safe as
    ``load_state_dict`` and raises the same errors.
    """
    p = _checked_path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _safetensors_metadata(p)
    return _config_of(torch_load(p, trust_checkpoint))


def _with_prefix_fixed(sd: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """``sd`` with a ``model.``/``module.`` prefix added or removed if that makes its keys match exactly."""
    if set(sd) == expected:
        return sd
    for prefix in STRIP_PREFIXES:
        added = {prefix + k: v for k, v in sd.items()}
        if set(added) == expected:
            return added
        if all(k.startswith(prefix) for k in sd):
            stripped = {k[len(prefix) :]: v for k, v in sd.items()}
            if set(stripped) == expected:
                return stripped
    return sd


def load_into_model(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly (same keys, same shapes) and return ``model``.

    Raises ``UserError`` naming the first tensor with NaN/inf values, or, on a mismatch, one line
    listing a few missing keys, unexpected keys and shape mismatches.
    """
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise UserError(f"checkpoint entry '{key}' is a {type(value).__name__}, not a tensor")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise UserError(f"checkpoint tensor '{key}' contains NaN or infinite values")
    expected = model.state_dict()
    sd = _with_prefix_fixed(dict(state_dict), set(expected))
    for key, value in sd.items():
        if value.is_complex() and key in expected and not expected[key].is_complex():
            raise UserError(
                f"checkpoint tensor '{key}' is complex ({value.dtype}) but the model's is real; "
                "loading it would drop the imaginary part"
            )
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
        raise UserError("checkpoint does not match the model: " + "; ".join(parts))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # pragma: no cover - the checks above catch what strict loading rejects
        raise UserError(f"checkpoint does not match the model: {one_line(exc, 300)}") from exc
    return model


# ----------------------------------------------------------------------------------------------
# Saving


def save_atomic(obj: Any, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``obj`` to ``path`` atomically: save to a temporary file in the same folder, then ``os.replace``.

    A crash mid-write leaves the old file (or none), never a half-written one. ``.safetensors``
    paths take a dict of tensors (saved with safetensors, with optional string ``metadata``);
    anything else is written with ``torch.save``. Parent folders are created. Returns the path.
    A write that fails for want of space (``ENOSPC``, or torch's "unexpected pos") is a one-line
    ``UserError`` saying that the disk is full and where (:func:`landscape.errors.write_error`).
    """
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(exc, p) or exc from None
    try:
        if p.suffix.lower() in SAFETENSORS_SUFFIXES:
            os.close(fd)
            from safetensors.torch import save_file

            if not _is_tensor_dict(obj):
                raise UserError(f"only a non-empty dict of tensors can be saved as safetensors ({p})")
            tensors = {k: v.detach().contiguous() for k, v in obj.items()}
            save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        else:
            if metadata:
                os.close(fd)
                raise ValueError("metadata is only supported for .safetensors files")
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException as exc:
        # a full disk: say so while the partial file still takes the space, then remove it
        error = write_error(exc, p) if isinstance(exc, OSError | RuntimeError) else None
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if error is not None:
            raise error from exc
        raise
    return p
