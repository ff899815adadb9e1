"""Metrics on hand-built files, checked against numbers worked out by hand in each test."""

from __future__ import annotations

import math

import pytest
from analysis_run_builders import history_row, memory_rows, request_row

from analysis import memory, sweep, traffic
from analysis.config import AnalysisConfig
from analysis.findings import build_findings
from analysis.run import load_run


def test_percentiles_per_route_use_successful_requests_only(write_run) -> None:
    times = [100, 200, 300, 400, 500]
    rows = [request_row(i, response_time_ms=ms) for i, ms in enumerate(times)]
    rows += [request_row(9, "/answer-question", response_time_ms=50)]
    rows += [request_row(8, status_code=503, success=0, failure_reason="overloaded",
                         response_time_ms=5)]  # fmt: skip
    routes = {
        r.route: r for r in traffic.route_latency(load_run(write_run(requests=rows)).requests)
    }
    gen = routes["/generate-text"]
    # Linear interpolation on 5 sorted values: rank = q * 4.
    # p50: rank 2 -> 300; p90: rank 3.6 -> 400 + 0.6*100 = 460; p95: 3.8 -> 480; p99: 3.96 -> 496.
    assert (gen.p50_ms, gen.p90_ms, gen.p95_ms, gen.p99_ms) == pytest.approx((300, 460, 480, 496))
    assert (gen.requests, gen.successes, gen.mean_ms) == (6, 5, 300)
    every = routes[traffic.ALL_ROUTES]
    # All six successes: 50,100,200,300,400,500; p50: rank 2.5 -> 250.
    assert (every.requests, every.successes, every.p50_ms) == (7, 6, pytest.approx(250))
    assert list(routes)[-1] == traffic.ALL_ROUTES


def test_counts_rates_and_failure_causes(write_run) -> None:
    rows = [
        request_row(0.0, response_time_ms=1000, completion_tokens=30),
        request_row(4.0, response_time_ms=2000, completion_tokens=10),
        request_row(5.0, status_code=429, success=0, failure_reason="rate_limited"),
        request_row(6.0, status_code=429, success=0, failure_reason="rate_limited"),
        request_row(9.0, status_code=0, success=0, failure_reason="connection_error"),
    ]
    t = traffic.traffic(load_run(write_run(requests=rows)).requests)
    # Window: first start 0 s, last end 9 s + 1 s = 10 s.
    assert t.window_s == pytest.approx(10.0)
    assert (t.requests, t.successes, t.failures) == (5, 2, 3)
    assert t.error_rate == pytest.approx(3 / 5)
    assert t.throughput_rps == pytest.approx(2 / 10)
    assert t.output_tokens_per_s == pytest.approx((30 + 10) / 10)
    assert t.failures_by_cause == {"connection_error": 1, "rate_limited": 2}
    assert t.status_counts == {0: 1, 200: 2, 429: 2}


def test_queue_share_and_tokens_over_time(write_run) -> None:
    rows = [
        request_row(0.0, queue_ms=100, inference_ms=900, batch_size=1, response_time_ms=1000),
        request_row(1.0, queue_ms=300, inference_ms=700, batch_size=3, response_time_ms=1000),
        request_row(1.5, queue_ms=9999, inference_ms=1, success=0, status_code=504),
    ]
    requests = load_run(write_run(requests=rows)).requests
    split = traffic.time_split(requests)
    # Successful only: (100 + 300) / (100 + 300 + 900 + 700) = 0.2.
    assert split.queue_share == pytest.approx(0.2)
    assert (split.mean_queue_ms, split.mean_inference_ms, split.mean_batch_size) == (200, 800, 2)
    series = traffic.tokens_over_time(requests, bin_s=1.0)
    # Ends at 1.0 s and 2.0 s, 20 tokens each: bins [0,1) empty, [1,2) 20, [2,3) 20.
    assert series["elapsed_s"].tolist() == [0.0, 1.0, 2.0]
    assert series["tokens_per_s"].tolist() == [0, 20, 20]


