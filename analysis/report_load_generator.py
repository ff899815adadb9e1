"""The report's "Load generator" section: Locust's own CPU and event-loop lag.

Pure: Findings in, a Section out.
"""

from __future__ import annotations

from analysis.document import Paragraph, Section, Table
from analysis.formatting import num, pct
from analysis.records import Findings

TITLE = "Load generator"
NOT_RECORDED = (
    "Not recorded: the run folder has no `loadgen.csv` (Locust's CPU and event-loop lag are "
    "written by the suite's locustfiles since issue 14)."
)


def load_generator_section(f: Findings) -> Section:
    """Locust's CPU share of the box, its loop lag p50/p99, per role, and a verdict."""
    g, cfg = f.loadgen, f.config
    if g is None:
        return Section(TITLE, [Paragraph(NOT_RECORDED)])
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
    return Section(TITLE, [measured, verdict, Table(headers, rows)])
