"""Acceptance check: ``landscape analyze DIR`` on the real GPT-2 small shape saved with save_pretrained.

What it does (no download, nothing from the network):

1. builds ``transformers.GPT2LMHeadModel(GPT2Config())``: the GPT-2 small shape (12 layers x 768,
   vocabulary 50257, 1024 positions, 124M parameters, ``lm_head`` tied to the token embedding),
   randomly initialised after ``torch.manual_seed(--seed)``; ``--n-layer``/``--n-embd``/``--n-head``
   shrink it for a quick run of the plumbing;
2. saves it with ``save_pretrained`` (safetensors) into a temporary folder (``--keep DIR`` keeps it);
3. writes a data function next to it: the first ``--samples`` x ``--seq-len`` (default 8 x 64)
   byte ids of the built-in text corpus as ``({"input_ids", "attention_mask"}, next bytes)``,
   within the vocabulary; the targets are already the next tokens, so the folder's default loss
   is plain cross-entropy;
4. runs one child process per metric::

       python -m cli.main analyze DIR --data data.py:load --metrics M --threads 2 --json --out OUT/M
           [--max-memory 12GB]   (only when `landscape analyze --help` lists it)
           [--device D]          (only with --device here, and when analyze lists it)

   and measures each child's wall time and peak resident memory (``os.wait4``: the child's own
   ``ru_maxrss``, so the numbers of one metric do not carry into the next);
5. prints a table (metric, status, seconds, peak RSS, products, headline value) and writes it
   with every child's JSON and stderr under ``--out``.

Usage::

    python scripts/gpt2_folder_check.py                                  # the full 124M model, every metric
    python scripts/gpt2_folder_check.py --n-layer 2 --metrics trace,ggn  # a quick check of the plumbing
    python scripts/gpt2_folder_check.py --vocab-size 256 --metrics lambda_min --max-memory 8GB
                                         # the 85M byte-level body (GPT-2 small without its vocabulary)

Exit status: 0 when every metric completed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DATA_MODULE = '''"""{samples} x {seq_len} byte ids of landscape's built-in text corpus, as Hugging Face inputs."""

import torch

from landscape.data import text_corpus_bytes, text_sequences


def load():
    x, y = text_sequences(text_corpus_bytes(), {seq_len})
    x, y = x[:{samples}], y[:{samples}]
    return {{"input_ids": x, "attention_mask": torch.ones_like(x)}}, y
