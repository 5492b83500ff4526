"""``landscape demo``: the whole tool on the built-in data, offline, in a few minutes on a small CPU.

What it runs (the budgets of :data:`FULL`; :data:`QUICK` shrinks every one of them):

1. vision: the built-in MLP on the built-in digits, one suite of AdamW, SAM, Functional-SAM,
   preconditioned Functional-SAM and fSGLD (same seed: same initial weights, same batches),
   with curvature diagnostics every few steps;
2. a rho sweep of SAM and of preconditioned Functional-SAM on the same vision problem, trained
   without diagnostics (only their eval loss enters the report: Functional-SAM Fig. 3);
3. language: the built-in byte-level transformer LM on the built-in text corpus, the same five
   methods, with diagnostics;
4. the final analysis of every final checkpoint of 1 and 3 (top and bottom eigenvalues, traces of
   H, G and H_F, tau split, spectral densities), written to each run's ``analysis.json``;
5. the report (:func:`landscape.report.build.build_report`): comparison tables, curves, densities,
   loss-landscape slices, pruning, the rho sweep and the vision/language tau contrast.

The runs go to a temporary folder (removed afterwards) unless ``runs_dir`` keeps them.
Measured on the 2-core development machine, one torch thread, shared with other jobs: 180-250 s
for :data:`FULL` (language training about half of it), 40-60 s for :data:`QUICK`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from landscape import runs
from landscape.errors import UserError
from landscape.report.build import ReportResult, SliceSettings, build_report

__all__ = ["DEMO_METHODS", "FULL", "QUICK", "DemoPlan", "DemoResult", "run_demo"]

Progress = Callable[[str], None]

DEMO_METHODS = ("adamw", "sam", "func-sam", "precond-func-sam", "fsgld")
"""The methods of both suites: the baseline, SAM, the two Functional-SAM variants and fSGLD."""


@dataclass(frozen=True)
class DomainPlan:
    """Budgets of one suite: training steps, diagnostics and the final analysis."""

    model: str
    steps: int
    diagnose_every: int
    diagnose_samples: int | None = None
    diagnose_max_iter: int = 20
    diagnose_trace_samples: int = 24
    log_every: int = 10
    analysis_samples: int | None = None
    analysis_trace_samples: int = 48
    analysis_max_iter: int = 100
    density_steps: int = 40
    density_probes: int = 1


@dataclass(frozen=True)
class DemoPlan:
    """Everything the demo runs; see :data:`FULL` and :data:`QUICK`."""

    vision: DomainPlan
    language: DomainPlan
    sweeps: dict[str, tuple[float, ...]] = field(default_factory=dict)
    slices: SliceSettings = field(default_factory=SliceSettings)
    sparsities: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    label: str = "full"


# Measured on the 2-core machine, one torch thread, with other jobs running: about 0.3 s per MLP
# diagnostic and 1.5 s per transformer diagnostic on 8 sequences; the transformer's final analysis
# about 0.04 s per curvature product on 16 sequences (~300 products with these budgets).
FULL = DemoPlan(
    vision=DomainPlan("mlp", steps=300, diagnose_every=25, analysis_trace_samples=64, analysis_max_iter=150),
    language=DomainPlan(
        "transformer",
        steps=300,
        diagnose_every=50,
        diagnose_samples=8,
        diagnose_max_iter=12,
        diagnose_trace_samples=12,
        analysis_samples=16,
        analysis_trace_samples=32,
        analysis_max_iter=60,
        density_steps=30,
    ),
    # The default rho of each method (0.05 and 0.001) comes from the vision suite itself.
    sweeps={"sam": (0.01, 0.1, 0.2, 0.5), "precond-func-sam": (0.0001, 0.0003, 0.003, 0.01)},
    slices=SliceSettings(line_steps=41, plane_steps=17, path_steps=31),
)
QUICK = DemoPlan(
    vision=DomainPlan(
        "mlp", steps=60, diagnose_every=20, log_every=5, analysis_trace_samples=16, analysis_max_iter=40
    ),
    language=DomainPlan(
        "transformer",
        steps=30,
        diagnose_every=15,
        diagnose_samples=4,
        diagnose_max_iter=6,
        diagnose_trace_samples=6,
        log_every=5,
        analysis_samples=4,
        analysis_trace_samples=12,
        analysis_max_iter=20,
        density_steps=12,
    ),
    sweeps={"sam": (0.2,)},
    slices=SliceSettings(line_steps=15, plane_steps=7, path_steps=11, targets=512),
    sparsities=(0.0, 0.3, 0.6, 0.9),
    label="quick",
)


@dataclass
class DemoResult:
    """The report written and the wall-clock seconds of each stage."""

    report: ReportResult
    seconds: dict[str, float]
    runs_dir: Path | None

    @property
    def index(self) -> Path:
        """The report's ``index.html``."""
        return self.report.index


