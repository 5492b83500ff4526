"""landscape: loss-landscape diagnostics and sharpness-aware optimizers for PyTorch.

Quick start::

    import landscape
    result = landscape.analyze(model, (x, y), loss="cross_entropy", metrics="eigen,trace,tau")
    print(result.lambda_max, result.trace, result.tau_logit)

    H = landscape.hessian(model, (x, y))          # operators compose and multiply blocks of vectors
    HF = H - landscape.ggn(model, (x, y))         # the functional Hessian H_F = H - G
    scipy_view = HF.to_scipy()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time: `import landscape.models` stays light
    from torch import nn

    from landscape.analysis import AnalysisResult, analyze
    from landscape.curvature.linear_operator import LinearOperator
    from landscape.curvature.operators import GGNOperator, HessianOperator
    from landscape.errors import UserError
    from landscape.losses import LossLike
    from landscape.problem import Problem

_LAZY = {
    "AnalysisResult": "landscape.analysis",
    "analyze": "landscape.analysis",
    "LinearOperator": "landscape.curvature.linear_operator",
    "GGNOperator": "landscape.curvature.operators",
    "HessianOperator": "landscape.curvature.operators",
    "UserError": "landscape.errors",
    "Problem": "landscape.problem",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")


from landscape.provenance import __version__ as __version__  # noqa: E402  (one home: the installed metadata)

__all__ = [
    "AnalysisResult",
    "GGNOperator",
    "HessianOperator",
    "LinearOperator",
    "Problem",
    "UserError",
    "analyze",
    "functional_hessian",
    "ggn",
    "hessian",
]


def hessian(
    model: nn.Module, data: Any, loss: LossLike = "cross_entropy", **problem_options: Any
) -> HessianOperator:
    """The loss Hessian H of ``model`` on ``data`` as a linear operator (see :class:`Problem` for options).

    ``loss``: a name (``cross_entropy``, ``mse``, ``bce``, ``nll``, ``model``), a ``torch.nn``
    loss module or a callable (:mod:`landscape.losses`). Touches nothing: the operator evaluates
    copies of the parameters in eval mode and leaves the model's modes, flags, parameters and the
    global RNG as they are (true of every public function here).
    """
    from landscape.curvature.operators import HessianOperator
    from landscape.problem import Problem

    method = problem_options.pop("method", "auto")
    return HessianOperator(Problem(model, data, loss, **problem_options), method=method)


def ggn(model: nn.Module, data: Any, loss: LossLike = "cross_entropy", **problem_options: Any) -> GGNOperator:
    """The generalized Gauss-Newton matrix G = J^T H_out J (Singh, Mobahi, Agarwala, Dauphin 2025,
    arXiv 2502.02407, Eq. 8) as a linear operator; touches nothing (see :func:`hessian`)."""
    from landscape.curvature.operators import GGNOperator
    from landscape.problem import Problem

    method = problem_options.pop("method", "auto")
    return GGNOperator(Problem(model, data, loss, **problem_options), method=method)


def functional_hessian(
    model: nn.Module, data: Any, loss: LossLike = "cross_entropy", **problem_options: Any
) -> LinearOperator:
    """The functional Hessian H_F = H - G (arXiv 2502.02407, Eq. 8) as a linear operator; touches
    nothing (see :func:`hessian`)."""
    from landscape.curvature.operators import functional_hessian_operator
    from landscape.problem import Problem

    return functional_hessian_operator(Problem(model, data, loss, **problem_options))
