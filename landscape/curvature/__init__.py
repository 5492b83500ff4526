"""The curvature engine: operators (H, G, H_F), eigenvalues (Lanczos), traces, densities, tau."""

from landscape.curvature.decomposition import SharpnessSplit, sharpness_decomposition
from landscape.curvature.density import SpectralDensity, slq
from landscape.curvature.eigen import EigenResult, dense_eigenvalues, lanczos, power_iteration
from landscape.curvature.linear_operator import DenseOperator, LinearOperator, as_operator
from landscape.curvature.operators import (
    BlockOperator,
    GGNOperator,
    HessianOperator,
    functional_hessian_operator,
)
from landscape.curvature.trace import (
    TraceResult,
    block_traces,
    hutchinson_trace,
    hutchpp_trace,
    trace_estimate,
    xtrace,
    xtrace_difference,
)

__all__ = [
    "BlockOperator",
    "DenseOperator",
    "EigenResult",
    "GGNOperator",
    "HessianOperator",
    "LinearOperator",
    "SharpnessSplit",
    "SpectralDensity",
    "TraceResult",
    "as_operator",
    "block_traces",
    "dense_eigenvalues",
    "functional_hessian_operator",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "power_iteration",
    "sharpness_decomposition",
    "slq",
    "trace_estimate",
    "xtrace",
    "xtrace_difference",
]
