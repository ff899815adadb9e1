"""The web UI's "Arrivals" tab: rows fired as request events on a bare Environment reach the
tab's numbers through the request recorder."""

from __future__ import annotations

import time
from pathlib import Path

from locustfiles.arrival_schedule import ArrivalSettings, DueCounter
from locustfiles.arrival_tab import ArrivalStats, arrival_rows, percentile
from locustfiles.arrivals import ArrivalHook
from locustfiles.request_recorder import RequestRecorder


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert [percentile([4.0, 1.0, 3.0, 2.0], q) for q in (50, 99, 0)] == [2.0, 4.0, 1.0]


def test_the_tab_counts_sent_late_and_latencies_from_both_sends(environment, tmp_path: Path,
                                                                 make_response,
                                                                 completion_body) -> None:
    recorder = RequestRecorder(tmp_path / "requests.csv")
    recorder.register(environment)
    stats = ArrivalStats()
    recorder.row_listeners.append(stats.add_rows)
    now = time.time()
    for i, (lag_s, pool_ms) in enumerate([(0.001, 0.0), (0.4, 350.0), (0.9, 850.0)]):
        context = {"user_class": "PromptUser", "arrival_index": i, "intended_ts": now - 5 + i,
                   "pool_wait_ms": pool_ms}
        environment.events.request.fire(
            request_type="POST", name="/generate-text", response_time=100.0,
            response_length=10, response=make_response(200, completion_body), exception=None,
            context=context, start_time=now - 5 + i + lag_s)
    environment.events.request.fire(  # a closed-loop row: not an arrival
        request_type="POST", name="/generate-text", response_time=100.0, response_length=10,
        response=make_response(200, completion_body), exception=None,
        context={"user_class": "PromptUser"}, start_time=now)
    hook = ArrivalHook(ArrivalSettings("constant", 1.0))
    hook.t0, hook.due = now - 5, DueCounter(hook.settings, [("PromptUser", 1.0)])

    rows = {r["metric"]: r["value"] for r in arrival_rows(hook, stats, now)}
    assert rows["Arrival process"] == "constant at 1 req/s, seed 0"
    assert rows["Due so far / sent"] == "5 / 3"
    assert rows["Achieved rate (sent / time since start)"] == "0.600 req/s"
    assert rows["Sent late: every user busy (raise -u)"] == "2"
    assert rows["Latency from intended send p50 / p99"] == "500 ms / 1000 ms"
    assert rows["Latency from actual send p50 / p99"] == "100 ms / 100 ms"
