"""The report document: one self-contained ``index.html``, a ``report.md`` and the CSV tables.

A :class:`Report` is a title, an introduction and sections of blocks (paragraphs, bullet lists,
tables, figures). :func:`write_report` renders it twice:

* ``index.html``: every figure embedded as ``data:image/png;base64,...``, the CSS inline, no
  script and no external reference of any kind (no URL, font, stylesheet or image link), so it
  opens from disk on a machine with no network and shows the same thing anywhere;
* ``report.md``: the same text and tables in Markdown (tables written here, pandas' to_markdown
  would need tabulate), each figure a PNG file beside it.

Both, the PNGs and the CSVs are written to a staging folder and moved into place together
(:func:`landscape.runs.staged_output`), so a failure leaves the folder as it was.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from landscape.figures import PNG_METADATA
from landscape.report.tables import Table, write_csv
from landscape.runs.files import staged_output
from landscape.runs.layout import REPORT_HTML, REPORT_MARKDOWN

__all__ = [
    "Bullets",
    "FigureBlock",
    "Paragraph",
    "Report",
    "Section",
    "TableBlock",
    "compact_png",
    "external_references",
    "render_html",
    "render_markdown",
    "write_report",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Paragraph:
    """Plain text (no markup); rendered escaped."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bullet list of plain-text items."""

    items: list[str]


@dataclass(frozen=True)
class TableBlock:
    """A table of display strings (see :class:`landscape.report.tables.Table`)."""

    table: Table


@dataclass(frozen=True)
class FigureBlock:
    """A rendered figure: ``name`` is its PNG file name (``vision-curves.png``), ``png`` its bytes."""

    name: str
    png: bytes
    caption: str

    @classmethod
    def from_figure(cls, name: str, fig: Figure, caption: str) -> FigureBlock:
        """Render ``fig`` to compact, reproducible PNG bytes (:func:`compact_png`) and close it."""
        if not _NAME.match(name) or not name.endswith(".png"):
            raise ValueError(f"bad figure file name {name!r}")
        return cls(name, compact_png(fig), caption)


def compact_png(fig: Figure, dpi: int = 100) -> bytes:
    """``fig`` as a 256-colour PNG, closed afterwards.

    A report holds a dozen or more figures, each embedded in the HTML and written beside the
    Markdown; quantising the antialiased RGBA render to an adaptive 256-colour palette makes the
    files about 3x smaller with no visible change for line plots and contour maps. Both steps are
    deterministic (no date or software metadata), so the same figure gives the same bytes.
    """
    import matplotlib.pyplot as plt  # after landscape.figures chose the Agg backend
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata=PNG_METADATA, facecolor="white")
    plt.close(fig)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True
    )
    return out.getvalue()


Block = Paragraph | Bullets | TableBlock | FigureBlock


@dataclass
class Section:
    """A titled part of the report."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


@dataclass
class Report:
    """The whole document: title, introductory blocks, sections, and CSV tables to write beside it."""

    title: str
    intro: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)

    def figures(self) -> list[FigureBlock]:
        """Every figure block, in document order."""
        blocks = [*self.intro, *(b for s in self.sections for b in s.blocks)]
        return [b for b in blocks if isinstance(b, FigureBlock)]


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1240px; padding: 1.2em 2em 3em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.8em; }
th, td { border: 1px solid #d0d0d5; padding: 0.22em 0.4em; white-space: nowrap; }
th { background: #f2f2f5; }
.l { text-align: left; } .r { text-align: right; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }
.notes { font-size: 0.82em; color: #555; margin-top: 0.1em; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #444; margin-top: 0.3em; }
ul.summary li { margin-bottom: 0.35em; }
.scroll { overflow-x: auto; }
"""


def _text(text: str) -> str:
    """Escape plain text for HTML; a ``scheme://`` in it (a run folder named like a URL) is broken up
    with a character reference, so that the page holds no URL even in its text."""
    return html.escape(text).replace("://", "&#58;//")


