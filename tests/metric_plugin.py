"""A throw-away metric for the tests, written as a new metric would be: one module, nothing else.

``grad_norm_sq``: ||grad L||^p (``p`` = its own option ``grad_power``, default 2) of the whole model
and, per parameter tensor, of its block of the gradient. It needs no operator beyond the Hessian's
gradient (so it costs no product), runs as a training diagnostic and is shown everywhere a metric
can be shown.
"""

from __future__ import annotations

from landscape.metrics import (
    Column,
    Context,
    Curve,
    Diagnostic,
    Headline,
    Metric,
    Outcome,
    Row,
    SeedStream,
    Status,
)

GRAD_NORM_SQ = "grad_norm_sq"
LAYER_GRAD_NORM_SQ = "layer_grad_norm_sq"
LABEL = "‖g‖²"


def compute(ctx: Context) -> Outcome:
    power = ctx.settings.option("grad_power")
    gradient = ctx.gradient.double()
    rows = [
        {
            "name": name,
            "num_params": sl.stop - sl.start,
            LAYER_GRAD_NORM_SQ: float(gradient[sl].norm()) ** power,
        }
        for name, sl in ctx.problem.blocks()
    ]
    return Outcome({GRAD_NORM_SQ: float(gradient.norm()) ** power}, layers=rows)


METRIC = Metric(
    name="grad_norm_sq",
    description="||grad L||^p of the whole model and per parameter tensor",
    order=45,
    keys=(GRAD_NORM_SQ,),
    layer_columns=(LAYER_GRAD_NORM_SQ,),
    compute=compute,
    seeds=SeedStream.named("grad_norm_sq"),
    options={"grad_power": 2},
    rows=(Row("||grad L||^2", GRAD_NORM_SQ, note="squared gradient norm"),),
    columns=(Column(GRAD_NORM_SQ, LABEL, flatness="lower"),),
    curves=(Curve(GRAD_NORM_SQ, LABEL, "squared gradient norm ‖g‖²", caption="squared gradient norm"),),
    diagnostic=Diagnostic(keys=(GRAD_NORM_SQ,), status=(Status(GRAD_NORM_SQ, "g2"),)),
    headlines=(Headline(GRAD_NORM_SQ, "|g|^2"),),
)
