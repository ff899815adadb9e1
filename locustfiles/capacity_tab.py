"""The capacity search in Locust's web UI: a "Capacity search" tab polled with the stats.

Same extension points as memory_tab.py (``extended_tabs``/``extended_tables`` and
``extended_stats`` added to ``/stats/requests``); it adds its entries to the ones already
there, so both tabs show. One row per probe (the one under way first, with its phase),
and a first row with the bracket and why the search stopped, if it did.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request
from locust.env import Environment

from locustfiles.capacity import SearchShape

CAPACITY_TAB = "capacity-search"
COLUMNS = [("level", "Level"), ("verdict", "Verdict"), ("requests", "Requests"),
           ("p95_ms", "p95 (ms)"), ("p95_noise", "p95 noise (halves)"),
           ("refusal_share", "Refused share"), ("peak_pss_mb", "Peak total PSS (MB)"),
           ("min_available_mb", "Min available (MB)")]


def _verdict(probe: dict[str, Any]) -> str:
    return "pass" if probe["passed"] else "FAIL: " + ", ".join(probe["failed_limits"])


def capacity_rows(shape: SearchShape) -> list[dict[str, Any]]:
    """Rows of the tab: the bracket, the probe under way, then each judged probe, newest first."""
    status = shape.status()
    lo, hi = status["bracket"]
    bracket = f"bracket {lo} .. {hi} {status['unit']}" + (
        f"; stopped: {status['stopped_by']}" if status["stopped_by"] else "")
    rows = [{key: "" for key, _ in COLUMNS} | {"level": "search", "verdict": bracket}]
    if status["current"] is not None:
        current = status["current"]
        rows.append({key: "" for key, _ in COLUMNS} | {
            "level": current["level"], "verdict": f"{current['phase']} ({current['held_s']} s)"})
    for probe in reversed(status["probes"]):
        rows.append({key: "" if probe.get(key) is None else probe[key] for key, _ in COLUMNS}
                    | {"verdict": _verdict(probe)})
    return rows


class CapacityTab:
    """Show ``shape``'s progress in the web UI; a no-op headless."""

    def __init__(self, shape: SearchShape) -> None:
        self.shape = shape

    def register(self, environment: Environment) -> None:
        """Add the tab and the ``extended_stats`` hook."""
        web_ui = environment.web_ui
        if web_ui is None:
            return
        args = web_ui.template_args
        args["extended_tabs"] = [*args.get("extended_tabs", []),
                                 {"title": "Capacity search", "key": CAPACITY_TAB}]
        args["extended_tables"] = [*args.get("extended_tables", []), {
            "key": CAPACITY_TAB, "structure": [{"key": k, "title": t} for k, t in COLUMNS]}]
        web_ui.app.after_request(self._extend_stats)

    def _extend_stats(self, response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.is_json:
            data = response.get_json()
            data["extended_stats"] = [*data.get("extended_stats", []),
                                      {"key": CAPACITY_TAB, "data": capacity_rows(self.shape)}]
            response.set_data(json.dumps(data))
        return response
