"""The reference table of issue 13: each run next to llama.cpp's, with the acceptance ratios.

Output tokens/s, TTFT p50 and memory are the analysis package's own
(``analysis.findings.build_findings`` on the run folder), as in ``python -m analysis compare``
of the same folders. Requests, req/s and latency percentiles count the generation requests
(POST) only: each OpenAI user's one ``GET /v1/models`` (~0.1 s) would pull a short run's p50
down and its req/s up, and llama-server and ours answer it alike. This table adds TTFT p50 and
the ratios the issue's acceptance is written in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.config import load_config
from analysis.document import num, table
from analysis.findings import build_findings
from analysis.memory import totals
from analysis.records import Findings
from analysis.run import load_run
from analysis.traffic import ALL_ROUTES
from bench.table import Throughput

NAN = float("nan")


@dataclass(frozen=True, kw_only=True)
class ReferenceRow(Throughput):
    """One run's headline numbers (NaN where not measured); times in seconds."""

    run: str
    server: str  # "ours" or "llama.cpp"
    users: int
    ttft_p50_s: float
    peak_total_pss_mb: float
    peak_total_rss_mb: float


@dataclass(frozen=True)
class Generations:
    """The POST requests of a run: counts, successful ones per second, latency percentiles."""

    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float


def generations(requests: pd.DataFrame, window_s: float) -> Generations:
    """Count the POSTs of ``requests`` and take pXX (linear) of the successful ones' times.

    Formula: requests_per_s = successful POSTs / window_s (the run's measured window, as for
    analysis' throughput); p50/p95 = quantiles of their response_time_ms.
    """
    posts = requests[requests["method"] == "POST"]
    ok = posts.loc[posts["success"], "response_time_ms"]
    p50, p95 = ok.quantile([0.5, 0.95]).tolist() if len(ok) else (NAN, NAN)
    rate = len(ok) / window_s if window_s and window_s > 0 else NAN
    return Generations(len(posts), int((~posts["success"]).sum()), rate, p50, p95)


def _value(x: float | None, scale: float = 1.0) -> float:
    return NAN if x is None or (isinstance(x, float) and math.isnan(x)) else x * scale


def ttft_p50_ms(f: Findings) -> float | None:
    """Median time to first token over all streamed routes (None without streamed answers)."""
    if f.streaming is None:
        return None
    return next((p.p50 for p in f.streaming.percentiles
                 if p.route == ALL_ROUTES and p.metric == "TTFT"), None)


def reference_row(f: Findings, requests: pd.DataFrame) -> ReferenceRow:
    """The headline numbers of one run: its Findings and its requests.csv frame."""
    settings, t, memory = f.settings, f.traffic, f.memory
    g = generations(requests, t.window_s if t else NAN)
    return ReferenceRow(
        run=f.label, server=str(settings.get("server_kind", "ours")),
        users=int(settings.get("users", 0)), requests=g.requests, failures=g.failures,
        output_tokens_per_s=_value(t and t.output_tokens_per_s),
        requests_per_s=g.requests_per_s, p50_s=g.p50_ms * 1e-3, p95_s=g.p95_ms * 1e-3,
        ttft_p50_s=_value(ttft_p50_ms(f), 1e-3),
        peak_total_pss_mb=_value(memory and memory.peak_pss_mb),
        peak_total_rss_mb=_value(memory and memory.peak_rss_mb))


def read_findings(run_dir: Path) -> tuple[Findings, pd.DataFrame]:
    """Analyse one run folder with the default analysis settings: its Findings and requests."""
    run = load_run(run_dir)
    return build_findings(run, load_config().for_run(run.settings)), run.requests


def read_row(run_dir: Path) -> ReferenceRow:
    """Analyse one run folder with the default analysis settings and return its row."""
    return reference_row(*read_findings(run_dir))


def answer_ends(requests: pd.DataFrame) -> pd.Series:
    """When each answer of ``generations`` (a successful POST) ended, in seconds into the
    run (the reader's ``end_elapsed_s``), sorted."""
    answers = requests[(requests["method"] == "POST") & requests["success"]]
    return answers["end_elapsed_s"].sort_values(ignore_index=True)


def peak_until_answered(run_dir: Path, answers: int, column: str = "pss_mb") -> float:
    """The run's peak total ``column`` (memory.csv: ``pss_mb`` for our tree, ``rss_mb`` for
    llama-server) from its start to the end of its ``answers``-th answer; NaN when it
    answered fewer.

    Why: over a run of fixed length the faster server answers more requests and keeps more
    prompts' caches (ours its prefix rows, llama-server its RAM prompt cache), so its peak
    covers more work. Taken up to the slower server's count of answers, both peaks cover
    the same number of requests."""
    run = load_run(run_dir)
    ends = answer_ends(run.requests) if not run.requests.empty else pd.Series(dtype=float)
    if answers < 1 or len(ends) < answers:
        return NAN
    total = totals(run.memory)
    within = total.loc[total["elapsed_s"] <= ends.iloc[answers - 1], column]
    return float(within.max()) if len(within) else NAN


def baseline(rows: Sequence[ReferenceRow], row: ReferenceRow) -> ReferenceRow | None:
    """The yardstick for ``row``: the first llama.cpp row with the same number of users."""
    return next((r for r in rows if r.server == "llama.cpp" and r.users == row.users), None)


def ratio(value: float, base: float) -> float:
    """value / base, NaN when either is missing or base is 0."""
    return NAN if math.isnan(value) or math.isnan(base) or base == 0 else value / base


def _ratio(value: float, base: float) -> str:
    r = ratio(value, base)
    return "n/a" if math.isnan(r) else f"{r:.2f}x"


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
