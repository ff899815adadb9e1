"""Build the report of one run from its Findings, as a Document (analysis.document).

Pure: no I/O, every number comes from the Findings. ``render_markdown`` writes it as
report.md; analysis.document renders the same Document as report.html. The topic sections
(streaming, hardware, load generator) live in analysis.report_sections.

The "How each number is computed" section: each formula is written once, in the docstring of
the function that computes it (a paragraph starting "Formula:"); this module quotes those
paragraphs rather than restating them, so the report cannot drift from the code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from analysis import arrivals, cost, goodput, loadgen, memory, streaming, sweep, traffic, workloads
from analysis.capacity import CapacityResult
from analysis.capacity_report import capacity_section
from analysis.document import (
    MISSING,
    Bullets,
    Document,
    Image,
    Paragraph,
    Section,
    Table,
    num,
    pct,
    to_markdown,
)
from analysis.hardware import header_line
from analysis.records import Findings
from analysis.report_cost import cost_section
from analysis.report_sections import (
    arrivals_section,
    hardware_section,
    load_generator_section,
    streaming_section,
)
from analysis.report_workload import workload_section
from analysis.rules import all_rules


def _intro(f: Findings) -> list[Paragraph]:
    s = f.settings
    if not s:
        return [Paragraph("Settings unknown: the run folder has no `run.json`.")]
    model = str(s.get("model", MISSING))
    stages = [st.get("users") for st in (s.get("shape.stages") or []) if isinstance(st, dict)]
    load = (
        f"a step sweep through {' -> '.join(str(u) for u in stages)} Locust users"
        if stages
        else f"a capacity search between {num(s.get('shape.min_level'), 0)} and "
        f"{num(s.get('shape.max_level'), 0)} {s.get('shape.knob', 'users')}"
        if s.get("shape.kind") == "search"
        else f"{num(s.get('users'))} Locust users (spawn rate {num(s.get('spawn_rate'))}/s)"
    )
    if s.get("arrivals.process"):  # open-loop: the rate is the load, the users its pool
        load = (f"{s['arrivals.process']} arrivals at {num(s.get('arrivals.rate_rps'), 3)} "
                f"req/s (a pool of up to {num(s.get('users'))} users in flight)")
    text = (
        f"Model `{model}` ({s.get('dtype', MISSING)}) served by {num(s.get('workers'))} "
        f"Gunicorn worker(s) x {num(s.get('torch_threads'))} torch thread(s), batches of up to "
        f"{num(s.get('max_batch_size'))}, on {num(s.get('host.cores'))} cores / "
        f"{num(s.get('host.ram_gb'))} GB RAM. Load: {load} for {num(s.get('duration_s'))} s."
    )
    intro = [Paragraph(header_line(f.hardware)), Paragraph(text)]
    if model.startswith("synthetic:"):
        intro.append(Paragraph(
            "The model is synthetic (seeded random weights of the real architecture): "
            "its text is meaningless, its memory and compute profile is the real one."
        ))  # fmt: skip
    return intro


def _summary(f: Findings) -> Section:
    t, ts, m, ram = f.traffic, f.time_split, f.memory, f.ram
    rows: list[tuple[str, str]] = []
    if t:
        rows += [
            (
                "Requests (successful / failed)",
                f"{num(t.requests)} ({num(t.successes)} / {num(t.failures)})",
            ),
            ("Error rate", pct(t.error_rate, 2)),
            ("Measured window", num(t.window_s, 1, "s")),
            ("Throughput (successful)", num(t.throughput_rps, 3, "req/s")),
            ("Output tokens/s", num(t.output_tokens_per_s, 1, "tokens/s")),
        ]
    if ts:
        rows += [
            (
                "Mean queue / inference time",
                f"{num(ts.mean_queue_ms, 0)} ms / {num(ts.mean_inference_ms, 0)} ms",
            ),
            ("Queue share of server time", pct(ts.queue_share)),
            ("Mean batch size", num(ts.mean_batch_size, 2)),
        ]
    if m:
        rows += [
            ("Total PSS, peak / mean", f"{num(m.peak_pss_mb, 0)} / {num(m.mean_pss_mb, 0)} MB"),
            ("Summed RSS, peak / mean", f"{num(m.peak_rss_mb, 0)} / {num(m.mean_rss_mb, 0)} MB"),
            ("Summed USS, peak / mean", f"{num(m.peak_uss_mb, 0)} / {num(m.mean_uss_mb, 0)} MB"),
            (
                "Sharing saving (summed RSS - total PSS)",
                f"{num(m.sharing_saving_mb, 0)} MB ({pct(m.sharing_saving_share)})",
            ),
            ("Memory floor slope after warm-up", num(m.slope_mb_per_min, 2, "MB/min")),
            ("Lowest system available memory", num(m.min_sys_available_mb, 0, "MB")),
        ]
        if m.kept_kv_slope_mb_per_min is not None:  # a server log that says (kv_kept_mb)
            rows.insert(-1, ("Kept prefix caches' growth, same span",
                             num(m.kept_kv_slope_mb_per_min, 2, "MB/min")))
    if ram:
        rows += [
            (
                "RAM per request: RSS delta mean / p95 / max",
                f"{num(ram.mean_rss_delta_mb, 2)} / {num(ram.p95_rss_delta_mb, 2)} / "
                f"{num(ram.max_rss_delta_mb, 2)} MB",
            ),
            (
                "RAM per request: peak growth mean / p95",
                f"{num(ram.mean_peak_growth_mb, 2)} / {num(ram.p95_peak_growth_mb, 2)} MB",
            ),
        ]
    return Section("Summary", [Table(["Metric", "Value"], rows)])


def _latency(f: Findings) -> Section:
    rows = [
        (r.route, r.requests, r.successes, r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.mean_ms)
        for r in f.routes
    ]
    headers = ["Route", "Requests", "Successful", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "Mean ms"]
    causes = f.traffic.failures_by_cause if f.traffic else {}
    by_cause = (
        Table(["Cause", "Requests"], sorted(causes.items()))
        if causes
        else Paragraph("No failed requests.")
    )
    return Section(
        "Latency per route (lower is better)",
        [Table(headers, rows), Section("Failures by cause", [by_cause], level=3)],
    )


def _slo(f: Findings) -> Section:
    verdict = {True: "PASS", False: "FAIL", None: "not measured"}
    rows = [
        (
            v.name,
            num(v.target, 3 if v.unit == "ratio" else 0),
            num(v.actual, 3 if v.unit == "ratio" else 0),
            verdict[v.passed],
        )
        for v in f.slo
    ]
    section = Section("SLO verdicts", [Table(["Target", "Limit", "Measured", "Verdict"], rows)])
    if f.sweep is not None:
        best = f.sweep.max_users_within_slo
        section.blocks.append(Paragraph("Highest sweep step that met both targets: " + (
            f"{best} users." if best is not None else "none."
        )))  # fmt: skip
    return section


def _sweep(f: Findings) -> Section:
    s = f.sweep
    if s is None:
        one_level = "This run held one load level, so there is no sweep."
        return Section("Step sweep", [Paragraph(one_level)])
    rows = [
        (
            int(r.users),
            r.requests,
            r.throughput_rps,
            r.p95_ms,
            pct(r.error_rate, 2),
            "yes" if r.meets_slo else "no",
        )
        for r in s.steps.itertuples()
    ]
    headers = ["Users", "Requests", "Throughput req/s", "p95 ms", "Error rate", "Meets SLO"]
    knee = (
        f"The saturation knee is at {s.knee_users} users."
        if s.knee_users is not None
        else "No knee: throughput was still growing at the heaviest step."
    )
    slope = f"Initial slope: {num(s.initial_slope_rps_per_user, 3)} req/s per user. {knee}"
    return Section("Step sweep", [Table(headers, rows), Paragraph(slope)])


def _recommendations(f: Findings) -> Section:
    items = [f"**{r.severity}** ({r.rule}): {r.text}" for r in f.recommendations]
    return Section(
        "Findings and recommendations", [Bullets(items) if items else Paragraph("No rule fired.")]
    )


def report_document(f: Findings, charts: Sequence[tuple[str, str]] = ()) -> Document:
    """The report for ``f``; ``charts`` are (caption, relative path) pairs to embed."""
    doc = Document(f"Load test report: {f.label}", intro=list(_intro(f)))
    if f.notes:
        doc.sections.append(Section("Notes on the inputs", [Bullets(list(f.notes))]))
    doc.sections += [_recommendations(f), _summary(f), _slo(f), _latency(f)]
    if (found := capacity_section(f)) is not None:  # --shape search runs only
        doc.sections.append(found)
    doc.sections += [streaming_section(f), _sweep(f), hardware_section(f),
                     load_generator_section(f), cost_section(f)]
    doc.sections.append(workload_section(f))
    if f.arrivals is not None:
        doc.sections.append(arrivals_section(f))
    if charts:
        doc.sections.append(Section("Charts", [Image(c, p) for c, p in charts]))
    settings = Table(["Setting", "Value"], sorted(f.settings.items()))
    doc.sections += [Section("Run settings", [settings]), method_section(f)]
    return doc


def render_markdown(f: Findings, charts: Sequence[tuple[str, str]] = ()) -> str:
    """The report for ``f`` as Markdown (report.md)."""
    return to_markdown(report_document(f, charts))


# How each number is computed.

# The metric functions whose docstrings state the formulas the report quotes.
FORMULA_SOURCES: list[tuple[str, Callable[..., object]]] = [
    ("Latency percentiles", traffic.route_latency),
    ("Counts and rates", traffic.traffic),
    ("Queue vs inference", traffic.time_split),
    ("Tokens/s over time", traffic.tokens_over_time),
    ("Memory, sharing saving", memory.memory_summary),
    ("Memory slope", memory.memory_slope),
    ("Memory slope standard error", memory.memory_slope_se),
    ("Kept caches' growth", memory.kept_kv_slope),
    ("RAM per request", memory.ram_per_request),
    ("RAM per request by context length", memory.ram_by_context),
    ("Prefix-cache hit rate", workloads.prefix_cache_hits),
    ("Sweep steps", sweep.step_metrics),
    ("Saturation knee", sweep.find_knee),
    ("TPOT", streaming.tpot_ms),
    ("TTFT / TPOT / E2E percentiles", streaming.stream_latency),
    ("Output tokens/s per user", streaming.tokens_per_s_per_user),
    ("Output tokens/s of streamed requests", streaming.stream_summary),
    ("Goodput and SLO attainment", goodput.goodput),
    ("SLO attainment per sweep step", goodput.attainment_per_step),
    ("Load generator CPU and loop lag", loadgen.loadgen_summary),
    ("Capacity search bracket", CapacityResult.bracket_width.fget),
    ("Cost of a request (CPU per output token)", cost.route_costs),
    ("Server tree CPU", cost.tree_cpu_s),
    ("Busy box", cost.busy_box),
    ("Open-loop arrivals", arrivals.arrival_summary),
]


def formula(func: Callable[..., object]) -> str:
    """The "Formula: ..." paragraph of ``func``'s docstring, on one line."""
    doc = inspect.getdoc(func) or ""
    _, _, rest = doc.partition("Formula:")
    return " ".join(rest.split("\n\n")[0].split())


def method_section(f: Findings) -> Section:
    """Formulas, the rules checked with their conditions, and the thresholds in force."""
    formulas = [f"**{name}**: {formula(func)}" for name, func in FORMULA_SOURCES]
    rules = [f"`{r.__name__}`: {(inspect.getdoc(r) or '').splitlines()[0]}" for r in all_rules()]
    thresholds = Table(
        ["Setting", "Value"], list(f.config.model_dump().items())
    )
    return Section("How each number is computed", [
        Bullets(formulas),
        Paragraph("Rules checked (each one quotes its numbers when it fires):"),
        Bullets(rules),
        Paragraph("Targets and thresholds used (analysis.config; run.json's `slo` and the "
                  "command line override the SLO targets):"),
        thresholds,
    ])  # fmt: skip
