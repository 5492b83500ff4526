"""Where a result came from: the package version, the torch version and the command line.

One home for what every output file records about its making: ``analysis.json`` (its
``context``), a run's ``config.json`` and the report's provenance section read
:func:`provenance`; ``landscape --version`` prints :func:`version_line`. Nothing here imports
torch at module level, so ``import landscape`` stays light.
"""

from __future__ import annotations

import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PROVENANCE_KEYS", "__version__", "command_line", "provenance", "version_line"]


def _installed_version() -> str:
    try:
        return metadata.version("landscape")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()
"""The package version (from the installed metadata, i.e. ``pyproject.toml``)."""

PROVENANCE_KEYS = ("landscape_version", "torch_version", "python_version", "command")
"""The keys :func:`provenance` writes (a file written before they existed has none of them)."""


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line of this process, shell-quoted (``landscape analyze ...`` for the CLI)."""
    args = list(sys.argv if argv is None else argv)
    if args:
        program = Path(args[0])
        is_cli = program.stem == "landscape" or program.as_posix().endswith("cli/main.py")
        args[0] = "landscape" if is_cli else program.name
    return shlex.join(args)


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``{"landscape_version", "torch_version", "python_version", "command"}`` of this process."""
    import torch

    return {
        "landscape_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "command": command_line(argv),
    }


def version_line() -> str:
    """``landscape X (torch Y, Python Z)``: what ``landscape --version`` prints."""
    import torch

    return f"landscape {__version__} (torch {torch.__version__}, Python {platform.python_version()})"
