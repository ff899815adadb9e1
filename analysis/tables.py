"""Markdown tables: the one helper that writes them (the analysis reports and the bench table)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from analysis.formatting import MISSING, is_missing, num

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
