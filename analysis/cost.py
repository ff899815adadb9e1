"""The cost of a request (the server's CPU per request and per output token) and the
busy-box check (how much of the box's CPU went to other processes or to the hypervisor).

Sources: ``cpu_ms`` of the server's own log (server_requests.jsonl; requests.csv's
``cpu_ms``, from the X-CPU-Ms header, when the run has no log), the server tree's
``cpu_s`` in memory.csv (any server sampled with ``--server-pidfile``, llama.cpp too), and
memory.csv's ``other_cpu_share`` / ``steal_share`` (locustfiles/box_load.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.config import AnalysisConfig
from analysis.document import pct
from analysis.traffic import ALL_ROUTES


@dataclass(frozen=True)
class RouteCost:
    """CPU and RAM of one route's successful requests."""

    route: str
    requests: int
    output_tokens: int
    cpu_ms_mean: float
    cpu_ms_per_token: float
    rss_delta_mb_mean: float
    peak_growth_mb_mean: float


@dataclass(frozen=True)
class Cost:
    """Per-route cost (empty when the server reports none) and the whole tree's CPU."""

    routes: list[RouteCost]
    output_tokens: int
    charged_cpu_s: float | None  # summed per-request cpu_ms / 1000 (None: not reported)
    tree_cpu_s: float | None  # the server tree's CPU over the load window (memory.csv)
    tree_window_s: float

    @property
    def tree_cpu_ms_per_token(self) -> float | None:
        """The server tree's CPU per output token over the window (core-ms)."""
        if self.tree_cpu_s is None or not self.output_tokens:
            return None
        return self.tree_cpu_s * 1000.0 / self.output_tokens

    @property
    def cpu_ms_per_token(self) -> float | None:
        """Core-ms per output token: the server's own (all routes), else the tree's."""
        overall = next((r for r in self.routes if r.route == ALL_ROUTES), None)
        if overall is not None and not np.isnan(overall.cpu_ms_per_token):
            return overall.cpu_ms_per_token
        return self.tree_cpu_ms_per_token

    @property
    def unattributed_share(self) -> float | None:
        """The share of the tree's CPU no request was charged (negative: charged more)."""
        if self.tree_cpu_s is None or self.charged_cpu_s is None or self.tree_cpu_s <= 0:
            return None
        return 1.0 - self.charged_cpu_s / self.tree_cpu_s


def _route_cost(route: str, rows: pd.DataFrame) -> RouteCost:
    tokens = float(rows["completion_tokens"].fillna(0).sum())
    cpu = float(rows["cpu_ms"].sum())
    growth = (rows["rss_peak_mb"] - (rows["rss_mb"] - rows["rss_delta_mb"])).clip(lower=0)
    return RouteCost(route, len(rows), int(tokens), cpu / len(rows),
                     cpu / tokens if tokens else np.nan,
                     float(rows["rss_delta_mb"].mean()), float(growth.mean()))


def route_costs(server_log: pd.DataFrame, requests: pd.DataFrame) -> list[RouteCost]:
    """Core-ms per request and per output token, per route, beside RAM per request.

    Formula: over the successful requests (status 200) that report cpu_ms (the worker's
    process CPU of each step, from the previous step's end to its own, split over the
    step's rows by tokens fed: server/engine/step_cost.py), cpu_ms per request = mean
    cpu_ms; core-ms per output token = sum cpu_ms / sum completion_tokens; RAM per request
    = mean rss_delta_mb and mean peak growth (rss_peak_mb - (rss_mb - rss_delta_mb),
    floored at 0), all from server_requests.jsonl (requests.csv's cpu_ms, without RAM,
    when the run has no server log). The all-routes row sums every route.
    """
    rows = server_log
    if not rows.empty and "cpu_ms" in rows:
        rows = rows[(rows["status"] == 200) & rows["cpu_ms"].notna()]
    if rows.empty or "cpu_ms" not in rows:
        rows = requests[requests["success"] & requests["cpu_ms"].notna()] \
            if not requests.empty else requests
        if rows.empty:
            return []
        rows = rows.assign(rss_delta_mb=np.nan, rss_peak_mb=np.nan, rss_mb=np.nan)
    if rows.empty:
        return []
    costs = [_route_cost(str(route), group) for route, group in rows.groupby("route")]
    return [*costs, _route_cost(ALL_ROUTES, rows)]


