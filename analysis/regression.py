"""Regression gate: a run's headline metrics against a baseline's, noise-aware.

Each gated metric has a noise band: a change smaller than ``max(relative * |baseline|,
absolute)`` is *unchanged*, whichever way it went; beyond it, the change is *improved* or
*regressed* according to which way is better. The default bands come from the measured
run-to-run spread of the same configuration on the same machine (docs/ci.md, "How wide is
the noise"): three median absolute deviations of five runs, and never below a floor. Pure:
Findings in, Change records out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from analysis.compare import HEADLINES, headline_values
from analysis.records import Findings

UNCHANGED, IMPROVED, REGRESSED, NOT_MEASURED = "unchanged", "improved", "regressed", "not measured"


@dataclass(frozen=True)
class Band:
    """Noise band of one metric: relative to the baseline, and an absolute floor (units)."""

    relative: float
    absolute: float = 0.0

    def width(self, baseline: float) -> float:
        """Half-width of the band around ``baseline``."""
        return max(self.relative * abs(baseline), self.absolute)


# Gated headline metrics: key (for overrides), HEADLINES name, default band. Relative bands
# are three median absolute deviations of five 30 s runs of synthetic:tiny and of gpt2, the
# wider of the two (docs/ci.md, "How wide is the noise"; python -m bench noise).
DEFAULT_BANDS: dict[str, tuple[str, Band]] = {
    "throughput": ("Throughput", Band(0.70)),
    "output_tokens_per_s": ("Output tokens/s", Band(0.85)),
    "p50_latency": ("p50 latency", Band(0.40, 20.0)),
    "p95_latency": ("p95 latency", Band(0.80, 50.0)),
    "p99_latency": ("p99 latency", Band(0.85, 100.0)),
    "error_rate": ("Error rate", Band(0.0, 0.01)),  # absolute: one percentage point
    "peak_total_pss": ("Peak total PSS", Band(0.10, 20.0)),
    "goodput": ("Goodput", Band(0.70)),  # as throughput
    "slo_attainment": ("SLO attainment", Band(0.0, 0.05)),  # absolute
}


@dataclass(frozen=True)
class Change:
    """One metric, baseline vs run: values, the band, and the verdict."""

    key: str
    name: str
    unit: str
    better: str  # higher | lower
    baseline: float | None
    value: float | None
    band: float | None  # half-width in the metric's unit
    verdict: str

    @property
    def ratio(self) -> float | None:
        """value / baseline (None when either is missing or the baseline is 0)."""
        if self.baseline in (None, 0) or self.value is None:
            return None
        return self.value / self.baseline


def bands(overrides: Mapping[str, float] | None = None) -> dict[str, tuple[str, Band]]:
    """DEFAULT_BANDS with relative widths from ``overrides`` (key -> fraction, e.g. 0.5)."""
    found = dict(DEFAULT_BANDS)
    for key, relative in (overrides or {}).items():
        if key not in found:
            raise ValueError(f"unknown regression metric {key!r}; valid: {sorted(found)}")
        name, band = found[key]
        found[key] = (name, replace(band, relative=float(relative)))
    return found


def judge(baseline: float | None, value: float | None, band: Band, better: str) -> str:
    """The verdict of one metric (see the module docstring)."""
    if baseline is None or value is None or math.isnan(baseline) or math.isnan(value):
        return NOT_MEASURED
    delta = value - baseline
    if abs(delta) <= band.width(baseline):
        return UNCHANGED
    return IMPROVED if (delta > 0) == (better == "higher") else REGRESSED


def compare_runs(baseline: Findings, run: Findings,
                 overrides: Mapping[str, float] | None = None) -> list[Change]:
    """Every gated metric of ``run`` against ``baseline``."""
    spec = {name: (unit, better) for name, unit, better, _ in HEADLINES}
    names = [name for name, _, _, _ in HEADLINES]
    base_values, run_values = headline_values(baseline), headline_values(run)
    changes = []
    for key, (name, band) in bands(overrides).items():
        unit, better = spec[name]
        i = names.index(name)
        b, v = base_values[i], run_values[i]
        width = band.width(b) if b is not None else None
        changes.append(Change(key, name, unit, better, b, v, width, judge(b, v, band, better)))
    return changes
