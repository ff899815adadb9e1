"""Compare runs: the settings that differ, headline metrics side by side, ratios vs the first.

Pure: Findings in, Markdown out. Each ratio is (this run's value) / (first run's value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from analysis.formatting import MISSING, is_missing, num
from analysis.hardware import hardware_note
from analysis.records import Findings
from analysis.tables import table
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
    if charts:
        sections.append("## Charts\n\n" + "\n\n".join(f"![{t}]({p})" for t, p in charts))
    if notes:
        sections.append("## Notes on the inputs\n\n" + "\n".join(notes))
    return "\n\n".join(sections) + "\n"