def test_memory_totals_sharing_saving_and_slope(write_run) -> None:
    samples = []
    for t in range(0, 100):
        # Worker 101 grows 0.5 MB/s in PSS (30 MB/min); the first 30 s jump around (warm-up).
        grow = (t % 7) * 40 if t < 30 else t * 0.5
        samples += memory_rows(t, [(101, 3100, 150, 1150 + grow), (102, 3050, 100, 1100)],
                               master=(3000, 50, 1000), available=4096)  # fmt: skip
    m = memory.memory_summary(load_run(write_run(memory=samples)).memory, 30.0, 10)
    assert m.samples == 100 and m.workers == 2
    # Summed RSS is 3000 + 3100 + 3050 = 9150 in every sample.
    assert (m.peak_rss_mb, m.mean_rss_mb) == (9150, 9150)
    # Total PSS = 1000 + 1100 + 1150 + grow; peak grow = 6*40 = 240 (warm-up) vs 99*0.5.
    assert m.peak_pss_mb == 3250 + 240
    grows = [(t % 7) * 40 if t < 30 else t * 0.5 for t in range(100)]
    mean_pss = 3250 + sum(grows) / 100
    assert m.mean_pss_mb == pytest.approx(mean_pss)
    assert m.sharing_saving_mb == pytest.approx(9150 - mean_pss)
    assert m.sharing_saving_share == pytest.approx((9150 - mean_pss) / 9150)
    assert m.rss_to_pss_ratio == pytest.approx(9150 / mean_pss)
    assert m.mean_worker_uss_mb == 125 and m.min_sys_available_mb == 4096
    # Floors (10 s windows from t=30) at t=30, 40, ..., 90: warm-up noise left out.
    assert m.slope_mb_per_min == pytest.approx(30.0)
    assert m.slope_window_s == 60


def test_totals_are_summed_when_the_sampler_wrote_none(write_run) -> None:
    rows = [r for t in (0, 1) for r in memory_rows(t, [(101, 3100, 150, 1150 + t)])]
    no_totals = [r for r in rows if r["role"] != "total"]
    total = memory.totals(load_run(write_run(memory=no_totals)).memory)
    # master 3000/50/1000 + worker 3100/150/(1150 + t)
    assert total["rss_mb"].tolist() == [6100, 6100]
    assert total["pss_mb"].tolist() == [2150, 2151]
    assert total["elapsed_s"].tolist() == [0, 1]


def test_slope_needs_enough_samples_after_warm_up(write_run) -> None:
    samples = [row for t in range(12) for row in memory_rows(t, [(101, 3100, 150, 1150 + t)])]
    total = memory.totals(load_run(write_run(memory=samples)).memory)
    assert memory.memory_slope(total, warmup_s=5, min_samples=10) == (None, 0.0)  # 7 left
    slope, window = memory.memory_slope(total, warmup_s=0, min_samples=10)
    assert (slope, window) == (pytest.approx(60.0), 10.0)  # 1 MB/s; floors at t=0 and 10


def test_ram_per_request_from_server_log(write_run) -> None:
    log = [
        {"rss_mb": 3100, "rss_delta_mb": d, "rss_peak_mb": p}
        for d, p in [(1.0, 3102), (3.0, 3101), (-1.0, 3100), (5.0, 3110)]
    ]
    ram = memory.ram_per_request(load_run(write_run(server_log=log)).server_log)
    assert ram.requests == 4
    assert ram.mean_rss_delta_mb == pytest.approx(2.0)
    # Deltas sorted -1, 1, 3, 5: p95 rank 2.85 -> 3 + 0.85 * 2 = 4.7.
    assert ram.p95_rss_delta_mb == pytest.approx(4.7)
    assert (ram.max_rss_delta_mb, ram.max_rss_peak_mb) == (5.0, 3110)
    # Peak growth = peak - (rss - delta): 3, 4, 0 (3100 - 3101 floored), 15 -> mean 5.5.
    assert ram.mean_peak_growth_mb == pytest.approx(5.5)


