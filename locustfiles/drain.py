"""Distributed runs: workers finish their in-flight requests before the master stops.

When ``--run-time`` ends a headless distributed run, Locust's master sends ``quit`` and gives
its workers half a second: requests still in flight are cut off, so the server logs requests
that neither Locust's statistics nor requests.csv ever see. This hook makes the master, as
its test stops, ask every worker to stop its users gracefully (``--stop-timeout``), flush its
request rows and reply, and waits for all replies (or ``stop_timeout`` + ``grace_s``), then
for the workers' next statistics report.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from locust.env import Environment
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner, WorkerRunner

DRAIN = "gpt_lab_drain"
DRAINED = "gpt_lab_drained"


class GracefulDrain:
    """Register on master and workers; a no-op for a local (single-process) runner."""

    def __init__(self, grace_s: float = 30.0) -> None:
        self.grace_s = grace_s
        self.drained: set[str] = set()

    def register(self, environment: Environment) -> None:
        """Hook the custom messages (and, on the master, ``test_stopping``)."""
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            runner.register_message(DRAIN, self._on_drain, concurrent=True)
        elif isinstance(runner, MasterRunner):
            runner.register_message(DRAINED, self._on_drained)
            environment.events.test_stopping.add_listener(self._on_test_stopping)

    def _on_drain(self, environment: Environment, msg: Any, **kwargs: Any) -> None:
        runner = environment.runner
        runner.stop()  # graceful within --stop-timeout; fires test_stop, which forwards rows
        runner.send_message(DRAINED, runner.client_id)

    def _on_drained(self, environment: Environment, msg: Any, **kwargs: Any) -> None:
        self.drained.add(str(msg.data))

    def _on_test_stopping(self, environment: Environment, **kwargs: Any) -> None:
        runner = environment.runner
        expected = runner.worker_count
        if not expected:
            return
        self.drained = set()
        runner.send_message(DRAIN)
        deadline = time.monotonic() + environment.stop_timeout + self.grace_s
        while len(self.drained) < expected and time.monotonic() < deadline:
            gevent.sleep(0.1)
        # Workers report statistics every WORKER_REPORT_INTERVAL; wait for the report that
        # counts the drained requests (the master's quit only waits half a second).
        gevent.sleep(WORKER_REPORT_INTERVAL + 0.5)
