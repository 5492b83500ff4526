"""Imports go one way, down the floors of ARCHITECTURE.md, and never in a circle.

Every module of ``landscape/`` and ``cli/`` is parsed with :mod:`ast` (imports inside functions and
under ``TYPE_CHECKING`` count too: a lazy import is still a dependency) and mapped to its floor by
:data:`FLOORS`. The tests fail on an import that runs back up a floor, on a cycle between modules
or between the units of the map (packages and top-level modules), on a module that has no floor,
and on any import between ``landscape.train`` and ``landscape.report``.

The map names units that may not exist yet (a module another change is adding): a missing name is
not an error, a module missing from the map is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "cli")

FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundations",
        (
            "landscape.errors",
            "landscape.dtypes",
            "landscape.distributed",
            "landscape.preserve",
            "landscape.provenance",
            "landscape.bounds",
        ),
    ),
    (
        "inputs",
        (
            "landscape.losses",
            "landscape.models",
            "landscape.data",
            "landscape.checkpoints",
            "landscape.trust",
        ),
    ),
    ("problem", ("landscape.problem",)),
    ("curvature", ("landscape.curvature",)),
    (
        "measures and rules",
        (
            "landscape",  # the package itself: the public API of analyze and the operators
            "landscape.analysis",
            "landscape.metrics",
            "landscape.evaluation",
            "landscape.prune",
            "landscape.figures",
            "landscape.optim",
            "landscape.adapters",
        ),
    ),
    ("run folders", ("landscape.runs", "landscape.resolve")),
    ("workflows", ("landscape.train", "landscape.report", "landscape.surface")),
    # a user's own training loop: measures through train's diagnostics, writes run folders through runs
    ("integrations", ("landscape.integrations",)),
    ("demo", ("landscape.demo",)),
    ("command line", ("cli",)),
)
"""Floors from the bottom up; each unit is a module or a package (with everything in it)."""

SEPARATE = (("landscape.train", "landscape.report"), ("landscape.integrations", "landscape.report"))
"""Units that must not import each other in either direction (they meet only in the run folders)."""


# ----------------------------------------------------------------------------------------------
# Reading the code


def module_names(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted name -> file of every module in ``packages`` (a package's name for its __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports, anywhere in its file.

    ``from a.b import c`` names the module ``a.b.c`` when there is one, else ``a.b``. Importing a
    module also runs the ``__init__`` of every package above it; those count when the importer
    lives outside that package.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    here = name if _is_package(name, modules) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    out = set()
    for target in targets:
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()  # an attribute path (``import a.b.c`` of a function c) -> its module
        if not parts:
            continue  # not ours: the standard library, torch, ...
        out.add(".".join(parts))
        for depth in range(1, len(parts)):
            package = ".".join(parts[:depth])
            if not (name == package or name.startswith(package + ".")):
                out.add(package)
    out.discard(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules it imports (only ``landscape`` and ``cli`` modules)."""
    modules = module_names(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def unit_of(module: str) -> str | None:
    """The unit of :data:`FLOORS` that holds ``module`` (the longest matching prefix)."""
    best = None
    for _, units in FLOORS:
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                if unit in PACKAGES and module != unit:
                    continue  # the bare package names stand for their __init__ only ...
                if best is None or len(unit) > len(best):
                    best = unit
    if best is None and module.startswith("cli"):
        return "cli"  # ... except cli, whose modules all live on the top floor
    return best


def floor_of(unit: str) -> int:
    return next(i for i, (_, units) in enumerate(FLOORS) if unit in units)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = unit_of(module)
        if source is None:
            continue
        for target in targets:
            unit = unit_of(target)
            if unit is not None and unit != source:
                out.setdefault(source, set()).add(unit)
    return out


# ----------------------------------------------------------------------------------------------
# The rules


def problems(graph: dict[str, set[str]]) -> list[str]:
    """Every violation of the rules above, one line each (empty: the code is in order)."""
    found = [f"{m} has no floor in tests/test_architecture.py FLOORS" for m in graph if unit_of(m) is None]
    for module, targets in sorted(graph.items()):
        source = unit_of(module)
        if source is None:
            continue
        for target in sorted(targets):
            unit = unit_of(target)
            if unit is None or unit == source:
                continue
            if floor_of(unit) > floor_of(source):
                found.append(
                    f"{module} ({FLOORS[floor_of(source)][0]}) imports {target} "
                    f"({FLOORS[floor_of(unit)][0]}): up a floor"
                )
            if any({source, unit} == set(pair) for pair in SEPARATE):
                found.append(f"{module} imports {target}: {source} and {unit} must not import each other")
    found += ["import cycle between modules: " + " <-> ".join(c) for c in cycles(graph)]
    found += ["import cycle between units: " + " <-> ".join(c) for c in cycles(unit_graph(graph))]
    return found


def test_imports_go_down_the_floors_without_cycles():
    found = problems(import_graph())
    assert not found, "\n".join(found)


def test_every_floor_unit_is_named_once():
    names = [unit for _, units in FLOORS for unit in units]
    assert len(names) == len(set(names))


# ----------------------------------------------------------------------------------------------
# The checker itself finds what it should (a test that cannot fail is a defect)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # a lazy import inside a function, up a floor
            {
                "landscape/problem.py": "def f():\n    from landscape.train.loop import x\n",
                "landscape/train/__init__.py": "",
                "landscape/train/loop.py": "",
            },
            "landscape.problem (problem) imports landscape.train.loop (workflows): up a floor",
        ),
        (  # train and report import each other (one floor, so only the pair rule and the cycle catch it)
            {
                "landscape/train/__init__.py": "",
                "landscape/train/loop.py": "from landscape.report.files import w\n",
                "landscape/report/__init__.py": "",
                "landscape/report/files.py": "",
                "landscape/report/build.py": "from landscape.train import evaluate\n",
            },
            "import cycle between units: landscape.report <-> landscape.train",
        ),
        (
            {
                "landscape/report/__init__.py": "",
                "landscape/report/x.py": "import landscape.train\n",
                "landscape/train/__init__.py": "",
            },
            "landscape.report.x imports landscape.train: landscape.report and landscape.train must not",
        ),
        (  # a cycle of two modules on one floor, through a relative import
            {
                "landscape/runs/__init__.py": "",
                "landscape/runs/a.py": "from .b import f\n",
                "landscape/runs/b.py": "from landscape.runs import a\n",
            },
            "import cycle between modules: landscape.runs.a <-> landscape.runs.b",
        ),
        (  # importing a submodule runs its package's __init__, which imports back
            {
                "landscape/resolve.py": "from landscape.optim.base import f\n",
                "landscape/optim/__init__.py": "from landscape.optim.base import f\n",
                "landscape/optim/base.py": "import landscape.resolve\n",
            },
            "landscape.optim.base (measures and rules) imports landscape.resolve (run folders): up a floor",
        ),
        ({"landscape/newthing.py": ""}, "landscape.newthing has no floor"),
    ],
)
def test_the_checker_finds_each_kind_of_violation(tmp_path, files, expected):
    found = problems(
        {
            n: imported_modules(n, p, mods)
            for mods in [module_names(_tree(tmp_path, files))]
            for n, p in mods.items()
        }
    )
    assert any(expected in line for line in found), found


def test_the_checker_accepts_imports_down_and_within_a_floor(tmp_path):
    files = {
        "landscape/errors.py": "",
        "landscape/runs/__init__.py": "from landscape.runs.files import w\n",
        "landscape/runs/files.py": "from landscape.errors import UserError\n",
        "landscape/train/__init__.py": "from landscape.train.loop import run\n",
        "landscape/train/loop.py": "from landscape.runs import files\nfrom . import batches\n",
        "landscape/train/batches.py": "",
        "landscape/surface.py": "",
        "landscape/report/__init__.py": "",
        "landscape/report/build.py": "from landscape.surface import s\nfrom landscape.runs.files import w\n",
        "cli/main.py": "from cli.train import t\n",
        "cli/train.py": "from landscape.train import run\n",
    }
    mods = module_names(_tree(tmp_path, files))
    assert problems({n: imported_modules(n, p, mods) for n, p in mods.items()}) == []
