"""Data-parallel curvature over two gloo processes on the CPU, against one process on all the data.

One ``torch.multiprocessing.spawn`` for the whole module (each child imports torch again, a few
seconds); rendezvous through a FileStore in ``tmp_path`` (no port to pick). Every rank saves what
it computed; the test compares both ranks with each other (bit for bit: an all-reduce hands the
same sum to everyone) and with the single-process results.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import rel, tiny_case
from landscape import distributed
from landscape.analysis import analyze
from landscape.curvature.noise import gradient_noise_trace
from landscape.curvature.operators import BlockOperator, GGNOperator, HessianOperator
from landscape.errors import UserError
from landscape.optim import GradientRule, make_rule
from landscape.problem import Problem
from landscape.train import (
    RunConfig,
    TrainingInterrupted,
    expand_suite,
    ranks,
    read_metrics,
    strip_timing,
    train_run,
    train_suite,
)

WORLD = 2
# 25 samples: shards of 13 and 12; the LM's ignored targets make the per-shard counts uneven too
CASES = {"mlp": 25, "lm": 28}
METRICS = "eigen,lambda_min,trace,ggn,tau,layers"


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
        "reuse_loss": H.loss_value(),
        "block": BlockOperator(H, block).matmat(V[block]),
        "ggn": GGNOperator(problem).matmat(V),
    }
    for method in ("reuse", "forward-over-reverse", "double-backward"):
        out[f"hvp_{method}"] = HessianOperator(problem, method=method).matmat(V)
    # the gradient-noise trace: per-process chunks merged with all-reduced moments
    out["noise_exact"] = gradient_noise_trace(problem, method="exact", chunk_size=3).estimate
    out["noise_sketch"] = gradient_noise_trace(problem, method="sketch", num_probes=3).samples
    result = analyze(problem, metrics=METRICS, top_k=2, trace_samples=8, layer_samples=4, seed=1)
    summary = result.to_dict()
    out["analysis"] = {
        key: summary[key]
        for key in ("lambda_max", "top_eigenvalues", "lambda_min", "trace", "ggn_trace", "functional_trace")
    } | {"tau_logit": summary["tau_logit"], "layers": [layer["lambda_max"] for layer in summary["layers"]]}
    return out


# rule name -> options; each runs on the MLP (samples split 5 / 3) and the LM (2 / 2 sequences)
RULE_CASES = {
    "sgd": {},
    "sam": {"rho": 0.1},
    "asam": {"rho": 0.5},
    "func-sam": {"rho": 0.1},
    "logit-sam": {"rho": 0.1},
    "angle-sam": {"rho": 0.1, "phi": 0.6},
    "precond-sam": {"rho": 0.01},
    "precond-func-sam": {"rho": 0.01},
    "rwsam": {"rho": 0.1, "lambda_": 2.0},
    "fsgld": {"sigma": 0.05, "seed": 4},
}
SPLITS = {"mlp": (8, 5), "lm": (16, 2)}  # tiny_case n, samples on rank 0


def rule_case(kind: str, part: int | None) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model and the batch of one process (``part`` 0 or 1) or the whole batch (None)."""
    n, cut = SPLITS[kind]
    model, (x, y), _ = tiny_case(kind, n=n, seed=2)
    if kind == "lm":
        y = y.clone()
        y[0, :3] = -100  # uneven target counts between the two processes
    if part is None:
        return model, x, y
    return (model, x[:cut], y[:cut]) if part == 0 else (model, x[cut:], y[cut:])


def rule_gradients(part: int | None) -> dict[str, torch.Tensor]:
    """Every rule's flat gradient (and loss, last entry) on a process's part or the whole batch."""
    out = {}
    for kind in SPLITS:
        cases = dict(RULE_CASES) | {"msam": {"rho": 0.1, "m": 1 if kind == "mlp" else 2}}
        for name, options in cases.items():
            model, x, y = rule_case(kind, part)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            for i, p in enumerate(model.parameters()):  # an Adam state for the precond rules
                p.grad = torch.linspace(-1, 1, p.numel(), dtype=p.dtype).view_as(p) * (i + 1)
            opt.step()
            value = make_rule(name, **options).compute_gradient(model, x, y, optimizer=opt)
            out[f"{kind}/{name}"] = torch.cat(
                [p.grad.reshape(-1) for p in model.parameters()] + [value.reshape(1)]
            )
    # a closure: the processes' batches count alike, so split the MLP's 8 samples 4 / 4
    model, (x, y), _ = tiny_case("mlp", n=8, seed=2)
    if part is not None:
        x, y = (x[:4], y[:4]) if part == 0 else (x[4:], y[4:])

    def closure() -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    value = make_rule("sam", rho=0.1).compute_gradient_from_closure(closure, model)
    out["mlp/sam-closure"] = torch.cat([p.grad.reshape(-1) for p in model.parameters()] + [value.reshape(1)])
    return out