@pytest.mark.parametrize(
    ("users", "throughput", "knee"),
    [
        # slope0 = 2/10 = 0.2; gains 0.2, 0.02 (< 0.25 * 0.2 = 0.05) -> knee at 20.
        ([10, 20, 30, 40], [2.0, 4.0, 4.2, 4.3], 20),
        # Linear all the way: no knee.
        ([10, 20, 30], [1.0, 2.0, 3.0], None),
        # Throughput falls at the second step: knee at the first.
        ([5, 10], [1.0, 0.8], 5),
        # Gain 0.051 per user just above 0.05: still scaling.
        ([10, 20], [2.0, 2.51], None),
    ],
)
def test_knee(users, throughput, knee) -> None:
    initial, found = sweep.find_knee(users, throughput, fraction=0.25)
    assert initial == pytest.approx(throughput[0] / users[0])
    assert found == knee


def test_sweep_steps_from_history(sweep_run) -> None:
    run = load_run(sweep_run)
    s = build_findings(run, AnalysisConfig(slo_p95_ms=2000, slo_error_rate=0.05)).sweep
    steps = s.steps
    assert steps["users"].tolist() == [2, 4, 6]
    # Windows start 5 s into each 20 s step: [5,20), [25,40), [45,60).
    assert steps["start_s"].tolist() == [5, 25, 45] and steps["end_s"].tolist() == [20, 40, 60]
    assert steps["throughput_rps"].tolist() == pytest.approx([1.0, 2.0, 2.0])
    # Step 3: 30 served + the 429 and the 503 -> 2 / 32 failed, above 5%.
    assert steps["error_rate"].tolist() == pytest.approx([0, 0, 2 / 32])
    assert steps["meets_slo"].tolist() == [True, True, False]
    assert (s.knee_users, s.max_users_within_slo) == (4, 4)
    assert steps["is_knee"].tolist() == [False, True, False]


def test_sweep_steps_from_run_json_shape_without_history(write_run) -> None:
    shape = {"kind": "steps", "stages": [{"users": 1, "duration_s": 10},
                                         {"users": 3, "duration_s": 10}]}  # fmt: skip
    rows = [request_row(t + 0.5) for t in range(20)]
    run = load_run(write_run(run={"shape": shape}, requests=rows))
    s = sweep.sweep(run.requests, run.history, run.settings, min_step_s=10, settle_s=2,
                    knee_fraction=0.25, slo_p95_ms=5000, slo_error_rate=0.0)  # fmt: skip
    assert s.steps["users"].tolist() == [1, 3]
    assert s.steps["start_s"].tolist() == [2, 12]
    # 8 requests in each 8 s window: 1 req/s at 1 and at 3 users -> no gain -> knee at 1.
    assert s.steps["throughput_rps"].tolist() == pytest.approx([1.0, 1.0])
    assert s.knee_users == 1


def test_steady_run_is_not_a_sweep(write_run) -> None:
    history = [history_row(t, 10) for t in range(60)]
    run = load_run(write_run(run={}, history=history, requests=[request_row(1.0)]))
    assert build_findings(run, AnalysisConfig()).sweep is None


def test_locust_stats_fallback_when_requests_csv_missing(write_run) -> None:
    stats = [
        {"Type": "POST", "Name": "/generate-text", "Request Count": 10, "Failure Count": 2,
         "Average Response Time": 900, "Requests/s": 1.0, "Failures/s": 0.2, "50%": 800,
         "90%": 1200, "95%": 1300, "99%": 1500},
        {"Type": "", "Name": "Aggregated", "Request Count": 10, "Failure Count": 2,
         "Average Response Time": 900, "Requests/s": 1.0, "Failures/s": 0.2, "50%": 800,
         "90%": 1200, "95%": 1300, "99%": 1500},
    ]  # fmt: skip
    failures = [{"Method": "POST", "Name": "/generate-text", "Error": "overloaded (503)",
                 "Occurrences": 2}]  # fmt: skip
    f = build_findings(load_run(write_run(stats=stats, failures=failures)), AnalysisConfig())
    assert f.overall.p95_ms == 1300 and f.routes[0].route == "/generate-text"
    assert (f.traffic.requests, f.traffic.failures) == (10, 2)
    assert f.traffic.throughput_rps == pytest.approx(0.8)
    assert f.traffic.failures_by_cause == {"overloaded (503)": 2}
    assert math.isnan(f.traffic.output_tokens_per_s)
    assert any("locust_stats.csv" in n and "include failed" in n for n in f.notes)


