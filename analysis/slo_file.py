"""The SLO file: gate targets and regression bands a CI job keeps next to its code (TOML).

    [slo]                       # analysis.config SLO_KEYS: the targets of --gate
    p95_ms = 2000
    error_rate = 0.01
    count_refusals = false      # 429/503 refusals are not errors
    [regression]                # analysis.regression DEFAULT_BANDS keys: relative bands
    p95_latency = 0.5           # +/-50% of the baseline's p95 is noise

Unknown keys are refused with the list of valid ones, so a typo cannot switch a gate off.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.config import SLO_KEYS
from analysis.regression import DEFAULT_BANDS


@dataclass(frozen=True)
class SloFile:
    """The two tables of an SLO file (empty when no file is given)."""

    slo: dict[str, Any] = field(default_factory=dict)
    regression: dict[str, float] = field(default_factory=dict)


def _checked(table: dict[str, Any], valid: Any, what: str, path: Path) -> dict[str, Any]:
    unknown = set(table) - set(valid)
    if unknown:
        raise ValueError(f"{path}: unknown {what} keys {sorted(unknown)}; valid: {sorted(valid)}")
    return dict(table)


def read_slo_file(path: Path | str | None) -> SloFile:
    """Read the SLO file at ``path`` (None or "": no file, nothing set)."""
    if not path:
        return SloFile()
    path = Path(path)
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"slo", "regression"}
    if unknown:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)}; valid: ['regression', 'slo']")
    return SloFile(_checked(data.get("slo", {}), SLO_KEYS, "[slo]", path),
                   _checked(data.get("regression", {}), DEFAULT_BANDS, "[regression]", path))
