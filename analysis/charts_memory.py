"""Charts of server memory, RAM per request (and against context length) and the step sweep:
one ``plot_*(ax, df)`` each."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.charts import LEGEND_BELOW, no_data, slo_line
from analysis.memory import CONTEXT_BINS, context_ram, ram_by_context, totals


def plot_memory_over_time(ax: Axes, memory: pd.DataFrame) -> None:
    """Total PSS vs summed RSS of the server tree (the gap is what sharing saves), per worker."""
    title = "Server memory over time (lower is better)"
    total = totals(memory)
    if total.empty:
        no_data(ax, title)
        return
    ax.plot(total["elapsed_s"], total["rss_mb"], label="summed RSS (double-counts shared)")
    ax.plot(total["elapsed_s"], total["pss_mb"], label="total PSS (real footprint)", linewidth=2)
    ax.fill_between(
        total["elapsed_s"],
        total["pss_mb"],
        total["rss_mb"],
        alpha=0.15,
        label="shared pages counted twice",
    )
    ax.plot(total["elapsed_s"], total["uss_mb"], label="summed USS (private)", linestyle="--")
    for pid, worker in memory[memory["role"] == "worker"].groupby("pid"):
        ax.plot(
            worker["elapsed_s"],
            worker["pss_mb"],
            linewidth=0.8,
            alpha=0.7,
            label=f"worker {pid} PSS",
        )
    ax.set(title=title, xlabel="elapsed time (s)", ylabel="memory (MB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")


def plot_ram_per_request(ax: Axes, server_log: pd.DataFrame) -> None:
    """Distribution of the worker's RSS change over each request, and its peak growth."""
    title = "RAM per request: worker RSS change (lower is better)"
    log = server_log.dropna(subset=["rss_delta_mb"]) if not server_log.empty else server_log
    if log.empty:
        no_data(ax, title)
        return
    growth = (log["rss_peak_mb"] - (log["rss_mb"] - log["rss_delta_mb"])).clip(lower=0).dropna()
    ax.hist(log["rss_delta_mb"], bins=30, alpha=0.6, label="RSS after - before")
    if len(growth):
        ax.hist(growth, bins=30, alpha=0.6, label="peak - RSS before")
    ax.axvline(log["rss_delta_mb"].mean(), color="black", linestyle="--", label="mean change")
    ax.set(title=title, xlabel="memory per request (MB)", ylabel="requests")
    ax.legend(loc="upper right")


def plot_sweep(ax: Axes, steps: pd.DataFrame, slo_p95_ms: float | None = None) -> None:
    """Throughput and p95 per user step of a sweep, with the knee (``is_knee``) marked."""
    title = "Step sweep: throughput (higher is better), p95 (lower is better)"
    if steps.empty:
        no_data(ax, title, "not a step sweep")
        return
    ax.plot(steps["users"], steps["throughput_rps"], marker="o", label="throughput")
    ax.set(title=title, xlabel="users", ylabel="throughput (successful req/s)")
    latency = ax.twinx()
    latency.plot(steps["users"], steps["p95_ms"], marker="s", color="tab:orange", label="p95")
    latency.set_ylabel("p95 response time (ms)")
    ax.set_xticks(steps["users"].tolist())
    ax.set_ylim(bottom=0)
    latency.set_ylim(bottom=0)
    slo_line(latency, slo_p95_ms, float(steps["p95_ms"].max()))
    for users in steps.loc[steps["is_knee"], "users"]:
        ax.axvline(users, color="black", linestyle=":", label=f"knee ({users} users)")
    lines = ax.get_legend_handles_labels()
    more = latency.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], **LEGEND_BELOW)


def plot_ram_vs_context(ax: Axes, server_log: pd.DataFrame) -> None:
    """Each request's worker peak-RSS growth against its context (prompt + output tokens)."""
    title = "RAM per request vs context length (lower is better)"
    rows = context_ram(server_log)
    if rows.empty:
        no_data(ax, title, "no server log (server_requests.jsonl)")
        return
    ax.scatter(rows["context_tokens"], rows["peak_growth_mb"], s=10, alpha=0.5,
               label="peak RSS - RSS at start")
    means = ram_by_context(server_log)
    centres = rows.groupby(pd.cut(rows["context_tokens"], [*CONTEXT_BINS, np.inf],
                                  right=False), observed=True)["context_tokens"].median()
    ax.plot(centres.to_numpy(), means["mean_growth_mb"].to_numpy(), color="black",
            marker="o", label="bin mean")
    ax.set(title=title, xlabel="context length (prompt + output tokens)",
           ylabel="worker RSS growth over the request (MB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
