"""``python -m benchmarks scale``: the curvature engine from 0.1M to 124M parameters, next to PyHessian.

Shapes: GPT-2 bodies built from ``transformers`` configs (no download; byte vocabulary of 256 up
to the 85M "GPT-2 small body", and the real GPT-2 small shape with its 50257-token vocabulary and
tied ``lm_head``: 124M), on 8 sequences of 64 bytes of the built-in text corpus, and a
ResNet-18-shaped CNN (11M) on 16 random 32x32 images. Models are seeded random initialisations
(the cost of a product does not depend on training).

Each shape runs in its own process (``python -m benchmarks.scale --worker SHAPE``), one at a
time, with ``--threads`` torch threads (2 by default), watched by the runner: a worker whose
resident memory exceeds ``--max-rss`` is stopped and reported as such. In the worker:

* one gradient, and one product of each Hessian route (``reuse``, ``forward-over-reverse``,
  ``double-backward``) and each GGN route (``reuse``, ``stream``): for each, rounds of
  [gradient, product] interleaved, so the ratio product / gradient is a ratio of medians taken
  under the same load; peak RSS of each phase (from a reset of the high-water mark; CUDA: the
  allocator's peak) and the time to build the operator;
* ``lambda_max`` the way the analysis layer runs it: the memory planner
  (:func:`landscape.curvature.memory.plan_metric`) picks the route and the basis for the budget
  ``--max-memory``, then :func:`landscape.curvature.eigen.lambda_max` at ``tol=1e-3``; products,
  residual, error bound, seconds, peak RSS;
* PyHessian 0.1 (unless ``--no-peer``) on the same model and data (eager attention for the
  GPT-2 shapes: its double backward needs it): its graph (``hessian(model, criterion,
  data=(x, y))``), one HVP the way its algorithms make it, interleaved with our gradient, and
  ``eigenvalues(top_n=1)`` with its defaults (``maxIter=100, tol=1e-3``), products counted.

The runner writes ``benchmarks/scale.json``, a log-log plot ``benchmarks/scale.png`` (seconds
per product against parameters x tokens) and a section of ``benchmarks/results.md`` between
markers (``python -m benchmarks run`` keeps it).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"

SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-0.1m": {"kind": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab": 256},
    "gpt2-0.8m": {"kind": "gpt2", "n_layer": 4, "n_embd": 128, "n_head": 4, "vocab": 256},
    "gpt2-3.3m": {"kind": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "vocab": 256},
    "gpt2-19m": {"kind": "gpt2", "n_layer": 6, "n_embd": 512, "n_head": 8, "vocab": 256},
    "gpt2-85m": {"kind": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 256},
    "gpt2-124m": {"kind": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 50257},
    "resnet18": {"kind": "resnet18", "images": 16},
}
QUICK = ["gpt2-0.1m", "gpt2-0.8m", "gpt2-3.3m"]
SEQUENCES, SEQ_LEN = 8, 64
HVP_ROUTES = ("reuse", "forward-over-reverse", "double-backward")
GGN_ROUTES = ("reuse", "stream")


# ------------------------------------------------------------------------------------ models
def build(shape: str, seed: int = 0) -> tuple[Any, Any, Any, int]:
    """(model, x, y, tokens or samples) for ``shape``, seeded; float32, eval mode."""
    import torch

    spec = SHAPES[shape]
    torch.manual_seed(seed)
    if spec["kind"] == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        from landscape.data import load_data

        hf_logging.set_verbosity_error()
        config = GPT2Config(
            vocab_size=spec["vocab"],
            n_positions=SEQ_LEN,
            n_embd=spec["n_embd"],
            n_layer=spec["n_layer"],
            n_head=spec["n_head"],
            bos_token_id=0,
            eos_token_id=0,
        )
        model = GPT2LMHeadModel(config).eval()
        data = load_data("text", samples=SEQUENCES, seq_len=SEQ_LEN)
        return model, data.x, data.y, SEQUENCES * SEQ_LEN
    g = torch.Generator().manual_seed(seed)
    images = spec["images"]
    x = torch.randn(images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    return resnet18().eval(), x, y, images


def resnet18(num_classes: int = 10) -> Any:
    """ResNet-18 (He et al. 2016, arXiv 1512.03385) for 32x32 images: 3x3 stem, four stages of two
    basic blocks (64-512 channels), BatchNorm, global average pooling; 11.2M parameters."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            out = self.bn1(self.conv1(x)).relu()
            return (self.bn2(self.conv2(out)) + self.short(x)).relu()

    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------ memory
