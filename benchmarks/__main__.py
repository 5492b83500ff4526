"""``python -m benchmarks run [--quick] [--out benchmarks/results.md]``, ``python -m benchmarks render``
and ``python -m benchmarks scale [--quick] [--no-peer]`` (benchmarks/scale.py: 0.1M to 124M
parameters next to PyHessian; its section of the report survives ``run`` and ``render``).

Runs every workload in its own process (``python -m benchmarks.curvature``, one torch thread),
then the optimizer step-time ratios (``benchmarks/optim_step.py``, when present), and writes the
markdown report and a JSON file next to it (same stem). Run it with the interpreter of the
environment that has the peers installed (``.venv-bench``, see ``requirements-bench.txt``).
``render`` rewrites the markdown from a run's JSON without measuring anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import peers
from benchmarks.curvature import TAU_AS_ANALYZE

HERE = Path(__file__).resolve().parent
FULL = ["mlp", "cnn", "transformer", "gpt2", "wide_mlp"]
QUICK = ["mlp", "transformer"]

# The benchmark goals (MLP figures unless stated), used to mark rows as met / missed.
GOALS = {
    "hvp_reuse": 1.5,
    "hvp_stream": 2.5,
    "ggn_block": 1.8,
    "lambda_max_products": 10,
    "trace_48": 0.006,
    "trace_192": 0.001,
    "tau": 1.0,
}


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def run_workload(name: str, quick: bool, log: Path) -> dict[str, Any]:
    """One workload in a fresh process (so peers and our engine share nothing across workloads)."""
    out = HERE / ".cache" / f"result-{name}{'-quick' if quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.curvature", name, "--json", str(out)] + (
        ["--quick"] if quick else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n===== {name} =====\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=HERE.parent, stdout=fh, stderr=fh, env=env, check=False)
    if proc.returncode != 0 or not out.exists():
        return {
            "workload": {"name": name, "failed": f"exit code {proc.returncode}, see {log.name}"},
            "rows": [],
        }
    result = json.loads(out.read_text())
    result["workload"]["wall_seconds"] = time.perf_counter() - start
    return result


def run_optimizers(quick: bool) -> dict[str, Any]:
    """Optimizer step-time ratios from ``benchmarks/optim_step.py`` (another engineer's module)."""
    try:
        module = importlib.import_module("benchmarks.optim_step")
    except Exception as exc:  # absent or broken: reported, not fatal
        return {"failed": f"{type(exc).__name__}: {exc}"}
    torch.set_num_threads(1)
    repeats, steps = (3, 2) if quick else (7, 3)
    out: dict[str, Any] = {"repeats": repeats, "steps": steps, "rows": []}
    try:
        results = {}
        for workload, (model, x, y, m) in module.workloads().items():
            results[workload] = module.time_rules(model, x, y, m, repeats, steps)
        for rule, baseline, target in module.ROWS:
            row = {"rule": rule, "vs": baseline, "target": target}
            for workload, secs in results.items():
                row[workload] = secs[rule] / secs[baseline]
                row[f"{workload}_ms"] = 1e3 * secs[rule]
            out["rows"].append(row)
        out["workloads"] = list(results)
    except Exception as exc:
        out["failed"] = f"{type(exc).__name__}: {exc}"
    return out


def run_lora(quick: bool) -> dict[str, Any]:
    """LoRA-family step-time ratios from ``benchmarks/lora_step.py`` (another engineer's module)."""
    try:
        module = importlib.import_module("benchmarks.lora_step")
    except Exception as exc:  # absent or broken: reported, not fatal
        return {"failed": f"{type(exc).__name__}: {exc}"}
    torch.set_num_threads(1)
    repeats, steps = (3, 2) if quick else (7, 3)
    out: dict[str, Any] = {"repeats": repeats, "steps": steps, "rows": []}
    try:
        for workload, (model, x, y) in module.workloads().items():
            t = module.time_rules(model, x, y, repeats, steps)
            out["rows"].append(
                {
                    "workload": workload,
                    "lora_ms": 1e3 * t["lora"],
                    "efmlora": t["efmlora"] / t["lora"],
                    "fmlora": t["fmlora"] / t["lora"],
                }
            )
    except Exception as exc:
        out["failed"] = f"{type(exc).__name__}: {exc}"
    return out


# ------------------------------------------------------------------------------------ rendering
def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) < 1e-3 or abs(x) >= 1e5:
            return f"{x:.1e}"
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x: Any) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2g} %" if x >= 1e-4 else f"{x:.1e}"


