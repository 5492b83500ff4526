"""``density``: the spectral densities of H, G and H_F by stochastic Lanczos quadrature.

For a probe v, the Lanczos tridiagonal of (A, v) gives Gauss quadrature nodes and weights of the
spectral measure seen from v; averaging over Rademacher probes estimates the density
(1/n) sum_i delta(t - lambda_i) (Ubaru, Chen & Saad 2017, "Fast estimation of tr(f(A)) via
stochastic Lanczos quadrature", SIAM J. Matrix Anal. Appl. 38, Alg. 1; for network Hessians
Ghorbani, Krishnan & Xiao 2019, arXiv 1901.10159). ``density_probes`` probes of ``density_steps``
steps each (:func:`~landscape.curvature.density.slq`), the same probes for the three matrices; the
probes run in lockstep, one at a time or as a short recurrence without a stored basis, as the
memory plan says.

Written to ``analysis.json`` under ``density``: per matrix (``H``, ``G``, ``H_F``) a grid, the
Gaussian-broadened density on it, and the quadrature nodes and weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from landscape.metrics.base import GGN, Context, Metric, Outcome, SeedStream, Settings

if TYPE_CHECKING:
    from landscape.curvature.density import SpectralDensity
    from landscape.curvature.memory import Request
    from landscape.problem import Problem

DENSITY = "density"

SEEDS = SeedStream(5)
"""The SLQ probes (one seed: the same probes for H, G and H_F)."""


def payload(density: SpectralDensity, num_points: int = 400) -> dict[str, list[float]]:
    """One matrix's density as written: grid, density on it, nodes and weights."""
    import torch

    grid = density.default_grid(num_points)
    return {
        "grid": [float(x) for x in grid],
        "density": [float(x) for x in density.density(grid)],
        "nodes": [float(x) for x in torch.as_tensor(density.nodes).reshape(-1)],
        "weights": [float(x) for x in torch.as_tensor(density.weights).reshape(-1)],
    }


def compute(ctx: Context) -> Outcome:
    """SLQ densities of H, G and H_F."""
    from landscape.curvature.density import slq

    settings = ctx.settings
    seed = next(SEEDS.draw(settings.seed))
    plan = ctx.plan("density")
    options = {"mode": plan.slq_mode, "basis_device": plan.basis_device} if plan and plan.slq_mode else {}
    densities = {}
    for label, op in (("H", ctx.H), ("G", ctx.G), ("H_F", ctx.functional_hessian())):
        ctx.report(f"spectral density of {label} (SLQ)")
        found = slq(
            op,
            num_probes=settings.density_probes,
            num_steps=settings.density_steps,
            seed=seed,
            **options,
        )
        densities[label] = payload(found)
    return Outcome({DENSITY: densities})


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: the SLQ probes and steps."""
    from landscape.curvature.memory import Request

    return Request(density_probes=settings.density_probes, density_steps=settings.density_steps)


METRIC = Metric(
    name="density",
    description="spectral densities of H, G and H_F by stochastic Lanczos quadrature",
    order=50,
    keys=(),
    records=(DENSITY,),
    compute=compute,
    needs=frozenset({GGN}),
    seeds=SEEDS,
    memory=memory,
)
