"""Which specs read from a file may run code.

A checkpoint's stored ``config`` (``final.pt``, a ``.safetensors`` file's metadata), a run's
``config.json`` and a suite's ``suite.json`` name the model, the data and the loss that rebuild a
run. A built-in name or a data *file* only selects code that ships with landscape; an import path
(``package.module:factory``, ``file.py:function``) imports and calls arbitrary Python. A file that
a user was sent must never choose code to run, so a stored import path is used only when

* the user names the same spec on the command line (``--model``, ``--data``, ``--eval-data``,
  ``--loss``), or the caller vouches for it (``allowed``), or
* the user passes ``--trust-checkpoint`` (``trust=True``): the file is trusted as a whole.

Everything else gets one :class:`~landscape.errors.UserError` that names the file, the stored code
and both ways to allow it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from landscape.data.loaders import data_spec_kind
from landscape.errors import UserError
from landscape.losses import is_import_path
from landscape.models.zoo import model_spec_kind

__all__ = ["SPEC_KEYS", "check_stored_specs", "runs_code", "stored_code"]

SPEC_KEYS = ("model", "data", "eval_data", "loss")
_FLAGS = {"model": "--model", "data": "--data", "eval_data": "--eval-data", "loss": "--loss"}
_WHAT = {"model": "model factory", "data": "data function", "eval_data": "data function", "loss": "loss"}


def runs_code(key: str, spec: Any) -> bool:
    """Whether the stored ``spec`` under ``key`` (one of :data:`SPEC_KEYS`) would import Python code.

    Non-string values run nothing here (the loaders refuse them with their own errors).
    """
    if not isinstance(spec, str) or not spec.strip():
        return False
    if key == "model":
        return model_spec_kind(spec) == "import"
    if key in ("data", "eval_data"):
        return data_spec_kind(spec) == "import"
    if key == "loss":
        return is_import_path(spec)
    raise ValueError(f"unknown spec key {key!r} (expected one of {SPEC_KEYS})")


def stored_code(config: Mapping[str, Any] | None, keys: Iterable[str] = SPEC_KEYS) -> list[tuple[str, str]]:
    """The ``(key, spec)`` pairs of ``config`` that would import code, in ``keys`` order."""
    if not config:
        return []
    return [(key, str(config[key]).strip()) for key in keys if runs_code(key, config.get(key))]


def check_stored_specs(
    config: Mapping[str, Any] | None,
    source: str,
    *,
    keys: Iterable[str] = SPEC_KEYS,
    allowed: Collection[str | None] = (),
    trust: bool = False,
) -> None:
    """Refuse the import paths that ``config`` (read from ``source``) stores under ``keys``.

    A spec passes when ``trust`` is set or when it is in ``allowed`` (the specs the user named on
    the command line, or that the caller already vetted). Raises one ``UserError`` listing every
    refused spec and the flags that would allow it.
    """
    if trust:
        return
    named = {spec.strip() for spec in allowed if isinstance(spec, str)}
    refused = [(key, spec) for key, spec in stored_code(config, keys) if spec not in named]
    if not refused:
        return
    listing = ", ".join(f"{_WHAT[key]} '{spec}'" for key, spec in refused)
    flags = " ".join(f"{_FLAGS[key]} {spec}" for key, spec in refused)
    raise UserError(
        f"{source} names code to import and run ({listing}); a file never chooses code to run: "
        f"name it yourself ({flags}) or pass --trust-checkpoint if you trust the file"
    )
