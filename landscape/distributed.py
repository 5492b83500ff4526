"""Data-parallel curvature with ``torch.distributed``: each process holds a shard of the data.

Every quantity of the engine is a full-data mean, ``(1/N) sum_i f_i`` over targets i: the loss,
the gradient and the products ``H v``, ``G v`` (:mod:`landscape.curvature.operators`). Split the
data over P processes, sum ``f_i`` over each shard, all-reduce the sums and the counts, and every
process holds the full-data result, bit for bit the same on all ranks (an all-reduce returns one
value to everyone). The vectors fed to the products come from seeded generators, so they are the
same on every rank, and so are the Lanczos, trace and density iterations built on them: every
rank runs the same algorithm on the same numbers, with one all-reduce per product (the lockstep
scheme of google/spectral-density, with exact counts instead of equal batch sizes; the
hessian-eigenthings DDP operator sums HVPs the same way).

Training uses the same helpers: a gradient rule weights each process's batch mean by its share
``n_r / N`` of the counted targets and all-reduces (:meth:`landscape.optim.GradientRule.compute_gradient`),
so every process holds the global-batch gradient and steps identical optimizers.

``torch.distributed`` must be initialised by the caller (``torchrun`` + ``init_process_group``,
or :func:`init_from_env`); with one process, or none initialised, everything here is a no-op.

Devices: :func:`resolve_device` turns ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` into a
``torch.device``; under ``torchrun`` ``"auto"`` and ``"cuda"`` mean this process's
``LOCAL_RANK`` GPU, which :func:`init_from_env` also makes the current CUDA device, so each
process computes on its own GPU and the all-reduces run over NCCL on device tensors (gloo on
the CPU).
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from landscape.errors import UserError

__all__ = [
    "DEVICE_CHOICES",
    "all_reduce_max_",
    "all_reduce_sum_",
    "default_backend",
    "init_from_env",
    "is_distributed",
    "local_rank",
    "rank",
    "resolve_device",
    "shard_indices",
    "world_size",
]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when ``torch.distributed`` is not in use)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when ``torch.distributed`` is not in use)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` set by ``torchrun``; 0 otherwise)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def _launched_by_torchrun() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ
    except ValueError:
        return False


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` to compute on for ``spec``.

    ``"auto"`` (or ``None``): CUDA when available (under ``torchrun`` the ``LOCAL_RANK`` GPU,
    modulo the GPUs present; otherwise the current CUDA device), else the CPU (Apple's MPS is
    used only when asked for: some double-backward kernels are missing there). ``"cuda"``: the
    same GPU as ``"auto"``; ``"cuda:N"``: GPU N; ``"cpu"``; ``"mps"``. Raises :class:`UserError`
    for an unknown name or a device this machine does not have.
    """
    if isinstance(spec, torch.device):
        text = str(spec)
    else:
        text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda_device(None)
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps: Apple's MPS backend is not available on this machine")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {text}: CUDA is not available on this machine (try --device cpu)")
        if text == "cuda":
            return _cuda_device(None)
        try:
            index = int(text.split(":", 1)[1])
        except ValueError:
            raise UserError(f"invalid device '{spec}' (choose from {DEVICE_CHOICES})") from None
        return _cuda_device(index)
    raise UserError(f"invalid device '{spec}' (choose from {DEVICE_CHOICES})")


def _cuda_device(index: int | None) -> torch.device:
    count = torch.cuda.device_count()
    if index is None:
        index = local_rank() % count if _launched_by_torchrun() else torch.cuda.current_device()
    if not 0 <= index < count:
        raise UserError(f"--device cuda:{index}: this machine has {count} CUDA device(s) (0..{count - 1})")
    return torch.device("cuda", index)


def default_backend() -> str:
    """``"nccl"`` when CUDA is available and NCCL is built in, else ``"gloo"``."""
    if torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def _all_reduce_(tensor: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
    if not is_distributed():
        return tensor
    if not tensor.is_contiguous():  # the backends reduce contiguous tensors only
        staged = tensor.contiguous()
        _all_reduce_(staged, op)
        return tensor.copy_(staged)
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        # NCCL reduces CUDA tensors only: counts, losses and flags live on the CPU
        staged = tensor.to(f"cuda:{torch.cuda.current_device()}")
        dist.all_reduce(staged, op=op)
        tensor.copy_(staged)
    elif dist.get_backend() == "gloo" and tensor.device.type not in ("cpu", "cuda"):
        # gloo reduces CPU (and CUDA) tensors: stage anything else through the host
        staged = tensor.cpu()
        dist.all_reduce(staged, op=op)
        tensor.copy_(staged)
    else:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes, in place (a no-op with one process); returns it."""
    return _all_reduce_(tensor, dist.ReduceOp.SUM)


def all_reduce_max_(tensor: Tensor) -> Tensor:
    """Elementwise maximum of ``tensor`` over all processes, in place; returns it."""
    return _all_reduce_(tensor, dist.ReduceOp.MAX)


def shard_indices(num_items: int, shard_rank: int, shards: int) -> Tensor:
    """The items of one shard: ``shard_rank, shard_rank + shards, ...`` (strided, no padding).

    Strided like ``DistributedSampler`` without shuffling, but without its padding: padding
    repeats samples, which would weight them twice in the full-data mean. Every shard must hold
    at least one item.
    """
    if not 0 <= shard_rank < shards:
        raise ValueError(f"shard {shard_rank} of {shards} does not exist")
    if num_items < shards:
        raise UserError(
            f"{num_items} samples cannot be shared out over {shards} processes (one each at least)"
        )
    return torch.arange(shard_rank, num_items, shards)


def init_from_env(backend: str | None = None, timeout_s: float = 300.0) -> bool:
    """Initialise the default process group from ``torchrun``'s environment, if it launched us.

    Returns True when more than one process takes part. Reads ``WORLD_SIZE`` (absent or 1: nothing
    to do); ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``
    (:func:`default_backend`). With CUDA, each process first takes its ``LOCAL_RANK`` GPU
    (``torch.cuda.set_device``), so NCCL binds one GPU per process and ``"auto"`` devices resolve
    to it. Already initialised: left as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend is None:
        backend = default_backend()
    if torch.cuda.is_available():
        # before the group exists, so NCCL's communicator binds this process's GPU
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(_destroy)
    return is_distributed()


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
