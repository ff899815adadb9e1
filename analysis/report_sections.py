"""The report's topic sections: "Streaming and goodput", "Hardware and kernel path" (the
server's startup kernel table) and "Load generator" (Locust's own CPU and event-loop lag).

Pure: Findings in, a Section out. The formulas themselves are stated once, in "How each
number is computed" (analysis.report quotes the docstrings of analysis.streaming and
analysis.goodput).
"""

from __future__ import annotations

from analysis.config import AnalysisConfig
from analysis.document import Paragraph, Section, Table, num, pct
from analysis.goodput import Goodput
from analysis.hardware import header_line
from analysis.records import Findings
from analysis.streaming import StreamSummary

STREAMING_TITLE = "Streaming and goodput"
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
        return Section(STREAMING_TITLE, [Paragraph(NO_STREAMS)])
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
    return Section(STREAMING_TITLE, parts)


# The server's startup kernel table.

HARDWARE_TITLE = "Hardware and kernel path"


def hardware_section(f: Findings) -> Section:
    """The precision served and, when the server reported one, its measured kernel table."""
    hw = f.hardware
    if hw is None or not hw.kernels:
        return Section(HARDWARE_TITLE, [Paragraph(
            f"{header_line(hw)} The server reported no kernel table (`/ready` has no "
            "`kernels`): the precision was not chosen by measurement, or the server predates "
            "it.")])
    rows = [(k.precision, k.batch_1_ms, k.batch_max_ms, k.max_batch,
             "yes" if k.precision == hw.chosen else "")
            for k in hw.kernels]
    headers = ["Precision", "Step ms, batch 1", "Step ms, largest batch", "Largest batch",
               "Chosen"]
    return Section(HARDWARE_TITLE, [
        Paragraph(f"Precision and kernel path served: **{hw.chosen or hw.served or 'n/a'}**. "
                  "Decode-step time per candidate, measured by the server at startup on one "
                  "thread (lower is better):"),
        Table(headers, rows)])


# Locust's own CPU and event-loop lag.

LOADGEN_TITLE = "Load generator"
NOT_RECORDED = (
    "Not recorded: the run folder has no `loadgen.csv` (Locust's CPU and event-loop lag are "
    "written by the suite's locustfiles since issue 14)."
)


def load_generator_section(f: Findings) -> Section:
    """Locust's CPU share of the box, its loop lag p50/p99, per role, and a verdict."""
    g, cfg = f.loadgen, f.config
    if g is None:
        return Section(LOADGEN_TITLE, [Paragraph(NOT_RECORDED)])
    measured = Paragraph(
        f"Over {num(g.window_s, 0)} s of load, Locust used {num(g.cpu_cores, 2)} cores: "
        f"**{pct(g.box_share)} of the box's {g.box_cores} cores**. Its event loop (a timer's "
        f"lateness, {num(g.ticks)} ticks of the processes running users) lagged "
        f"**p50 {num(g.lag_p50_ms, 1)} ms, p99 {num(g.lag_p99_ms, 1)} ms** "
        f"(max {num(g.lag_max_ms, 0)} ms)."
    )
    busy = g.lag_p99_ms > cfg.loadgen_lag_p99_ms or g.box_share > cfg.loadgen_cpu_share
    verdict = Paragraph(
        f"**Warning**: above the limits (loop lag p99 {num(cfg.loadgen_lag_p99_ms, 0)} ms, "
        f"{pct(cfg.loadgen_cpu_share, 0)} of the box): the generator's own delays are in the "
        "measured times (see the findings)."
        if busy else
        f"Within the limits (loop lag p99 <= {num(cfg.loadgen_lag_p99_ms, 0)} ms, CPU <= "
        f"{pct(cfg.loadgen_cpu_share, 0)} of the box): the generator did not skew the numbers."
    )
    rows = [(r.role, r.processes, pct(r.cpu_cores), r.lag_p50_ms, r.lag_p99_ms, r.lag_max_ms)
            for r in g.roles]
    headers = ["Role", "Processes", "CPU (% of one core)", "Lag p50 ms", "Lag p99 ms",
               "Lag max ms"]
    return Section(LOADGEN_TITLE, [measured, verdict, Table(headers, rows)])


# Open-loop arrivals: the schedule kept, and latency from the intended send time.

ARRIVALS_TITLE = "Arrivals (open-loop load)"


def arrivals_section(f: Findings) -> Section:
    """Target vs achieved rate, dispatch lag, latency from the intended vs the actual send."""
    a = f.arrivals
    burst = f", burstiness {num(a.burstiness, 2)}" if a.burstiness is not None else ""
    due = (f"{num(a.scheduled)} arrivals fell due ({num(a.scheduled_rps, 3)} req/s: the "
           "realised schedule)" if a.scheduled is not None else "the due count was not recorded")
    rate = Paragraph(
        f"{a.process.capitalize()} arrivals at a target of {num(a.target_rps, 3)} req/s{burst} "
        f"(seed {a.seed}). Over {num(a.window_s, 1)} s {due}; **{num(a.sent)} were sent: "
        f"{num(a.achieved_rps, 3)} req/s, {pct(a.achieved_rps / a.target_rps)} of the target**."
    )
    rows = [
        ("Dispatch lag (actual - intended send) p50 / p99 / max",
         f"{num(a.lag_p50_ms, 1)} / {num(a.lag_p99_ms, 1)} / {num(a.lag_max_ms, 1)} ms"),
        ("Sent late: every user of the pool busy", num(a.pool_delayed)),
        ("Latency from the intended send p50 / p99",
         f"{num(a.intended_p50_ms, 0)} / {num(a.intended_p99_ms, 0)} ms"),
        ("Latency from the actual send p50 / p99",
         f"{num(a.actual_p50_ms, 0)} / {num(a.actual_p99_ms, 0)} ms"),
        ("Growth over the run, from intended / from actual send (last third - first third)",
         f"{num(a.intended_growth_ms, 0)} / {num(a.actual_growth_ms, 0)} ms"),
    ]
    late = Paragraph(
        f"**Warning**: {num(a.pool_delayed)} arrival(s) waited for a free user: the pool "
        "(`-u`) was too small or the server too slow for this rate. Their latency from the "
        "intended send counts the wait; the latency from the actual send hides it."
        if a.pool_delayed else
        "No arrival waited for a free user: the pool kept up with the schedule."
    )
    return Section(ARRIVALS_TITLE, [rate, Table(["Metric", "Value"], rows), late])
