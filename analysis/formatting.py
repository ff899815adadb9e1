"""Format computed numbers as text: one place decides digits, units and blanks."""

from __future__ import annotations

import math
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