'''

HEADLINE = {  # the value each metric is known by, as analysis.json names it
    "eigen": "lambda_max",
    "lambda_max": "lambda_max",
    "lambda_min": "lambda_min",
    "trace": "trace",
    "noise": "gradient_noise_trace",
    "ggn": "ggn_lambda_max",
    "tau": "tau_logit",
    "density": "lambda_max",
    "layers": "lambda_max",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", default="all", help="comma list of analyze's metrics, or all")
    parser.add_argument("--n-layer", type=int, default=None, help="override GPT2Config's 12 layers")
    parser.add_argument("--n-embd", type=int, default=None, help="override GPT2Config's 768 width")
    parser.add_argument("--n-head", type=int, default=None, help="override GPT2Config's 12 heads")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="override the 50257 tokens (256: the 85M byte-level body)",
    )
    parser.add_argument("--samples", type=int, default=8, help="sequences of the text corpus")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--max-memory", default="12GB", help="analyze's --max-memory, where it has one")
    parser.add_argument("--device", default=None, help="analyze's --device, where it has one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per metric at most")
    parser.add_argument("--keep", type=Path, default=None, help="save the folder here and keep it")
    parser.add_argument("--out", type=Path, default=Path("gpt2_folder_check"), help="results folder")
    parser.add_argument("extra", nargs="*", help="more analyze options, after --")
    return parser.parse_args(argv)


def analyze_command() -> list[str]:
    return [sys.executable, "-m", "cli.main", "analyze"]


def analyze_options() -> str:
    """The text of ``landscape analyze --help`` (which options this checkout has)."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    done = subprocess.run(
        [*analyze_command(), "--help"], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    return done.stdout + done.stderr


def metric_list(spec: str) -> list[str]:
    if spec != "all":
        return [m.strip() for m in spec.split(",") if m.strip()]
    sys.path.insert(0, str(ROOT))
    from landscape.metrics import names

    return list(names())


def build_folder(args: argparse.Namespace, folder: Path) -> int:
    """Save the seeded GPT-2 (small, or the shape asked for) into ``folder``; its parameter count."""
    import torch
    import transformers

    overrides = {
        key: value
        for key, value in (
            ("n_layer", args.n_layer),
            ("n_embd", args.n_embd),
            ("n_head", args.n_head),
            ("vocab_size", args.vocab_size),
        )
        if value is not None
    }
    torch.manual_seed(args.seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**overrides))
    count = sum(p.numel() for p in model.parameters())  # the tied lm_head counted once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return count


def run_child(command: list[str], log: Path, timeout: float | None) -> tuple[int, float, float, str]:
    """Run ``command``; (exit status, seconds, peak RSS in GB of that child alone, stdout)."""
    out_path = log.with_suffix(".stdout")
    with out_path.open("w") as stdout, log.open("w") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # Linux: kilobytes
    return child.returncode, seconds, peak_gb, out_path.read_text()


def summarise(metric: str, code: int, stdout: str, log: Path) -> tuple[str, str, str]:
    """(status, products, headline value) of one child."""
    if code != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        return f"failed ({code})", "-", (lines[-1][:80] if lines else "")
    try:
        result = json.loads(stdout)
    except ValueError:
        return "no JSON", "-", ""
    products = f"{result.get('hvp_count', 0)} H, {result.get('ggn_count', 0)} G"
    key = HEADLINE.get(metric, "loss")
    value = result.get(key)
    shown = f"{key} {value:.6g}" if isinstance(value, (int, float)) else f"loss {result.get('loss', 0):.6g}"
    return "ok", products, shown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    metrics = metric_list(args.metrics)
    help_text = analyze_options()
    options = ["--threads", str(args.threads), "--seed", str(args.seed)]
    if "--max-memory" in help_text:
        options += ["--max-memory", args.max_memory]
    if args.device and "--device" in help_text:
        options += ["--device", args.device]
    with tempfile.TemporaryDirectory(prefix="gpt2-folder-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        folder, data = root / "gpt2", root / "gpt2data.py"
        start = time.perf_counter()
        params = build_folder(args, folder)
        saved = time.perf_counter() - start
        data.write_text(DATA_MODULE.format(samples=args.samples, seq_len=args.seq_len))
        print(f"GPT-2 folder {folder}: {params / 1e6:.1f}M parameters, built and saved in {saved:.1f} s")
        print(f"data: {args.samples} x {args.seq_len} byte ids; options: {' '.join(options)}")
        rows = []
        for metric in metrics:
            command = [
                *analyze_command(),
                str(folder),
                "--data",
                f"{data}:load",
                "--metrics",
                metric,
                *options,
                "--json",
                "--out",
                str(out / metric),
                *args.extra,
            ]
            code, seconds, peak, stdout = run_child(command, out / f"{metric}.log", args.timeout)
            if stdout:
                (out / f"{metric}.json").write_text(stdout)
            status, products, value = summarise(metric, code, stdout, out / f"{metric}.log")
            rows.append((metric, status, f"{seconds:.1f}", f"{peak:.2f}", products, value))
            print(f"  {metric}: {status}, {seconds:.1f} s, {peak:.2f} GB", flush=True)
    header = ("metric", "status", "seconds", "peak RSS (GB)", "products", "value")
    table = [
        f"GPT-2 folder ({params / 1e6:.1f}M parameters, {args.samples} x {args.seq_len} tokens): "
        f"landscape analyze DIR {' '.join(options)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    text = "\n".join(table)
    print(text)
    (out / "gpt2_folder_check.md").write_text(text + "\n")
    return 0 if all(row[1] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
