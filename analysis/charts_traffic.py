"""Charts of latency and throughput: one ``plot_*(ax, df) -> None`` per chart.

The caller creates, saves and closes the figure; each function draws on the Axes it is
given, labels units, says which direction is better, and shows "no data" when empty.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes

from analysis.chart_style import LEGEND_BELOW, no_data, slo_line
from analysis.traffic import tokens_over_time


def _aggregated(history: pd.DataFrame) -> pd.DataFrame:
    """The history's "Aggregated" rows (all routes together)."""
    return history[history["name"] == "Aggregated"] if not history.empty else history


def plot_latency_over_time(
    ax: Axes, history: pd.DataFrame, slo_p95_ms: float | None = None
) -> None:
    """p50/p95/p99 response time over the run (Locust's rolling window), with the user count."""
    title = "Response time percentiles over time (lower is better)"
    agg = _aggregated(history).dropna(subset=["p50_ms"]) if not history.empty else history
    if agg.empty:
        no_data(ax, title)
        return
    for column, label in [("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")]:
        ax.plot(agg["elapsed_s"], agg[column], label=label)
    slo_line(ax, slo_p95_ms, float(agg[["p50_ms", "p95_ms", "p99_ms"]].max().max()))
    ax.set(title=title, xlabel="elapsed time (s)", ylabel="response time (ms)")
    ax.set_ylim(bottom=0)
    users = ax.twinx()
    users.plot(agg["elapsed_s"], agg["user_count"], color="grey", linestyle=":", label="users")
    users.set_ylabel("users")
    users.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = users.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], **LEGEND_BELOW)


def plot_throughput(ax: Axes, history: pd.DataFrame) -> None:
    """Requests/s and failures/s over the run (Locust's rolling window)."""
    title = "Requests/s (higher is better) and failures/s (lower is better)"
    agg = _aggregated(history)
    if agg.empty:
        no_data(ax, title)
        return
    ax.plot(agg["elapsed_s"], agg["requests_per_s"], label="requests/s")
    ax.plot(agg["elapsed_s"], agg["failures_per_s"], label="failures/s", color="red")
    ax.set(title=title, xlabel="elapsed time (s)", ylabel="rate (1/s)")
    ax.legend(loc="upper left")


def plot_route_latency(ax: Axes, requests: pd.DataFrame) -> None:
    """Distribution of response times of successful requests, one box per route."""
    title = "Response time per route, successful requests (lower is better)"
    ok = requests[requests["success"]] if not requests.empty else requests
    if ok.empty:
        no_data(ax, title)
        return
    groups = {str(route): g["response_time_ms"].to_numpy() for route, g in ok.groupby("route")}
    ax.boxplot(list(groups.values()), tick_labels=list(groups), showfliers=True)
    ax.set(title=title, xlabel="route", ylabel="response time (ms)")


def plot_tokens_per_s(ax: Axes, requests: pd.DataFrame, bin_s: float = 5.0) -> None:
    """Output tokens/s of successful requests over the run, in ``bin_s`` bins."""
    title = f"Output tokens/s per {bin_s:g} s bin (higher is better)"
    series = tokens_over_time(requests, bin_s)
    if series.empty or not series["tokens_per_s"].any():
        no_data(ax, title)
        return
    ax.step(series["elapsed_s"], series["tokens_per_s"], where="post")
    ax.set(title=title, xlabel="elapsed time (s)", ylabel="output tokens/s")


def plot_latency_vs_batch_size(ax: Axes, requests: pd.DataFrame) -> None:
    """Response time of successful requests against the size of the batch that served them."""
    title = "Response time vs batch size (lower is better)"
    ok = (
        requests[requests["success"]].dropna(subset=["batch_size"])
        if not requests.empty
        else requests
    )
    if ok.empty:
        no_data(ax, title)
        return
    ax.scatter(ok["batch_size"], ok["response_time_ms"], s=8, alpha=0.4)
    means = ok.groupby("batch_size")["response_time_ms"].mean()
    ax.plot(means.index, means.to_numpy(), color="black", marker="o", label="mean")
    ax.set(title=title, xlabel="batch size (requests)", ylabel="response time (ms)")
    ax.legend(loc="upper left")


def plot_queue_vs_inference(ax: Axes, requests: pd.DataFrame) -> None:
    """Mean queue and inference time per route, stacked (successful requests)."""
    title = "Server time per request: queue vs inference (lower is better)"
    ok = (
        requests[requests["success"]].dropna(subset=["queue_ms", "inference_ms"])
        if not requests.empty
        else requests
    )
    if ok.empty:
        no_data(ax, title)
        return
    means = ok.groupby("route")[["queue_ms", "inference_ms"]].mean()
    ax.bar(means.index, means["queue_ms"], label="queue")
    ax.bar(means.index, means["inference_ms"], bottom=means["queue_ms"], label="inference")
    ax.set(title=title, xlabel="route", ylabel="mean time (ms)")
    ax.legend(loc="upper left")
