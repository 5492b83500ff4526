"""Data-parallel curvature over two gloo processes on the CPU, against one process on all the data.

One ``torch.multiprocessing.spawn`` for the whole module (each child imports torch again, a few
seconds); rendezvous through a FileStore in ``tmp_path`` (no port to pick). Every rank saves what
it computed; the test compares both ranks with each other (bit for bit: an all-reduce hands the
same sum to everyone) and with the single-process results.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import rel, tiny_case
from landscape import distributed
from landscape.analysis import analyze
from landscape.curvature.operators import BlockOperator, GGNOperator, HessianOperator
from landscape.errors import UserError
from landscape.problem import Problem

WORLD = 2
# 25 samples: shards of 13 and 12; the LM's ignored targets make the per-shard counts uneven too
CASES = {"mlp": 25, "lm": 28}
METRICS = "eigen,trace,ggn,tau,layers"


def quantities(kind: str, problem: Problem) -> dict[str, object]:
    """Everything compared: counts, loss, gradient, products of every route, a small analyze()."""
    gen = torch.Generator().manual_seed(3)
    V = torch.randn(problem.num_params, 3, generator=gen, dtype=torch.float64)
    H = HessianOperator(problem, method="reuse")
    block = problem.blocks()[0][1]
    out: dict[str, object] = {
        "num_targets": problem.num_targets,
        "num_samples": problem.num_samples,
        "loss": problem.loss_value(),
        "gradient": problem.gradient(),
        "reuse_gradient": H.gradient(),
        "block": BlockOperator(H, block).matmat(V[block]),
        "ggn": GGNOperator(problem).matmat(V),
    }
    for method in ("reuse", "forward-over-reverse", "double-backward"):
        out[f"hvp_{method}"] = HessianOperator(problem, method=method).matmat(V)
    result = analyze(problem, metrics=METRICS, top_k=2, trace_samples=8, layer_samples=4, seed=1)
    summary = result.to_dict()
    out["analysis"] = {
        key: summary[key]
        for key in ("lambda_max", "top_eigenvalues", "lambda_min", "trace", "ggn_trace", "functional_trace")
    } | {"tau_logit": summary["tau_logit"], "layers": [layer["lambda_max"] for layer in summary["layers"]]}
    return out


def worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = {}
        for kind, n in CASES.items():
            model, data, loss = tiny_case(kind, n=n)
            problem = Problem(model, data, loss, dtype=torch.float64)
            assert problem.distributed
            results[kind] = quantities(kind, problem) | {"local_samples": problem.local_num_samples}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = {}
    for kind, n in CASES.items():
        model, data, loss = tiny_case(kind, n=n)
        problem = Problem(model, data, loss, dtype=torch.float64)
        assert not problem.distributed
        single[kind] = quantities(kind, problem)
    return ranks, single


def _same(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    else:
        assert a == b, what


def _close(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert rel(a, b) < 1e-12, what
    elif isinstance(a, dict):
        for key in a:
            _close(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{what}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (what, a, b)
    else:
        assert a == b, (what, a, b)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", list(CASES))
def test_two_processes_equal_one_process_on_all_the_data(runs, kind):
    ranks, single = runs
    first, second = ranks[0][kind], ranks[1][kind]
    # each rank held a shard (13 + 12 samples for the MLP), yet computed the full-data quantities
    assert first["local_samples"] + second["local_samples"] == single[kind]["num_samples"]
    assert 0 < first["local_samples"] < single[kind]["num_samples"]
    for key in single[kind]:
        _same(first[key], second[key], f"{kind}.{key}")  # every rank holds the same numbers, bit for bit
        _close(first[key], single[kind][key], f"{kind}.{key}")


def test_shards_are_strided_without_padding_and_never_empty():
    assert distributed.shard_indices(5, 0, 2).tolist() == [0, 2, 4]
    assert distributed.shard_indices(5, 1, 2).tolist() == [1, 3]
    with pytest.raises(UserError, match="cannot be shared out"):
        distributed.shard_indices(1, 0, 2)
    with pytest.raises(ValueError):
        distributed.shard_indices(4, 2, 2)


def test_single_process_is_left_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init_from_env()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    t = torch.ones(3)
    assert distributed.all_reduce_sum_(t) is t and torch.equal(t, torch.ones(3))
    model, data, loss = tiny_case("mlp")
    with pytest.raises(UserError, match="distributed=True"):
        Problem(model, data, loss, distributed=True)
