"""The prepared GPU check: device-parametrized tests, distributed tests and the scale benchmark.

On a CUDA machine (``python scripts/gpu_check.py``, or ``scripts/gpu_check.sh``):

1. ``tests``: the operator, eigen, density and memory suites; their device fixture
   (``tests/helpers.py``: ``DEVICES``) includes ``cuda``, so every dense-reference test runs on
   the GPU too;
2. ``distributed``: the two-process suite over every backend and device the machine has (gloo
   on the CPU, gloo with CUDA tensors, NCCL with one GPU per process when there are two GPUs or
   more), and with two GPUs or more ``torchrun --nproc_per_node=<GPUs>`` running this file's
   ``--torchrun-worker``, which checks that each process computes on its ``LOCAL_RANK`` GPU and
   that the products equal one process's;
3. ``scale``: ``python -m benchmarks scale`` on ``--device cuda`` for ``--shapes`` (default: the
   quick subset and the 85M body), with its report written under ``--out`` (never over the
   repository's ``benchmarks/results.md``).

Then it prints one table (step, status, seconds, summary) and writes it to ``<out>/gpu_check.md``
with every step's full log next to it. Without CUDA it runs the same plumbing on the CPU with a
smaller scope (``--cpu-smoke`` forces that): the CPU device tests of the operators, the gloo
test, and the smallest benchmark shape without the peer; that is what the test suite runs.
Exit status: 0 when no step failed (a step skipped for a missing dependency is not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEST_FILES = [
    "tests/test_operators.py",
    "tests/test_eigen.py",
    "tests/test_density.py",
    "tests/test_memory.py",
]
DEFAULT_GPU_SHAPES = "gpt2-0.1m,gpt2-0.8m,gpt2-3.3m,gpt2-85m"


def cuda_devices() -> int:
    """Number of CUDA devices torch sees (0 without CUDA or without torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def missing_modules(*names: str) -> list[str]:
    """The modules among ``names`` that cannot be imported."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def run_step(
    name: str, cmd: list[str], out: Path, timeout_s: float, env: dict[str, str]
) -> dict[str, object]:
    """Run one step, its output into ``<out>/<name>.log``; status passed / failed / timeout."""
    log = out / f"{name}.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
        )
        text, code = proc.stdout, proc.returncode
        status = "passed" if code == 0 else "failed"
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        status, code = "timeout", -1
    log.write_text(f"$ {' '.join(cmd)}\n{text}")
    seconds = time.perf_counter() - start
    return {"step": name, "status": status, "seconds": seconds, "summary": summarise(name, text, code)}


def summarise(name: str, text: str, code: int) -> str:
    """One line per step: pytest's result line, or the benchmark's ratios."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if name == "scale":
        picked = [
            line for line in lines if line.startswith("[scale]") and ("x gradient" in line or ": H " in line)
        ]
        return "; ".join(p.replace("[scale] ", "") for p in picked[-8:]) or (
            lines[-1] if lines else f"exit {code}"
        )
    if name == "torchrun":
        picked = [line for line in lines if line.startswith("[torchrun]")]
        return "; ".join(picked[-4:]) or (lines[-1] if lines else f"exit {code}")
    for line in reversed(lines):
        if " passed" in line or " failed" in line or " error" in line or "no tests ran" in line:
            return line.strip("= ")
    return lines[-1] if lines else f"exit {code}"


def scale_summary(payload: dict[str, object]) -> str:
    """Per shape: each product's cost in gradients, lambda_max's products and PyHessian's HVP."""
    parts = []
    for res in payload["results"]:  # type: ignore[union-attr]
        if "failed" in res and "rows" not in res:
            parts.append(f"{res['shape']}: {res['failed']}")
            continue
        bits = [
            f"{r['product']} {r['route']} {r['x_gradient']:.2f}x" for r in res["rows"] if "x_gradient" in r
        ]
        lm = res.get("lambda_max")
        if lm:
            bits.append(f"lambda_max {lm['products']} products, bound {lm['error_bound']:.1e}")
        peer = res.get("pyhessian", {})
        if "x_gradient" in peer:
            bits.append(f"PyHessian HVP {peer['x_gradient']:.2f}x")
        parts.append(f"{res['shape']} ({res['device']}): " + ", ".join(bits))
    return "; ".join(parts)


def torchrun_worker() -> None:
    """Under torchrun: each process on its LOCAL_RANK GPU, NCCL all-reduces, same products as one process."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import rel, tiny_case
    from landscape import distributed
    from landscape.curvature.operators import GGNOperator, HessianOperator
    from landscape.problem import Problem

    assert distributed.init_from_env(), "torchrun did not start more than one process"
    rank, local = distributed.rank(), distributed.local_rank()
    device = distributed.resolve_device("auto")
    assert device == torch.device("cuda", local), (device, local)
    assert torch.cuda.current_device() == local
    model, data, loss = tiny_case("lm", n=28)
    problem = Problem(model, data, loss, dtype=torch.float64, device="auto")
    single = Problem(model, data, loss, dtype=torch.float64, device=device, distributed=False)
    V = torch.randn(problem.num_params, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for method in ("reuse", "forward-over-reverse", "double-backward"):
        error = rel(
            HessianOperator(problem, method=method).matmat(V),
            HessianOperator(single, method=method).matmat(V),
        )
        assert error < 1e-12, (method, error)
    error = rel(GGNOperator(problem).matmat(V), GGNOperator(single).matmat(V))
    assert error < 1e-12, ("ggn", error)
    print(
        f"[torchrun] rank {rank} on {device} ({torch.cuda.get_device_name(device)}): products match",
        flush=True,
    )


def main() -> int:
    """Run the steps and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "gpu-check-out")))
    parser.add_argument("--shapes", default=DEFAULT_GPU_SHAPES, help="scale benchmark shapes on the GPU")
    parser.add_argument("--cpu-smoke", action="store_true", help="the CPU plumbing run even with CUDA")
    parser.add_argument(
        "--skip", default="", help="comma-separated steps to skip (tests, distributed, scale)"
    )
    parser.add_argument("--step-timeout", type=float, default=900.0)
    parser.add_argument("--torchrun-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torchrun_worker:
        torchrun_worker()
        return 0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    gpus = 0 if args.cpu_smoke else cuda_devices()
    python = sys.executable
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }
    skip = set(filter(None, args.skip.split(",")))
    rows: list[dict[str, object]] = []

    def skipped(step: str, why: str) -> None:
        rows.append({"step": step, "status": "skipped", "seconds": 0.0, "summary": why})

    pytest_base = [python, "-m", "pytest", "-q", "-p", "no:randomly"]
    if "tests" in skip:
        skipped("tests", "--skip")
    elif missing_modules("pytest", "scipy"):
        skipped("tests", f"missing: {', '.join(missing_modules('pytest', 'scipy'))}")
    elif gpus:
        rows.append(
            run_step(
                "tests", pytest_base + TEST_FILES + ["-k", "cuda or not cpu"], out, args.step_timeout, env
            )
        )
    else:
        smoke = ["tests/test_operators.py", "-k", "mlp-cpu or device"]
        rows.append(run_step("tests", pytest_base + smoke, out, args.step_timeout, env))

    if "distributed" in skip:
        skipped("distributed", "--skip")
    else:
        rows.append(
            run_step(
                "distributed",
                pytest_base + ["tests/test_distributed_devices.py"],
                out,
                args.step_timeout,
                env,
            )
        )
        if gpus >= 2 and shutil.which("torchrun") is not None:
            cmd = ["torchrun", f"--nproc_per_node={gpus}", str(Path(__file__).resolve()), "--torchrun-worker"]
            rows.append(run_step("torchrun", cmd, out, args.step_timeout, env))
        else:
            skipped("torchrun", f"{gpus} GPU(s): NCCL across processes needs two or more")

    if "scale" in skip:
        skipped("scale", "--skip")
    elif missing_modules("transformers"):
        skipped("scale", "missing: transformers")
    else:
        report = out / "results.md"
        if gpus:
            cmd = [
                python,
                "-m",
                "benchmarks",
                "scale",
                "--device",
                "cuda",
                "--shapes",
                args.shapes,
                "--out",
                str(report),
            ]
            cmd += ["--threads", "4", "--max-memory", "60GB", "--max-rss", "100GB"]
            if missing_modules("pyhessian"):
                cmd.append("--no-peer")
        else:
            cmd = [
                python,
                "-m",
                "benchmarks",
                "scale",
                "--shapes",
                "gpt2-0.1m",
                "--no-peer",
                "--repeats",
                "1",
            ]
            cmd += ["--routes", "reuse,ggn-reuse", "--out", str(report)]
        row = run_step("scale", cmd, out, args.step_timeout, env)
        if (out / "scale.json").exists():
            row["summary"] = scale_summary(json.loads((out / "scale.json").read_text()))
        rows.append(row)

    device = "CPU only (smoke run)" if not gpus else f"{gpus} CUDA device(s)"
    try:
        import torch

        if gpus:
            device += f": {torch.cuda.get_device_name(0)}"
        device += f"; torch {torch.__version__}"
    except ImportError:
        pass
    table = [
        f"GPU check on {device}",
        "",
        "| step | status | seconds | summary |",
        "|---|---|---:|---|",
    ]
    table += [f"| {r['step']} | {r['status']} | {float(r['seconds']):.0f} | {r['summary']} |" for r in rows]
    text = "\n".join(table)
    print(text, flush=True)
    (out / "gpu_check.md").write_text(text + "\n")
    (out / "gpu_check.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    return 1 if any(r["status"] in ("failed", "timeout") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
