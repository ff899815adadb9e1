"""Each rule fires when its condition holds, quoting the numbers, and stays silent otherwise."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import pytest

from analysis import rules_machine as rm
from analysis import rules_traffic as rt
from analysis.config import AnalysisConfig
from analysis.memory import MemorySummary
from analysis.records import INFO, Findings
from analysis.rules import all_rules, evaluate, slo_verdicts
from analysis.sweep import Sweep
from analysis.traffic import ALL_ROUTES, RouteLatency, TimeSplit, Traffic

SETTINGS = {
    "workers": 2, "torch_threads": 1, "host.cores": 2, "host.ram_gb": 16, "dtype": "float32",
    "max_batch_size": 8, "users": 10,
}  # fmt: skip
TRAFFIC = Traffic(requests=100, successes=100, failures=0, error_rate=0.0, window_s=100.0,
                  throughput_rps=1.0, output_tokens_per_s=20.0, failures_by_cause={},
                  status_counts={200: 100})  # fmt: skip
SPLIT = TimeSplit(requests=100, mean_queue_ms=100.0, mean_inference_ms=900.0, queue_share=0.1,
                  mean_batch_size=2.0)  # fmt: skip
# Summed RSS / total PSS = 3630 / 3300 = 1.1: between the "broken" and "works" thresholds.
MEMORY = MemorySummary(samples=100, workers=2, peak_pss_mb=3300.0, mean_pss_mb=3300.0,
                       peak_rss_mb=3630.0, mean_rss_mb=3630.0, peak_uss_mb=400.0,
                       mean_uss_mb=400.0, sharing_saving_mb=330.0, sharing_saving_share=330 / 3630,
                       rss_to_pss_ratio=1.1, mean_worker_uss_mb=150.0,
                       min_sys_available_mb=8192.0, slope_mb_per_min=0.2,
                       slope_window_s=120.0)  # fmt: skip
ROUTE = RouteLatency(ALL_ROUTES, 100, 100, 900.0, 1200.0, 1300.0, 1500.0, 950.0)


def make(**changes: Any) -> Findings:
    """Healthy findings (no rule but headroom fires) with ``changes`` applied."""
    settings = SETTINGS | changes.pop("settings", {})
    f = Findings(label="t", settings=settings, config=changes.pop("config", AnalysisConfig()),
                 notes=[], routes=[ROUTE], traffic=TRAFFIC, time_split=SPLIT, memory=MEMORY,
                 ram=None, sweep=None, worker_pids_seen=2)  # fmt: skip
    f = dataclasses.replace(f, **changes)
    f.slo = slo_verdicts(f)
    return f


def sweep_of(users: list[int], rps: list[float], knee: int | None) -> Sweep:
    steps = pd.DataFrame({"users": users, "throughput_rps": rps, "p95_ms": 1000.0,
                          "meets_slo": True, "is_knee": [u == knee for u in users]})  # fmt: skip
    return Sweep(steps, rps[0] / users[0], knee, max(users))


def failed(status: int, cause: str, n: int) -> Traffic:
    counts = {200: 100 - n, status: n}
    return dataclasses.replace(TRAFFIC, successes=100 - n, failures=n, error_rate=n / 100,
                               failures_by_cause={cause: n}, status_counts=counts)  # fmt: skip


def mem(**changes: Any) -> MemorySummary:
    return dataclasses.replace(MEMORY, **changes)


PLATEAU = sweep_of([10, 20, 30], [2.0, 4.0, 4.1], knee=20)

# rule, findings where it fires, the texts it must quote, findings where it must stay silent.
CASES = [
    (rt.queue_dominates,
     make(time_split=dataclasses.replace(SPLIT, queue_share=0.75, mean_queue_ms=300.0,
                                         mean_inference_ms=100.0)),
     ["75.0%", "300 ms queued vs 100 ms", "2.0 requests of a possible 8", "comes from bursts"],
     make(time_split=dataclasses.replace(SPLIT, queue_share=0.5))),
    (rt.queue_dominates,
     make(time_split=dataclasses.replace(SPLIT, queue_share=0.6, mean_batch_size=7.5)),
     ["60.0%", "7.5 requests, close to max_batch_size = 8",
      "will not help while workers x torch threads = 2 x 1 = 2", "cover the 2 cores"],
     make(time_split=None)),
    (rt.queue_dominates,
     make(time_split=dataclasses.replace(SPLIT, queue_share=0.6), settings={"host.cores": 8}),
     ["Or add workers (now 2) if cores and RAM allow"], make(settings={"host.cores": 8})),
    (rt.sweep_plateau, make(sweep=PLATEAU),
     ["at 20 users (4.00 req/s)", "0.010 req/s", "0.200 req/s per user",
      "2 x 1 = 2 >= 2 cores", "bfloat16"],
     make(sweep=sweep_of([10, 20, 30], [2.0, 4.0, 6.0], knee=None))),
    (rt.sweep_plateau, make(sweep=PLATEAU, settings={"dtype": "bfloat16"}),
     ["int8 quantization"], make(sweep=None)),
    (rt.sweep_plateau, make(sweep=PLATEAU, settings={"workers": 1, "host.cores": 4}),
     ["threads = 1 x 1 = 1 of 4 cores", "add workers"], make()),
    (rt.sweep_plateau, make(sweep=PLATEAU, settings={"torch_threads": 0, "host.cores": 4}),
     ["threads = 2 x 2 = 4 >= 4 cores"], make(sweep=sweep_of([10], [2.0], knee=None))),
    (rt.slo_missed, make(routes=[dataclasses.replace(ROUTE, p95_ms=12_345.0)]),
     ["p95 latency, All routes was 12,345 against a target of 10,000"],
     make(routes=[dataclasses.replace(ROUTE, p95_ms=10_000.0)])),
    (rt.slo_missed, make(traffic=failed(503, "overloaded", 5), sweep=PLATEAU),
     ["error rate was 0.050 against a target of 0.010", "held up to 30 users"],
     make(traffic=failed(503, "overloaded", 1))),
    (rt.rate_limited, make(traffic=failed(429, "rate_limited", 7)),
     ["7 request(s) (7.0%)", "429", "(10 users)"], make(traffic=failed(503, "overloaded", 7))),
    (rt.overloaded, make(traffic=failed(503, "overloaded", 3)),
     ["3 request(s) (3.0%)", "503", "p99 (1,500 ms)", "SLO (10,000 ms)"],
     make(traffic=failed(429, "rate_limited", 3))),
    (rt.timed_out, make(traffic=failed(504, "timeout", 2)), ["2 request(s) (2.0%)", "504"],
     make()),
    (rt.server_errors, make(traffic=failed(502, "http_502", 1)), ["1 request(s) (1.0%)", "5xx"],
     make(traffic=failed(504, "timeout", 1))),
    (rt.no_answer, make(traffic=failed(0, "connection_error", 4)),
     ["4 request(s) (4.0%)", "no HTTP answer"], make()),
    (rt.bad_body, make(traffic=failed(200, "bad_body", 2)), ["2 request(s) (2.0%)", "bad_body"],
     make(traffic=failed(0, "connection_error", 2))),
    # Locust's failure table only (no status codes): matched by the error text.
    (rt.overloaded, make(traffic=dataclasses.replace(failed(503, "HTTP 503 overloaded", 3),
                                                     status_counts={})),
     ["3 request(s)"], make(traffic=dataclasses.replace(failed(429, "HTTP 429", 3),
                                                        status_counts={}))),
    (rm.sharing_works,
     make(memory=mem(mean_rss_mb=9000.0, mean_pss_mb=3600.0, rss_to_pss_ratio=2.5,
                     sharing_saving_mb=5400.0, sharing_saving_share=0.6)),
     ["9,000 MB of RSS", "total PSS is 3,600 MB (2.50x less)", "saves 5,400 MB (60.0%"],
     make(memory=mem(rss_to_pss_ratio=1.24))),
    (rm.sharing_broken, make(memory=mem(rss_to_pss_ratio=1.01, mean_rss_mb=6666.0)),
     ["2 workers share almost nothing", "6,666 MB", "1.01x", "preload_app"],
     make(memory=mem(rss_to_pss_ratio=1.01, workers=1))),
    (rm.memory_growth, make(memory=mem(slope_mb_per_min=2.5, slope_window_s=300.0)),
     ["2.50 MB/min", "300 s after a 30 s warm-up", "150 MB per hour"],
     make(memory=mem(slope_mb_per_min=1.0))),
    (rm.memory_growth, make(memory=mem(slope_mb_per_min=5.0)), ["5.00 MB/min"],
     make(memory=mem(slope_mb_per_min=None))),
    (rm.memory_growth, make(memory=mem(slope_mb_per_min=5.0)), ["5.00 MB/min"],
     make(memory=mem(slope_mb_per_min=5.0), sweep=PLATEAU)),  # rising load, not a leak
    # Kept prefix caches explain part of the growth: still a leak warning, saying how much.
    (rm.memory_growth, make(memory=mem(slope_mb_per_min=5.0, kept_kv_slope_mb_per_min=2.0)),
     ["5.00 MB/min", "(2.00 MB/min of it kept prefix caches)"], make(memory=None)),
    (rm.memory_headroom, make(memory=mem(min_sys_available_mb=1000.0)),
     ["fell to 1,000 MB, 6.1% of the host's 16,384 MB", "OOM"],
     make(memory=mem(min_sys_available_mb=1000.0), settings={"host.ram_gb": None})),
    (rm.memory_headroom, make(),
     ["At least 8,192 MB", "(50.0% of 16,384 MB)", "150 MB privately", "about 43 more"],
     make(memory=None)),
    (rm.workers_replaced, make(worker_pids_seen=3), ["3 different worker pids", "2 workers"],
     make(worker_pids_seen=2)),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "firing", "quotes", "silent"), CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])  # fmt: skip
def test_rule_fires_with_its_numbers_and_is_silent_otherwise(rule, firing, quotes, silent) -> None:
    recommendation = rule(firing)
    assert recommendation is not None
    for quote in quotes:
        assert quote in recommendation.text
    assert rule(silent) is None


@pytest.mark.parametrize(("slope", "kept"), [(48.65, 48.0), (48.65, 47.9), (5.0, 6.0)])
def test_growth_the_kept_prefix_caches_account_for_is_an_info(slope: float,
                                                               kept: float) -> None:
    """Growth within leak_slope_mb_per_min (1 MB/min) of the kept caches' own is theirs, not
    a leak (qwen2.5-1.5b's main job with 32 prefix rows: 51.30 against 46.37 MB/min)."""
    found = rm.memory_growth(make(memory=mem(slope_mb_per_min=slope,
                                             kept_kv_slope_mb_per_min=kept)))
    assert found is not None and found.rule == "prefix_cache_filling"
    assert found.severity == INFO
    assert f"{slope:.2f} MB/min" in found.text and f"{kept:.2f} MB/min" in found.text
    beyond = rm.memory_growth(make(memory=mem(slope_mb_per_min=slope + 3.0,
                                              kept_kv_slope_mb_per_min=kept - 0.5)))
    assert beyond is not None and beyond.rule == "memory_growth"


def test_healthy_run_gets_only_the_headroom_note() -> None:
    assert [r.rule for r in evaluate(make())] == ["headroom"]


def test_evaluate_puts_warnings_first() -> None:
    f = make(traffic=failed(429, "rate_limited", 1),
             memory=mem(rss_to_pss_ratio=2.0, mean_rss_mb=7000.0, mean_pss_mb=3500.0))  # fmt: skip
    fired = [r.rule for r in evaluate(f)]
    assert fired[:1] == ["rate_limited"] and set(fired[1:]) == {"sharing_works", "headroom"}


def test_thresholds_come_from_the_config() -> None:
    strict = AnalysisConfig(queue_share_high=0.05, leak_slope_mb_per_min=0.1)
    assert rt.queue_dominates(make(config=strict)) is not None
    assert rm.memory_growth(make(config=strict)) is not None


def test_every_rule_has_a_one_line_condition_in_its_docstring() -> None:
    for rule in all_rules():
        assert rule.__doc__ and "->" in rule.__doc__.splitlines()[0], rule.__name__