def _rows(result: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return [r for r in result["rows"] if r["section"] == section]


def _median(rows: list[dict[str, Any]], key: str) -> Any:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["library"], r["what"]), []).append(r)
    return groups


def render_workload(result: dict[str, Any]) -> list[str]:
    """Markdown for one workload."""
    info = result["workload"]
    lines = [f"### {info['name']}", ""]
    if "failed" in info:
        return lines + [f"**failed**: {info['failed']}", ""]
    ref = info.get("reference", {})
    lines += [
        f"{info['description']}; {info['num_params']:,} parameters, {info['num_targets']:,} targets, "
        f"final training loss {info['train_loss']:.3g}; {info['threads']} thread; workload took "
        f"{info.get('wall_seconds', info['seconds']):.0f} s.",
        "",
        f"Reference: {ref.get('kind')}; lambda_max = {_f(ref.get('lambda_max'), 6)}"
        + (f", lambda_min = {ref['lambda_min']:.4e}" if ref.get("lambda_min") is not None else "")
        + (f", tr(H) = {ref['trace']:.6g}" if ref.get("trace") is not None else "")
        + ".",
        "",
    ]
    for note in result.get("notes", []):
        lines += [f"- {note}"]
    lines += [
        "",
        "| product | library | ms / vector | x gradient | peak MB / vector |",
        "|---|---|---:|---:|---:|",
    ]
    for section in ("gradient", "hvp", "ggn"):
        for r in _rows(result, section):
            if "failed" in r:
                lines.append(f"| {r['what']} | {r['library']} | failed: {r['failed']} | | |")
                continue
            lines.append(
                f"| {r['what']} | {r['library']} | {_f(r['ms_per_vector'])} | {_f(r['x_gradient'])} "
                f"| {_f(r.get('peak_mb_per_vector'))} |"
            )
    setups = _rows(result, "setup")
    if setups:
        lines += [
            "",
            "Construction: " + "; ".join(f"{r['what'][10:]} {_f(r['ms'], 0)} ms" for r in setups) + ".",
        ]
    eig = _rows(result, "lambda_max") + _rows(result, "top5") + _rows(result, "lambda_min")
    if eig:
        lines += [
            "",
            "| quantity | method | library | products (median) | seconds (median) "
            "| rel. error (median, max) |",
            "|---|---|---|---:|---:|---|",
        ]
        for section in ("lambda_max", "top5", "lambda_min"):
            for (lib, what), rows in _group([r for r in eig if r["section"] == section]).items():
                if any("failed" in r for r in rows):
                    lines.append(f"| {section} | {what} | {lib} | failed: {rows[0]['failed']} | | |")
                    continue
                errs = [r["error"] for r in rows if r.get("error") is not None]
                err = f"{_pct(statistics.median(errs))}, {_pct(max(errs))}" if errs else "-"
                extra = ""
                if rows[0].get("residual") is not None:
                    extra = f" (residual {rows[0]['residual']:.1e}, bound {rows[0]['error_bound']:.1e})"
                lines.append(
                    f"| {section} | {what} | {lib} | {_f(_median(rows, 'products'))} "
                    f"| {_f(_median(rows, 'seconds'), 3)} | {err}{extra} |"
                )
    trace = _rows(result, "trace")
    if trace:
        key = "median_error" if any("median_error" in r for r in trace) else "median_estimate"
        budgets = sorted({r["products"] for r in trace if "failed" not in r and r.get("shared_operator")})
        seeds = max((r.get("seeds", 1) for r in trace), default=1)
        label = "median relative error" if key == "median_error" else "median estimate (no exact trace)"
        lines += [
            "",
            f"Trace of H, {label} over {seeds} seed(s); all estimators on the same operator (ours, reuse):",
            "",
            "| estimator | library | " + " | ".join(f"{m} products" for m in budgets) + " |",
            "|---|---|" + "---:|" * len(budgets),
        ]
        for (lib, what), rows in _group([r for r in trace if r.get("shared_operator")]).items():
            cells = []
            for m in budgets:
                hit = [r for r in rows if r.get("products") == m]
                cells.append(
                    _pct(hit[0][key]) if hit and key == "median_error" else _f(hit[0][key], 4) if hit else "-"
                )
            lines.append(f"| {what} | {lib} | " + " | ".join(cells) + " |")
        for r in trace:
            if not r.get("shared_operator") and "failed" not in r:
                val = _pct(r[key]) if key == "median_error" else _f(r[key], 4)
                lines.append(
                    f"\n{r['library']} `{r['what']}` on its own operator: {r['products']} HVPs (median), "
                    f"{key.replace('_', ' ')} {val}, {_f(r['seconds'], 2)} s."
                )
    e2e = _rows(result, "trace_e2e")
    if e2e:
        parts = [
            f"{r['library']} {r['what']} {_f(r.get('seconds'), 2)} s"
            + (f" ({_pct(r['error'])})" if r.get("error") else "")
            for r in e2e
            if "failed" not in r
        ]
        lines += [
            "",
            "Trace end to end at 48 products, each library on its own operator: " + "; ".join(parts) + ".",
        ]
    dens = _rows(result, "density")
    if dens:
        lines += ["", "| spectral density | library | products | seconds |", "|---|---|---:|---:|"]
        for r in dens:
            if "failed" in r:
                lines.append(f"| {r['what']} | {r['library']} | failed: {r['failed'][:90]} | |")
            else:
                lines.append(f"| {r['what']} | {r['library']} | {r['products']} | {_f(r['seconds'])} |")
    for r in _rows(result, "tau"):
        lines += [
            "",
            f"tau_logit/func/cross ({r['what']}): {_f(r['ms'], 1)} ms = {_f(r['x_budget'])} x one gradient + "
            f"one HVP + one GGN product with graphs already built ({_f(r['budget_ms'], 1)} ms), "
            f"{_f(r['x_budget_stream'])} x the same with streaming products "
            f"({_f(r['budget_stream_ms'], 1)} ms).",
        ]
    return lines + [""]


def summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """The headline table: ratios ours / peer and goal status."""
    lines = [
        "| workload | HVP x grad: ours (auto route, block 16) | PyHessian reused / loader "
        "| curvlinops block 16 / 1 "
        "| eigenthings | GGN x grad: ours / curvlinops block 16 | lambda_max: ours products, err "
        "| PyHessian products, err | eigsh products | time ours / PyHessian |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for name, res in results.items():
        if "failed" in res["workload"]:
            lines.append(f"| {name} | failed | | | | | | | | |")
            continue
        idx = {(r["library"], r["what"]): r for r in res["rows"] if "failed" not in r}

        def x(lib: str, what: str, idx: dict = idx) -> str:
            r = idx.get((lib, what))
            return _f(r["x_gradient"]) if r and "x_gradient" in r else "-"

        auto = next((n for n in res.get("notes", []) if "picked" in n), "")
        route = auto.split("'")[-2] if "'" in auto else "reuse"
        lm = [r for r in res["rows"] if r["section"] == "lambda_max" and "failed" not in r]
        ours = [r for r in lm if r["library"] == "landscape"]
        ph = [r for r in lm if r["library"] == "pyhessian"]
        cl = [r for r in lm if r["library"] == "curvlinops"]

        def pe(rows: list[dict[str, Any]]) -> str:
            if not rows:
                return "-"
            errs = [r["error"] for r in rows if r.get("error") is not None]
            return f"{_f(_median(rows, 'products'))}, {_pct(max(errs)) if errs else '-'}"

        t_ours, t_ph = _median(ours, "seconds"), _median(ph, "seconds")
        lines.append(
            f"| {name} | {x('landscape', f'HVP {route}, block of {16}')} "
            f"| {x('pyhessian', 'HVP single batch (reused graph)')} "
            f"/ {x('pyhessian', 'HVP dataloader mode')} "
            f"| {x('curvlinops', 'HVP op @ V, block of 16')} / {x('curvlinops', 'HVP op @ v')} "
            f"| {x('eigenthings', 'HVP matvec')} "
            f"| {x('landscape', 'GGN reuse, block of 16')} / {x('curvlinops', 'GGN op @ V, block of 16')} "
            f"| {pe(ours)} | {pe(ph)} | {_f(_median(cl, 'products'))} "
            f"| {_f(t_ours / t_ph) if t_ours and t_ph else '-'} |"
        )
    return lines


def goals(results: dict[str, dict[str, Any]], optim: dict[str, Any]) -> list[str]:
    """Each benchmark goal with the measured value (MLP unless stated) and met / missed."""
    res = results.get("mlp")
    if not res or "failed" in res["workload"]:
        return ["MLP workload missing: goals not evaluated."]
    idx = {(r["library"], r["what"]): r for r in res["rows"] if "failed" not in r and "what" in r}
    lines = ["| goal | target | measured (MLP) | status |", "|---|---|---|---|"]

    def row(goal: str, target: str, value: str, ok: bool | None) -> None:
        status = "-" if ok is None else ("met" if ok else "**missed**")
        lines.append(f"| {goal} | {target} | {value} | {status} |")

    def xg(what: str, lib: str = "landscape") -> float | None:
        r = idx.get((lib, what))
        return r.get("x_gradient") if r else None

    reuse = min(v for v in (xg("HVP reuse, 1 vector"), xg("HVP reuse, block of 16")) if v is not None)
    row("HVP, graphs fit", "<= 1.5x gradient", f"{reuse:.2f}x (reuse)", reuse <= GOALS["hvp_reuse"])
    stream = min(
        v
        for v in (xg("HVP double-backward, block of 16"), xg("HVP forward-over-reverse, block of 16"))
        if v is not None
    )
    row(
        "HVP, streaming",
        "<= 2.5x gradient",
        f"{stream:.2f}x (best streaming route, blocks of 16)",
        stream <= 2.5,
    )
    ggn = xg("GGN reuse, block of 16")
    ggn_s = xg("GGN stream, block of 16")
    row(
        "GGN product per vector in blocks",
        "<= 1.8x gradient",
        f"{_f(ggn)}x reuse, {_f(ggn_s)}x stream",
        ggn is not None and ggn <= GOALS["ggn_block"] and (ggn_s or 9) <= GOALS["ggn_block"],
    )
    lm = [r for r in res["rows"] if r["section"] == "lambda_max" and r["library"] == "landscape"]
    ph = [
        r
        for r in res["rows"]
        if r["section"] == "lambda_max" and r["library"] == "pyhessian" and "failed" not in r
    ]
    prods = max(r["products"] for r in lm)
    errs = [r["error"] for r in lm if r.get("error") is not None]
    err = max(errs) if errs else None
    row(
        "lambda_max to 1e-3 relative",
        "<= 10 products",
        f"{prods} products (max over seeds), error {_pct(err)}",
        prods <= 10 and (err is None or err <= 1e-3),
    )
    if ph:
        ratio = _median(lm, "seconds") / _median(ph, "seconds")
        row("lambda_max wall time", "<= 1/3 of PyHessian", f"{ratio:.2f}x PyHessian's", ratio <= 1 / 3)
    tr = {
        (r["what"], r["products"]): r.get("median_error")
        for r in res["rows"]
        if r["section"] == "trace" and r["library"] == "landscape"
    }
    for m, target in ((48, 0.006), (192, 0.001)):
        val = tr.get(("xtrace", m))
        row(
            f"trace error at {m} products",
            f"<= {target:.1%}",
            _pct(val),
            None if val is None else val <= target,
        )
    lmin = [r for r in res["rows"] if r["section"] == "lambda_min" and "failed" not in r]
    ours_min = [r for r in lmin if r["library"] == "landscape"]
    eigsh_min = [r for r in lmin if r["library"] == "curvlinops"]
    if ours_min and eigsh_min:
        o, e = ours_min[0], eigsh_min[0]
        ok = o["products"] <= e["products"] / 2 and (o.get("error") or 1) <= 1e-2
        row(
            "lambda_min to 1e-2 with residual",
            "<= 1/2 of eigsh(SA) products",
            f"{o['products']} vs {e['products']} products, error {_pct(o.get('error'))}, "
            f"residual {o.get('residual', float('nan')):.1e}",
            ok,
        )
    else:
        row(
            "lambda_min to 1e-2 with residual",
            "<= 1/2 of eigsh(SA) products",
            "not measured in this run",
            None,
        )
    for r in _rows(res, "tau"):
        if r["what"] != TAU_AS_ANALYZE:
            continue  # the goal is the metric's cost; the other ways are in the workload sections
        row(
            f"tau_* ({r['what']})",
            "<= 1 gradient + 1 HVP + 1 GGN",
            f"{r['x_budget']:.2f}x (products with graphs pre-built), {r['x_budget_stream']:.2f}x (streaming)",
            r["x_budget"] <= 1.0,
        )
    if "rows" in optim and optim["rows"]:
        for o in optim["rows"]:
            if o.get("target") is None:
                continue
            vals = [o[w] for w in optim.get("workloads", [])]
            worst = max(vals)
            row(
                f"optimizer {o['rule']}",
                f"<= {o['target']}x {o['vs']}",
                ", ".join(f"{w} {o[w]:.2f}x" for w in optim["workloads"]),
                worst <= o["target"],
            )
    else:
        row(
            "optimizer step ratios", "see benchmarks/optim_step.py", optim.get("failed", "not measured"), None
        )
    lora = optim.get("lora", {})
    if lora.get("rows"):
        worst = max(r["efmlora"] for r in lora["rows"])
        value = ", ".join(f"{r['workload']} {r['efmlora']:.2f}x" for r in lora["rows"])
        row("EFMLoRA step", "<= 1.2x LoRA", value, worst <= 1.2)
    else:
        row(
            "EFMLoRA step",
            "<= 1.2x LoRA",
            f"not measured ({lora.get('failed', 'not part of this run')})",
            None,
        )
    return lines


def render(results: dict[str, dict[str, Any]], optim: dict[str, Any], meta: dict[str, Any]) -> str:
    """The whole markdown report."""
    v = meta["peers"]
    lines = [
        "# Curvature benchmark: landscape vs PyHessian, curvlinops, hessian-eigenthings",
        "",
        f"Command: `{meta['command']}` ({meta['mode']} run, {meta['seconds']:.0f} s in all).",
        f"Machine: {meta['machine']}; Python {meta['python']}, torch {meta['torch']}, "
        f"{meta['threads']} torch thread per process (one process per workload)"
        + (
            f"; load average at the end {meta['load_average'][2]:.1f} (15 min)."
            if "load_average" in meta
            else "."
        ),
        "Peers: " + ", ".join(f"{k} {v[k] or 'NOT INSTALLED'}" for k in v) + ".",
        "",
        "Timings are medians over interleaved rounds (every case once per round); 'x gradient' divides by "
        "our full-data gradient in the same process. Peers run with their documented defaults; products are "
        "counted at each library's operator. Peak MB: torch CPU allocations during one product above what "
        "was held before (retained graphs excluded), from the torch profiler.",
        "",
        "## Summary",
        "",
        *summary(results),
        "",
        "## Goals",
        "",
        *goals(results, optim),
        "",
        "## Workloads",
        "",
    ]
    for res in results.values():
        lines += render_workload(res)
    lines += ["## Optimizer step time (benchmarks/optim_step.py)", ""]
    if "rows" in optim and optim["rows"]:
        ws = optim["workloads"]
        lines += [
            f"Median of {optim['repeats']} interleaved rounds x {optim['steps']} steps, same process as the "
            "report writer, 1 thread.",
            "",
            "| rule | vs | target | " + " | ".join(f"{w} ratio | {w} ms" for w in ws) + " |",
            "|---|---|---|" + "---:|---:|" * len(ws),
        ]
        for o in optim["rows"]:
            cells = " | ".join(f"{o[w]:.2f} | {o[w + '_ms']:.2f}" for w in ws)
            lines.append(f"| {o['rule']} | {o['vs']} | {_f(o['target'])} | {cells} |")
    else:
        lines.append(f"Not measured: {optim.get('failed', 'benchmarks/optim_step.py unavailable')}.")
    lora = optim.get("lora", {})
    lines += ["", "## LoRA step time (benchmarks/lora_step.py)", ""]
    if lora.get("rows"):
        lines += [
            f"Median of {lora['repeats']} interleaved rounds x {lora['steps']} steps, 1 thread.",
            "",
            "| workload | lora ms/step | efmlora / lora (target <= 1.2) | fmlora / lora |",
            "|---|---:|---:|---:|",
        ]
        for r in lora["rows"]:
            lines.append(f"| {r['workload']} | {r['lora_ms']:.2f} | {r['efmlora']:.2f} | {r['fmlora']:.2f} |")
    else:
        lines.append(f"Not measured: {lora.get('failed', 'benchmarks/lora_step.py unavailable')}.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Parse ``run [--quick] [--out PATH]`` and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark and write the report")
    run.add_argument("--quick", action="store_true", help="MLP + transformer, fewer repeats (< 3 min)")
    run.add_argument("--out", type=Path, default=HERE / "results.md")
    run.add_argument("--workloads", default=None, help="comma-separated subset (default: all for the mode)")
    again = sub.add_parser("render", help="rewrite the markdown report from a run's JSON (no measuring)")
    again.add_argument("--json", type=Path, default=HERE / "results.json")
    from benchmarks import scale

    scaled = sub.add_parser("scale", help="GPT-2 shapes up to 124M and a ResNet-18, next to PyHessian")
    scale.add_arguments(scaled)
    args = parser.parse_args()
    if args.command == "scale":
        scale.main_runner(args)
        return
    if args.command == "render":
        payload = json.loads(args.json.read_text())
        text = render(payload["workloads"], payload["optimizers"], payload["meta"])
        kept = scale.preserved_section(args.json.with_suffix(".md"))
        args.json.with_suffix(".md").write_text(scale.splice(text, kept) if kept else text)
        print(f"[benchmarks] wrote {args.json.with_suffix('.md')} from {args.json}")
        return

    start = time.perf_counter()
    names = args.workloads.split(",") if args.workloads else (QUICK if args.quick else FULL)
    log = HERE / ".cache" / "run.log"  # peers print warnings; keep them out of the report
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    results = {}
    for name in names:
        print(f"[benchmarks] {name} ...", flush=True)
        results[name] = run_workload(name, args.quick, log)
        print(f"[benchmarks] {name}: {results[name]['workload'].get('wall_seconds', 0):.0f} s", flush=True)
    print("[benchmarks] optimizer step times ...", flush=True)
    optim = run_optimizers(args.quick)
    print("[benchmarks] LoRA step times ...", flush=True)
    optim["lora"] = run_lora(args.quick)
    argv = " ".join(["python -m benchmarks", *sys.argv[1:]])
    meta = {
        "command": argv,
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": 1,
        "peers": peers.peer_versions(),
        "seconds": time.perf_counter() - start,
        # Other jobs on a shared machine stretch wall times (ratios suffer less): record the load.
        "load_average": list(os.getloadavg()),
    }
    kept = scale.preserved_section(args.out)  # the scale section is written by `scale` only
    text = render(results, optim, meta)
    args.out.write_text(scale.splice(text, kept) if kept else text)
    payload = {"meta": meta, "workloads": results, "optimizers": optim}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    print(f"[benchmarks] wrote {args.out} and {args.out.with_suffix('.json')} in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
