"""Per-step cost of every gradient rule, as a ratio to the plain AdamW step (fSGLD/SGLD: to SGD).

Run: ``.venv/bin/python benchmarks/optim_step.py [--repeats 15] [--steps 5] [--threads 1]``.

A step is ``rule.compute_gradient(...)`` plus the base optimizer's ``step()``. Two workloads: the
built-in MLP (64 -> 64 -> 64 -> 10, tanh; digits-sized inputs, batch 128) and the built-in
transformer LM (2 layers, d_model 32, vocab 256, batch 16 x 64 tokens). Rules are timed in
interleaved rounds (every rule once per round, ``--steps`` steps each), so slow drifts of the
machine hit all rules alike; the table reports the median over rounds. Prints a markdown table.
Targets: SAM family <= 2.1x AdamW, angle-sam <= 2.6x, fsgld <= 1.15x SGD.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from landscape.models import build_model
from landscape.optim import SGLD, make_rule

# rule name -> base optimizer
RULES: dict[str, str] = {
    "adamw": "adamw",
    "sam": "adamw",
    "asam": "adamw",
    "func-sam": "adamw",
    "logit-sam": "adamw",
    "precond-sam": "adamw",
    "precond-func-sam": "adamw",
    "rwsam": "adamw",
    "angle-sam": "adamw",
    "msam": "adamw",
    "sgd": "sgd",
    "sgld": "sgld",
    "fsgld": "sgld",
    # not a rule: an SGD step plus the two parameter-sized N(0, I) draws that any fSGLD step makes
    # (perturbation e and Langevin noise xi); the floor of fsgld's ratio with torch's generator
    "sgd+2draws": "sgd",
}

# table rows: (rule, baseline rule of the ratio, target or None)
ROWS: list[tuple[str, str, float | None]] = [
    ("sam", "adamw", 2.1),
    ("asam", "adamw", 2.1),
    ("func-sam", "adamw", 2.1),
    ("logit-sam", "adamw", 2.1),
    ("precond-sam", "adamw", 2.1),
    ("precond-func-sam", "adamw", 2.1),
    ("rwsam", "adamw", 2.35),  # 3F+2B: SAM plus one forward without graph (7/6 of SAM)
    ("angle-sam", "adamw", 2.6),
    ("msam", "adamw", None),
    ("sgld", "sgd", None),
    ("fsgld", "sgd", 1.15),
    ("fsgld", "sgld", None),
    ("sgd+2draws", "sgd", None),
]


def workloads() -> dict[str, tuple[nn.Module, Tensor, Tensor, int]]:
    """name -> (model, inputs, targets, m for msam)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = build_model("mlp")
    x_mlp = torch.randn(128, 64, generator=gen)
    y_mlp = torch.randint(0, 10, (128,), generator=gen)
    lm = build_model("transformer")
    tokens = torch.randint(0, 256, (16, 65), generator=gen)
    return {
        "mlp": (mlp, x_mlp, y_mlp, 32),
        "transformer": (lm, tokens[:, :-1], tokens[:, 1:], 4),
    }


def make_step(name: str, model: nn.Module, x: Tensor, y: Tensor, m: int) -> Callable[[], None]:
    """A closure that runs one training step of ``name`` on its own copy of ``model``."""
    model = copy.deepcopy(model)
    base = RULES[name]
    if base == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    elif base == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    else:
        opt = SGLD(model.parameters(), lr=1e-3, beta=1e8)
    options = {"m": m} if name == "msam" else {}
    draws = 2 if name == "sgd+2draws" else 0
    rule = make_rule("sgd" if draws else name, **options)
    numel = sum(p.numel() for p in model.parameters())
    noise = torch.empty(numel)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        for _ in range(draws):
            noise.normal_(generator=generator)
        rule.compute_gradient(model, x, y, loss_fn="cross_entropy", optimizer=opt)
        opt.step()

    return step


def time_rules(
    model: nn.Module, x: Tensor, y: Tensor, m: int, repeats: int, steps: int, names: list[str] | None = None
) -> dict[str, float]:
    """Median seconds per step of the named rules (default: all), from interleaved rounds."""
    names = list(RULES) if names is None else names
    runners = {name: make_step(name, model, x, y, m) for name in names}
    for run in runners.values():  # warm-up: allocator, Adam state, first-call overheads
        for _ in range(2):
            run()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (median over them)")
    parser.add_argument("--steps", type=int, default=5, help="steps per rule per round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--rules", default=None, help="comma-separated rows to time (default: all); baselines are added"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = ROWS
    if args.rules:
        wanted = args.rules.split(",")
        unknown = sorted(set(wanted) - set(RULES))
        if unknown:
            parser.error(f"unknown rules {unknown}; choose from {sorted(RULES)}")
        rows = [row for row in ROWS if row[0] in wanted]
    names = [n for n in RULES if n in {r for r, _, _ in rows} | {b for _, b, _ in rows}]

    results = {}
    for workload, (model, x, y, m) in workloads().items():
        results[workload] = time_rules(model, x, y, m, args.repeats, args.steps, names)

    names = list(results)
    setup = f"median of {args.repeats} rounds x {args.steps} steps"
    print(f"torch {torch.__version__}, {args.threads} thread(s), {setup}")
    print()
    print("| rule | vs | target | " + " | ".join(f"{w} ms/step | {w} ratio" for w in names) + " |")
    print("|---|---|---|" + "---:|---:|" * len(names))
    baselines = sorted({b for _, b, _ in rows}, key=list(RULES).index)
    for rule in baselines:
        cells = [rule, "-", "-"] + [f"{results[w][rule] * 1e3:.2f} | 1.00" for w in names]
        print("| " + " | ".join(cells) + " |")
    for rule, baseline, target in rows:
        cells = [rule, baseline, "-" if target is None else f"<= {target}"]
        for w in names:
            cells.append(f"{results[w][rule] * 1e3:.2f} | {results[w][rule] / results[w][baseline]:.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
