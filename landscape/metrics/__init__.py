"""The metrics of ``landscape analyze``: one module each, and the registry that everything reads.

Built in, in order (``--metrics`` chooses among them; each costs only its own products):

* ``eigen`` (:mod:`~landscape.metrics.eigen`): top-k eigenvalues of H and lambda_min;
* ``trace`` (:mod:`~landscape.metrics.trace`): tr(H) with a standard error;
* ``noise`` (:mod:`~landscape.metrics.noise`): the gradient-noise trace tr(V);
* ``m_sharpness`` (:mod:`~landscape.metrics.msharpness`): S_m for a list of micro-batch sizes m;
* ``ggn`` (:mod:`~landscape.metrics.ggn`): lambda_max(G), tr(G) and tr(H_F);
* ``tau`` (:mod:`~landscape.metrics.tau`): the split of the sharpness gradient;
* ``density`` (:mod:`~landscape.metrics.density`): spectral densities of H, G and H_F;
* ``layers`` (:mod:`~landscape.metrics.layers`): per parameter tensor.

Shared pieces: :mod:`~landscape.metrics.sketch` (the XTrace sketch of tr H, tr G and tr H_F) and
:func:`landscape.metrics.tau.split`. What a metric declares: :mod:`~landscape.metrics.base`.

**A new metric is one module here** that defines ``METRIC = Metric(...)`` (its keys as module
constants, its compute function, its seed stream, how it is shown) plus its test: on import, this
package registers every module of the package that defines ``METRIC``, in ``order``. Nothing else
changes: ``analyze`` runs it, ``analysis.json`` holds its keys, ``landscape analyze`` prints its
rows, the training diagnostics run it when it declares a ``Diagnostic``, and the report shows its
columns and curves. A metric from elsewhere (a user's package) is added with :func:`register`. A metric's own
options reach ``landscape analyze`` as ``--option NAME=VALUE`` (:func:`parse_options`).
"""

from __future__ import annotations

import importlib
import pkgutil

from landscape.metrics.base import (
    GGN,
    Column,
    Context,
    Curve,
    Diagnostic,
    Headline,
    Metric,
    Outcome,
    Row,
    SeedStream,
    Settings,
    Status,
    format_number,
)
from landscape.metrics.registry import (
    LiveNames,
    comparison_columns,
    curves,
    diagnostic_budget,
    diagnostic_keys,
    diagnostic_metrics,
    flatness_columns,
    get,
    headlines,
    layer_columns,
    metrics,
    names,
    option_defaults,
    output_keys,
    parse_metrics,
    parse_options,
    record_keys,
    register,
    registered,
    select,
    status_items,
    summary_rows,
    unregister,
)

__all__ = [
    "GGN",
    "Column",
    "Context",
    "Curve",
    "Diagnostic",
    "Headline",
    "LiveNames",
    "Metric",
    "Outcome",
    "Row",
    "SeedStream",
    "Settings",
    "Status",
    "comparison_columns",
    "curves",
    "diagnostic_budget",
    "diagnostic_keys",
    "diagnostic_metrics",
    "discover",
    "flatness_columns",
    "format_number",
    "get",
    "headlines",
    "layer_columns",
    "metrics",
    "names",
    "option_defaults",
    "output_keys",
    "parse_metrics",
    "parse_options",
    "record_keys",
    "register",
    "registered",
    "select",
    "status_items",
    "summary_rows",
    "unregister",
]


def discover() -> None:
    """Register every module of this package that defines ``METRIC`` (once; on import)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        metric = getattr(module, "METRIC", None)
        if isinstance(metric, Metric) and not any(m is metric for m in metrics()):
            register(metric)


discover()
