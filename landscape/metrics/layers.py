"""``layers``: the curvature of each parameter tensor's diagonal block of H.

Per parameter tensor b: tr(H_bb) and tr(G_bb) by Hutchinson's estimator with probes shared by all
blocks (one set of ``layer_samples`` products for every block at once; Bekas, Kokiopoulou & Saad
2007, "An estimator for the diagonal of a matrix", the diagonal estimator summed over the block),
tr(H_F,bb) = tr(H_bb) - tr(G_bb) from the same probes, lambda_max(H_bb) by Lanczos on the block
(at most ``layer_max_iter`` steps; its residual says how far it got) and the block's share of the
tau split (:func:`landscape.metrics.tau.layer_values`). Its columns carry the names of the
whole-model quantities they restrict to the block (``layers.csv``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from landscape.metrics import ggn, lambda_max, tau, trace
from landscape.metrics.base import GGN, Context, Metric, Outcome, SeedStream, Settings

if TYPE_CHECKING:
    from landscape.curvature.memory import Request
    from landscape.problem import Problem


SEEDS = SeedStream(6)
"""The shared probes of the block traces (one seed for H and G), then one Lanczos start per tensor."""

COLUMNS = (
    trace.TRACE,
    trace.STDERR,
    ggn.TRACE,
    ggn.TRACE_STDERR,
    ggn.FUNCTIONAL_TRACE,
    lambda_max.LAMBDA_MAX,
    lambda_max.LAMBDA_MAX_RESIDUAL,
    tau.LOGIT,
    tau.FUNC,
    tau.CROSS,
)


def compute(ctx: Context) -> Outcome:
    """Block traces of H and G, each block's lambda_max and its tau split."""
    from landscape.curvature.eigen import lanczos
    from landscape.curvature.operators import BlockOperator
    from landscape.curvature.trace import block_traces

    settings = ctx.settings
    seeds = SEEDS.draw(settings.seed)
    whole = tau.split(ctx)
    blocks = ctx.problem.blocks()
    slices = [sl for _, sl in blocks]
    ctx.report("per-layer traces")
    probes = next(seeds)
    size = ctx.block_size  # the plan's probe columns per call
    htr = block_traces(ctx.H, slices, num_products=settings.layer_samples, seed=probes, block_size=size)
    gtr = block_traces(ctx.G, slices, num_products=settings.layer_samples, seed=probes, block_size=size)
    rows: list[dict[str, Any]] = []
    for i, (name, sl) in enumerate(blocks):
        ctx.report(f"per-layer lambda_max: {name}")
        size = sl.stop - sl.start
        top = lanczos(
            BlockOperator(ctx.H, sl),
            k=1,
            which="LA",
            tol=settings.tol,
            max_iter=min(size, settings.layer_max_iter),
            seed=next(seeds),
        )
        rows.append(
            {
                "name": name,
                "num_params": size,
                trace.TRACE: htr[i].estimate,
                trace.STDERR: htr[i].stderr,
                ggn.TRACE: gtr[i].estimate,
                ggn.TRACE_STDERR: gtr[i].stderr,
                ggn.FUNCTIONAL_TRACE: htr[i].estimate - gtr[i].estimate,
                lambda_max.LAMBDA_MAX: top.eigenvalues[0],
                lambda_max.LAMBDA_MAX_RESIDUAL: top.residuals[0],
                **tau.layer_values(whole.layers[i]),
            }
        )
    return Outcome(layers=rows)


def memory(problem: Problem, settings: Settings, chosen: tuple[str, ...]) -> Request:
    """The planner's request: the block traces' probes and each block's short Lanczos run."""
    from landscape.curvature.memory import Request

    largest = max((sl.stop - sl.start for _, sl in problem.blocks()), default=1)
    return Request(
        k=1,
        max_iter=min(settings.layer_max_iter, largest),
        trace_samples=settings.layer_samples,
        largest_block=largest,
    )


METRIC = Metric(
    name="layers",
    description="per parameter tensor: tr(H_bb), tr(G_bb), tr(H_F,bb), lambda_max(H_bb) and the tau split",
    order=60,
    keys=(),
    layer_columns=COLUMNS,
    compute=compute,
    needs=frozenset({GGN}),
    seeds=SEEDS,
    memory=memory,
)
