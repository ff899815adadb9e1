"""The report's "Streaming and goodput" section. Pure: Findings in, a Section out.

The formulas themselves are stated once, in "How each number is computed"
(analysis.report_methods quotes the docstrings of analysis.streaming and analysis.goodput).
"""

from __future__ import annotations

from analysis.config import AnalysisConfig
from analysis.document import Paragraph, Section, Table
from analysis.formatting import num, pct
from analysis.goodput import Goodput
from analysis.records import Findings
from analysis.streaming import StreamSummary

TITLE = "Streaming and goodput"
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


def _latency(s: StreamSummary) -> Section:
    rows = [
        (p.route, p.metric if p.unit in p.metric else f"{p.metric} ({p.unit})", p.samples,
         p.p50, p.p90, p.p95, p.p99, p.mean)
        for p in s.percentiles
    ]  # fmt: skip
    headers = ["Route", "Metric", "Requests", "p50", "p90", "p95", "p99", "Mean"]
    title = "Streamed latency (lower is better; tokens/s per user: higher is better)"
    return Section(title, [Table(headers, rows)], level=3)


def _goodput(s: StreamSummary, g: Goodput, cfg: AnalysisConfig) -> Section:
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
    blocks = [
        Table(["Metric", "Value"], rows),
        Paragraph("A request over several targets is counted under each of them."),
    ]
    if not g.steps.empty:
        steps = [
            (int(r.users), r.requests, r.good, pct(r.attainment), "yes" if r.meets else "no")
            for r in g.steps.itertuples()
        ]
        best = g.max_users_within_attainment
        blocks += [
            Table(["Users", "Streamed requests", "Good", "SLO attainment", "Meets"], steps),
            Paragraph(
                f"Highest sweep step with SLO attainment >= {pct(cfg.slo_attainment)}: "
                + (f"{best} users." if best is not None else "none.")
            ),
        ]
    return Section("Goodput and SLO attainment (higher is better)", blocks, level=3)


def streaming_section(f: Findings) -> Section:
    """TTFT/TPOT/E2E percentiles, tokens/s, goodput and attainment; a note when none streamed."""
    s, g = f.streaming, f.goodput
    if s is None or g is None:
        return Section(TITLE, [Paragraph(NO_STREAMS)])
    parts: list[Paragraph | Section] = [Paragraph(
        f"{num(s.requests)} streamed requests ({num(s.successes)} successful). "
        + _targets(f.config)
    )]  # fmt: skip
    if s.without_token_count:
        parts.append(Paragraph(
            f"{num(s.without_token_count)} successful streamed answer(s) came without an "
            "output-token count (the server sent no usage): TPOT and tokens/s are not "
            "measured for them, and they miss any TPOT target."
        ))  # fmt: skip
    parts += [_latency(s), _goodput(s, g, f.config)]
    return Section(TITLE, parts)
