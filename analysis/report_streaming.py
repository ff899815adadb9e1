"""The report's "Streaming and goodput" section. Pure: Findings in, Markdown out.

The formulas themselves are stated once, in "How each number is computed" (analysis.methods
quotes the docstrings of analysis.streaming and analysis.goodput).
"""

from __future__ import annotations

from analysis.config import AnalysisConfig
from analysis.findings import Findings
from analysis.formatting import num, pct, table
from analysis.goodput import Goodput
from analysis.streaming import StreamSummary

TITLE = "## Streaming and goodput"
NO_STREAMS = (
    "No streamed requests in this run: TTFT/TPOT not measured, so goodput and SLO "
    "attainment are not computed either. Streaming users (`StreamingPromptUser`, ...) or "
    "`--target openai` with streamed users record them."
)


def _target(value: float, op: str = "<=", unit: str = "ms") -> str:
    return f"{op} {num(value, 0, unit)}" if value > 0 else "not checked"


def _targets(cfg: AnalysisConfig) -> str:
    return (
        f"Targets per request: TTFT {_target(cfg.slo_ttft_ms)}, TPOT {_target(cfg.slo_tpot_ms)}, "
        f"E2E {_target(cfg.slo_e2e_ms)}; SLO attainment >= {pct(cfg.slo_attainment)} of "
        "streamed requests."
    )


def _latency(s: StreamSummary) -> str:
    rows = [
        (p.route, p.metric if p.unit in p.metric else f"{p.metric} ({p.unit})", p.samples,
         p.p50, p.p90, p.p95, p.p99, p.mean)
        for p in s.percentiles
    ]  # fmt: skip
    headers = ["Route", "Metric", "Requests", "p50", "p90", "p95", "p99", "Mean"]
    return (
        "### Streamed latency (lower is better; tokens/s per user: higher is better)\n\n"
        + table(headers, rows)
    )


def _goodput(s: StreamSummary, g: Goodput, cfg: AnalysisConfig) -> str:
    verdict = "PASS" if g.meets_attainment else "FAIL"
    rows = [
        ("Streamed requests", num(g.requests)),
        ("Good (succeeded and met every target)", num(g.good)),
        ("Missed: failed", num(g.failed)),
        ("Missed: succeeded, TTFT over target", num(g.over_ttft)),
        ("Missed: succeeded, TPOT over target", num(g.over_tpot)),
        ("Missed: succeeded, E2E over target", num(g.over_e2e)),
        ("Goodput", num(g.goodput_rps, 3, "req/s")),
        ("Good output tokens/s", num(g.good_output_tokens_per_s, 1, "tokens/s")),
        ("Output tokens/s, successful streams", num(s.output_tokens_per_s, 1, "tokens/s")),
        ("SLO attainment", f"{pct(g.attainment)} ({verdict} against {pct(cfg.slo_attainment)})"),
    ]
    text = (
        "### Goodput and SLO attainment (higher is better)\n\n"
        + table(["Metric", "Value"], rows)
        + "\n\nA request over several targets is counted under each of them."
    )
    if not g.steps.empty:
        steps = [
            (int(r.users), r.requests, r.good, pct(r.attainment), "yes" if r.meets else "no")
            for r in g.steps.itertuples()
        ]
        best = g.max_users_within_attainment
        text += (
            "\n\n"
            + table(["Users", "Streamed requests", "Good", "SLO attainment", "Meets"], steps)
            + f"\n\nHighest sweep step with SLO attainment >= {pct(cfg.slo_attainment)}: "
            + (f"{best} users." if best is not None else "none.")
        )
    return text


def streaming_section(f: Findings) -> str:
    """TTFT/TPOT/E2E percentiles, tokens/s, goodput and attainment; a note when none streamed."""
    s, g = f.streaming, f.goodput
    if s is None or g is None:
        return f"{TITLE}\n\n{NO_STREAMS}"
    parts = [
        f"{TITLE}\n\n{num(s.requests)} streamed requests ({num(s.successes)} successful). "
        + _targets(f.config)
    ]
    if s.without_token_count:
        parts.append(
            f"{num(s.without_token_count)} successful streamed answer(s) came without an "
            "output-token count (the server sent no usage): TPOT and tokens/s are not "
            "measured for them, and they miss any TPOT target."
        )
    parts += [_latency(s), _goodput(s, g, f.config)]
    return "\n\n".join(parts)