def join_group(rank: int, store: str) -> None:
    """One gloo process of WORLD, meeting at a FileStore; one thread (two ranks share two cores).

    Gloo binds to the loopback interface: a host name that resolves to an address that cannot be
    bound (containers, fresh machines) would otherwise break the connection."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )


def planned_apart(rank: int) -> dict[str, object]:
    """``analyze`` where each rank sees another memory budget (rank 0 a tight one): the ranks
    must agree on one set of plans (the smallest budget, the largest footprint), else their
    Lanczos runs would make different collective products."""
    from landscape.curvature import budget as budgets

    model, data, loss = tiny_case("mlp", n=25)
    problem = Problem(model, data, loss, dtype=torch.float64)
    original = budgets.remaining_budget
    budgets.remaining_budget = lambda limit, device="cpu": 100_000 if rank == 0 else 10**10
    try:
        result = analyze(problem, metrics="lambda_max,lambda_min,trace", trace_samples=8, tol=1e-8, seed=1)
    finally:
        budgets.remaining_budget = original
    return {
        "plans": result.memory_plans,
        "budget": result.memory_budget,
        "values": [result.lambda_max, result.lambda_min, result.trace, result.hvp_count],
    }


def worker(rank: int, store: str, out_dir: str) -> None:
    join_group(rank, store)
    try:
        results = {}
        for kind, n in CASES.items():
            model, data, loss = tiny_case(kind, n=n)
            problem = Problem(model, data, loss, dtype=torch.float64)
            assert problem.distributed
            results[kind] = quantities(kind, problem) | {"local_samples": problem.local_num_samples}
        results["planned"] = planned_apart(rank)
        results["rules"] = rule_gradients(rank)
        try:
            make_rule("fmlora").compute_gradient(*rule_case("mlp", rank))
        except NotImplementedError as exc:
            results["fmlora"] = str(exc)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears its gloo pairs down while the other may still use them
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
    single["rules"] = rule_gradients(None)
    return ranks, single


def test_ranks_agree_on_their_memory_plans(runs):
    ranks, _ = runs
    a, b = (r["planned"] for r in ranks)
    assert a["budget"] == b["budget"] == 100_000  # the smallest of the ranks' budgets
    assert a["plans"] == b["plans"] and a["values"] == b["values"]
    assert not a["plans"]["lambda_min"]["full_basis"]  # the tight budget bounds the basis


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


@pytest.mark.timeout(240)
def test_rules_on_two_processes_give_the_gradient_of_the_whole_batch(runs):
    """Each process passes its part of the batch; every process gets the global-batch gradient:
    SAM-family eps* from the global g, RW-SAM's softmax over all samples, fSGLD's shared e."""
    ranks, single = runs
    assert set(ranks[0]["rules"]) == set(single["rules"])
    for key, reference in single["rules"].items():
        assert torch.equal(ranks[0]["rules"][key], ranks[1]["rules"][key]), key
        assert rel(ranks[0]["rules"][key], reference) < 1e-12, key
    # and the parts really differ: a process's own gradient is not the global one
    part = rule_gradients(0)
    assert rel(part["mlp/sam"], single["rules"]["mlp/sam"]) > 1e-3
    assert "does not run data-parallel" in ranks[0]["fmlora"]


# a suite of two short runs with diagnostics, checkpoints and the final analysis
TRAIN = dict(
    model="mlp",
    steps=8,
    batch_size=30,
    log_every=2,
    checkpoint_every=4,
    diagnose_every=4,
    diagnose_samples=60,
    final_analysis=True,
    final_samples=48,
    final_metrics="eigen,lambda_min,trace,ggn,tau",
)
TRAIN_METHODS = ["sam", "rwsam"]


def train_worker(rank: int, store: str, out_dir: str) -> None:
    join_group(rank, store)
    sizes: list[int] = []
    original = GradientRule.compute_gradient

    def recording(self, model, inputs, *args, **kwargs):
        sizes.append(len(inputs))
        return original(self, model, inputs, *args, **kwargs)

    GradientRule.compute_gradient = recording  # a spawned child: the patch dies with it
    try:
        train_suite(expand_suite(RunConfig(**TRAIN), TRAIN_METHODS, []), out_dir)
        (Path(store).parent / f"sizes{rank}.json").write_text(json.dumps(sizes))
        dist.barrier()  # no rank tears its gloo pairs down while the other may still use them
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_a_training_suite_on_two_processes_follows_the_single_process_run(tmp_path):
    """Same seed, same run: each process trains on its half of every batch, rank 0 alone writes,
    and weights, logged losses, diagnostics and the final analysis match one process."""
    parallel, single = tmp_path / "parallel", tmp_path / "single"
    mp.spawn(train_worker, args=(str(tmp_path / "store"), str(parallel)), nprocs=WORLD, join=True)
    for r in range(WORLD):  # each process stepped on its half of every batch of 30
        assert json.loads((tmp_path / f"sizes{r}.json").read_text()) == [15] * (
            TRAIN["steps"] * len(TRAIN_METHODS)
        )
    train_suite(expand_suite(RunConfig(**TRAIN), TRAIN_METHODS, []), single)
    listing = sorted(p.relative_to(single).as_posix() for p in single.rglob("*"))
    assert sorted(p.relative_to(parallel).as_posix() for p in parallel.rglob("*")) == listing
    for method in TRAIN_METHODS:
        a = torch.load(parallel / method / "final.pt", weights_only=True)["model"]
        b = torch.load(single / method / "final.pt", weights_only=True)["model"]
        # RW-SAM's finite difference divides float32 rounding (which depends on the batch split)
        # by delta = 1e-4: its norm estimates, weights and so everything after agree less closely
        tolerance, value_tolerance = (1e-4, 1e-3) if method == "rwsam" else (1e-5, 1e-4)
        for name in b:
            assert rel(a[name], b[name]) < tolerance, (method, name)
        logged = [strip_timing(r) for r in read_metrics(parallel / method)]
        reference = [strip_timing(r) for r in read_metrics(single / method)]
        assert [r["step"] for r in logged] == [r["step"] for r in reference]
        for r, ref in zip(logged, reference, strict=True):
            for key, value in ref.items():
                if isinstance(value, float):
                    assert math.isclose(r[key], value, rel_tol=value_tolerance, abs_tol=1e-6), (
                        method,
                        r["step"],
                        key,
                    )
        for name in ("analysis.json", "summary.json"):
            got = json.loads((parallel / method / name).read_text())
            want = json.loads((single / method / name).read_text())
            for key in ("lambda_max", "trace", "ggn_trace", "tau_logit", "eval_loss", "train_loss"):
                if key in want and want[key] is not None:
                    assert math.isclose(got[key], want[key], rel_tol=value_tolerance), (method, name, key)


@pytest.mark.timeout(240)
def test_cli_analyze_under_torchrun_writes_once_and_matches_one_process(tmp_path):
    """The real launcher: two ranks share the digits, rank 0 alone prints and writes."""
    exe = Path(sys.executable).with_name("landscape")
    common = [
        "analyze",
        "--model",
        "mlp",
        "--samples",
        "300",
        "--metrics",
        "eigen,lambda_min,trace,tau",
        "--json",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(exe),
    ]
    parallel = subprocess.run(
        [*launch, *common, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
    )
    assert parallel.returncode == 0, parallel.stderr[-2000:]
    single = subprocess.run(
        [str(exe), *common, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = json.loads(parallel.stdout), json.loads(single.stdout)  # one JSON document: rank 0's
    assert two["processes"] == 2 and one["processes"] == 1 and two["num_samples"] == one["num_samples"] == 300
    for key in ("loss", "lambda_max", "trace", "tau_logit", "lambda_min"):
        assert math.isclose(two[key], one[key], rel_tol=1e-4), key
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def interrupted_worker(rank: int, store: str, run_dir: str, phase: str) -> None:
    """``stop``: Ctrl-C reaches rank 1 alone, after its 5th step; ``resume``: continue the run."""
    join_group(rank, store)
    try:
        if phase == "stop":
            agree, calls = ranks.any_process, [0]

            def ctrl_c_on_rank_1(flag: bool) -> bool:
                calls[0] += 1
                return agree(flag or (rank == 1 and calls[0] == 5))

            ranks.any_process = ctrl_c_on_rank_1  # a spawned child: the patch dies with it
            try:
                train_run(RunConfig(**TRAIN, method="sam"), run_dir)
            except TrainingInterrupted as exc:
                (Path(store).parent / f"stopped{rank}.json").write_text(json.dumps(exc.step))
        else:
            train_run(None, run_dir, resume=True)
        dist.barrier()  # no rank tears its gloo pairs down while the other may still use them
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ctrl_c_on_one_process_stops_all_at_the_same_step_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    mp.spawn(
        interrupted_worker, args=(str(tmp_path / "store1"), str(run_dir), "stop"), nprocs=WORLD, join=True
    )
    stopped = [json.loads((tmp_path / f"stopped{r}.json").read_text()) for r in range(WORLD)]
    assert stopped == [5, 5]  # rank 0 never saw the signal, yet stopped after the same step
    assert (run_dir / "checkpoints" / "step-5.pt").is_file() and not (run_dir / "final.pt").exists()
    mp.spawn(
        interrupted_worker, args=(str(tmp_path / "store2"), str(run_dir), "resume"), nprocs=WORLD, join=True
    )
    train_run(RunConfig(**TRAIN, method="sam"), tmp_path / "single")
    a = torch.load(run_dir / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "single" / "final.pt", weights_only=True)["model"]
    assert all(rel(a[name], b[name]) < 1e-5 for name in b)
    assert [r["step"] for r in read_metrics(run_dir)] == [
        r["step"] for r in read_metrics(tmp_path / "single")
    ]