def _table_html(table: Table) -> str:
    parts = ['<div class="scroll"><table>']
    if table.caption:
        parts.append(f"<caption>{_text(table.caption)}</caption>")
    align = table.align or ["l"] + ["r"] * (len(table.headers) - 1)
    css = ['class="l"' if a == "l" else 'class="r"' for a in align]
    heads = "".join(f"<th {c}>{_text(h)}</th>" for c, h in zip(css, table.headers, strict=True))
    parts.append(f"<thead><tr>{heads}</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            bold = bool(table.bold and table.bold[i][j])
            cell = _text(text)
            cells.append(f"<td {css[j]}><b>{cell}</b></td>" if bold else f"<td {css[j]}>{cell}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    for note in table.notes:
        parts.append(f'<p class="notes">{_text(note)}</p>')
    return "\n".join(parts)


def _block_html(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_text(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{_text(item)}</li>" for item in block.items)
        return f'<ul class="summary">{items}</ul>'
    if isinstance(block, TableBlock):
        return _table_html(block.table)
    data = base64.b64encode(block.png).decode("ascii")
    alt = _text(block.caption)
    return (
        f'<figure id="{html.escape(block.name[:-4])}"><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_text(block.caption)}</figcaption></figure>"
    )


def render_html(report: Report) -> str:
    """The self-contained HTML page (see the module docstring)."""
    body = [f"<h1>{_text(report.title)}</h1>"]
    body += [_block_html(b) for b in report.intro]
    for section in report.sections:
        level = min(max(section.level, 2), 4)
        body.append(f"<h{level}>{_text(section.title)}</h{level}>")
        body += [_block_html(b) for b in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_text(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_markdown(table: Table) -> str:
    lines = []
    if table.caption:
        lines += [f"**{_md_escape(table.caption)}**", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in table.headers) + " |")
    align = table.align or ["l"] + ["r"] * (len(table.headers) - 1)
    aligns = [":---" if a == "l" else "---:" for a in align]
    lines.append("| " + " | ".join(aligns) + " |")
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            bold = bool(table.bold and table.bold[i][j]) and text != "-"
            cells.append(f"**{_md_escape(text)}**" if bold else _md_escape(text))
        lines.append("| " + " | ".join(cells) + " |")
    for note in table.notes:
        lines += ["", f"*{_md_escape(note)}*"]
    return "\n".join(lines)


def _block_markdown(block: Block) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, TableBlock):
        return _table_markdown(block.table)
    return f"![{_md_escape(block.caption)}]({block.name})\n\n*{_md_escape(block.caption)}*"


def render_markdown(report: Report) -> str:
    """The Markdown document; figures link the PNG files beside it."""
    parts = [f"# {report.title}"]
    parts += [_block_markdown(b) for b in report.intro]
    for section in report.sections:
        parts.append("#" * min(max(section.level, 2), 4) + " " + section.title)
        parts += [_block_markdown(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"


_URL = re.compile(
    r"(?i)\b(?:https?|ftp|wss?)://|(?:src|href)\s*=\s*[\"'](?!data:|#)|url\(\s*[\"']?(?!data:)|@import"
)


def external_references(page: str) -> list[str]:
    """Every reference in an HTML page that would leave the file: URLs with a scheme, ``src=``/
    ``href=`` that are not ``data:`` or in-page anchors, CSS ``url(...)`` and ``@import``."""
    return [page[max(m.start() - 20, 0) : m.end() + 40] for m in _URL.finditer(page)]


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write ``index.html``, ``report.md``, the figure PNGs and the CSVs into ``out_dir`` atomically.

    Raises ``ValueError`` if the page would reference anything outside itself (a bug: every
    figure is embedded and no block holds markup).
    """
    out_dir = Path(out_dir)
    page = render_html(report)
    leaks = external_references(page)
    if leaks:
        raise ValueError(f"the report page references external resources: {leaks[:3]}")
    names: list[str] = []
    figures = report.figures()
    duplicated = {f.name for f in figures if [g.name for g in figures].count(f.name) > 1}
    if duplicated:
        raise ValueError(f"figure names repeat: {sorted(duplicated)}")
    with staged_output(out_dir) as tmp:
        for figure in figures:
            (tmp / figure.name).write_bytes(figure.png)
            names.append(figure.name)
        for name, frame in report.csvs.items():
            if not _NAME.match(name) or not name.endswith(".csv"):
                raise ValueError(f"bad CSV file name {name!r}")
            write_csv(frame, tmp / name)
            names.append(name)
        (tmp / REPORT_MARKDOWN).write_text(render_markdown(report), encoding="utf-8")
        (tmp / REPORT_HTML).write_text(page, encoding="utf-8")
        names += [REPORT_MARKDOWN, REPORT_HTML]
    return [out_dir / n for n in names]


def figure_names(blocks: Sequence[Block]) -> list[str]:
    """File names of the figure blocks among ``blocks``."""
    return [b.name for b in blocks if isinstance(b, FigureBlock)]
