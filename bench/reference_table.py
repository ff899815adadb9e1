"""The reference table of issue 13: each run next to llama.cpp's, with the acceptance ratios.

Every number is the analysis package's own (``analysis.findings.build_findings`` on the run
folder), so the table agrees with ``python -m analysis compare`` of the same folders; this
table only adds TTFT p50 and the ratios the issue's acceptance is written in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.config import load_config
from analysis.findings import Findings, build_findings
from analysis.formatting import num, table
from analysis.run import load_run
from analysis.traffic import ALL_ROUTES

NAN = float("nan")


@dataclass(frozen=True)
class ReferenceRow:
    """One run's headline numbers (NaN where not measured); times in seconds."""

    run: str
    server: str  # "ours" or "llama.cpp"
    users: int
    requests: int
    failures: int
    output_tokens_per_s: float
    requests_per_s: float
    p50_s: float
    p95_s: float
    ttft_p50_s: float
    peak_total_pss_mb: float
    peak_total_rss_mb: float


def _value(x: float | None, scale: float = 1.0) -> float:
    return NAN if x is None or (isinstance(x, float) and math.isnan(x)) else x * scale


def ttft_p50_ms(f: Findings) -> float | None:
    """Median time to first token over all streamed routes (None without streamed answers)."""
    if f.streaming is None:
        return None
    return next((p.p50 for p in f.streaming.percentiles
                 if p.route == ALL_ROUTES and p.metric == "TTFT"), None)


def reference_row(f: Findings) -> ReferenceRow:
    """The headline numbers of one run's Findings."""
    settings = f.settings
    t, overall, memory = f.traffic, f.overall, f.memory
    return ReferenceRow(
        run=f.label, server=str(settings.get("server", "ours")),
        users=int(settings.get("users", 0)),
        requests=t.requests if t else 0, failures=t.failures if t else 0,
        output_tokens_per_s=_value(t and t.output_tokens_per_s),
        requests_per_s=_value(t and t.throughput_rps),
        p50_s=_value(overall and overall.p50_ms, 1e-3),
        p95_s=_value(overall and overall.p95_ms, 1e-3),
        ttft_p50_s=_value(ttft_p50_ms(f), 1e-3),
        peak_total_pss_mb=_value(memory and memory.peak_pss_mb),
        peak_total_rss_mb=_value(memory and memory.peak_rss_mb))


def read_row(run_dir: Path) -> ReferenceRow:
    """Analyse one run folder with the default analysis settings and return its row."""
    run = load_run(run_dir)
    return reference_row(build_findings(run, load_config().for_run(run.settings)))


def baseline(rows: Sequence[ReferenceRow], row: ReferenceRow) -> ReferenceRow | None:
    """The yardstick for ``row``: the first llama.cpp row with the same number of users."""
    return next((r for r in rows if r.server == "llama.cpp" and r.users == row.users), None)


def _ratio(value: float, base: float) -> str:
    return "n/a" if math.isnan(value) or math.isnan(base) or base == 0 else f"{value / base:.2f}x"


HEADERS = ["run", "users", "requests (failed)", "output tok/s", "req/s", "p50 s", "p95 s",
           "TTFT p50 s", "peak PSS MB", "peak RSS MB", "tok/s vs ref", "TTFT vs ref",
           "PSS vs ref RSS"]


def render_rows(rows: Sequence[ReferenceRow]) -> str:
    """Markdown table; the ratio columns are against ``baseline`` (the first llama.cpp row
    with as many users): tok/s and TTFT p50 divided by its, and our peak PSS by its peak RSS
    (the issue's acceptance: >= 1, <= 2 and < 1)."""
    lines = []
    for r in rows:
        ref = baseline(rows, r)
        ref_tok, ref_ttft, ref_rss = ((ref.output_tokens_per_s, ref.ttft_p50_s,
                                       ref.peak_total_rss_mb) if ref else (NAN, NAN, NAN))
        lines.append((
            r.run, r.users, f"{r.requests} ({r.failures})", num(r.output_tokens_per_s, 2),
            num(r.requests_per_s, 3), num(r.p50_s, 1), num(r.p95_s, 1), num(r.ttft_p50_s, 2),
            num(r.peak_total_pss_mb, 0), num(r.peak_total_rss_mb, 0),
            _ratio(r.output_tokens_per_s, ref_tok), _ratio(r.ttft_p50_s, ref_ttft),
            _ratio(r.peak_total_pss_mb, ref_rss)))
    return table(HEADERS, lines)
