"""Charts of requests: latency, throughput, tokens/s, streamed TTFT/TPOT, and the comparison of
runs; one ``plot_*(ax, df) -> None`` per chart, plus what every chart shares (the "no data"
panel, the SLO line, the legend under the plot; analysis.charts_memory uses them too).

The caller creates, saves and closes the figure; each function draws on the Axes it is
given, labels units, says which direction is better, and shows "no data" when empty.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes

from analysis.compare import HEADLINES
from analysis.streaming import streamed, tpot_ms
from analysis.traffic import tokens_over_time

# What every chart shares.

def no_data(ax: Axes, title: str, why: str = "no data") -> None:
    """Mark ``ax`` as deliberately empty, so a blank chart is never mistaken for a zero."""
    ax.set_title(title)
    ax.text(
        0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=14, color="grey"
    )
    ax.set_xticks([])
    ax.set_yticks([])


# Charts with a second y axis put the legend under the plot, where it hides no line.
LEGEND_BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.12), "ncols": 6}


def slo_line(ax: Axes, slo_ms: float | None, data_max: float) -> None:
    """Draw the p95 target, unless it is so far above the data that it would flatten it."""
    if slo_ms is None:
        return
    if slo_ms <= 3 * data_max:
        ax.axhline(slo_ms, color="red", linestyle="--", label="p95 SLO")
    else:
        ax.text(
            0.99,
            0.02,
            f"p95 SLO {slo_ms:,.0f} ms is off the scale",
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            color="red",
            fontsize="small",
        )


# Latency and throughput.

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
    agg = _aggregated(history)
    title = "Requests/s (higher is better) and failures/s (lower is better)"
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


# Streamed answers.

def plot_ttft_tpot(
    ax: Axes,
    requests: pd.DataFrame,
    ttft_target_ms: float | None = None,
    tpot_target_ms: float | None = None,
) -> None:
    """TTFT against TPOT of each successful streamed request, per route, with the targets.

    Points below and left of both target lines met the TTFT and TPOT targets; a target of
    0 or None is not drawn.
    """
    title = "TTFT vs TPOT per streamed request (lower is better)"
    rows = streamed(requests)
    ok = rows[rows["success"]].assign(tpot=tpot_ms) if not rows.empty else rows
    ok = ok.dropna(subset=["ttft_ms", "tpot"]) if not ok.empty else ok
    if ok.empty:
        no_data(ax, title, "no streamed requests with TTFT and TPOT")
        return
    for route, group in ok.groupby("route", sort=True):
        ax.scatter(group["ttft_ms"], group["tpot"], s=10, alpha=0.5, label=str(route))
    off_scale = []
    # A target far above the data would squash the points into a corner: name it instead.
    if ttft_target_ms and ttft_target_ms <= 3 * ok["ttft_ms"].max():
        ax.axvline(ttft_target_ms, color="red", linestyle="--", label="TTFT target")
    elif ttft_target_ms:
        off_scale.append(f"TTFT target {ttft_target_ms:,.0f} ms")
    if tpot_target_ms and tpot_target_ms <= 3 * ok["tpot"].max():
        ax.axhline(tpot_target_ms, color="red", linestyle=":", label="TPOT target")
    elif tpot_target_ms:
        off_scale.append(f"TPOT target {tpot_target_ms:,.0f} ms")
    if off_scale:
        ax.text(0.99, 0.02, " and ".join(off_scale) + " off the scale", ha="right",
                va="bottom", transform=ax.transAxes, color="red", fontsize="small")  # fmt: skip
    ax.set(
        title=title,
        xlabel="time to first token, TTFT (ms)",
        ylabel="time per output token, TPOT (ms)",
    )
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")


# Comparing runs: one headline metric per chart, one bar per run.

# Headline metrics drawn by ``python -m analysis compare``: (file stem, HEADLINES name).
COMPARE_CHARTS = [
    ("compare_throughput", "Throughput"),
    ("compare_tokens_per_s", "Output tokens/s"),
    ("compare_p95", "p95 latency"),
    ("compare_peak_pss", "Peak total PSS"),
]


def plot_headline(ax: Axes, headlines: pd.DataFrame, metric: str) -> None:
    """Bars of ``metric`` (a column of compare.headline_frame) for each run, values on top."""
    unit, better = next((u, b) for name, u, b, _ in HEADLINES if name == metric)
    title = f"{metric} per run" + (f" ({better} is better)" if better else "")
    values = headlines[metric].dropna() if metric in headlines else pd.Series(dtype=float)
    if values.empty:
        no_data(ax, title)
        return
    bars = ax.bar(values.index.astype(str), values.to_numpy())
    ax.bar_label(bars, fmt="{:,.1f}")
    ax.set(
        title=title,
        xlabel="run",
        ylabel=f"{metric} ({unit})" if unit and unit not in metric else metric,
    )
