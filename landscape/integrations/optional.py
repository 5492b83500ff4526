"""The optional packages of the integrations, imported only by the modules that subclass theirs."""

from __future__ import annotations

import importlib
from types import ModuleType

from landscape.errors import UserError

__all__ = ["EXTRAS", "require"]

EXTRAS = {"transformers": "hf", "lightning": "lightning"}
"""The optional package -> the extra of landscape that installs it (pinned in ``pyproject.toml``)."""


def require(package: str, feature: str) -> ModuleType:
    """``import package``, or a one-line ``UserError`` saying that ``feature`` needs it and how to
    install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        top = package.partition(".")[0]
        extra = EXTRAS.get(top)
        how = f"pip install 'landscape[{extra}]' (or pip install {top})" if extra else f"pip install {top}"
        raise UserError(f"{feature} needs the optional package {top}: {how}") from None