def test_sweep_keeps_only_the_stage_tables_levels(write_run) -> None:
    # A slow spawn holds 3 users for 12 s between the stages of 2 and 4 users.
    shape = {"kind": "steps", "stages": [{"users": 2, "duration_s": 20},
                                         {"users": 4, "duration_s": 20}]}  # fmt: skip
    users = [2] * 20 + [3] * 12 + [4] * 20
    history = [history_row(t, u) for t, u in enumerate(users)]
    rows = [request_row(t + 0.5) for t in range(len(users))]
    run = load_run(write_run(run={"shape": shape}, history=history, requests=rows))
    s = sweep.sweep(run.requests, run.history, run.settings, min_step_s=10, settle_s=2,
                    knee_fraction=0.25, slo_p95_ms=5000, slo_error_rate=0.0)  # fmt: skip
    assert s.steps["users"].tolist() == [2, 4]


def test_kept_kv_slope_sums_each_worker_s_fit_between_the_floors() -> None:
    """Two workers' kept caches each grow 10 MB/min between the first and the last floor;
    records outside that span (wild values) are left out."""
    import pandas as pd

    floors = pd.DataFrame({"elapsed_s": [30.0, 90.0, 150.0], "pss_mb": [1.0, 2.0, 3.0]})
    log = pd.DataFrame({
        "elapsed_s": [0.0, 30.0, 60.0, 90.0, 150.0, 200.0, 30.0, 150.0],
        "worker_pid": [1, 1, 1, 1, 1, 1, 2, 2],
        "kv_kept_mb": [900.0, 5.0, 10.0, 15.0, 25.0, -900.0, 0.0, 20.0],
    })
    assert memory.kept_kv_slope(log, floors) == pytest.approx(20.0)
    one_each = log[log["elapsed_s"].isin([0.0, 60.0, 200.0])]  # one record in the span
    assert memory.kept_kv_slope(one_each, floors) is None
    assert memory.kept_kv_slope(log.assign(kv_kept_mb=float("nan")), floors) is None  # older log
    assert memory.kept_kv_slope(None, floors) is None


def test_a_run_whose_kept_caches_fill_reads_as_filling_not_a_leak(write_run) -> None:
    """Worker 101's PSS rises 30 MB/min after warm-up and its log's kv_kept_mb 29 MB/min over
    the same span: findings carry both slopes, the report says prefix_cache_filling, and the
    same run whose log does not say (an older server) still gets the leak warning."""
    samples = [row for t in range(100)
               for row in memory_rows(t, [(101, 3100, 150, 1150 + t * 0.5)])]
    log = [{"t": float(t), "worker_pid": 101, "rss_mb": 3100, "rss_delta_mb": 0.0,
            "rss_peak_mb": 3100, "kv_kept_mb": t * 29 / 60} for t in range(0, 100, 5)]
    run = load_run(write_run(memory=samples, server_log=log, run={}))
    findings = build_findings(run, AnalysisConfig())
    assert findings.memory.slope_mb_per_min == pytest.approx(30.0)
    assert findings.memory.kept_kv_slope_mb_per_min == pytest.approx(29.0)
    rules = {r.rule for r in findings.recommendations}
    assert "prefix_cache_filling" in rules and "memory_growth" not in rules
    older = [{k: v for k, v in row.items() if k != "kv_kept_mb"} for row in log]
    plain = build_findings(load_run(write_run("older", memory=samples, server_log=older,
                                              run={})), AnalysisConfig())
    assert plain.memory.kept_kv_slope_mb_per_min is None
    assert "memory_growth" in {r.rule for r in plain.recommendations}
