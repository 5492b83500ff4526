"""Data-parallel curvature on each backend and device this machine has, against one process.

Always: two gloo processes on the CPU. With CUDA: two gloo processes with CUDA tensors (one GPU
is enough), and with two GPUs or more two NCCL processes, each on its ``LOCAL_RANK`` GPU (the
placement ``landscape.distributed`` gives a ``torchrun`` launch). Every rank computes products
of every route, a GGN product and lambda_max on its shard; both ranks must agree bit for bit and
match one process on all the data.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import rel, tiny_case
from landscape import distributed
from landscape.curvature.eigen import lambda_max
from landscape.curvature.operators import GGNOperator, HessianOperator
from landscape.problem import Problem

WORLD = 2


def configurations() -> list[tuple[str, str]]:
    """(backend, device kind) pairs this machine can run."""
    out = [("gloo", "cpu")]
    if torch.cuda.is_available():
        out.append(("gloo", "cuda"))
        if torch.cuda.device_count() >= WORLD and dist.is_nccl_available():
            out.append(("nccl", "cuda"))
    return out


def products(problem: Problem) -> dict[str, torch.Tensor | float]:
    V = torch.randn(problem.num_params, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out: dict[str, torch.Tensor | float] = {
        "gradient": problem.gradient().cpu(),
        "loss": problem.loss_value(),
        "ggn": GGNOperator(problem).matmat(V).cpu(),
    }
    for method in ("reuse", "forward-over-reverse", "double-backward"):
        H = HessianOperator(problem, method=method)
        out[f"hvp_{method}"] = H.matmat(V).cpu()
    out["lambda_max"] = lambda_max(HessianOperator(problem), tol=1e-8).eigenvalues[0]
    return out


def worker(rank: int, store: str, out_dir: str, backend: str, kind: str) -> None:
    faulthandler.enable()  # a C++ abort in a rank prints its Python stack into the test's output
    os.environ.update({"WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank), "RANK": str(rank)})
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    device = distributed.resolve_device("auto" if kind == "cuda" else "cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        model, data, loss = tiny_case("lm", n=28)
        problem = Problem(model, data, loss, dtype=torch.float64, device=device)
        assert problem.distributed and problem.device.type == kind
        if backend == "nccl":
            assert problem.device == torch.device("cuda", rank)  # its LOCAL_RANK GPU
        torch.save(products(problem), Path(out_dir) / f"rank{rank}.pt")
        # no rank tears its gloo pairs down while the other may still use them
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Everything this rank does is done and written. Leave without the interpreter's teardown:
    # in 2 of 4 full CI runs one gloo rank then died of std::terminate ("terminate called without
    # an active exception", a C++ thread still joinable at static destruction), never alone.
    os._exit(0)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend,kind", configurations(), ids=lambda x: str(x))
def test_two_processes_on_a_backend_equal_one_process(tmp_path, backend, kind):
    mp.spawn(worker, args=(str(tmp_path / "store"), str(tmp_path), backend, kind), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    model, data, loss = tiny_case("lm", n=28)
    single = products(Problem(model, data, loss, dtype=torch.float64))
    for key, value in single.items():
        first, second = ranks[0][key], ranks[1][key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(first, second), key
            assert rel(first, value) < 1e-12, key
        else:
            assert first == second, key
            assert abs(first - value) <= 1e-9 * abs(value), key


def test_init_from_env_binds_the_local_rank_gpu_before_the_group(monkeypatch):
    """With CUDA, init_from_env sets this process's LOCAL_RANK GPU before NCCL starts."""
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.atexit, "register", lambda fn: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.init_from_env()
    assert calls == [("set_device", 1), ("init", "nccl")]
    calls.clear()
    distributed.init_from_env(backend="gloo")
    assert calls == [("set_device", 1), ("init", "gloo")]


def test_default_backend_is_gloo_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.default_backend() == "gloo"
