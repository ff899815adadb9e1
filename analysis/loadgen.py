"""The load generator's own load: Locust's CPU and event-loop lag from loadgen.csv.

A load generator that is short of CPU, or whose event loop is blocked, adds its own delay to
every response time it records. loadgen.csv (locustfiles/loadgen_monitor.py; read by
analysis.readers) has one row per ~100 ms tick of each Locust process: how late the tick
fired and the CPU time so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.readers import LOADGEN_COLUMNS, read_loadgen, stored

# Roles whose loop runs simulated users: their lag is in the measured response times.
USER_ROLES = ("local", "worker")


@dataclass(frozen=True)
class RoleLoad:
    """One kind of Locust process (local, master or worker) over the window."""

    role: str
    processes: int
    cpu_cores: float  # CPU used by all processes of the role, in cores (1.0 = one core)
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float


@dataclass(frozen=True)
class LoadGen:
    """What the load generator itself cost over the measured window."""

    window_s: float
    box_cores: int
    cpu_cores: float
    box_share: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    ticks: int
    roles: list[RoleLoad]


def _cpu_cores(ticks: pd.DataFrame, window_s: float) -> float:
    """Cores used by the processes in ``ticks``: summed per-process CPU-time deltas / window."""
    per_pid = ticks.groupby("pid")["cpu_s"].agg(lambda s: s.iloc[-1] - s.iloc[0])
    return float(per_pid.sum() / window_s) if window_s > 0 else np.nan


def _lags(ticks: pd.DataFrame) -> tuple[float, float, float]:
    lag = ticks["loop_lag_ms"].dropna()
    if lag.empty:
        return np.nan, np.nan, np.nan
    p50, p99 = np.percentile(lag, [50, 99])
    return float(p50), float(p99), float(lag.max())


def loadgen_summary(loadgen: pd.DataFrame, window: tuple[float, float] | None = None,
                    box_cores: int | None = None) -> LoadGen | None:
    """Summarise loadgen.csv over ``window`` (elapsed seconds; None = every tick).

    Formula: the generator's CPU in cores = sum over Locust processes of (last cpu_s - first
    cpu_s in the window) / window length; its share of the box = that / the box's cores
    (run.json host.cores, else loadgen.csv's cores). Loop lag p50/p99/max are taken over
    every tick of the processes that run users (local runner or workers; the master's when
    it is the only role), each tick's lag being how late a 100 ms gevent timer fired.
    """
    if loadgen.empty:
        return None
    ticks = loadgen.sort_values("timestamp", kind="stable")
    if window is not None:
        ticks = ticks[ticks["elapsed_s"].between(*window)]
    if len(ticks) < 2:
        return None
    window_s = float(ticks["elapsed_s"].max() - ticks["elapsed_s"].min())
    cores = int(box_cores or ticks["cores"].max() or 1)
    users = ticks[ticks["role"].isin(USER_ROLES)]
    p50, p99, lag_max = _lags(users if not users.empty else ticks)
    roles = [RoleLoad(role, int(group["pid"].nunique()), _cpu_cores(group, window_s),
                      *_lags(group))
             for role, group in ticks.groupby("role", sort=True)]
    cpu = _cpu_cores(ticks, window_s)
    return LoadGen(window_s, cores, cpu, cpu / cores, p50, p99, lag_max,
                   len(users if not users.empty else ticks), roles)


def load_window(requests: pd.DataFrame) -> tuple[float, float] | None:
    """(first request start, last request end) in elapsed seconds: when load was applied."""
    if requests.empty or requests["elapsed_s"].dropna().empty:
        return None
    return float(requests["elapsed_s"].min()), float(requests["end_elapsed_s"].max())


def load_loadgen(folder: Path, start_ts: float | None = None) -> pd.DataFrame:
    """loadgen.csv of run ``folder``; empty when the run has none (older runs) or it is
    unreadable (the report's section then says it was not recorded)."""
    try:
        return read_loadgen(stored(Path(folder) / "loadgen.csv"), start_ts)
    except (OSError, ValueError, KeyError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=LOADGEN_COLUMNS)
