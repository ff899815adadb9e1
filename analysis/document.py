"""A report as plain data (sections of paragraphs, lists, tables, images), and its two
renderings: Markdown (report.md) and one self-contained HTML page (report.html).

The report modules build a Document from the Findings; ``to_markdown`` writes report.md and
``render_html`` renders the same Document with a Jinja2 template (templates/report.html.j2,
charts inlined as base64; the caller passes the PNG bytes in), so the two never differ in
content. Text may hold `code` and **bold**, nothing else: in HTML they become <code> and
<strong>, everything else is escaped by Jinja's autoescaping. Numbers are formatted here
(one place decides digits, units and blanks), and ``table`` is the one Markdown table writer
(the analysis reports and the bench table). Pure: no I/O.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

# Numbers as text.

MISSING = "n/a"


def is_missing(value: Any) -> bool:
    """True for None and NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 1, unit: str = "") -> str:
    """A number with thousands separators and ``digits`` decimals, plus an optional unit."""
    if is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return f"{text} {unit}".rstrip() if unit else text


def pct(share: Any, digits: int = 1) -> str:
    """A share (0..1) as a percentage."""
    return MISSING if is_missing(share) else f"{share * 100:.{digits}f}%"


# Markdown tables.

NO_ROWS = "_(no rows)_"


def cell(value: Any) -> str:
    """Any value as table text: floats with 1-2 decimals, lists and dicts as JSON, NaN as n/a."""
    if is_missing(value):
        return MISSING
    if isinstance(value, float):
        return num(value, 2 if abs(value) < 10 else 1)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left_columns: int = 1) -> str:
    """A GitHub-flavoured Markdown table: the first ``left_columns`` columns left-aligned, the
    rest right-aligned (numbers); each value goes through ``cell`` and has its pipes escaped."""
    if not rows:
        return NO_ROWS
    align = [":--" if i < left_columns else "--:" for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join(
        ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |",
         *(line([cell(v) for v in row]) for row in rows)]
    )  # fmt: skip


# The document and its Markdown.

@dataclass(frozen=True)
class Paragraph:
    """One paragraph of text."""

    kind: ClassVar[str] = "paragraph"

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list, one text per item."""

    kind: ClassVar[str] = "bullets"

    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """A table: header texts and rows of values (formatted by ``cell``)."""

    kind: ClassVar[str] = "table"

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def cells(self) -> list[list[str]]:
        """The rows as text, as the Markdown table shows them."""
        return [[cell(v) for v in row] for row in self.rows]


@dataclass(frozen=True)
class Image:
    """A chart: its caption and its path relative to the report."""

    kind: ClassVar[str] = "image"

    caption: str
    path: str


@dataclass
class Section:
    """A heading (level 2 = "##") and what follows it, subsections included."""

    kind: ClassVar[str] = "section"

    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


Block = Paragraph | Bullets | Table | Image | Section


@dataclass
class Document:
    """A titled report: intro blocks under the title, then its sections."""

    title: str
    intro: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def _block_markdown(block: Block) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return table(block.headers, block.rows)
    if isinstance(block, Image):
        return f"![{block.caption}]({block.path})"
    return section_markdown(block)


def section_markdown(section: Section) -> str:
    """One section (and its subsections) as Markdown."""
    parts = [f"{'#' * section.level} {section.title}"]
    parts += [_block_markdown(b) for b in section.blocks]
    return "\n\n".join(parts)


def to_markdown(doc: Document) -> str:
    """The whole document as Markdown, ending with a newline."""
    parts = [f"# {doc.title}", *(_block_markdown(b) for b in doc.intro)]
    parts += [section_markdown(s) for s in doc.sections]
    return "\n\n".join(parts) + "\n"


# The HTML page.

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: object) -> Markup:
    """Escape ``text``, then turn `code` into <code> and **bold** into <strong>."""
    out = str(escape(str(text)))
    out = _CODE.sub(r"<code>\1</code>", out)
    return Markup(_BOLD.sub(r"<strong>\1</strong>", out))


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("analysis", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=False,
    )
    env.filters["inline"] = inline
    return env


def render_html(doc: Document, images: Mapping[str, bytes]) -> str:
    """One HTML page for ``doc``; ``images`` maps each chart path to its PNG bytes."""
    encoded = {path: base64.b64encode(data).decode() for path, data in images.items()}
    return _environment().get_template("report.html.j2").render(doc=doc, images=encoded) + "\n"
