"""Compare runs: the settings that differ, headline metrics side by side, ratios vs the first;
and the regression verdicts of a run against a baseline, noise-aware.

Pure: Findings in, Markdown (or Change records) out. Each ratio is (this run's value) /
(first run's value).

Each gated metric has a noise band: a change smaller than ``max(relative * |baseline|,
absolute)`` is *unchanged*, whichever way it went; beyond it, the change is *improved* or
*regressed* according to which way is better. The default bands come from the measured
run-to-run spread of the same configuration on the same machine (docs/ci.md, "How wide is
the noise"): three median absolute deviations of five runs, and never below a floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from analysis.cost import busy_warning
from analysis.document import MISSING, is_missing, num, table
from analysis.hardware import hardware_note
from analysis.records import Findings
from analysis.traffic import ALL_ROUTES

# Keys that differ between any two runs without being a setting that was compared.
_IGNORED = {"label", "git_commit"}

# name, unit, which way is better, how to get it from Findings.
HEADLINES: list[tuple[str, str, str, Callable[[Findings], Any]]] = [
    ("Requests", "", "", lambda f: f.traffic and f.traffic.requests),
    ("Error rate", "ratio", "lower", lambda f: f.traffic and f.traffic.error_rate),
    ("Throughput", "req/s", "higher", lambda f: f.traffic and f.traffic.throughput_rps),
    ("Output tokens/s", "tokens/s", "higher",
     lambda f: f.traffic and f.traffic.output_tokens_per_s),
    ("p50 latency", "ms", "lower", lambda f: f.overall and f.overall.p50_ms),
    ("p95 latency", "ms", "lower", lambda f: f.overall and f.overall.p95_ms),
    ("p99 latency", "ms", "lower", lambda f: f.overall and f.overall.p99_ms),
    ("Queue share", "ratio", "lower", lambda f: f.time_split and f.time_split.queue_share),
    ("Mean batch size", "requests", "", lambda f: f.time_split and f.time_split.mean_batch_size),
    ("Peak total PSS", "MB", "lower", lambda f: f.memory and f.memory.peak_pss_mb),
    ("Mean total PSS", "MB", "lower", lambda f: f.memory and f.memory.mean_pss_mb),
    ("Peak summed RSS", "MB", "lower", lambda f: f.memory and f.memory.peak_rss_mb),
    ("Sharing saving", "MB", "higher", lambda f: f.memory and f.memory.sharing_saving_mb),
    ("Memory slope", "MB/min", "lower", lambda f: f.memory and f.memory.slope_mb_per_min),
    ("RAM per request (RSS delta)", "MB", "lower", lambda f: f.ram and f.ram.mean_rss_delta_mb),
    ("Sweep knee", "users", "higher", lambda f: f.sweep and f.sweep.knee_users),
    ("Max users within SLO", "users", "higher", lambda f: f.sweep and f.sweep.max_users_within_slo),
    ("Goodput", "req/s", "higher", lambda f: f.goodput and f.goodput.goodput_rps),
    ("SLO attainment", "ratio", "higher", lambda f: f.goodput and f.goodput.attainment),
    ("Capacity (search)", "level", "higher", lambda f: f.capacity and f.capacity.level),
    ("Server CPU per output token", "core-ms", "lower",
     lambda f: f.cost and f.cost.cpu_ms_per_token),
    ("Other processes' CPU share", "ratio", "lower", lambda f: f.busy and f.busy.other_cpu_share),
    ("CPU stolen by the hypervisor", "ratio", "lower", lambda f: f.busy and f.busy.steal_share),
]  # fmt: skip


SLO_COLUMNS = (f"p95 latency, {ALL_ROUTES}", "error rate")


def _verdict(f: Findings, name: str) -> str:
    """PASS/FAIL of the SLO verdict ``name`` of run ``f``, with its target."""
    v = next((v for v in f.slo if v.name == name), None)
    if v is None or v.passed is None:
        return MISSING
    digits = 3 if v.unit == "ratio" else 0
    return f"{'PASS' if v.passed else 'FAIL'} ({num(v.actual, digits)} vs {num(v.target, digits)})"


def differing_settings(runs: Sequence[Findings]) -> dict[str, list[Any]]:
    """Settings (dotted run.json keys) whose values are not the same in every run."""
    keys = sorted({k for f in runs for k in f.settings} - _IGNORED)
    values = {k: [f.settings.get(k) for f in runs] for k in keys}
    return {k: v for k, v in values.items() if any(x != v[0] for x in v)}


def headline_values(f: Findings) -> list[Any]:
    """The HEADLINES values of one run (None where not measured)."""
    values = []
    for _, _, _, get in HEADLINES:
        value = get(f)
        values.append(None if value is None or value is False or is_missing(value) else value)
    return values


def headline_frame(runs: Sequence[Findings]) -> pd.DataFrame:
    """One row per run (index: label), one column per HEADLINES name; NaN where not measured."""
    return pd.DataFrame(
        [headline_values(f) for f in runs],
        index=pd.Index([f.label for f in runs], name="run"),
        columns=[name for name, _, _, _ in HEADLINES],
        dtype=float,
    )


def ratio(value: Any, base: Any) -> str:
    """``value / base`` to 3 significant digits ("1.23x"); n/a if missing or the base is 0."""
    if value is None or base is None or base == 0:
        return MISSING
    return f"{value / base:.3g}x"


def render_comparison(runs: Sequence[Findings], charts: Sequence[tuple[str, str]] = ()) -> str:
    """Markdown comparing ``runs`` (the first is the baseline); ``charts``: (title, path)."""
    labels = [f.label for f in runs]
    diff = differing_settings(runs)
    settings = (
        table(["Setting", *labels], [(k, *v) for k, v in diff.items()])
        if diff
        else "All compared runs have the same settings in run.json."
    )
    values = [headline_values(f) for f in runs]
    rows = []
    for i, (name, unit, better, _) in enumerate(HEADLINES):
        digits = 3 if unit == "ratio" else 1
        shown = [num(v[i], digits) for v in values]
        ratios = [ratio(v[i], values[0][i]) for v in values[1:]]
        label = f"{name} ({unit})" if unit and unit.lower() not in name.lower() else name
        rows.append((label + (f", {better} is better" if better else ""), *shown, *ratios))
    headers = ["Metric", *labels, *(f"{label} / {labels[0]}" for label in labels[1:])]
    notes = [f"- **{f.label}**: {n}" for f in runs for n in f.notes]
    sections = [
        f"# Run comparison: {' vs '.join(labels)}",
        f"Baseline for the ratios: **{labels[0]}** (ratio = run / baseline).",
        "## Settings that differ\n\n" + hardware_note(runs) + settings,
        "## Headline metrics\n\n" + table(headers, rows),
    ]
    sections.append(
        "## SLO verdicts\n\n"
        + table(
            ["Run", *SLO_COLUMNS],
            [(f.label, *(_verdict(f, name) for name in SLO_COLUMNS)) for f in runs],
        )
    )
    busy = [f"- **{f.label}**: {text}" for f in runs
            if (text := busy_warning(f.busy, f.config)) is not None]
    if busy:
        sections.append("## Busy box\n\nThese runs shared their box: compare them with care."
                        "\n\n" + "\n".join(busy))
    if charts:
        sections.append("## Charts\n\n" + "\n\n".join(f"![{t}]({p})" for t, p in charts))
    if notes:
        sections.append("## Notes on the inputs\n\n" + "\n".join(notes))
    return "\n\n".join(sections) + "\n"


# The regression verdicts: a run's headline metrics against a baseline's.

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
    # The capacity search's level (users): 10% or one level step, widened to the baseline's
    # own bracket (BAND_FLOORS): a fall inside it is the search's resolution, not a regression.
    "capacity": ("Capacity (search)", Band(0.10, 1.0)),
}

# Per metric, an absolute band floor read from the baseline run itself.
BAND_FLOORS: dict[str, Callable[[Findings], float | None]] = {
    "capacity": lambda f: f.capacity and f.capacity.bracket_width,
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
        floor = BAND_FLOORS[key](baseline) if key in BAND_FLOORS else None
        band = replace(band, absolute=max(band.absolute, floor or 0.0))
        width = band.width(b) if b is not None else None
        changes.append(Change(key, name, unit, better, b, v, width, judge(b, v, band, better)))
    return changes
