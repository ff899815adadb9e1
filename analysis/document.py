"""A report as plain data (sections of paragraphs, lists, tables, images) and its Markdown.

The report modules build a Document from the Findings; ``to_markdown`` writes report.md and
analysis.report_html renders the same Document into report.html with a Jinja2 template, so
the two never differ in content. Text may hold `code` and **bold**, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from analysis.tables import cell, table


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
    """A table: header texts and rows of values (formatted by analysis.tables.cell)."""

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