def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _trim() -> None:
    """Return freed heap memory to the OS, so the next phase's peak starts from what is held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class Phase:
    """Peak memory of a phase: RSS high-water mark from a reset (CPU), allocator peak (CUDA)."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def __enter__(self) -> Phase:
        import torch

        from landscape.curvature.memory import reset_peak_rss

        _trim()
        self.start_rss = _rss()
        reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        from landscape.curvature.memory import peak_rss_bytes

        self.peak_rss = peak_rss_bytes()
        self.cuda_peak = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak = int(torch.cuda.max_memory_allocated(self.device))

    def record(self) -> dict[str, Any]:
        """Peak and starting RSS (GiB) and the CUDA peak when on a GPU."""
        out = {"peak_rss_gib": self.peak_rss / 2**30, "start_rss_gib": self.start_rss / 2**30}
        if self.cuda_peak is not None:
            out["cuda_peak_gib"] = self.cuda_peak / 2**30
        return out


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    cases: dict[str, Callable[[], Any]], rounds: int, device: Any, warm: bool = True
) -> dict[str, float]:
    """Median seconds of each case over ``rounds`` rounds that run every case once (after a warm-up)."""
    if warm:
        for fn in cases.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


# ------------------------------------------------------------------------------------ worker
def measure(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one shape (see the module docstring)."""
    import torch

    from landscape.curvature.eigen import lambda_max
    from landscape.curvature.memory import (
        Request,
        measure_footprint,
        parse_memory,
        plan_metric,
        remaining_budget,
    )
    from landscape.curvature.operators import GGNOperator, HessianOperator
    from landscape.problem import Problem

    torch.set_num_threads(args.threads)
    model, x, y, tokens = build(shape, args.seed)
    num_params = sum(p.numel() for p in model.parameters())
    problem = Problem(model, (x, y), device=args.device)
    device = problem.device
    out: dict[str, Any] = {
        "shape": shape,
        "spec": SHAPES[shape],
        "num_params": num_params,
        "tokens": tokens,
        "device": str(device),
        "threads": args.threads,
        "rows": [],
    }
    rounds = args.repeats
    vector = torch.randn(problem.num_params, generator=torch.Generator().manual_seed(1)).to(device)

    def gradient() -> None:
        problem.gradient()

    with Phase(device) as phase:
        seconds = interleaved({"gradient": gradient}, rounds, device)["gradient"]
    out["gradient_seconds"] = seconds
    out["gradient_memory"] = phase.record()
    print(f"[scale] {shape}: gradient {seconds:.2f} s", flush=True)

    routes = [("H", r) for r in HVP_ROUTES if r in args.routes] + [
        ("G", r) for r in GGN_ROUTES if f"ggn-{r}" in args.routes
    ]
    for kind, route in routes:
        row: dict[str, Any] = {"library": "landscape", "product": kind, "route": route}
        try:
            with Phase(device) as phase:
                start = time.perf_counter()
                op = (
                    HessianOperator(problem, method=route)
                    if kind == "H"
                    else GGNOperator(problem, method=route)
                )
                _sync(device)
                row["setup_seconds"] = time.perf_counter() - start
                t = interleaved(
                    {"gradient": gradient, "product": lambda op=op: op.matvec(vector)}, rounds, device
                )
            row.update(
                seconds=t["product"], gradient_seconds=t["gradient"], x_gradient=t["product"] / t["gradient"]
            )
            row.update(phase.record())
            del op
        except (RuntimeError, MemoryError) as exc:  # reported, never fatal
            row["failed"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        out["rows"].append(row)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"[scale] {shape}: {kind} {route}: {row.get('x_gradient', row.get('failed'))}", flush=True)

    # lambda_max as the analysis layer runs it: planned, then lambda_max at tol 1e-3
    args.json.write_text(json.dumps(out, indent=1))  # what is done so far survives a stop
    limit = parse_memory(args.max_memory)
    with Phase(device) as phase:
        start = time.perf_counter()
        footprint = measure_footprint(problem)
        budget = remaining_budget(limit, device)  # --max-memory is for the whole process
        plan = plan_metric("lambda_max", footprint, budget, Request())
        H = HessianOperator(problem, method=plan.hvp_route)
        result = lambda_max(H, tol=args.tol, seed=args.seed, max_basis=plan.basis_vectors)
        seconds = time.perf_counter() - start
    out["lambda_max"] = {
        "library": "landscape",
        "plan": plan.describe(),
        "estimate_gib": plan.estimate / 2**30,
        "route": H.method,
        "value": result.eigenvalues[0],
        "residual": result.residuals[0],
        "error_bound": result.error_bounds[0],
        "converged": result.converged[0],
        "products": result.num_products,
        "basis_vectors": result.basis_vectors,
        "restarts": result.restarts,
        "seconds": seconds,
        **phase.record(),
    }
    del H
    print(f"[scale] {shape}: lambda_max {out['lambda_max']}", flush=True)
    args.json.write_text(json.dumps(out, indent=1))
    if args.lambda_min_iter > 0:
        out["lambda_min"] = measure_lambda_min(problem, limit, args, device)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"[scale] {shape}: lambda_min {out['lambda_min']}", flush=True)

    if not args.no_peer:
        out["pyhessian"] = measure_pyhessian(shape, model, x, y, problem, gradient, args, device)
    return out


def measure_lambda_min(problem: Any, limit: int, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """lambda_min as its own call, planned for the budget (a bounded basis where a full one does
    not fit), at most ``--lambda-min-iter`` products: converged or with its residual."""
    from landscape.curvature.eigen import lambda_min
    from landscape.curvature.memory import Request, measure_footprint, plan_metric, remaining_budget
    from landscape.curvature.operators import HessianOperator

    with Phase(device) as phase:
        start = time.perf_counter()
        request = Request(max_iter=args.lambda_min_iter)
        footprint = measure_footprint(problem)
        plan = plan_metric("lambda_min", footprint, remaining_budget(limit, device), request)
        H = HessianOperator(problem, method=plan.hvp_route)
        result = lambda_min(
            H, tol=args.tol, max_iter=args.lambda_min_iter, seed=args.seed, max_basis=plan.basis_vectors
        )
        seconds = time.perf_counter() - start
    return {
        "plan": plan.describe(),
        "value": result.eigenvalues[0],
        "residual": result.residuals[0],
        "error_bound": result.error_bounds[0],
        "converged": result.converged[0],
        "products": result.num_products,
        "basis_vectors": result.basis_vectors,
        "restarts": result.restarts,
        "seconds": seconds,
        **phase.record(),
    }


def measure_pyhessian(
    shape: str,
    model: Any,
    x: Any,
    y: Any,
    problem: Any,
    gradient: Callable[[], None],
    args: argparse.Namespace,
    device: Any,
) -> dict[str, Any]:
    """PyHessian 0.1 on the same model and data: one HVP (interleaved with our gradient) and
    ``eigenvalues(top_n=1)`` with its defaults."""
    import torch
    from torch import nn

    try:
        import importlib

        pyhessian_module = importlib.import_module("pyhessian.hessian")
    except ImportError as exc:
        return {"failed": f"PyHessian is not installed ({exc})"}
    peer = model
    if SHAPES[shape]["kind"] == "gpt2":
        peer = _eager(model)
    peer = _Flat(peer).to(device).eval()
    criterion = nn.CrossEntropyLoss()
    targets = y.reshape(-1).to(device)
    inputs = x.to(device)
    out: dict[str, Any] = {"library": "pyhessian"}
    counter = {"n": 0}
    original = pyhessian_module.hessian_vector_product

    def counted(gradsH: Any, params: Any, v: Any) -> Any:
        counter["n"] += 1
        return original(gradsH, params, v)

    pyhessian_module.hessian_vector_product = counted
    try:
        with Phase(device) as phase:
            start = time.perf_counter()
            h = pyhessian_module.hessian(peer, criterion, data=(inputs, targets), cuda=device.type == "cuda")
            out["setup_seconds"] = time.perf_counter() - start
            g = torch.Generator().manual_seed(1)
            v = [torch.randn(p.shape, generator=g).to(device) for p in h.params]
            t = interleaved(
                {"gradient": gradient, "product": lambda: original(h.gradsH, h.params, v)},
                args.repeats,
                device,
            )
        out.update(
            seconds=t["product"], gradient_seconds=t["gradient"], x_gradient=t["product"] / t["gradient"]
        )
        out.update(phase.record())
        print(f"[scale] {shape}: pyhessian HVP {out['x_gradient']:.2f}x gradient", flush=True)
        with Phase(device) as phase:
            torch.manual_seed(args.seed)
            counter["n"] = 0
            start = time.perf_counter()
            values, _ = h.eigenvalues(top_n=1)
            seconds = time.perf_counter() - start
        out["lambda_max"] = {
            "value": float(values[0]),
            "products": counter["n"],
            "seconds": seconds,
            **phase.record(),
        }
        print(f"[scale] {shape}: pyhessian lambda_max {out['lambda_max']}", flush=True)
    except (RuntimeError, MemoryError) as exc:
        out["failed"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        pyhessian_module.hessian_vector_product = original
        peer.zero_grad(set_to_none=True)
    return out


class _Flat:
    """``criterion(model(x), y)`` for PyHessian: logits ``[B*T, V]`` from an HF model (plain
    outputs pass through)."""

    def __new__(cls, model: Any) -> Any:
        from torch import nn

        class Flat(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                out = self.inner(x)
                logits = out.logits if hasattr(out, "logits") else out
                return logits.reshape(-1, logits.shape[-1])

        return Flat(model)


def _eager(model: Any) -> Any:
    """The same GPT-2 with eager attention (PyHessian's double backward cannot go through the
    fused CPU attention kernels)."""
    from transformers import GPT2LMHeadModel

    config = model.config
    config._attn_implementation = "eager"
    peer = GPT2LMHeadModel(config)
    peer.load_state_dict(model.state_dict())
    return peer.eval()


# ------------------------------------------------------------------------------------ runner
def run_shape(shape: str, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """One shape in a fresh process, stopped if its RSS passes ``--max-rss``."""
    from landscape.curvature.memory import format_bytes, parse_memory

    out = HERE / ".cache" / f"scale-{shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--worker",
        shape,
        "--json",
        str(out),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--max-memory",
        args.max_memory,
        "--routes",
        ",".join(args.routes),
        "--tol",
        str(args.tol),
        "--lambda-min-iter",
        str(args.lambda_min_iter),
        "--seed",
        str(args.seed),
    ] + (["--no-peer"] if args.no_peer else [])
    # (--merge and --out only concern the runner)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
    limit = parse_memory(args.max_rss)
    peak = {"rss": 0, "stopped": False}
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n===== {shape} =====\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=HERE.parent, stdout=fh, stderr=fh, env=env)

        def watch() -> None:
            while proc.poll() is None:
                try:
                    with open(f"/proc/{proc.pid}/status") as status:
                        for line in status:
                            if line.startswith("VmRSS:"):
                                rss = int(line.split()[1]) * 1024
                                peak["rss"] = max(peak["rss"], rss)
                                if rss > limit:
                                    peak["stopped"] = True
                                    proc.kill()
                except OSError:
                    pass
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        proc.wait()
        watcher.join()
    wall = time.perf_counter() - start
    if peak["stopped"]:
        stopped = f"stopped: resident memory above --max-rss {format_bytes(limit)}"
        if out.exists():  # the phases finished before the stop
            partial = json.loads(out.read_text())
            return {**partial, "failed": stopped, "wall_seconds": wall}
        return {"shape": shape, "failed": stopped}
    if proc.returncode != 0 or not out.exists():
        return {"shape": shape, "failed": f"exit code {proc.returncode}, see {log}"}
    result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    result["process_peak_rss_gib"] = peak["rss"] / 2**30
    return result


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 10 ** (-digits) or abs(x) >= 1e5):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


def _row(result: dict[str, Any], product: str, route: str) -> dict[str, Any] | None:
    for r in result.get("rows", []):
        if r["product"] == product and r["route"] == route:
            return r
    return None


def _loads(meta: dict[str, Any]) -> str:
    return ", ".join(f"{m['load_average'][2]:.1f}" for m in meta.get("runs", [meta]))


def _commands(meta: dict[str, Any]) -> str:
    runs = meta.get("runs", [meta])
    if len(runs) == 1:
        return f"Command: `{runs[0]['command']}`"
    return "Commands, one after another: " + ", ".join(f"`{m['command']}`" for m in runs)


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown section (between the markers)."""
    lines = [
        BEGIN,
        "## Scale: 0.1M to 124M parameters (benchmarks/scale.py)",
        "",
        f"{_commands(meta)} on {meta['machine']}; torch {meta['torch']}, device {meta['device']}, "
        f"{meta['seconds']:.0f} s in all. Each shape in its own process, "
        "one at a time; load average (15 min) at the end of each run "
        f"{_loads(meta)} on a machine shared "
        "with other jobs, so seconds vary and the ratios (medians of interleaved rounds under the same "
        "load) are the figures to read. "
        f"Models: seeded random initialisations, float32; GPT-2 shapes on {SEQUENCES} x {SEQ_LEN} bytes of the "
        "built-in text corpus (default attention for landscape, eager for PyHessian), ResNet-18 on 16 random "
        "32x32 images. Peak RSS: high-water mark of the process during the phase (reset at its start; "
        "the model, data and earlier phases' leftovers included).",
        "",
        "| shape | params | threads | gradient s | H reuse | H fwd-over-rev | H double-bwd | G reuse | G stream "
        "| PyHessian HVP | peak RSS GiB: H reuse / fwd / G reuse / PyHessian |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        if "failed" in res and "rows" not in res:
            lines.append(f"| {res['shape']} | | | failed: {res['failed']} | | | | | | | |")
            continue
        cells = []
        for product, route in (
            ("H", "reuse"),
            ("H", "forward-over-reverse"),
            ("H", "double-backward"),
            ("G", "reuse"),
            ("G", "stream"),
        ):
            r = _row(res, product, route)
            cells.append("-" if r is None else ("failed" if "failed" in r else f"{r['x_gradient']:.2f}x"))
        ph = res.get("pyhessian", {})
        cells.append(
            f"{ph['x_gradient']:.2f}x" if "x_gradient" in ph else ("failed" if ph.get("failed") else "-")
        )
        mem = []
        for product, route in (("H", "reuse"), ("H", "forward-over-reverse"), ("G", "reuse")):
            r = _row(res, product, route)
            mem.append(_f(r.get("peak_rss_gib")) if r and "failed" not in r else "-")
        mem.append(_f(ph.get("peak_rss_gib")))
        lines.append(
            f"| {res['shape']} | {res['num_params'] / 1e6:.2f}M | {res['threads']} | {_f(res['gradient_seconds'])} | "
            + " | ".join(cells)
            + " | "
            + " / ".join(mem)
            + " |"
        )
    lines += [
        "",
        "lambda_max at tol 1e-3: landscape as the analysis layer runs it (footprint probes, memory planner, "
        "the operator's graph, then `lambda_max`) and PyHessian (its `hessian(...)` graph, then "
        "`eigenvalues(top_n=1)`: power iteration, relative-change stop at 1e-3, no residual); seconds "
        "include the graphs on both sides.",
        "",
        "| shape | landscape value | residual | error bound | products | seconds | peak RSS GiB | plan "
        "| PyHessian value | products | seconds | peak RSS GiB | time ours / PyHessian |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        lm = res.get("lambda_max")
        if lm is None:
            continue
        peer = res.get("pyhessian", {})
        ph = dict(peer.get("lambda_max", {}))
        if ph.get("seconds") is not None and peer.get("setup_seconds") is not None:
            ph["seconds"] += peer["setup_seconds"]  # its graph, as ours includes the plan and graph
        ratio = lm["seconds"] / ph["seconds"] if ph.get("seconds") else None
        lines.append(
            f"| {res['shape']} | {lm['value']:.6g} | {lm['residual']:.2e} | {lm['error_bound']:.2e} "
            f"| {lm['products']}{'' if lm['converged'] else ' (not converged)'} | {_f(lm['seconds'], 1)} "
            f"| {_f(lm['peak_rss_gib'])} | {lm['plan']} | "
            f"{_f(ph.get('value'), 6) if ph else '-'} | {ph.get('products', '-')} | {_f(ph.get('seconds'), 1)} "
            f"| {_f(ph.get('peak_rss_gib'))} | {_f(ratio)} |"
        )
    minima = [r for r in results if r.get("lambda_min")]
    if minima:
        lines += [
            "",
            "lambda_min as its own call (the memory planner's plan; at most `--lambda-min-iter` products):",
            "",
            "| shape | value | residual | error bound | products | converged | basis / restarts | seconds "
            "| peak RSS GiB |",
            "|---|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for res in minima:
            m = res["lambda_min"]
            lines.append(
                f"| {res['shape']} | {m['value']:.4g} | {m['residual']:.2e} | {m['error_bound']:.2e} "
                f"| {m['products']} | {'yes' if m['converged'] else 'no'} | {m['basis_vectors']} / {m['restarts']} "
                f"| {_f(m['seconds'], 1)} | {_f(m['peak_rss_gib'])} |"
            )
    if any("failed" in r for r in results):
        lines += [""] + [f"- {r['shape']}: {r['failed']}" for r in results if "failed" in r]
    lines += ["", "![cost against size](scale.png)", "", END]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Log-log: seconds per product (and per gradient) against parameters x tokens, and each
    product's ratio to the gradient. GPT-2 shapes are joined by lines; the ResNet-18 is a family
    of its own, drawn as unjoined hollow markers of the same colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rx) = plt.subplots(1, 2, figsize=(11, 4.5))
    # (family, label) -> [(size, seconds, ratio)]
    series: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for res in results:
        if "rows" not in res:
            continue
        family = str(res.get("spec", {}).get("kind", "gpt2"))
        size, grad = res["num_params"] * res["tokens"], res["gradient_seconds"]
        series.setdefault((family, "gradient"), []).append((size, grad, 1.0))
        for r in res["rows"]:
            if "failed" not in r:
                key = (family, f"{r['product']} {r['route']}")
                series.setdefault(key, []).append((size, r["seconds"], r["x_gradient"]))
        ph = res.get("pyhessian", {})
        if "seconds" in ph:
            series.setdefault((family, "PyHessian HVP"), []).append((size, ph["seconds"], ph["x_gradient"]))
    labels = list(dict.fromkeys(label for _, label in series))
    colours = {label: f"C{i}" for i, label in enumerate(x for x in labels if x != "gradient")}
    colours["gradient"] = "k"
    for (family, label), points in series.items():
        points.sort()
        xs = [p[0] for p in points]
        marker = "s" if label.startswith("PyHessian") else "o"
        joined = family == "gpt2"
        style = {"color": colours[label], "marker": marker, "markersize": 5 if joined else 7}
        if joined:
            style |= {"linestyle": "--" if label == "gradient" else "-", "label": label}
        else:
            style |= {"linestyle": "none", "markerfacecolor": "none"}
        ax.loglog(xs, [p[1] for p in points], **style)
        if label != "gradient":
            rx.semilogx(xs, [p[2] for p in points], **style)
    ax.plot([], [], "ko", markerfacecolor="none", linestyle="none", label="ResNet-18 (hollow)")
    ax.set_xlabel("parameters x tokens (x images for the ResNet-18)")
    ax.set_ylabel("seconds per product")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    rx.axhline(1.0, color="k", linestyle="--", linewidth=1)
    rx.set_xlabel("parameters x tokens (x images for the ResNet-18)")
    rx.set_ylabel("product / gradient (medians of interleaved rounds)")
    rx.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def splice(text: str, section: str) -> str:
    """``text`` with the scale section replaced (or appended when it has none)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + section + tail
    return text.rstrip("\n") + "\n\n" + section + "\n"


def preserved_section(path: Path) -> str | None:
    """The scale section of an existing report (for writers that rebuild the rest of it)."""
    if not path.exists():
        return None
    text = path.read_text()
    if BEGIN in text and END in text:
        return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m benchmarks scale`` (and of the worker)."""
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (a few minutes)")
    parser.add_argument("--shapes", default=None, help=f"comma-separated subset of {', '.join(SHAPES)}")
    parser.add_argument("--no-peer", action="store_true", help="skip PyHessian")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per timing")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--max-memory",
        default="10GB",
        help="the planner's limit for the whole process (model and data included)",
    )
    parser.add_argument("--max-rss", default="12GB", help="stop a shape whose process grows past this")
    parser.add_argument(
        "--routes",
        type=lambda s: s.split(","),
        default=["reuse", "forward-over-reverse", "double-backward", "ggn-reuse", "ggn-stream"],
        help="products to time (H routes, ggn-reuse, ggn-stream)",
    )
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument(
        "--lambda-min-iter", type=int, default=0, help="also lambda_min, with at most this many products"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other shapes of scale.json (shapes run one at a time)"
    )


def main_runner(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the shapes one at a time and write scale.json, scale.png and the results.md section."""
    import torch

    from benchmarks.__main__ import machine

    names = args.shapes.split(",") if args.shapes else (QUICK if args.quick else list(SHAPES))
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s): {', '.join(unknown)} (choose from {', '.join(SHAPES)})")
    start = time.perf_counter()
    log = HERE / ".cache" / "scale.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    results = []
    for name in names:
        print(f"[scale] {name} ...", flush=True)
        results.append(run_shape(name, args, log))
        print(
            f"[scale] {name}: {results[-1].get('wall_seconds', 0):.0f} s {results[-1].get('failed', '')}",
            flush=True,
        )
    meta = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "machine": machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "seconds": time.perf_counter() - start,
        "load_average": list(os.getloadavg()),
    }
    json_path = args.out.with_name("scale.json")
    if args.merge and json_path.exists():  # keep the other shapes of earlier runs, in SHAPES order
        earlier = json.loads(json_path.read_text())
        done = {r["shape"]: r for r in earlier["results"]} | {r["shape"]: r for r in results}
        results = [done[name] for name in SHAPES if name in done]
        runs = earlier["meta"].get("runs", [earlier["meta"]]) + [meta]
        meta = {**meta, "runs": runs, "command": "; ".join(m["command"] for m in runs)}
        meta["seconds"] = sum(m["seconds"] for m in runs)
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, args.out.with_name("scale.png"))
    section = render(results, meta)
    text = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(splice(text, section))
    print(f"[scale] wrote {args.out} (section), {json_path} and scale.png in {meta['seconds']:.0f} s")
    return results


def worker_main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.scale --worker SHAPE --json PATH [options]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--worker", required=True, choices=list(SHAPES))
    parser.add_argument("--json", type=Path, required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = measure(args.worker, args)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    worker_main()
