"""One workload, every library: product costs, eigenvalues, traces, densities, tau.

Run by ``python -m benchmarks run`` as ``python -m benchmarks.curvature WORKLOAD [--quick] --json
PATH`` (one process per workload, one torch thread). Timings are medians over interleaved
rounds (every case once per round, so drifts of a shared machine hit all cases alike); product
counts are exact (counted at each library's operator).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks import peers
from benchmarks.workloads import CACHE_DIR, WORKLOADS, Workload
from landscape.curvature.decomposition import sharpness_decomposition
from landscape.curvature.density import slq
from landscape.curvature.eigen import lanczos
from landscape.curvature.operators import GGNOperator, HessianOperator
from landscape.curvature.trace import hutchinson_trace, hutchpp_trace, xtrace
from landscape.metrics import tau as tau_metric
from landscape.metrics.base import Context, Settings
from landscape.problem import Problem

BLOCK = 16  # columns per block product (the block size of curvlinops' anchor measurement)
TRACE_BUDGETS = (12, 48, 192)


# ----------------------------------------------------------------------------------- helpers
def interleaved(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each case, every case once per round after one warm-up call."""
    for fn in cases.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            start = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of torch's CPU allocations during one call, above what was allocated before.

    From the torch profiler's allocation events (each op's own net allocation plus frees outside
    ops), summed in time order. Memory held before the call (e.g. retained graphs) is not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    items = []
    for e in prof.events():
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if delta:
            items.append((e.time_range.start, delta))
    items.sort()
    current = best = 0
    for _, delta in items:
        current += delta
        best = max(best, current)
    return int(best)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def rel_err(value: float, ref: float | None) -> float | None:
    """``|value - ref| / |ref|`` (None without a reference)."""
    if ref is None or ref == 0 or value is None or not math.isfinite(value):
        return None
    return abs(value - ref) / abs(ref)


