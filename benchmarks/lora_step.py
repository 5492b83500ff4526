"""Per-step cost of ``fmlora`` and ``efmlora`` as a ratio to the plain ``lora`` step.

Run: ``.venv/bin/python benchmarks/lora_step.py [--repeats 15] [--steps 5] [--threads 1]``.

A step is ``rule.compute_gradient(...)`` plus one AdamW ``step()`` on the adapters. Workloads:

* ``builtin-lm``: the built-in transformer LM (2 layers, d_model 32, vocab 256), batch 16 x 64
  tokens, built-in LoRA (r = 8, alpha = 16) on all 9 ``nn.Linear`` layers (qkv, proj, mlp.0,
  mlp.2 per block, head);
* ``gpt2-tiny``: ``GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=32,
  n_layer=2, n_head=2))``, batch 16 x 64, peft LoRA (r = 8, alpha = 16, ``fan_in_fan_out``) on
  all 8 ``Conv1D`` layers (c_attn, attn c_proj, c_fc, mlp c_proj); skipped without
  transformers/peft;
* ``builtin-lm-wide``: the built-in LM at d_model 128, 4 layers, batch 16 x 64, LoRA on all
  ``nn.Linear`` layers: closer to the regime where the per-layer pseudo-inverses are small next to
  the forward/backward.

Rules are timed in interleaved rounds (every rule once per round, ``--steps`` steps each), so slow
drifts of the machine hit all rules alike; the table gives the median over rounds. Prints a
markdown table. Targets: efmlora <= 1.2x lora, fmlora about 2x.

``--finetune`` instead runs the fine-tuning comparison of ``docs/lora.md``: the built-in LM
pre-trained on the first 90% of the built-in text corpus (AdamW, lr 3e-3, batch 32 x 64), then
LoRA (r = 8, alpha = 16, all ``nn.Linear``) fine-tuned on half of the remaining 10% with each rule,
and evaluated on the other half; lambda_max of the Hessian restricted to the adapters
(``analyze(..., params="lora_")``) on 64 training sequences.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.analysis import analyze
from landscape.data.builtin import split_text_corpus, text_sequences
from landscape.models import build_model
from landscape.optim import add_lora, lora_layers, make_rule

RULES = ("lora", "fmlora", "efmlora")
TARGETS = {"fmlora": "~2", "efmlora": "<= 1.2"}


def builtin_lm(d_model: int = 32, n_layer: int = 2) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("transformer", d_model=d_model, n_layer=n_layer)
    add_lora(model, rank=8, alpha=16)
    return model


def gpt2_tiny() -> nn.Module | None:
    try:
        import peft
        import transformers
    except ImportError:
        return None
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = peft.LoraConfig(
            r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True
        )
        return peft.get_peft_model(transformers.GPT2LMHeadModel(config), lora)


def workloads() -> dict[str, tuple[nn.Module, Tensor, Tensor]]:
    """name -> (model with LoRA, inputs, targets)."""
    tokens = torch.randint(0, 256, (16, 65), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1], tokens[:, 1:]
    out = {"builtin-lm": (builtin_lm(), x, y)}
    gpt2 = gpt2_tiny()
    if gpt2 is not None:
        out["gpt2-tiny"] = (gpt2, x, y)
    out["builtin-lm-wide"] = (builtin_lm(d_model=128, n_layer=4), x, y)
    return out


def make_step(name: str, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """A closure that runs one training step of ``name`` on its own copy of ``model``."""
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rule = make_rule(name)

    def step() -> None:
        rule.compute_gradient(model, x, y, loss_fn="cross_entropy", optimizer=opt)
        opt.step()

    return step


def time_rules(model: nn.Module, x: Tensor, y: Tensor, repeats: int, steps: int) -> dict[str, float]:
    """Median seconds per step of every rule, from interleaved rounds."""
    runners = {name: make_step(name, model, x, y) for name in RULES}
    for run in runners.values():  # warm-up: allocator, Adam state, first-call overheads
        for _ in range(3):
            run()
    samples: dict[str, list[float]] = {name: [] for name in RULES}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def finetune_demo(pretrain_steps: int, steps: int, seed: int) -> None:
    """Pre-train the built-in LM on one part of the corpus, fine-tune LoRA on another; print a table."""
    first, second = split_text_corpus(0.9)
    x_pre, y_pre = text_sequences(first, 64)
    x_fine, y_fine = text_sequences(second, 64)
    half = len(x_fine) // 2
    x_tr, y_tr, x_va, y_va = x_fine[:half], y_fine[:half], x_fine[half:], y_fine[half:]

    def mean_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)))

    torch.manual_seed(seed)
    model = build_model("transformer")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(pretrain_steps):
        idx = torch.randint(0, len(x_pre), (32,), generator=gen)
        loss = F.cross_entropy(model(x_pre[idx]).reshape(-1, 256), y_pre[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(
        f"pre-trained {pretrain_steps} steps on {len(x_pre)} sequences; fine-tune set {half} sequences, "
        f"held-out {len(x_va)}; {steps} LoRA steps (AdamW lr 3e-3, batch 32), seed {seed}"
    )
    print()
    print("| rule | rho | train loss | held-out loss | lambda_max (LoRA) | max cond(A) | perturbation norm |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    before = f"{mean_loss(model, x_tr, y_tr):.4f} | {mean_loss(model, x_va, y_va):.4f}"
    print(f"| (pre-trained) | - | {before} | - | - | - |")
    for name, rho in (("lora", None), ("fmlora", 0.05), ("efmlora", 0.05), ("fmlora", 0.2), ("efmlora", 0.2)):
        tuned = copy.deepcopy(model)
        add_lora(tuned, rank=8, alpha=16, generator=torch.Generator().manual_seed(seed + 1))
        rule = make_rule(name, rho=rho)
        opt = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=3e-3)
        gen = torch.Generator().manual_seed(seed + 2)
        for _ in range(steps):
            idx = torch.randint(0, half, (32,), generator=gen)
            rule.compute_gradient(tuned, x_tr[idx], y_tr[idx], optimizer=opt)
            opt.step()
        diag = rule.diagnostics().as_dict()
        curv = analyze(tuned, (x_tr[:64], y_tr[:64]), metrics="eigen", params="lora_", top_k=1, max_iter=60)
        cells = [
            name,
            "-" if rho is None else f"{rho:g}",
            f"{mean_loss(tuned, x_tr, y_tr):.4f}",
            f"{mean_loss(tuned, x_va, y_va):.4f}",
            f"{curv.lambda_max:.2f}",
            f"{diag['cond_A_max']:.1f}",
            f"{diag['perturbation_norm']:.3f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (median over them)")
    parser.add_argument("--steps", type=int, default=5, help="steps per rule per round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--finetune", action="store_true", help="run the fine-tuning comparison instead")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="--finetune: pre-training steps")
    parser.add_argument("--finetune-steps", type=int, default=300, help="--finetune: LoRA steps per rule")
    parser.add_argument("--seed", type=int, default=0, help="--finetune: seed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.finetune:
        finetune_demo(args.pretrain_steps, args.finetune_steps, args.seed)
        return

    rows = []
    for workload, (model, x, y) in workloads().items():
        layers = lora_layers(model)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        times = time_rules(model, x, y, args.repeats, args.steps)
        rows.append((workload, len(layers), trained, times))

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), "
        f"median of {args.repeats} rounds x {args.steps} steps"
    )
    print()
    print(
        "| workload | LoRA layers | trained params | lora ms/step | fmlora ms/step | fmlora / lora "
        "| efmlora ms/step | efmlora / lora |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for workload, n_layers, trained, t in rows:
        cells = [
            workload,
            str(n_layers),
            f"{trained:,}",
            f"{t['lora'] * 1e3:.2f}",
            f"{t['fmlora'] * 1e3:.2f}",
            f"{t['fmlora'] / t['lora']:.2f}",
            f"{t['efmlora'] * 1e3:.2f}",
            f"{t['efmlora'] / t['lora']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Targets: " + ", ".join(f"{k} {v}x lora" for k, v in TARGETS.items()) + ".")


if __name__ == "__main__":
    main()