def _base_config(plan: DomainPlan, seed: int, diagnose: bool = True, device: str = "auto") -> Any:
    from landscape.train import RunConfig

    return RunConfig(
        model=plan.model,
        device=device,
        steps=plan.steps,
        seed=seed,
        log_every=plan.log_every,
        checkpoint_every=0,  # final.pt is all the report needs; step checkpoints only cost disk
        diagnose_every=plan.diagnose_every if diagnose else 0,
        diagnose_samples=plan.diagnose_samples if diagnose else None,
        diagnose_max_iter=plan.diagnose_max_iter,
        diagnose_trace_samples=plan.diagnose_trace_samples,
        final_analysis=False,  # analysed below with the demo's own budgets (see _analyse)
    )


def _train_suite(configs: list[Any], folder: Path, report: Progress) -> None:
    from landscape.train import TrainProgress, train_suite

    def relay(event: TrainProgress) -> None:
        if event.phase == "train":
            report(f"{folder.name}: training {event.run}, step {event.step}/{event.steps}")
        elif event.phase == "diagnose":
            report(f"{folder.name}: {event.run}, curvature diagnostics at step {event.step}")

    train_suite(configs, folder, relay)


def _analyse(
    run_dir: Path,
    plan: DomainPlan,
    seed: int,
    report: Progress,
    device: str = "auto",
    max_memory: str | None = None,
) -> None:
    """The final analysis of ``run_dir/final.pt`` as ``landscape train`` does it
    (:func:`landscape.train.analyse_final`), with the demo's budgets and without ``density.png``
    (the report draws the densities itself, and each PNG costs ~0.7 s)."""
    from landscape.train import analyse_final

    summary = runs.read_summary(run_dir) or {}
    analyse_final(
        run_dir,
        run=run_dir.name,
        metrics="lambda_max,eigen,lambda_min,trace,noise,m_sharpness,ggn,tau,density",
        seed=seed,
        samples=plan.analysis_samples,
        options={
            "top_k": 3,
            "trace_samples": plan.analysis_trace_samples,
            "max_iter": plan.analysis_max_iter,
            "density_probes": plan.density_probes,
            "density_steps": plan.density_steps,
            "m_draws": 2,
            "noise_probes": 16,
            "device": device,
            "max_memory": max_memory,
        },
        context={"eval_loss": summary.get("eval_loss"), "eval_accuracy": summary.get("eval_accuracy")},
        figures=False,
        progress=lambda label: report(f"{run_dir.parent.name}: analysing {run_dir.name}, {label}"),
    )


