"""Side-by-side benchmarks of landscape's curvature engine against PyHessian, curvlinops and
hessian-eigenthings.

Entry point: ``python -m benchmarks run [--quick] [--out benchmarks/results.md]``. Each workload
runs in its own process (``python -m benchmarks.curvature WORKLOAD``) with one torch thread, and
our engine and every installed peer see the same model, data and dtype there. The peers live in a
separate virtual environment (see ``benchmarks/requirements-bench.txt``); a peer that is not
installed is reported as such, never silently skipped.

Benchmarks are not tests: they measure and report ratios (medians of interleaved repeats).
"""