class Report:
    """Rows of one workload's results (JSON-friendly)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def add(self, section: str, what: str, library: str, **fields: Any) -> None:
        """Append one measured row."""
        self.rows.append({"section": section, "what": what, "library": library, **fields})

    def fail(self, section: str, what: str, library: str, exc: BaseException) -> None:
        """Record a case that could not run (with the reason)."""
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        self.rows.append({"section": section, "what": what, "library": library, "failed": reason})


def attempt(report: Report, section: str, what: str, library: str, fn: Callable[[], None]) -> None:
    """Run ``fn``; a missing peer or a peer failure becomes a reported row, not a crash."""
    try:
        fn()
    except peers.PeerMissing as exc:
        report.add(section, what, library, failed=f"not installed ({exc})")
    except Exception as exc:  # a peer failing on a workload is a result
        report.fail(section, what, library, exc)
        traceback.print_exc(limit=2)


# --------------------------------------------------------------------------------- reference
def reference(w: Workload, problem: Problem, quick: bool) -> dict[str, Any]:
    """Reference eigenvalues and trace.

    ``dense`` (MLP): the Hessian assembled from ``n`` float64 products (reuse route, blocks of
    64), its exact trace (sum of the diagonal) and all eigenvalues from ``eigvalsh``; cached in
    ``benchmarks/.cache`` because it takes minutes. Otherwise: a long Lanczos run (200 steps,
    float64 recurrence, residual-checked) for the top-5 (and lambda_min is not referenced).
    """
    path = CACHE_DIR / f"reference-{w.name}-{w.num_params}-{w.train_loss:.6e}.json"
    if path.exists():
        return json.loads(path.read_text())
    ref: dict[str, Any]
    if w.reference == "dense" and not quick:
        H = HessianOperator(problem, method="reuse", block_size=64)
        start = time.perf_counter()
        torch.set_num_threads(2)  # not a timed section: use both cores for the reference
        try:
            dense = H.to_dense(block_size=64).double()
            dense = 0.5 * (dense + dense.T)
            eig = torch.linalg.eigvalsh(dense)
        finally:
            torch.set_num_threads(1)
        ref = {
            "kind": f"dense: Hessian from {w.num_params} float64 products, eigvalsh, exact trace",
            "lambda_max": float(eig[-1]),
            "top5": [float(x) for x in eig.flip(0)[:5]],
            "lambda_min": float(eig[0]),
            "trace": float(dense.diagonal().sum()),
            "num_negative": int((eig < 0).sum()),
            "seconds": time.perf_counter() - start,
        }
        del dense
    else:
        H = HessianOperator(problem)
        start = time.perf_counter()
        # A seed none of the measured runs uses: an independent Krylov space.
        steps = min(200, w.num_params)
        res = lanczos(H, k=5, tol=1e-10, max_iter=steps, min_iter=steps, seed=12345)
        ref = {
            "kind": "long Lanczos: 200 steps, full reorthogonalisation, float64 recurrence "
            f"({str(w.dtype).replace('torch.', '')} products)",
            "lambda_max": res.eigenvalues[0],
            "top5": res.eigenvalues,
            "top5_error_bounds": res.error_bounds,
            "lambda_min": None,
            "trace": None,
            "seconds": time.perf_counter() - start,
        }
        if w.reference == "dense":
            ref["kind"] += " (quick run: dense reference not cached yet)"
            return ref
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ref))
    return ref


# ------------------------------------------------------------------------------------ sections
def cost_section(w: Workload, problem: Problem, report: Report, rounds: int) -> dict[str, float]:
    """Time per gradient, HVP and GGN product (single vector and per column in blocks), peak memory."""
    n, dtype = problem.num_params, problem.dtype
    gen = torch.Generator().manual_seed(0)
    v1 = torch.randn(n, 1, generator=gen, dtype=torch.float64).to(dtype)
    Vb = torch.randn(n, BLOCK, generator=gen, dtype=torch.float64).to(dtype)
    cases: dict[str, Callable[[], Any]] = {}
    per: dict[str, int] = {}
    meta: dict[str, tuple[str, str, str]] = {}  # key -> (section, what, library)

    def add(key: str, section: str, what: str, library: str, fn: Callable[[], Any], cols: int = 1) -> None:
        cases[key], per[key], meta[key] = fn, cols, (section, what, library)

    params = [p for p in w.peer_model.parameters() if p.requires_grad]

    def plain_gradient() -> Any:
        logits = w.peer_model(w.x)
        return torch.autograd.grad(w.loss(logits, w.peer_targets), params)

    add("grad", "gradient", "gradient (full data)", "landscape", problem.gradient)
    add("grad_plain", "gradient", "gradient (plain torch autograd.grad)", "torch", plain_gradient)
    setups: dict[str, float] = {}
    for method in ("reuse", "forward-over-reverse", "double-backward"):
        H, secs = timed(lambda m=method: HessianOperator(problem, method=m, block_size=BLOCK))
        setups[f"H {method}"] = secs
        add(f"H-{method}-1", "hvp", f"HVP {method}, 1 vector", "landscape", lambda H=H: H.matmat(v1))
        add(
            f"H-{method}-b",
            "hvp",
            f"HVP {method}, block of {BLOCK}",
            "landscape",
            lambda H=H: H.matmat(Vb),
            BLOCK,
        )
    auto = HessianOperator(problem)
    report.notes.append(f"HessianOperator(method='auto') picked '{auto.method}' here")
    del auto
    for method in ("reuse", "stream"):
        G, secs = timed(lambda m=method: GGNOperator(problem, method=m, block_size=BLOCK))
        setups[f"G {method}"] = secs
        add(f"G-{method}-1", "ggn", f"GGN {method}, 1 vector", "landscape", lambda G=G: G.matmat(v1))
        add(
            f"G-{method}-b",
            "ggn",
            f"GGN {method}, block of {BLOCK}",
            "landscape",
            lambda G=G: G.matmat(Vb),
            BLOCK,
        )

    def add_pyhessian() -> None:
        for loader in (False, True):
            ph = peers.PyHessian(w, dataloader=loader)
            v = ph.random_vector(0)
            mode = "dataloader mode" if loader else "single batch (reused graph)"
            add(f"ph-{loader}", "hvp", f"HVP {mode}", "pyhessian", lambda ph=ph, v=v: ph.hvp(v))

    def add_curvlinops() -> None:
        for kind, section in (("hessian", "hvp"), ("ggn", "ggn")):
            cl, secs = timed(lambda k=kind: peers.Curvlinops(w, k))
            setups[f"curvlinops {kind}"] = secs
            label = "HVP" if kind == "hessian" else "GGN"
            add(f"cl-{kind}-1", section, f"{label} op @ v", "curvlinops", lambda cl=cl: cl.matmat(v1[:, 0]))
            add(
                f"cl-{kind}-b", section, f"{label} op @ V, block of {BLOCK}", "curvlinops",
                lambda cl=cl: cl.matmat(Vb), BLOCK,
            )  # fmt: skip

    def add_eigenthings() -> None:
        for kind, section in (("hessian", "hvp"), ("ggn", "ggn")):
            et = peers.Eigenthings(w, kind)
            label = "HVP" if kind == "hessian" else "GGN"
            add(f"et-{kind}-1", section, f"{label} matvec", "eigenthings", lambda et=et: et.matvec(v1[:, 0]))

    attempt(report, "hvp", "HVP", "pyhessian", add_pyhessian)
    attempt(report, "hvp", "HVP", "curvlinops", add_curvlinops)
    attempt(report, "hvp", "HVP", "eigenthings", add_eigenthings)

    secs = interleaved(cases, rounds)
    w.peer_model.zero_grad(set_to_none=True)  # PyHessian leaves its gradient graph in .grad
    grad = secs["grad"]
    for key, s in secs.items():
        section, what, library = meta[key]
        try:
            mem = peak_bytes(cases[key]) / per[key]
        except Exception:  # the profiler is a convenience; a failure must not lose the timing
            mem = None
        report.add(
            section,
            what,
            library,
            ms_per_vector=1e3 * s / per[key],
            x_gradient=(s / per[key]) / grad,
            peak_mb_per_vector=None if mem is None else mem / 1e6,
        )
    for key, s in setups.items():
        report.add("setup", f"construct {key}", "landscape" if key[0] in "HG" else key.split()[0], ms=1e3 * s)
    return {"gradient_s": grad}


ANALYZE_ROW = "lambda_max metric (analyze)"
TAU_AS_ANALYZE = "as analyze() does it"
ANALYZE_LIBRARY = "landscape (analyze)"  # apart from the lanczos rows that the goals table reads
PYHESSIAN_DEFAULT = "eigenvalues() defaults (power iteration, tol 1e-3)"


def metric_row(w: Workload, ref: dict[str, Any], report: Report, seed: int) -> None:
    """``landscape.analyze(metrics="lambda_max", tol=1e-3)`` as a user calls it: the problem, the
    loss and gradient, the memory plan and the Lanczos run for the top eigenvalue, all timed."""
    from landscape.analysis import analyze

    res, s = timed(
        lambda: analyze(w.model, (w.x, w.y), metrics="lambda_max", tol=1e-3, seed=seed, dtype=w.dtype)
    )
    report.add(
        "lambda_max", ANALYZE_ROW, ANALYZE_LIBRARY, seed=seed, products=res.hvp_count, seconds=s,
        error=rel_err(res.lambda_max, ref.get("lambda_max")), converged=res.lambda_max_converged,
        error_bound=res.lambda_max_error_bound / abs(res.lambda_max), route=res.hvp_method,
    )  # fmt: skip


def against_pyhessian(report: Report) -> None:
    """Each analyze row's time over PyHessian's default ``eigenvalues()`` of the same seed
    (``x_pyhessian``), both at their own certified tolerance 1e-3."""
    peer = {
        r.get("seed"): r["seconds"]
        for r in report.rows
        if r["library"] == "pyhessian" and r["what"] == PYHESSIAN_DEFAULT and "seconds" in r
    }
    for row in report.rows:
        if row["what"] == ANALYZE_ROW and "seconds" in row and peer.get(row.get("seed")):
            row["x_pyhessian"] = row["seconds"] / peer[row["seed"]]


def eigen_section(w: Workload, problem: Problem, ref: dict[str, Any], report: Report, quick: bool) -> None:
    """lambda_max to 1e-3, top-5 and (MLP, full run) lambda_min: products, wall time, error."""
    lmax, top5 = ref.get("lambda_max"), ref.get("top5") or []
    seeds = (0,) if quick else (0, 1, 2)

    def top5_err(values: list[float]) -> float | None:
        if len(top5) < 5 or len(values) < 5:
            return None
        return max(abs(a - b) / abs(b) for a, b in zip(sorted(values, reverse=True)[:5], top5, strict=True))

    for seed in seeds:
        H = HessianOperator(problem)
        res, s = timed(lambda H=H, seed=seed: lanczos(H, k=1, tol=1e-3, seed=seed))
        report.add(
            "lambda_max", "lanczos(k=1, tol=1e-3)", "landscape", seed=seed, products=res.num_products,
            seconds=s, error=rel_err(res.eigenvalues[0], lmax), converged=res.converged[0],
            error_bound=res.error_bounds[0] / abs(res.eigenvalues[0]),
        )  # fmt: skip
        res, s = timed(lambda H=H, seed=seed: lanczos(H, k=5, tol=1e-3, seed=seed))
        report.add(
            "top5", "lanczos(k=5, tol=1e-3)", "landscape", seed=seed, products=res.num_products,
            seconds=s, error=top5_err(res.eigenvalues), converged=all(res.converged),
        )  # fmt: skip

        def pyhessian(seed: int = seed) -> None:
            ph = peers.PyHessian(w)
            try:
                (vals, count), s = timed(lambda: ph.eigenvalues(top_n=1, seed=seed))
                report.add(
                    "lambda_max", PYHESSIAN_DEFAULT, "pyhessian",
                    seed=seed, products=count, seconds=s, error=rel_err(abs(vals[0]), lmax),
                )  # fmt: skip
                if not quick:
                    (vals, count), s = timed(lambda: ph.eigenvalues(top_n=5, seed=seed))
                    report.add(
                        "top5", "eigenvalues(top_n=5) defaults", "pyhessian", seed=seed, products=count,
                        seconds=s, error=top5_err(vals),
                    )  # fmt: skip
            finally:
                ph.close()

        def eigenthings(seed: int = seed) -> None:
            et = peers.Eigenthings(w)
            (vals, count), s = timed(lambda: et.lanczos(k=1, seed=seed))
            report.add(
                "lambda_max", "lanczos(k=1) defaults (max_iter=2)", "eigenthings", seed=seed,
                products=count, seconds=s, error=rel_err(vals[0], lmax),
            )  # fmt: skip
            (vals, count), s = timed(lambda: et.lanczos(k=5, seed=seed))
            report.add(
                "top5", "lanczos(k=5) defaults (max_iter=10)", "eigenthings", seed=seed, products=count,
                seconds=s, error=top5_err(vals),
            )  # fmt: skip
            if seed == 0 and not quick:
                (val, count), s = timed(lambda: et.power_iteration(seed=seed))
                report.add(
                    "lambda_max", "power_iteration_one() defaults (tol 1e-4)", "eigenthings", seed=seed,
                    products=count, seconds=s, error=rel_err(val, lmax),
                )  # fmt: skip

        attempt(
            report,
            "lambda_max",
            ANALYZE_ROW,
            ANALYZE_LIBRARY,
            lambda seed=seed: metric_row(w, ref, report, seed),
        )
        attempt(report, "lambda_max", "eigenvalues", "pyhessian", pyhessian)
        attempt(report, "lambda_max", "lanczos", "eigenthings", eigenthings)
    against_pyhessian(report)

    def curvlinops() -> None:
        cl = peers.Curvlinops(w)
        (vals, count), s = timed(lambda: cl.eigsh(k=1))
        report.add(
            "lambda_max", "eigsh(k=1, which='LA') on .to_scipy() (scipy defaults)", "curvlinops",
            products=count, seconds=s, error=rel_err(float(vals[0]), lmax),
        )  # fmt: skip
        (vals, count), s = timed(lambda: cl.eigsh(k=5))
        report.add(
            "top5", "eigsh(k=5, which='LA') (scipy defaults)", "curvlinops", products=count, seconds=s,
            error=top5_err([float(v) for v in vals]),
        )  # fmt: skip
        if w.reference == "dense" and not quick:
            (vals, count), s = timed(lambda: cl.eigsh(k=1, which="SA"))
            report.add(
                "lambda_min", "eigsh(k=1, which='SA') (scipy defaults)", "curvlinops", products=count,
                seconds=s, error=rel_err(float(vals[0]), ref.get("lambda_min")),
            )  # fmt: skip

    attempt(report, "lambda_max", "eigsh", "curvlinops", curvlinops)

    if w.reference == "dense" and not quick and ref.get("lambda_min") is not None:
        H = HessianOperator(problem)
        res, s = timed(lambda: lanczos(H, k=1, which="SA", tol=1e-2, seed=0))
        report.add(
            "lambda_min", "lanczos(which='SA', tol=1e-2)", "landscape", products=res.num_products,
            seconds=s, error=rel_err(res.eigenvalues[0], ref["lambda_min"]), converged=res.converged[0],
            residual=res.residuals[0], error_bound=res.error_bounds[0],
        )  # fmt: skip


def trace_section(w: Workload, problem: Problem, ref: dict[str, Any], report: Report, quick: bool) -> None:
    """Trace error against the number of products, every estimator on ONE shared operator.

    All estimators (ours and the peers') multiply with the same operator (our reuse HVP), so the
    errors compare the algorithms only; operator speed is measured in the cost section. The peers'
    own end-to-end runs at 48 products are timed separately.
    """
    exact = ref.get("trace")
    err_key = "median_error" if exact else "median_estimate"
    H = HessianOperator(problem, method="reuse", block_size=64)
    seeds = range(1) if quick else range(3)
    budgets = (48,) if quick else TRACE_BUDGETS
    ours = {"hutchinson": hutchinson_trace, "hutchpp": hutchpp_trace, "xtrace": xtrace}
    for m in budgets:
        for name, fn in ours.items():
            errs, secs = [], []
            for seed in seeds:
                res, s = timed(lambda fn=fn, m=m, seed=seed: fn(H, m, seed=seed))
                errs.append(rel_err(res.estimate, exact) if exact else res.estimate)  # estimate w/o reference
                secs.append(s)
            report.add(
                "trace", name, "landscape", products=m, **{err_key: float(np.median(errs))},
                seconds=float(np.median(secs)), seeds=len(errs), shared_operator=True,
            )  # fmt: skip

        def run_curvlinops(m: int = m) -> None:
            op = peers.curvlinops_wrap(H.n, H.dtype, H.matmat)
            lib = peers._import("curvlinops")
            for name, fn in (
                ("hutchinson_trace", lib.hutchinson_trace),
                ("hutchpp_trace", lib.hutchpp_trace),
                ("xtrace", lib.xtrace),
            ):
                errs = []
                for seed in seeds:
                    torch.manual_seed(seed)
                    est = float(fn(op, m))
                    errs.append(rel_err(est, exact) if exact else est)
                report.add(
                    "trace", name, "curvlinops", products=m, **{err_key: float(np.median(errs))},
                    seeds=len(errs), shared_operator=True,
                )  # fmt: skip

        def run_eigenthings(m: int = m) -> None:
            lib = peers._import("hessian_eigenthings")
            op = peers.eigenthings_wrap(H.n, H.dtype, H.matvec)
            for method in ("hutchinson", "hutch++"):
                errs = []
                for seed in seeds:
                    est = float(lib.trace(op, num_matvecs=m, method=method, seed=seed).estimate)
                    errs.append(rel_err(est, exact) if exact else est)
                report.add(
                    "trace", f"trace(method='{method}')", "eigenthings", products=m,
                    **{err_key: float(np.median(errs))}, seeds=len(errs), shared_operator=True,
                )  # fmt: skip

        attempt(report, "trace", "estimators", "curvlinops", run_curvlinops)
        attempt(report, "trace", "estimators", "eigenthings", run_eigenthings)

    def run_pyhessian() -> None:
        ph = peers.PyHessian(w)
        try:
            errs, counts, secs = [], [], []
            for seed in seeds:
                (est, count), s = timed(lambda seed=seed: ph.trace(seed=seed))
                errs.append(rel_err(est, exact) if exact else est)
                counts.append(count)
                secs.append(s)
            report.add(
                "trace", "trace() defaults (Hutchinson, tol 1e-3)", "pyhessian",
                products=int(np.median(counts)), **{err_key: float(np.median(errs))},
                seconds=float(np.median(secs)), seeds=len(errs), shared_operator=False,
            )  # fmt: skip
        finally:
            ph.close()

    attempt(report, "trace", "trace()", "pyhessian", run_pyhessian)

    # End-to-end at 48 products, each library on its own operator (wall time includes its products).
    def e2e_curvlinops() -> None:
        cl = peers.Curvlinops(w)
        for method in ("hutchpp", "xtrace"):
            est, s = timed(lambda method=method: cl.trace(method, 48, 0))
            report.add("trace_e2e", method, "curvlinops", products=48, seconds=s, error=rel_err(est, exact))

    def e2e_eigenthings() -> None:
        et = peers.Eigenthings(w)
        est, s = timed(lambda: et.trace("hutch++", 48, 0))
        report.add("trace_e2e", "hutch++", "eigenthings", products=48, seconds=s, error=rel_err(est, exact))

    H2 = HessianOperator(problem)
    for name, fn in (("hutchpp", hutchpp_trace), ("xtrace", xtrace)):
        res, s = timed(lambda fn=fn: fn(H2, 48, seed=0))
        report.add("trace_e2e", name, "landscape", products=48, seconds=s, error=rel_err(res.estimate, exact))
    attempt(report, "trace_e2e", "trace", "curvlinops", e2e_curvlinops)
    if not quick:
        attempt(report, "trace_e2e", "trace", "eigenthings", e2e_eigenthings)


def density_section(w: Workload, problem: Problem, report: Report, quick: bool, peers_too: bool) -> None:
    """SLQ density: ours (defaults: 8 probes x 64 steps, lockstep blocks) and the peers' defaults."""
    H = HessianOperator(problem)
    res, s = timed(lambda: slq(H))
    report.add(
        "density", "slq() defaults (8 probes x 64 steps)", "landscape", products=res.num_products, seconds=s
    )
    if not peers_too:
        return

    def eigenthings() -> None:
        et = peers.Eigenthings(w)
        _, s = timed(et.spectral_density)
        report.add(
            "density", "spectral_density() defaults (10 runs x 80 steps)", "eigenthings",
            products=et.counter.count, seconds=s,
        )  # fmt: skip

    def curvlinops() -> None:
        cl = peers.Curvlinops(w)
        _, s = timed(lambda: cl.spectrum(ncv=64))
        report.add(
            "density", "lanczos_approximate_spectrum(ncv=64) (Papyan 2020)", "curvlinops",
            products=cl.counter.count, seconds=s,
        )  # fmt: skip

    def pyhessian() -> None:
        ph = peers.PyHessian(w)
        try:
            _, s = timed(ph.density)
            report.add("density", "density() defaults", "pyhessian", products=ph.counter.count, seconds=s)
        finally:
            ph.close()

    attempt(report, "density", "density", "pyhessian", pyhessian)
    attempt(report, "density", "density", "curvlinops", curvlinops)
    if not quick:
        attempt(report, "density", "density", "eigenthings", eigenthings)


def tau_section(problem: Problem, report: Report, rounds: int) -> None:
    """tau_logit/func/cross end to end (operators built, gradient, one HVP, one GGN product).

    Three ways: as ``analyze`` does it (its ``Context`` with the ``tau`` metric alone: ``H``, the
    loss and the gradient read off ``H``'s graphs, ``G`` sharing ``H``'s forward, and the split
    per parameter tensor too); the same with the Python API's two operators
    (``GGNOperator(problem, hessian=H)``, ``H.gradient()``); and independent operators with
    ``problem.gradient()``. Budgets: one gradient + one HVP + one GGN product, (a) with the reuse
    routes' graphs already built (the cheapest products there are) and (b) streaming single
    products (each with its forward).
    """

    def tau_analyze() -> Any:
        ctx = Context(problem, Settings(), [tau_metric.METRIC])
        return tau_metric.compute(ctx)

    def tau_shared() -> Any:
        H = HessianOperator(problem)
        G = GGNOperator(problem, hessian=H)
        return sharpness_decomposition(H, G, H.gradient())

    def tau_separate() -> Any:
        H, G = HessianOperator(problem), GGNOperator(problem)
        return sharpness_decomposition(H, G, problem.gradient())

    H, G = HessianOperator(problem), GGNOperator(problem)
    Hs, Gs = HessianOperator(problem, method="double-backward"), GGNOperator(problem, method="stream")
    v = torch.randn(problem.num_params, 1, dtype=problem.dtype, generator=torch.Generator().manual_seed(0))
    secs = interleaved(
        {
            "analyze": tau_analyze,
            "shared": tau_shared,
            "separate": tau_separate,
            "grad": problem.gradient,
            "hvp": lambda: H.matmat(v),
            "ggn": lambda: G.matmat(v),
            "hvp_stream": lambda: Hs.matmat(v),
            "ggn_stream": lambda: Gs.matmat(v),
        },
        rounds,
    )
    built = secs["grad"] + secs["hvp"] + secs["ggn"]
    stream = secs["grad"] + secs["hvp_stream"] + secs["ggn_stream"]
    for key, what in (
        ("analyze", TAU_AS_ANALYZE),
        ("shared", "one shared forward (hessian=H)"),
        ("separate", "independent operators, problem.gradient()"),
    ):
        report.add(
            "tau", what, "landscape", ms=1e3 * secs[key], budget_ms=1e3 * built, x_budget=secs[key] / built,
            budget_stream_ms=1e3 * stream, x_budget_stream=secs[key] / stream,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------ main
def run_workload(name: str, quick: bool) -> dict[str, Any]:
    """All sections for one workload; returns the JSON-friendly result."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    w = WORKLOADS[name]()
    problem = Problem(w.model, (w.x, w.y), dtype=w.dtype)
    report = Report()
    rounds = 3 if quick else 5
    small = name in ("mlp", "cnn")
    info: dict[str, Any] = {
        "name": w.name,
        "description": w.description,
        "num_params": w.num_params,
        "dtype": str(w.dtype).replace("torch.", ""),
        "train_loss": w.train_loss,
        "num_targets": problem.num_targets,
        "threads": torch.get_num_threads(),
    }
    ref, s = timed(lambda: reference(w, problem, quick))
    info["reference"] = ref
    info["reference_seconds_this_run"] = s
    cost_section(w, problem, report, rounds)
    eigen_section(w, problem, ref, report, quick or not small)
    if name == "mlp":  # the only workload with an exact trace; elsewhere it would cost minutes
        trace_section(w, problem, ref, report, quick)
    if not quick or name == "mlp":  # 512 products: minutes on the larger models, too long for --quick
        density_section(w, problem, report, quick, peers_too=name == "mlp")
    tau_section(problem, report, rounds)
    info["seconds"] = time.perf_counter() - start
    return {"workload": info, "rows": report.rows, "notes": report.notes}


def main() -> None:
    """CLI: ``python -m benchmarks.curvature WORKLOAD [--quick] [--json PATH]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run_workload(args.workload, args.quick)
    result["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "peers": peers.peer_versions(),
    }
    text = json.dumps(result, indent=1, default=lambda o: None if isinstance(o, Tensor) else str(o))
    if args.json:
        args.json.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
