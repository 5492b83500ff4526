"""The compute dtypes a command accepts by name (``--dtype float32|float64``)."""

from __future__ import annotations

import torch

from landscape.errors import UserError

__all__ = ["DTYPES", "parse_dtype"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"float64"`` -> torch dtype (UserError otherwise)."""
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (choose from {', '.join(DTYPES)})")
    return DTYPES[name]
