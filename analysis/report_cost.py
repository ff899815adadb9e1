"""The report's "Cost of a request" section: the server's CPU per request and per output
token, per route, beside RAM per request; the whole tree's CPU per token from memory.csv;
and what the box's other processes and the hypervisor took.

Pure: Findings in, a Section out (formulas: analysis.cost's docstrings, quoted in "How each
number is computed").
"""

from __future__ import annotations

import math

from analysis.cost import busy_warning
from analysis.document import Paragraph, Section, Table, num, pct
from analysis.records import Findings

COST_TITLE = "Cost of a request"
NO_COST = (
    "Not measured: the server reported no per-request CPU (`cpu_ms` in its log, X-CPU-Ms) "
    "and memory.csv has no `cpu_s` of the server tree (sample it with `--server-pidfile`)."
)


def _tree(f: Findings) -> Paragraph:
    c = f.cost
    if c.tree_cpu_s is None:
        return Paragraph("The server tree's CPU was not sampled (memory.csv has no `cpu_s`: "
                         "run Locust with `--server-pidfile`), so the whole tree's CPU per "
                         "token is not measured.")
    text = (f"The whole server tree (master and workers, memory.csv) used "
            f"{num(c.tree_cpu_s, 2)} core-s over {num(c.tree_window_s, 0)} s of load: "
            f"**{num(c.tree_cpu_ms_per_token, 2)} core-ms per output token** over "
            f"{num(c.output_tokens)} output tokens.")
    if c.unattributed_share is not None:
        text += (f" Requests were charged {num(c.charged_cpu_s, 2)} core-s of it; "
                 f"{pct(c.unattributed_share)} is unattributed (the Gunicorn master, the "
                 "workers' CPU after their last step and outside the sampled window).")
    return Paragraph(text)


def _busy(f: Findings) -> Paragraph:
    b = f.busy
    if b is None:
        return Paragraph("The box's other load was not recorded (memory.csv has no "
                         "`steal_share`).")
    warning = busy_warning(b, f.config)
    if warning is not None:
        return Paragraph(f"**Warning**: {warning}")
    other = "not measured" if math.isnan(b.other_cpu_share) else pct(b.other_cpu_share)
    return Paragraph(f"A quiet box: other processes used {other} of the CPU; the hypervisor "
                     f"stole {pct(b.steal_share)} (limits {pct(f.config.busy_other_cpu_share, 0)}"
                     f" and {pct(f.config.busy_steal_share, 0)}).")


def cost_section(f: Findings) -> Section:
    """Core-ms per output token per route beside RAM per request; the tree's CPU; busy box."""
    c = f.cost
    if c is None:
        return Section(COST_TITLE, [Paragraph(NO_COST), _busy(f)])
    blocks: list[Paragraph | Table] = []
    if c.routes:
        rows = [(r.route, r.requests, r.output_tokens, num(r.cpu_ms_mean, 1),
                 num(r.cpu_ms_per_token, 2), num(r.rss_delta_mb_mean, 2),
                 num(r.peak_growth_mb_mean, 2)) for r in c.routes]
        blocks += [
            Paragraph("The worker's CPU charged to each successful request: every step's "
                      "process CPU, split over its rows by the tokens they fed (lower is "
                      "better):"),
            Table(["Route", "Requests", "Output tokens", "CPU ms per request",
                   "Core-ms per output token", "RAM per request: RSS delta MB",
                   "RAM per request: peak growth MB"], rows),
        ]
    else:
        blocks.append(Paragraph("The server reported no per-request CPU (not this project's "
                                "server, or from before issue 32)."))
    return Section(COST_TITLE, [*blocks, _tree(f), _busy(f)])
