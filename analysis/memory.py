"""Server memory from memory.csv (the process tree) and RAM per request from the server log.

PSS splits each shared page between the processes that map it, so the sum of PSS over the
tree is the tree's real footprint; RSS counts a shared page once per process, so summed RSS
over-counts what preloading shares. USS is what each process holds alone.

This server adds X-Worker-RSS-MB / -USS-MB / -PSS-MB to every answer; another
OpenAI-compatible server (a ``--target openai`` run against vLLM, TGI, llama.cpp ...) sends
none, so requests.csv has those columns empty. The report says so instead of showing blanks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class MemorySummary:
    """Peak and mean of the process tree's memory, the sharing saving and the trend."""

    samples: int
    workers: int
    peak_pss_mb: float
    mean_pss_mb: float
    peak_rss_mb: float
    mean_rss_mb: float
    peak_uss_mb: float
    mean_uss_mb: float
    sharing_saving_mb: float
    sharing_saving_share: float
    rss_to_pss_ratio: float
    mean_worker_uss_mb: float
    min_sys_available_mb: float
    slope_mb_per_min: float | None
    slope_window_s: float
    # Standard error of that slope (None: no slope); the leak rule wants growth beyond noise.
    slope_se_mb_per_min: float | None = None
    # How fast the workers' kept prefix caches grew over the same floors (None: the server log
    # does not say): memory a bound stops (PREFIX_CACHE_ROWS, the KV budget), not a leak.
    kept_kv_slope_mb_per_min: float | None = None


@dataclass(frozen=True)
class RamPerRequest:
    """How much a worker's memory moved while it served one request."""

    requests: int
    mean_rss_delta_mb: float
    p95_rss_delta_mb: float
    max_rss_delta_mb: float
    mean_rss_peak_mb: float
    max_rss_peak_mb: float
    mean_peak_growth_mb: float
    p95_peak_growth_mb: float


def totals(memory: pd.DataFrame) -> pd.DataFrame:
    """The per-sample "total" rows (sums over master and workers), in time order.

    A sampler that wrote no "total" rows gets them summed here from the process rows.
    """
    if memory.empty:
        return memory
    total = memory[memory["role"] == "total"]
    if total.empty:
        total = (
            memory.groupby("timestamp", as_index=False)
            .agg(
                rss_mb=("rss_mb", "sum"), uss_mb=("uss_mb", "sum"), pss_mb=("pss_mb", "sum"),
                shared_mb=("shared_mb", "sum"), sys_available_mb=("sys_available_mb", "min"),
                elapsed_s=("elapsed_s", "first"),
            )
            .assign(pid=0, role="total")
        )  # fmt: skip
    return total.sort_values("elapsed_s", ignore_index=True)


# Width of the windows whose lowest total PSS is the memory "floor" the trend is fitted to.
FLOOR_WINDOW_S = 10.0