@runs.holding("out_dir")  # one writer of the report folder from the start
def run_demo(
    out_dir: str | Path = "reports/demo",
    quick: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    runs_dir: str | Path | None = None,
    plan: DemoPlan | None = None,
    device: str = "auto",
    max_memory: str | None = None,
) -> DemoResult:
    """Train the demo suites, analyse their final checkpoints and write the report to ``out_dir``.

    Args:
        out_dir: the report folder.
        quick: the small plan (:data:`QUICK`, under a minute) instead of :data:`FULL`.
        seed: seeds the models, the data order, every estimator and the report's slices.
        progress: called with a short label at each stage.
        runs_dir: keep the run folders here (a new or empty folder); default: a temporary folder,
            removed at the end.
        plan: a custom plan (overrides ``quick``).
        device: where to train and analyse (``auto``: CUDA when available; ``cpu``, ``cuda:N``,
            ...; see :func:`landscape.distributed.resolve_device`).
        max_memory: the memory limit the final analyses are planned for (``"12GB"``; default:
            most of the free device memory).
    """
    from landscape.train import expand_suite

    chosen = plan or (QUICK if quick else FULL)
    report = progress or (lambda _label: None)
    out = runs.ensure_writable_dir(Path(out_dir))
    if seed < 0:
        raise UserError(f"--seed must be non-negative, got {seed}")
    keep = runs_dir is not None
    if keep:
        root = runs.ensure_writable_dir(Path(runs_dir))  # type: ignore[arg-type]
        if root.exists() and any(root.iterdir()):
            raise UserError(f"runs folder {root} is not empty: choose a new one")
    else:
        root = Path(tempfile.mkdtemp(prefix="landscape-demo-"))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    try:
        stamp = time.perf_counter()
        vision = root / "vision"
        _train_suite(
            expand_suite(_base_config(chosen.vision, seed, device=device), list(DEMO_METHODS), []),
            vision,
            report,
        )
        seconds["vision training"] = time.perf_counter() - stamp

        stamp = time.perf_counter()
        sweeps = []
        for method, rhos in chosen.sweeps.items():
            folder = root / f"vision-rho-{method}"
            base = _base_config(chosen.vision, seed, diagnose=False, device=device)
            configs = expand_suite(base, [method], list(rhos))
            if len(rhos) == 1:  # expand_suite names a run by rho only when it sweeps several
                configs = [replace(c, name=f"{method}-rho{rhos[0]:g}") for c in configs]
            _train_suite(configs, folder, report)
            sweeps.append(folder)
        seconds["vision rho sweep"] = time.perf_counter() - stamp

        stamp = time.perf_counter()
        language = root / "language"
        _train_suite(
            expand_suite(_base_config(chosen.language, seed, device=device), list(DEMO_METHODS), []),
            language,
            report,
        )
        seconds["language training"] = time.perf_counter() - stamp

        stamp = time.perf_counter()
        for suite, domain in ((vision, chosen.vision), (language, chosen.language)):
            for method in DEMO_METHODS:
                _analyse(suite / method, domain, seed, report, device, max_memory)
        seconds["final analysis"] = time.perf_counter() - stamp

        import torch

        notes = [
            f"Demo plan '{chosen.label}': vision {chosen.vision.model} {chosen.vision.steps} steps, diagnostics "
            f"every {chosen.vision.diagnose_every}; language {chosen.language.model} {chosen.language.steps} "
            f"steps, diagnostics every {chosen.language.diagnose_every} on {chosen.language.diagnose_samples} "
            f"sequences; rho sweeps {', '.join(f'{m}: {list(r)}' for m, r in chosen.sweeps.items())}.",
            "Wall-clock before the report ("
            + f"{torch.get_num_threads()} thread(s)): "
            + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
            + ".",
        ]
        stamp = time.perf_counter()
        result = build_report(
            [vision, language],
            out,
            seed=seed,
            progress=report,
            sweep_dirs=sweeps,
            title="landscape demo: which optimizer finds the flatter minimum, and is it flat for the right reason?",
            sparsities=chosen.sparsities,
            slice_settings=chosen.slices,
            notes=notes,
            device=device,
        )
        seconds["report"] = time.perf_counter() - stamp
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    seconds["total"] = time.perf_counter() - started
    return DemoResult(result, seconds, root if keep else None)