def tree_cpu_s(memory: pd.DataFrame, window: tuple[float, float] | None) -> tuple[float, float]:
    """The server tree's CPU seconds over ``window`` (elapsed seconds) and the span sampled.

    Formula: per server process in memory.csv (master and workers, pidfile source), its
    last cpu_s minus its first within the window (a process seen only once adds nothing),
    summed over the processes; the span is the first to the last sample in the window.
    NaN when memory.csv has no cpu_s (scraped from /metrics, or from before issue 32).
    """
    if memory.empty or "cpu_s" not in memory or memory["cpu_s"].dropna().empty:
        return np.nan, 0.0
    rows = memory[(memory["role"] != "total") & memory["cpu_s"].notna()]
    if window is not None:
        rows = rows[rows["elapsed_s"].between(*window)]
    if rows.empty:
        return np.nan, 0.0
    per_pid = rows.groupby("pid")["cpu_s"].agg(lambda s: s.iloc[-1] - s.iloc[0])
    return float(per_pid.sum()), float(rows["elapsed_s"].max() - rows["elapsed_s"].min())


def cost(server_log: pd.DataFrame, requests: pd.DataFrame, memory: pd.DataFrame,
         window: tuple[float, float] | None) -> Cost | None:
    """The run's cost of a request; None when neither the server nor memory.csv has CPU."""
    routes = route_costs(server_log, requests)
    tree_s, span = tree_cpu_s(memory, window)
    if not routes and np.isnan(tree_s):
        return None
    ok = requests[requests["success"]] if not requests.empty else requests
    tokens = int(ok["completion_tokens"].fillna(0).sum()) if not ok.empty else 0
    overall = next((r for r in routes if r.route == ALL_ROUTES), None)
    charged = overall.cpu_ms_mean * overall.requests / 1000.0 if overall else None
    return Cost(routes, tokens, charged, None if np.isnan(tree_s) else tree_s, span)


# The busy-box check.

@dataclass(frozen=True)
class BusyBox:
    """The box's other load over the window: means of memory.csv's shares (0..1)."""

    samples: int
    other_cpu_share: float  # NaN: not measured (the server's CPU was not sampled)
    steal_share: float
    other_cpu_max: float


def busy_box(memory: pd.DataFrame, window: tuple[float, float] | None) -> BusyBox | None:
    """The share of the box's CPU other processes used, and the hypervisor stole.

    Formula: mean over memory.csv's total rows in the load window of other_cpu_share
    ((the box's busy CPU time - the server tree's - Locust's) / all the box's CPU time,
    per ~1 s sample) and of steal_share (steal time / all the box's CPU time); each
    sample covers the same length, so the means are shares of the whole window.
    """
    if memory.empty or "steal_share" not in memory:
        return None
    rows = memory[(memory["role"] == "total") & memory["steal_share"].notna()]
    if window is not None:
        rows = rows[rows["elapsed_s"].between(*window)]
    if rows.empty:
        return None
    other = rows["other_cpu_share"].dropna()
    return BusyBox(len(rows), float(other.mean()) if len(other) else np.nan,
                   float(rows["steal_share"].mean()),
                   float(other.max()) if len(other) else np.nan)


def busy_warning(busy: BusyBox | None, cfg: AnalysisConfig) -> str | None:
    """The busy-box warning's sentence when either share passed its threshold, else None."""
    if busy is None:
        return None
    other_over = busy.other_cpu_share > cfg.busy_other_cpu_share
    steal_over = busy.steal_share > cfg.busy_steal_share
    if not (other_over or steal_over):
        return None
    other = "not measured" if np.isnan(busy.other_cpu_share) else pct(busy.other_cpu_share)
    return (
        f"The box was busy: other processes used {other} of the CPU; the hypervisor stole "
        f"{pct(busy.steal_share)} (limits {pct(cfg.busy_other_cpu_share, 0)} and "
        f"{pct(cfg.busy_steal_share, 0)}, means over {busy.samples} samples of the load "
        "window). The server got that much less CPU than a quiet box gives: its latency and "
        "throughput here are not comparable with a quiet run's."
    )
