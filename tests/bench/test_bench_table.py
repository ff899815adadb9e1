"""The bench table from hand-built run folders: steady window, ratios, the roofline share."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from analysis.readers import MEMORY_COLUMNS, REQUEST_COLUMNS
from bench.roofline import Roofline
from bench.table import bench_frame, bench_row, notes, render_table

T0 = 1_700_000_000.0
WARMUP_S, MEASURE_S = 12.0, 20.0  # window: [12 s, 32 s] after the first request


def request(t: float, user: int, n: int, batch: int = 1, **fields) -> dict:
    """A 64-token answer asked at ``t``: 5 s response, generated in its last 4 s."""
    return {"timestamp": T0 + t, "user_class": "BenchUser", "method": "POST",
            "route": "/generate-text", "status_code": 200, "response_time_ms": 5000.0,
            "response_bytes": 300, "success": 1, "failure_reason": "",
            "request_id": f"BenchUser-{user}-{n}", "worker_pid": 11, "worker_rss_mb": 1,
            "worker_uss_mb": 1, "worker_pss_mb": 1, "queue_ms": 1000.0, "inference_ms": 4000.0,
            "batch_size": batch, "prompt_tokens": 64, "completion_tokens": 64, **fields}


def write_run(folder: Path, dtype: str, requests: list[dict], pss, rss) -> Path:
    """run.json, requests.csv and memory.csv (total rows once a second, 0..40 s)."""
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"label": folder.name, "dtype": dtype}))
    with open(folder / "requests.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, REQUEST_COLUMNS)
        writer.writeheader()
        writer.writerows(requests)
    with open(folder / "memory.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, MEMORY_COLUMNS)
        writer.writeheader()
        writer.writerows({"timestamp": T0 + t, "pid": 0, "role": "total", "rss_mb": rss(t),
                          "uss_mb": 1, "pss_mb": pss(t), "shared_mb": 1,
                          "sys_available_mb": 9000} for t in range(41))
    return folder


@pytest.fixture
def naive(tmp_path: Path) -> Path:
    """One request at a time every 5 s (2 users taking turns), one refused at 20 s."""
    rows = [request(5 * i, user=i % 2, n=i // 2 + 1) for i in range(8)]
    rows.append(request(20.0, user=0, n=9, status_code=503, success=0,
                        failure_reason="overloaded", response_time_ms=10.0, inference_ms="",
                        batch_size=0, prompt_tokens="", completion_tokens=""))
    return write_run(tmp_path / "naive", "float32", rows, pss=lambda t: 3000 + t,
                     rss=lambda t: 3000 + t)


@pytest.fixture
def batched(tmp_path: Path) -> Path:
    """A batch every 5 s, alternately of 4 and 2 requests."""
    rows = [request(5 * k, user=j, n=k + 1, batch=4 if k % 2 == 0 else 2)
            for k in range(8) for j in range(4 if k % 2 == 0 else 2)]
    return write_run(tmp_path / "batched", "bfloat16", rows, pss=lambda t: 2000,
                     rss=lambda t: 4000)


ROOFLINE = Roofline(model="synthetic:test", params=100_000_000, threads=2,
                    read_bandwidth_gb_s=40.0,
                    matmul_gflop_s={"float32": 400.0, "bfloat16": 100.0}, matmul_size=64,
                    buffer_mb=1, measured_at="", cpu="test")


def test_naive_row_counts_generation_inside_the_window(naive: Path) -> None:
    row = bench_row(naive, WARMUP_S, MEASURE_S)
    # Generations [11,15] (3/4 inside), [16,20], [21,25], [26,30], [31,35] (1/4): 4 answers.
    assert row.output_tokens_per_s == pytest.approx(4 * 64 / 20)
    assert row.requests_per_s == pytest.approx(4 / 20)
    # Ended inside [12, 32]: 15, 20, 25, 30 s (all 5 s long) and the 503 at 20 s.
    assert (row.requests, row.failures) == (4, 1)
    assert row.p50_s == row.p95_s == pytest.approx(5.0)
    assert row.mean_total_pss_mb == pytest.approx(3000 + 22)  # samples 12..32 s only
    assert row.mean_batch == 1.0
    assert row.first_cycle_s == pytest.approx(10.0)  # user 1's first answer


def test_batched_row_mean_batch_counts_each_batch_once(batched: Path) -> None:
    row = bench_row(batched, WARMUP_S, MEASURE_S)
    # Batches at 10 (4, 3/4 inside), 15 (2), 20 (4), 25 (2), 30 (4, 1/4 inside) s.
    assert row.output_tokens_per_s == pytest.approx((3 + 2 + 4 + 2 + 1) * 64 / 20)
    assert row.mean_batch == pytest.approx(16 / 5)  # 16 requests in 5 batches
    assert row.failures == 0


def test_table_ratios_and_roofline_share_are_computed(naive: Path, batched: Path) -> None:
    rows = [bench_row(p, WARMUP_S, MEASURE_S) for p in (naive, batched)]
    frame = bench_frame(rows, ROOFLINE)
    assert list(frame.index) == ["naive", "batched"]
    assert frame.loc["naive", "x_naive"] == 1.0
    assert frame.loc["batched", "x_naive"] == pytest.approx(
        rows[1].output_tokens_per_s / rows[0].output_tokens_per_s)
    assert frame.loc["batched", "pss_vs_naive"] == pytest.approx(2000 / 3022)
    # fp32, batch 1: 40 GB/s / 400 MB = 100 tok/s (memory bound; compute allows 2000).
    assert frame.loc["naive", "limit_tokens_per_s"] == pytest.approx(100.0)
    # bf16, batch 3.2: memory allows 3.2 x 200 = 640; compute 100 GFLOP/s / 0.2 GFLOP = 500.
    assert frame.loc["batched", "limit_tokens_per_s"] == pytest.approx(500.0)
    assert frame.loc["batched", "of_limit"] == pytest.approx(rows[1].output_tokens_per_s / 500)


def test_rendered_table_and_notes(naive: Path, batched: Path) -> None:
    frame = bench_frame([bench_row(p, WARMUP_S, MEASURE_S) for p in (naive, batched)], ROOFLINE)
    text = render_table(frame, {"naive": "1 sync worker", "batched": "2 workers"})
    header, align, first, second = text.splitlines()
    assert header.count("|") == align.count("|") == first.count("|") == second.count("|")
    assert first.startswith("| naive | 1 sync worker | 12.8 |")
    assert "| 3.00x |" in second  # 38.4 / 12.8 tok/s
    assert notes(frame, WARMUP_S) == ["naive: 1 failed requests in the window (see its "
                                      "report.md)."]
    assert any("more than the 5 s warm-up" in n for n in notes(frame, 5.0))
