"""The report document: one self-contained ``index.html``, a ``report.md`` and the CSV tables.

A :class:`Report` is a title, an introduction and sections of blocks (paragraphs, bullet lists,
tables, figures). :func:`write_report` renders it twice:

* ``index.html``: every figure embedded as ``data:image/png;base64,...``, the CSS inline, no
  script and no external reference of any kind (no URL, font, stylesheet or image link), so it
  opens from disk on a machine with no network and shows the same thing anywhere;
* ``report.md``: the same text and tables in Markdown (tables written here, pandas' to_markdown
  would need tabulate), each figure a PNG file beside it.

Every text of the document is plain text (run names, titles, model paths and notes come from
the user): escaped in the page (HTML) and in the Markdown, where ``<``, ``>`` and ``&`` become
character references and the characters that would start emphasis, links, images, code, tables
or a heading are backslash-escaped, so no name adds markup, a script or a link to either file.
Before writing, :func:`external_references` parses the page and lists what a browser would load
or run from it (``src``/``href`` that are not ``data:`` or in-page, CSS ``url()`` and
``@import`` in styles, scripts, frames, event handlers); text that merely mentions ``url(`` is
not a reference.

Both, the PNGs and the CSVs are written to a staging folder and moved into place together
(:func:`landscape.runs.staged_output`), so a failure leaves the folder as it was; the new set
replaces the previous report's files (:func:`landscape.runs.report_output`).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from landscape.figures import PNG_METADATA
from landscape.report.tables import Table, write_csv
from landscape.runs.files import staged_output
from landscape.runs.layout import REPORT_HTML, REPORT_MARKDOWN, report_output

__all__ = [
    "Bullets",
    "FigureBlock",
    "Paragraph",
    "Report",
    "Section",
    "TableBlock",
    "compact_png",
    "external_references",
    "markdown_text",
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


_MD_PUNCTUATION = re.compile(r"([\\`*\[\]|~])")
# "_" opens or closes emphasis only next to a non-alphanumeric character: "lambda_max" stays readable
_MD_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
_MD_LINE_START = re.compile(r"^[-+=#]")  # a list item, a heading
_MD_ORDERED = re.compile(r"^(\d+)([.)])")  # an ordered list item: "1." or "1)"


def markdown_text(text: str) -> str:
    """Plain text for Markdown, on one line, that renders as exactly that text.

    ``&``, ``<`` and ``>`` become character references (no HTML: ``<script>``, ``<img
    onerror=...>``); backslash, backtick, ``*``, ``[``, ``]``, ``|`` and ``~`` are
    backslash-escaped, and ``_`` unless inside a word (no emphasis, link, image, code span,
    table cell or strikethrough); ``scheme://`` and ``www.`` are broken up with a character
    reference (no autolink).
    """
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_PUNCTUATION.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    text = text.replace("://", "&#58;//")
    return re.sub(r"(?i)\bwww\.", lambda m: m.group(0)[:-1] + "&#46;", text)


def _md_line(text: str) -> str:
    """:func:`markdown_text` for text that starts a line: no list item, heading or quote either."""
    text = markdown_text(text)
    if _MD_LINE_START.match(text):
        return "\\" + text
    return _MD_ORDERED.sub(r"\1\\\2", text)


def _table_markdown(table: Table) -> str:
    lines = []
    if table.caption:
        lines += [f"**{markdown_text(table.caption)}**", ""]
    lines.append("| " + " | ".join(markdown_text(h) for h in table.headers) + " |")
    align = table.align or ["l"] + ["r"] * (len(table.headers) - 1)
    aligns = [":---" if a == "l" else "---:" for a in align]
    lines.append("| " + " | ".join(aligns) + " |")
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            bold = bool(table.bold and table.bold[i][j]) and text != "-"
            cells.append(f"**{markdown_text(text)}**" if bold else markdown_text(text))
        lines.append("| " + " | ".join(cells) + " |")
    for note in table.notes:
        lines += ["", f"*{markdown_text(note)}*"]
    return "\n".join(lines)


def _block_markdown(block: Block) -> str:
    if isinstance(block, Paragraph):
        return _md_line(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_line(item)}" for item in block.items)
    if isinstance(block, TableBlock):
        return _table_markdown(block.table)
    return f"![{markdown_text(block.caption)}]({block.name})\n\n*{markdown_text(block.caption)}*"


def render_markdown(report: Report) -> str:
    """The Markdown document; figures link the PNG files beside it."""
    parts = [f"# {markdown_text(report.title)}"]
    parts += [_block_markdown(b) for b in report.intro]
    for section in report.sections:
        parts.append("#" * min(max(section.level, 2), 4) + " " + markdown_text(section.title))
        parts += [_block_markdown(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"


# What a browser loads or runs from a page: tags that fetch or execute, attributes that hold URLs
_FETCHING_TAGS = {"script", "iframe", "frame", "frameset", "object", "embed", "applet", "link", "base"}
_URL_ATTRIBUTES = {
    "src",
    "href",
    "srcset",
    "action",
    "formaction",
    "poster",
    "data",
    "background",
    "cite",
    "longdesc",
    "manifest",
    "ping",
    "xlink:href",
}
_CSS_FETCH = re.compile(r"(?i)url\s*\(|@import|expression\s*\(|image-set\s*\(")


class _References(HTMLParser):
    """Collects what a page would load or run (see :func:`external_references`)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs)
        self._in_style = tag == "style"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style and _CSS_FETCH.search(data):
            self.found.append(f"<style>{_CSS_FETCH.search(data).group(0)}...")  # type: ignore[union-attr]

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _FETCHING_TAGS:
            self.found.append(f"<{tag}>")
        values = {name: (value or "") for name, value in attrs}
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            self.found.append("<meta http-equiv=refresh>")
        for name, value in values.items():
            target = value.strip()
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            elif name == "style" and _CSS_FETCH.search(value):
                self.found.append(f'<{tag} style="{value[:60]}">')
            elif name in _URL_ATTRIBUTES and not (
                target.startswith("data:") or (name == "href" and target.startswith("#"))
            ):
                self.found.append(f'<{tag} {name}="{target[:60]}">')


def external_references(page: str) -> list[str]:
    """What an HTML page would load or run from outside itself, parsed as a browser reads it:
    ``src``/``href`` (and other URL attributes) that are not ``data:`` or an in-page anchor, CSS
    ``url(...)``/``@import`` in ``<style>`` or a ``style`` attribute, scripts, frames, objects,
    ``<link>``/``<base>``, event-handler attributes and a meta refresh. Text is not looked at: a
    run named ``url(x)`` is escaped text, which loads nothing."""
    parser = _References()
    parser.feed(page)
    parser.close()
    return parser.found


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
    with staged_output(out_dir, report_output) as tmp:
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