def memory_floors(total: pd.DataFrame, warmup_s: float, min_samples: int) -> pd.DataFrame:
    """The lowest total-PSS sample of each FLOOR_WINDOW_S window after warm-up.

    Why floors: every batch's activations and KV cache ride on top of what a worker keeps, so
    raw samples jump by tens of MB with the load and stay high or low for several seconds at
    a time (their errors are correlated, and a least-squares fit through them sees trends
    that are only the load's mix drifting). A leak raises the floor; load does not.
    Empty when fewer than ``min_samples`` samples remain after warm-up.
    """
    steady = total[total["elapsed_s"] >= warmup_s].dropna(subset=["pss_mb"])
    if len(steady) < max(min_samples, 2):
        return steady.iloc[0:0]
    window = ((steady["elapsed_s"] - steady["elapsed_s"].min()) // FLOOR_WINDOW_S).astype(int)
    return steady.loc[steady.groupby(window)["pss_mb"].idxmin()].sort_values("elapsed_s")


def memory_slope(
    total: pd.DataFrame, warmup_s: float, min_samples: int
) -> tuple[float | None, float]:
    """Least-squares slope of the memory floors after warm-up, in MB per minute, and the time
    between the first and the last floor (s).

    Formula: floor = min total pss_mb in each FLOOR_WINDOW_S (10 s) window of the samples with
    elapsed_s >= warmup_s (at that sample's time); slope_mb_per_min = least-squares slope of
    the floors against elapsed minutes (none when fewer than min_samples samples or two
    floors remain).
    """
    floors = memory_floors(total, warmup_s, min_samples)
    if len(floors) < 2:
        return None, 0.0
    window_s = float(floors["elapsed_s"].max() - floors["elapsed_s"].min())
    slope, _ = np.polyfit(floors["elapsed_s"] / 60.0, floors["pss_mb"], 1)
    return float(slope), window_s


def memory_slope_se(total: pd.DataFrame, warmup_s: float, min_samples: int) -> float | None:
    """Standard error of memory_slope's slope, in MB per minute (None when it has none).

    Formula: se = sqrt(sum(residual^2) / (n - 2)) / sqrt(sum((minutes - mean minutes)^2)),
    over the same floors as memory_slope.
    """
    floors = memory_floors(total, warmup_s, min_samples)
    if len(floors) < 3:
        return None
    minutes = floors["elapsed_s"] / 60.0
    slope, intercept = np.polyfit(minutes, floors["pss_mb"], 1)
    residuals = floors["pss_mb"] - (intercept + slope * minutes)
    spread = float(((minutes - minutes.mean()) ** 2).sum())
    return float(np.sqrt((residuals**2).sum() / (len(floors) - 2) / spread))


def kept_kv_slope(server_log: pd.DataFrame | None, floors: pd.DataFrame) -> float | None:
    """MB per minute the workers' kept prefix caches grew while the memory floors were taken.

    Formula: for each worker, the least-squares slope of kv_kept_mb (what its kept rows
    held as each request ended, server_requests.jsonl) against elapsed minutes, over its
    records between the first and the last floor; summed over the workers with two records or
    more there. None without that column, two floors, or such a worker.
    """
    if server_log is None or len(floors) < 2 or "kv_kept_mb" not in server_log:
        return None
    start, end = floors["elapsed_s"].min(), floors["elapsed_s"].max()
    log = server_log.dropna(subset=["kv_kept_mb", "elapsed_s", "worker_pid"])
    log = log[(log["elapsed_s"] >= start) & (log["elapsed_s"] <= end)]
    slopes = [float(np.polyfit(rows["elapsed_s"] / 60.0, rows["kv_kept_mb"], 1)[0])
              for _, rows in log.groupby("worker_pid") if rows["elapsed_s"].nunique() >= 2]
    return float(sum(slopes)) if slopes else None


def memory_summary(memory: pd.DataFrame, warmup_s: float, min_samples: int,
                   server_log: pd.DataFrame | None = None) -> MemorySummary | None:
    """Summarise memory.csv (and, from ``server_log``, how much of its trend is kept caches).

    Formula: sharing_saving_mb = mean over samples of (summed RSS - total PSS);
    sharing_saving_share = sharing_saving_mb / mean summed RSS; rss_to_pss_ratio = mean
    summed RSS / mean total PSS; mean_worker_uss_mb = mean USS over worker rows.
    """
    total = totals(memory)
    if total.empty:
        return None
    workers = memory[memory["role"] == "worker"]
    mean_rss = float(total["rss_mb"].mean())
    mean_pss = float(total["pss_mb"].mean())
    saving = float((total["rss_mb"] - total["pss_mb"]).mean())
    slope, window_s = memory_slope(total, warmup_s, min_samples)
    return MemorySummary(
        samples=len(total),
        workers=int(workers["pid"].nunique()),
        peak_pss_mb=float(total["pss_mb"].max()),
        mean_pss_mb=mean_pss,
        peak_rss_mb=float(total["rss_mb"].max()),
        mean_rss_mb=mean_rss,
        peak_uss_mb=float(total["uss_mb"].max()),
        mean_uss_mb=float(total["uss_mb"].mean()),
        sharing_saving_mb=saving,
        sharing_saving_share=saving / mean_rss if mean_rss > 0 else np.nan,
        rss_to_pss_ratio=mean_rss / mean_pss if mean_pss > 0 else np.nan,
        mean_worker_uss_mb=float(workers["uss_mb"].mean()) if len(workers) else np.nan,
        min_sys_available_mb=float(total["sys_available_mb"].min()),
        slope_mb_per_min=slope,
        slope_window_s=window_s,
        slope_se_mb_per_min=memory_slope_se(total, warmup_s, min_samples),
        kept_kv_slope_mb_per_min=kept_kv_slope(server_log,
                                               memory_floors(total, warmup_s, min_samples)),
    )


def ram_per_request(server_log: pd.DataFrame) -> RamPerRequest | None:
    """RAM cost of a request as the serving worker saw it.

    Formula: rss_delta_mb = worker RSS after the request - before it (from the server log);
    reported as mean, 95th percentile and max over requests, with the mean and max of
    rss_peak_mb (the worker's highest RSS while serving the request); peak_growth_mb =
    rss_peak_mb - (rss_mb - rss_delta_mb), the peak above the RSS at the request's start,
    floored at 0 (mean and 95th percentile).
    """
    if server_log.empty:
        return None
    delta = server_log["rss_delta_mb"].dropna()
    peak = server_log["rss_peak_mb"].dropna()
    start = server_log["rss_mb"] - server_log["rss_delta_mb"]
    growth = (server_log["rss_peak_mb"] - start).clip(lower=0).dropna()
    if delta.empty:
        return None
    return RamPerRequest(
        requests=len(delta),
        mean_rss_delta_mb=float(delta.mean()),
        p95_rss_delta_mb=float(delta.quantile(0.95)),
        max_rss_delta_mb=float(delta.max()),
        mean_rss_peak_mb=float(peak.mean()) if len(peak) else np.nan,
        max_rss_peak_mb=float(peak.max()) if len(peak) else np.nan,
        mean_peak_growth_mb=float(growth.mean()) if len(growth) else np.nan,
        p95_peak_growth_mb=float(growth.quantile(0.95)) if len(growth) else np.nan,
    )


# Which of this server's memory headers the run's answers carried.

MEMORY_HEADER_COLUMNS = ("worker_rss_mb", "worker_uss_mb", "worker_pss_mb")


def memory_headers_absent(requests: pd.DataFrame) -> bool:
    """True when requests got answers (status > 0) and none carried a memory header."""
    if requests.empty:
        return False
    answered = requests[requests["status_code"] > 0]
    return len(answered) > 0 and bool(answered[list(MEMORY_HEADER_COLUMNS)].isna().all().all())


def memory_headers_note(settings: dict) -> str:
    """The report's note for a run whose answers carried no memory headers."""
    target = settings.get("target")
    why = (
        f"the target (`{target}`) sends no memory headers"
        if target and target != "lab"
        else "the target sends no memory headers (a `--target openai` run against a server "
        "other than GPT Load Lab)"
    )
    return (
        "The memory columns of `requests.csv` (worker_rss_mb, worker_uss_mb, worker_pss_mb) "
        f"are absent: {why}, so per-request worker memory is not measured."
    )


# RAM per request against the context it held (prompt + output tokens).

# Context-length bins (tokens) of the RAM-by-context table; the last is open-ended.
CONTEXT_BINS = (0, 128, 256, 512, 1024, 2048)


def context_ram(server_log: pd.DataFrame) -> pd.DataFrame:
    """Per logged request: ``context_tokens`` (prompt + completion) and ``peak_growth_mb``
    (its worker's peak RSS above the RSS at its start), rows without either dropped."""
    if server_log.empty:
        return pd.DataFrame(columns=["context_tokens", "peak_growth_mb", "rss_delta_mb"])
    return (
        server_log.assign(
            context_tokens=lambda d: d["prompt_tokens"] + d["completion_tokens"].fillna(0),
            peak_growth_mb=lambda d: (d["rss_peak_mb"] - (d["rss_mb"] - d["rss_delta_mb"]))
            .clip(lower=0),
        )
        .dropna(subset=["context_tokens", "peak_growth_mb"])
        .loc[:, ["context_tokens", "peak_growth_mb", "rss_delta_mb"]]
    )  # fmt: skip


def ram_by_context(server_log: pd.DataFrame) -> pd.DataFrame:
    """RAM per request by context-length bin: requests, mean and p95 peak growth, mean delta.

    Formula: context_tokens = prompt_tokens + completion_tokens of the server log's line;
    peak_growth_mb = rss_peak_mb - (rss_mb - rss_delta_mb), floored at 0; requests binned by
    context_tokens at 0, 128, 256, 512, 1024, 2048 tokens (last bin open); per bin the count,
    mean and 95th percentile of peak_growth_mb and the mean rss_delta_mb (empty bins left out).
    """
    rows = context_ram(server_log)
    if rows.empty:
        return pd.DataFrame(columns=["context", "requests", "mean_growth_mb",
                                     "p95_growth_mb", "mean_delta_mb"])
    edges = [*CONTEXT_BINS, np.inf]
    labels = [f"{lo}-{hi - 1}" if hi != np.inf else f">= {lo}"
              for lo, hi in itertools.pairwise(edges)]
    return (
        rows.assign(context=pd.cut(rows["context_tokens"], edges, right=False, labels=labels))
        .groupby("context", observed=True)
        .agg(requests=("peak_growth_mb", "size"), mean_growth_mb=("peak_growth_mb", "mean"),
             p95_growth_mb=("peak_growth_mb", lambda s: s.quantile(0.95)),
             mean_delta_mb=("rss_delta_mb", "mean"))
        .reset_index()
        .assign(context=lambda d: d["context"].astype(str))
    )  # fmt: skip
