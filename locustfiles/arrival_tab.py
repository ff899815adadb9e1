"""Open-loop arrivals in Locust's web UI: an "Arrivals" tab, live while the test runs.

Fed by the request recorder's rows (master or local runner: the workers' rows arrive by
message), it shows the target rate, the arrivals due so far and sent, the achieved rate,
how many went out late because every user was busy, the dispatch lag and the latency from
the intended send time beside the latency from the actual send (p50/p99). Same extension
points as memory_tab.py (``extended_tabs``, ``extended_tables``, ``extended_stats``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Response, request
from locust.env import Environment

from locustfiles.arrivals import ArrivalHook
from locustfiles.request_recorder import COLUMNS, RequestRecorder

ARRIVALS_TAB = "arrivals"
ARRIVAL_COLUMNS = [("metric", "Metric"), ("value", "Value")]
_INDEX = {name: COLUMNS.index(name) for name in
          ("arrival_index", "dispatch_lag_ms", "pool_wait_ms", "intended_latency_ms",
           "response_time_ms", "success")}


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values``, nearest rank; None when empty."""
    if not values:
        return None
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, round(q / 100 * len(ranked) + 0.5) - 1))]


class ArrivalStats:
    """What the sent arrivals measured so far (master or local runner)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every row (a new test)."""
        self.sent = 0
        self.pool_delayed = 0
        self.lags_ms: list[float] = []
        self.intended_ms: list[float] = []  # latency from the intended send, successes
        self.actual_ms: list[float] = []  # latency from the actual send, successes

    def add_rows(self, rows: list[list[Any]]) -> None:
        """Count the open-loop rows among ``rows`` (requests.csv rows, COLUMNS order)."""
        for row in rows:
            if row[_INDEX["arrival_index"]] == "":
                continue
            self.sent += 1
            self.lags_ms.append(float(row[_INDEX["dispatch_lag_ms"]]))
            self.pool_delayed += float(row[_INDEX["pool_wait_ms"]] or 0) > 0
            if row[_INDEX["success"]] == 1 and row[_INDEX["intended_latency_ms"]] != "":
                self.intended_ms.append(float(row[_INDEX["intended_latency_ms"]]))
                self.actual_ms.append(float(row[_INDEX["response_time_ms"]]))


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


def arrival_rows(hook: ArrivalHook, stats: ArrivalStats, now: float) -> list[dict[str, str]]:
    """Rows of the "Arrivals" tab."""
    s = hook.settings
    process = f"{s.process} at {s.rate_rps:g} req/s" + (
        f", burstiness {s.burstiness:g}" if s.process == "gamma" else "") + f", seed {s.seed}"
    elapsed = now - hook.t0 if hook.t0 is not None else 0.0
    achieved = f"{stats.sent / elapsed:.3f} req/s" if elapsed > 1 else ""
    pairs = [
        ("Arrival process", process),
        ("Due so far / sent", f"{hook.scheduled_by(now)} / {stats.sent}"),
        ("Achieved rate (sent / time since start)", achieved),
        ("Sent late: every user busy (raise -u)", str(stats.pool_delayed)),
        ("Dispatch lag p50 / p99", f"{_ms(percentile(stats.lags_ms, 50))} / "
                                   f"{_ms(percentile(stats.lags_ms, 99))}"),
        ("Latency from intended send p50 / p99",
         f"{_ms(percentile(stats.intended_ms, 50))} / {_ms(percentile(stats.intended_ms, 99))}"),
        ("Latency from actual send p50 / p99",
         f"{_ms(percentile(stats.actual_ms, 50))} / {_ms(percentile(stats.actual_ms, 99))}"),
    ]
    return [{"metric": metric, "value": value} for metric, value in pairs]


class ArrivalTab:
    """Add the "Arrivals" tab to the web UI; a no-op when Locust runs headless."""

    def __init__(self, hook: ArrivalHook, recorder: RequestRecorder) -> None:
        self.hook = hook
        self.recorder = recorder
        self.stats = ArrivalStats()

    def register(self, environment: Environment) -> None:
        """Append the tab to the UI's extended tabs and its rows to ``/stats/requests``."""
        web_ui = environment.web_ui
        if web_ui is None:
            return
        self.recorder.row_listeners.append(self.stats.add_rows)
        environment.events.test_start.add_listener(self._on_test_start)
        args = web_ui.template_args
        args["extended_tabs"] = [*args.get("extended_tabs", []),
                                 {"title": "Arrivals", "key": ARRIVALS_TAB}]
        args["extended_tables"] = [*args.get("extended_tables", []), {
            "key": ARRIVALS_TAB,
            "structure": [{"key": k, "title": t} for k, t in ARRIVAL_COLUMNS]}]
        web_ui.app.after_request(self._extend_stats)

    def _on_test_start(self, **kwargs: Any) -> None:
        self.stats.reset()  # a new test in the web UI starts a new count

    def _extend_stats(self, response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.is_json:
            data = response.get_json()
            data["extended_stats"] = [*data.get("extended_stats", []), {
                "key": ARRIVALS_TAB, "data": arrival_rows(self.hook, self.stats, time.time())}]
            response.set_data(json.dumps(data))
        return response
