"""Bytes: how much memory is free on a device, how much this process uses, and sizes as text.

:func:`default_budget` is most of the memory free on the device now (CUDA: ``mem_get_info`` plus
the caching allocator's unused blocks; CPU: ``MemAvailable`` and the cgroup limit),
:func:`remaining_budget` turns a whole-process limit (``--max-memory``) into what a computation
may still add, :func:`parse_memory` reads ``"12GB"``-style sizes and :func:`format_bytes` prints
them. The planner (:mod:`landscape.curvature.memory`) and the estimators (Lanczos' basis size)
read their budgets from here.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import sys
from typing import Any

import torch

from landscape.errors import UserError

__all__ = [
    "DEFAULT_FRACTION",
    "available_memory",
    "default_budget",
    "format_bytes",
    "parse_memory",
    "release_free_memory",
    "remaining_budget",
    "used_memory",
]

# Share of the free memory that the default budget takes: the rest is left to the allocator's
# fragmentation, the interpreter and whatever else runs on the device.
DEFAULT_FRACTION = 0.8

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_memory(text: str | int | float) -> int:
    """Bytes from ``"12GB"``, ``"1.5 GiB"``, ``"800M"``, ``"4096"`` or a number of bytes.

    Units: ``KB/MB/GB/TB`` are decimal (10^3 ...), ``KiB/MiB/GiB/TiB`` and the one-letter
    ``K/M/G/T`` binary (2^10 ...), as in ``ls -h``; no unit (or ``B``) is bytes. Case is ignored.
    Raises :class:`UserError` for anything else, or for a value that is not positive.
    """
    if isinstance(text, bool):
        raise UserError(f"invalid memory size {text!r} (write e.g. 12GB, 800MiB)")
    if isinstance(text, int | float):
        value = float(text)
        unit = ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if match is None or match.group(2).lower() not in _UNITS:
            raise UserError(f"invalid memory size '{text}' (write e.g. 12GB, 800MiB, 1.5G)")
        value, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"memory size must be positive, got '{text}'")
    return int(value * _UNITS[unit])


def format_bytes(num_bytes: float) -> str:
    """``1536 -> '1.5 KiB'``: binary units, three significant figures."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"  # pragma: no cover - loop returns


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1); ``None`` without one."""
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_path) as fh:
                raw = fh.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # v1 "unlimited"
                return None
            with open(usage_path) as fh:
                usage = int(fh.read().strip())
            return max(0, limit - usage)
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free for new tensors on ``device`` now.

    CUDA: the driver's free memory (``torch.cuda.mem_get_info``) plus what torch's caching
    allocator holds but does not use. MPS: the recommended working set minus what is allocated.
    CPU: ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup limit when there is one
    (8 GiB when neither can be read).
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + max(0, cached))
    if device.type == "mps":  # pragma: no cover - no Apple GPU in CI
        total = int(torch.mps.recommended_max_memory())
        return max(0, total - int(torch.mps.current_allocated_memory()))
    candidates = [x for x in (_meminfo_available(), _cgroup_available()) if x is not None]
    return min(candidates) if candidates else 8 << 30


def default_budget(device: torch.device | str = "cpu", fraction: float = DEFAULT_FRACTION) -> int:
    """The default ``--max-memory``: ``fraction`` (80 %) of :func:`available_memory` on ``device``."""
    return int(fraction * available_memory(device))


def used_memory(device: torch.device | str = "cpu") -> int:
    """Bytes this process holds on ``device`` now: CUDA/MPS tensors allocated by torch, or the
    resident set size on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if device.type == "mps":  # pragma: no cover - no Apple GPU in CI
        return int(torch.mps.current_allocated_memory())
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def remaining_budget(limit: int | None, device: torch.device | str = "cpu") -> int:
    """The bytes a metric may add now, for a whole-process limit such as ``--max-memory 12GB``.

    ``limit - used_memory(device)`` (what the model, the data and the problem already hold counts
    against the limit; on the CPU after the heap's free pages are given back), never more than :func:`default_budget` (what is actually free);
    ``limit=None`` gives :func:`default_budget`. Raises :class:`UserError` when the process
    already uses the whole limit.
    """
    free = default_budget(device)
    if limit is None:
        return free
    if torch.device(device).type == "cpu":
        # building the model and loading the data leave freed heap pages resident (0.66 GB of
        # 2.2 GB after building the 85M GPT-2 body): what they give back is free for the metric
        release_free_memory()
    left = int(limit) - used_memory(device)
    if left <= 0:
        where = torch.device(device)
        holders = "Python, torch, the model and the data" if where.type == "cpu" else "the model and data"
        raise UserError(
            f"the memory limit of {format_bytes(limit)} is already used by this process "
            f"({holders}: {format_bytes(used_memory(device))} on {where}); raise --max-memory"
        )
    return min(left, free)


_LIBC: Any = None


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the operating system (glibc ``malloc_trim(0)``).

    Between the products of a large model, the allocator keeps the freed activations of the last
    product as free heap pages, scattered between live blocks, and the next product's allocations
    do not fit them exactly: the resident size creeps up product after product (measured on the
    85M GPT-2 body: 9 GB resident for a plan of 7.4 GiB). Trimming after each product keeps the
    resident size at what is live. Returns whether a trim ran (Linux with glibc only).
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else False
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True
