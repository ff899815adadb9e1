"""Render Findings as a Markdown report. Pure: no I/O, every number comes from the Findings."""

from __future__ import annotations

from collections.abc import Sequence

from analysis.findings import Findings
from analysis.formatting import MISSING, num, pct, table
from analysis.hardware import header_line
from analysis.methods import method_section
from analysis.report_hardware import hardware_section
from analysis.report_load_generator import load_generator_section
from analysis.report_streaming import streaming_section


def _intro(f: Findings) -> str:
    s = f.settings
    title = f"# Load test report: {f.label}"
    if not s:
        return f"{title}\n\nSettings unknown: the run folder has no `run.json`."
    model = str(s.get("model", MISSING))
    stages = [st.get("users") for st in (s.get("shape.stages") or []) if isinstance(st, dict)]
    load = (
        f"a step sweep through {' -> '.join(str(u) for u in stages)} Locust users"
        if stages
        else f"{num(s.get('users'))} Locust users (spawn rate {num(s.get('spawn_rate'))}/s)"
    )
    text = (
        f"Model `{model}` ({s.get('dtype', MISSING)}) served by {num(s.get('workers'))} "
        f"Gunicorn worker(s) x {num(s.get('torch_threads'))} torch thread(s), batches of up to "
        f"{num(s.get('max_batch_size'))}, on {num(s.get('host.cores'))} cores / "
        f"{num(s.get('host.ram_gb'))} GB RAM. Load: {load} for {num(s.get('duration_s'))} s."
    )
    if model.startswith("synthetic:"):
        text += (
            "\n\nThe model is synthetic (seeded random weights of the real architecture): "
            "its text is meaningless, its memory and compute profile is the real one."
        )
    return f"{title}\n\n{header_line(f.hardware)}\n\n{text}"


def _summary(f: Findings) -> str:
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
    return "## Summary\n\n" + table(["Metric", "Value"], rows)


def _latency(f: Findings) -> str:
    rows = [
        (r.route, r.requests, r.successes, r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.mean_ms)
        for r in f.routes
    ]
    headers = ["Route", "Requests", "Successful", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "Mean ms"]
    body = table(headers, rows)
    causes = f.traffic.failures_by_cause if f.traffic else {}
    body += "\n\n### Failures by cause\n\n" + (
        table(["Cause", "Requests"], sorted(causes.items())) if causes else "No failed requests."
    )
    return "## Latency per route (lower is better)\n\n" + body


def _slo(f: Findings) -> str:
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
    text = "## SLO verdicts\n\n" + table(["Target", "Limit", "Measured", "Verdict"], rows)
    if f.sweep is not None:
        best = f.sweep.max_users_within_slo
        text += "\n\nHighest sweep step that met both targets: " + (
            f"{best} users." if best is not None else "none."
        )
    return text


def _sweep(f: Findings) -> str:
    s = f.sweep
    if s is None:
        return "## Step sweep\n\nThis run held one load level, so there is no sweep."
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
    return (
        f"## Step sweep\n\n{table(headers, rows)}\n\nInitial slope: "
        f"{num(s.initial_slope_rps_per_user, 3)} req/s per user. {knee}"
    )


def _recommendations(f: Findings) -> str:
    items = [f"- **{r.severity}** ({r.rule}): {r.text}" for r in f.recommendations]
    return "## Findings and recommendations\n\n" + ("\n".join(items) or "No rule fired.")


def render_markdown(f: Findings, charts: Sequence[tuple[str, str]] = ()) -> str:
    """The report for ``f``; ``charts`` are (title, relative path) pairs to embed."""
    sections = [_intro(f)]
    if f.notes:
        sections.append("## Notes on the inputs\n\n" + "\n".join(f"- {n}" for n in f.notes))
    sections += [_recommendations(f), _summary(f), _slo(f), _latency(f)]
    sections += [streaming_section(f), _sweep(f), hardware_section(f), load_generator_section(f)]
    if charts:
        sections.append("## Charts\n\n" + "\n\n".join(f"![{t}]({p})" for t, p in charts))
    settings = table(["Setting", "Value"], sorted(f.settings.items()))
    sections += [f"## Run settings\n\n{settings}", method_section(f)]
    return "\n\n".join(sections) + "\n"
