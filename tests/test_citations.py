"""Sources are cited as papers (authors, year, arXiv id, equation), never as the project's own
internal names for them: no "seed 00N", "seed paper" or "issue N" in the code, the docs or the
command line's help and output, which no reader outside the project can resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = re.compile(r"seed 00[0-9]|seed paper|issue [0-9]+|issue #[0-9]+", re.IGNORECASE)
SUFFIXES = {".py", ".md", ".toml", ".txt"}


def _files() -> list[Path]:
    found = [ROOT / "README.md"]
    for folder in ("landscape", "cli", "docs"):
        found += [p for p in (ROOT / folder).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return found


def internal_citations(text: str) -> list[str]:
    """The internal citations in ``text``."""
    return [m.group(0) for m in INTERNAL.finditer(text)]


def test_the_pattern_finds_internal_citations():
    text = "as in seed 003 (issue 13; see Issue #4), seed paper 2508.00522; seed 0 and the seeds are fine"
    assert internal_citations(text) == ["seed 003", "issue 13", "Issue #4", "seed paper"]


def test_no_internal_citation_in_code_docs_or_readme():
    files = _files()
    assert len(files) > 50 and any(p.name == "rules.py" for p in files)
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if internal_citations(line)
    ]
    assert not hits, hits


def test_no_internal_citation_in_the_command_line_help():
    from typer.main import get_command

    from cli.main import app

    command = get_command(app)
    texts = [command.get_help(command.make_context("landscape", [], resilient_parsing=True))]
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        texts.append(sub.get_help(sub.make_context(name, [], resilient_parsing=True)))
    assert len(texts) > 3
    assert not [hit for text in texts for hit in internal_citations(text)]
