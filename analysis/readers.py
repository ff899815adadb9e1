"""Read each file of a run folder into a tidy DataFrame: one pandas chain per file.

Every frame gets snake_case columns with units in their names and an ``elapsed_s`` column:
seconds since ``start_ts`` (the run start), or since the file's own first row when no start
is given. Locust writes "N/A" for values it has not got; those become NaN.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from harness.run_record import RunRecord

LOCUST_NA = ["N/A"]
# Text columns stay text even when every value is blank (the "Aggregated" row has no Type).
LOCUST_TEXT = {"Type": str, "Name": str, "Method": str, "Error": str, "Message": str}

# requests.csv as written by the Locust hook (see docs/load-testing.md, "What a run folder holds").
REQUEST_COLUMNS = [
    "timestamp", "user_class", "method", "route", "status_code", "response_time_ms",
    "response_bytes", "success", "failure_reason", "request_id", "worker_pid",
    "worker_rss_mb", "worker_uss_mb", "worker_pss_mb", "queue_ms", "inference_ms",
    "batch_size", "prompt_tokens", "completion_tokens",
    # Streamed answers only (blank otherwise; absent in runs from before streaming).
    "stream", "ttfb_ms", "ttft_ms", "tpot_ms", "chunks", "max_chunk_gap_ms", "chunk_gaps_ms",
    # --workload requests (blank otherwise), and the server's cached prompt tokens.
    "workload_group", "turn", "context_tokens", "cached_tokens",
    # The worker's CPU charged to the request (X-CPU-Ms; absent before issue 32).
    "cpu_ms",
    # Open-loop arrivals only (--arrival; blank otherwise, absent in older runs).
    "arrival_index", "intended_ts", "dispatch_lag_ms", "pool_wait_ms", "intended_latency_ms",
]  # fmt: skip
MEMORY_COLUMNS = [
    "timestamp", "pid", "role", "rss_mb", "uss_mb", "pss_mb", "shared_mb", "sys_available_mb",
    # CPU of each process and the box's other load (absent before issue 32; blank when
    # scraped from /metrics).
    "cpu_s", "other_cpu_share", "steal_share",
]  # fmt: skip
# loadgen.csv (locustfiles/loadgen_monitor.py): one row per tick of each Locust process.
LOADGEN_COLUMNS = ["timestamp", "elapsed_s", "pid", "role", "loop_lag_ms", "cpu_s",
                   "cpu_percent", "cores"]
SERVER_LOG_COLUMNS = [
    "ts", "request_id", "route", "status", "key_id", "worker_pid", "prompt_tokens",
    "completion_tokens", "batch_size", "queue_ms", "inference_ms", "total_ms", "rss_mb",
    "uss_mb", "pss_mb", "rss_delta_mb", "rss_peak_mb", "kv_kept_mb", "sys_available_mb",
    "cpu_ms", "cpu_ms_per_token",
]  # fmt: skip


def stored(path: Path) -> Path:
    """``path``, or its gzipped copy ``<name>.gz`` when only that exists: committed runs keep
    their larger raw files gzipped (pandas reads them by the extension)."""
    zipped = path.with_name(path.name + ".gz")
    return zipped if not path.is_file() and zipped.is_file() else path


def locust_column(name: str) -> str:
    """Turn a Locust CSV header into snake_case with its unit: "95%" -> "p95_ms"."""
    if name.endswith("%"):
        return "p" + name[:-1].replace(".", "_") + "_ms"
    snake = re.sub(r"[^0-9a-z]+", "_", name.lower().replace("/s", "_per_s")).strip("_")
    if snake.endswith("response_time"):
        return snake + "_ms"
    if snake.endswith("content_size"):
        return snake + "_bytes"
    return snake


def _elapsed(times: pd.Series, start_ts: float | None) -> pd.Series:
    """Seconds since ``start_ts`` (or the first time in ``times``)."""
    origin = times.min() if start_ts is None else start_ts
    return times - origin


def read_run_json(path: Path) -> RunRecord:
    """Read run.json: the typed record of the run (harness.run_record); a field of the wrong
    type raises pydantic's ValidationError, a ValueError."""
    return RunRecord.model_validate_json(Path(path).read_text())


