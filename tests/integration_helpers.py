"""What the integration tests share: the README's examples, reading a report, model snapshots."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.report.build import SliceSettings

ROOT = Path(__file__).resolve().parents[1]

SMALL = SliceSettings(line_steps=7, plane_steps=5, path_steps=5, targets=128)
"""Slices small enough for a test."""
QUICK = {"max_iter": 40, "trace_samples": 24}
"""Budgets of the final analyses in the tests (analyze's defaults take seconds more)."""
TRAIN_FIGURES = {"loss", "curvature", "tau", "slice-1d", "slice-2d", "path", "pruning"}
"""The figures a report draws for a group of ``landscape train`` runs with held-out data, a baseline
and the default final analysis (tests/test_report.py checks these and ``density`` for a suite that
adds densities to its final metrics)."""


def readme_examples() -> list[str]:
    """The Python blocks of the README's section "In your own training loop", in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("### In your own training loop")
    end = text.index("\n### ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def run_example(code: str, namespace: dict[str, Any], module: str = "readme_example") -> dict[str, Any]:
    """Run a README block in ``namespace`` (the names the README says are yours), as a module named
    ``module`` (so that its classes are importable by name, as they are from a user's module)."""
    namespace = {"__name__": module, **namespace}
    exec(compile(code, f"README.md ({module})", "exec"), namespace)
    return namespace


class Tables(HTMLParser):
    """Rows of every ``<table>`` of a page (cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def comparison_rows(report: Path) -> dict[str, dict[str, str]]:
    """The report's comparison table: method label -> {column: cell}."""
    parser = Tables()
    parser.feed((report / "index.html").read_text(encoding="utf-8"))
    header, *rows = parser.tables[0]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def figure_kinds(report: Path) -> set[str]:
    """The kinds of the report's figures (``<group>-<kind>.png`` -> kind)."""
    kinds = set()
    for png in report.glob("*.png"):
        kinds.update(k for k in TRAIN_FIGURES if png.name.endswith(f"-{k}.png"))
    return kinds


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything measuring must leave alone: modes, flags, weights, gradients, the global RNG."""
    return {
        "modes": [(name, m.training) for name, m in model.named_modules()],
        "flags": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "state": weights(model),
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "rng": torch.get_rng_state(),
    }


def assert_untouched(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert same_weights(before["state"], after["state"])
    assert before["grads"].keys() == after["grads"].keys()
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None) == (other is None), name
        assert grad is None or torch.equal(grad, other), name
    assert torch.equal(before["rng"], after["rng"])
