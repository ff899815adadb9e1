"""Make, save and close one figure per chart of a run (the I/O side of the chart functions)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis import charts_memory as cm
from analysis import charts_streaming as cs
from analysis import charts_traffic as ct
from analysis.records import Findings
from analysis.run import RunData

Draw = Callable[[Axes, RunData, Findings], None]

# file stem, caption, how to draw it from the run and its findings.
CHARTS: list[tuple[str, str, Draw]] = [
    ("latency_over_time", "Response time percentiles over time, with users",
     lambda ax, r, f: ct.plot_latency_over_time(ax, r.history, f.config.slo_p95_ms)),
    ("throughput", "Requests/s and failures/s",
     lambda ax, r, f: ct.plot_throughput(ax, r.history)),
    ("route_latency", "Latency distribution per route",
     lambda ax, r, f: ct.plot_route_latency(ax, r.requests)),
    ("tokens_per_s", "Output tokens/s over time",
     lambda ax, r, f: ct.plot_tokens_per_s(ax, r.requests, f.config.bin_s)),
    ("memory_over_time", "Server memory: total PSS vs summed RSS, per worker",
     lambda ax, r, f: cm.plot_memory_over_time(ax, r.memory)),
    ("ram_per_request", "RAM per request",
     lambda ax, r, f: cm.plot_ram_per_request(ax, r.server_log)),
    ("latency_vs_batch_size", "Latency vs batch size",
     lambda ax, r, f: ct.plot_latency_vs_batch_size(ax, r.requests)),
    ("queue_vs_inference", "Queue time vs inference time",
     lambda ax, r, f: ct.plot_queue_vs_inference(ax, r.requests)),
    ("ttft_tpot", "Streamed requests: TTFT vs TPOT, with the targets",
     lambda ax, r, f: cs.plot_ttft_tpot(ax, r.requests, f.config.slo_ttft_ms,
                                        f.config.slo_tpot_ms)),
]  # fmt: skip
SWEEP_CHART: tuple[str, str, Draw] = (
    "sweep", "Step sweep: throughput and p95 vs users, knee marked",
    lambda ax, r, f: cm.plot_sweep(ax, f.sweep.steps, f.config.slo_p95_ms) if f.sweep else None,
)  # fmt: skip


def save_chart(draw: Callable[[Axes], None], path: Path) -> Path:
    """Draw on a fresh 10x5 inch figure and save it as PNG at ``path``."""
    # A bare Figure (no pyplot): no global state, no GUI backend, nothing left open.
    fig = Figure(figsize=(10, 5), layout="constrained")
    draw(fig.add_subplot())
    fig.savefig(path, dpi=100)
    return path


def write_charts(run: RunData, findings: Findings, out_dir: Path) -> list[tuple[str, Path]]:
    """Write every chart of ``run`` into ``out_dir``; the sweep chart only for a sweep."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = [*CHARTS, SWEEP_CHART] if findings.sweep is not None else CHARTS
    return [
        (caption, save_chart(lambda ax, d=draw: d(ax, run, findings), out_dir / f"{stem}.png"))
        for stem, caption, draw in charts
    ]