def read_locust_stats(path: Path) -> pd.DataFrame:
    """Read locust_stats.csv (one row per route plus the "Aggregated" row)."""
    return (
        pd.read_csv(path, na_values=LOCUST_NA, dtype=LOCUST_TEXT)
        .rename(columns=locust_column)
        .assign(type=lambda d: d["type"].fillna("").astype(str))
    )


def read_locust_history(path: Path, start_ts: float | None = None) -> pd.DataFrame:
    """Read locust_stats_history.csv (one row per second, per route with --csv-full-history)."""
    return (
        pd.read_csv(path, na_values=LOCUST_NA, dtype=LOCUST_TEXT)
        .rename(columns=locust_column)
        .assign(
            type=lambda d: d["type"].fillna("").astype(str),
            timestamp=lambda d: d["timestamp"].astype(float),
            elapsed_s=lambda d: _elapsed(d["timestamp"], start_ts),
        )
        .sort_values("timestamp", kind="stable", ignore_index=True)
    )


def read_locust_failures(path: Path) -> pd.DataFrame:
    """Read locust_failures.csv (one row per method, route and error text)."""
    return pd.read_csv(path, na_values=LOCUST_NA, dtype=LOCUST_TEXT).rename(columns=locust_column)


def read_locust_exceptions(path: Path) -> pd.DataFrame:
    """Read locust_exceptions.csv (exceptions raised inside user code)."""
    return pd.read_csv(path, na_values=LOCUST_NA, dtype=LOCUST_TEXT).rename(columns=locust_column)


def read_requests(path: Path, start_ts: float | None = None) -> pd.DataFrame:
    """Read requests.csv: one row per request, the client's view plus server headers."""
    return (
        pd.read_csv(path, dtype={"failure_reason": str, "request_id": str, "chunk_gaps_ms": str,
                                 "workload_group": str})
        .reindex(columns=REQUEST_COLUMNS)
        .assign(
            success=lambda d: d["success"].fillna(0).astype(int).astype(bool),
            failure_reason=lambda d: d["failure_reason"].fillna("").astype(str),
            status_code=lambda d: d["status_code"].fillna(0).astype(int),
            elapsed_s=lambda d: _elapsed(d["timestamp"], start_ts),
            end_elapsed_s=lambda d: d["elapsed_s"] + d["response_time_ms"] / 1000.0,
        )
        .sort_values("timestamp", kind="stable", ignore_index=True)
    )


def _per_process(path: Path, columns: list[str], start_ts: float | None) -> pd.DataFrame:
    """Read a per-process sample file (memory.csv, loadgen.csv): ``columns``, ``role`` as text,
    ``elapsed_s`` since the run start, sorted by time then pid."""
    return (
        pd.read_csv(path, dtype={"role": str})
        .reindex(columns=columns)
        .assign(
            role=lambda d: d["role"].fillna("").astype(str),
            elapsed_s=lambda d: _elapsed(d["timestamp"], start_ts),
        )
        .sort_values(["timestamp", "pid"], kind="stable", ignore_index=True)
    )


def read_memory(path: Path, start_ts: float | None = None) -> pd.DataFrame:
    """Read memory.csv: long format, one row per process per sample plus a "total" row."""
    return _per_process(path, MEMORY_COLUMNS, start_ts)


def read_loadgen(path: Path, start_ts: float | None = None) -> pd.DataFrame:
    """Read loadgen.csv; ``elapsed_s`` becomes seconds since the run start (``start_ts``)."""
    return _per_process(path, LOADGEN_COLUMNS, start_ts)


def read_server_log(path: Path, start_ts: float | None = None) -> pd.DataFrame:
    """Read server_requests.jsonl: the server's own record of every request."""
    return (
        pd.read_json(path, lines=True, dtype=False)
        .reindex(columns=SERVER_LOG_COLUMNS)
        .apply(lambda c: c if c.name in ("request_id", "route", "key_id") else pd.to_numeric(c))
        .assign(elapsed_s=lambda d: _elapsed(d["ts"], start_ts))
        .sort_values("ts", kind="stable", ignore_index=True)
    )
