"""Both sides of ``python -m bench crosscheck`` read into one per-request frame and a window.

The frame: ``start_ts``, ``end_ts`` (epoch s), ``status`` (guidellm's ``successful`` /
``errored`` / ``incomplete``; ours has the first two), ``ttft_ms``, ``output_tokens`` (the
server's ``usage.completion_tokens`` on both sides). The window: ours, the arrival schedule's
start to the moment Locust stopped sending (run.json ``arrivals.start_ts`` .. ``stop_ts``);
guidellm, its ``scheduler_metrics`` ``measure_start_time`` .. ``measure_end_time`` (its
first request's start + max_duration). bench/crosscheck_compare.py sums both up alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.readers import read_requests, read_run_json

FRAME_COLUMNS = ["start_ts", "end_ts", "status", "ttft_ms", "output_tokens"]
STATUSES = ("successful", "errored", "incomplete")  # guidellm's; ours has the first two


def read_ours(run_dir: Path) -> tuple[pd.DataFrame, tuple[float, float]]:
    """Our run folder's requests.csv as the common frame, and run.json's arrival window."""
    arrivals = read_run_json(run_dir / "run.json").arrivals
    if arrivals is None or arrivals.start_ts is None or arrivals.stop_ts is None:
        raise ValueError(f"{run_dir / 'run.json'}: no arrivals start_ts/stop_ts (open loop?)")
    frame = (
        read_requests(run_dir / "requests.csv")
        .query("method == 'POST'")
        .assign(start_ts=lambda d: d["timestamp"],
                end_ts=lambda d: d["timestamp"] + d["response_time_ms"] / 1000.0,
                output_tokens=lambda d: d["completion_tokens"],
                status=lambda d: d["success"].map({True: "successful", False: "errored"}))
        .reindex(columns=FRAME_COLUMNS)
    )
    return frame, (float(arrivals.start_ts), float(arrivals.stop_ts))


def guidellm_benchmark(path: Path) -> dict[str, Any]:
    """The one benchmark of a guidellm JSON output (a run with one rate has one)."""
    benchmarks = json.loads(path.read_text())["benchmarks"]
    if len(benchmarks) != 1:
        raise ValueError(f"{path}: {len(benchmarks)} benchmarks, expected one (one rate)")
    return benchmarks[0]


def read_guidellm(path: Path) -> tuple[pd.DataFrame, tuple[float, float]]:
    """guidellm's per-request stats as the common frame, and its measurement window."""
    bench = guidellm_benchmark(path)
    rows = [{"start_ts": r["request_start_time"], "end_ts": r["request_end_time"],
             "status": status, "ttft_ms": r["time_to_first_token_ms"],
             "output_tokens": r["output_tokens"]}
            for status in STATUSES for r in bench["requests"].get(status) or []]
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    timing = bench["scheduler_metrics"]
    return frame, (float(timing["measure_start_time"]), float(timing["measure_end_time"]))


def guidellm_headline(path: Path) -> dict[str, float]:
    """guidellm's own output tok/s (mean rate over its window) and TTFT median, ms."""
    metrics = guidellm_benchmark(path)["metrics"]
    return {"own_output_tokens_per_s": metrics["output_tokens_per_second"]["successful"]["mean"],
            "own_ttft_p50_ms": metrics["time_to_first_token_ms"]["successful"]["median"]}
