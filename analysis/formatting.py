"""Format computed numbers and tables for Markdown: one place decides digits and blanks."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

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


def cell(value: Any) -> str:
    """Any value as a table cell: floats with 1 decimal, pipes escaped."""
    if is_missing(value):
        return MISSING
    if isinstance(value, float):
        return num(value, 2 if abs(value) < 10 else 1)
    if isinstance(value, list | dict):
        value = json.dumps(value)
    return str(value).replace("|", "\\|")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (first column left-aligned, others right)."""
    if not rows:
        return "_(no rows)_"
    align = [":--", *["--:"] * (len(headers) - 1)]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]
    return "\n".join(lines)
