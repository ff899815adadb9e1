"""A server-wide cap on generation requests in flight, across all Gunicorn workers.

Each worker already refuses work when its own queue is full (``MAX_QUEUE``), but Gunicorn
hands connections to workers unevenly, so one worker can hold far more than its share.
``MAX_IN_FLIGHT`` bounds the sum: a request beyond it gets a fast 503 with ``Retry-After``
before its body is parsed or tokenized.

The counts live in shared rows (server.engine.shared_rows) created in the Gunicorn master (the app
is preloaded), one per process ``(pid, in_flight)``: each worker writes only its own row and
reads the sum without a lock, so a worker SIGKILLed at any moment cannot wedge the others.
Its rows are cleared by the master (``child_exit`` in gunicorn.conf.py, without ever waiting
on a lock) and, at the cap, by any worker: a SIGKILLed worker is a zombie until the master
reaps it, and its clients' retries arrived first often enough to be refused. The rows' lock
file is ``in_flight.lock`` in the server's runtime folder (``shared_rows.runtime_dir``).
Without Gunicorn (tests, ``flask run``) the table is simply private.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request

from server.engine.shared_rows import SharedRows, runtime_dir
from server.web import routing
from server.web.errors import APIError

# Rows in the table: far above any worker count (Gunicorn replaces dead workers with new
# pids, and dead rows are recycled).
_ROWS = 256


class InFlightTable:
    """Requests in flight per process, in shared rows that only their owner writes."""

    def __init__(self, rows: int = _ROWS, directory: Path | None = None) -> None:
        self.rows = SharedRows("in_flight", rows, directory)

    def total(self) -> int:
        """Requests in flight in all live processes (no lock)."""
        return self.rows.total()

    def try_acquire(self, cap: int) -> bool:
        """Count one more request of this process, unless ``cap`` are already in flight.

        Counted first, then checked, with no cross-process lock: two workers racing for the
        last slot may both see the sum over the cap and both refuse (a fast 503 and a
        retry), and do not both get in unless their stores and reads meet within the CPU's
        store buffer (nanoseconds, against the microseconds of Python between them). The
        threads of one process take turns.
        """
        with self.rows.local:
            self.rows.add(1)
            if self.rows.total() > cap:
                self.rows.forget_dead()  # only at the cap: it reads /proc per row
                if self.rows.total() > cap:
                    self.rows.add(-1)
                    return False
            return True

    def release(self) -> None:
        """Count one request of this process less."""
        self.rows.add(-1)

    def forget(self, pid: int) -> bool:
        """Drop a dead process's row (its requests died with it) without blocking; False if
        the lock stayed busy (the workers then recycle the row)."""
        return self.rows.forget(pid)


def _admit() -> None:
    # Only routes declared as generations (server.web.routing) are capped: probes, docs and
    # /v1/models are not.
    if request.method != "POST" or not routing.current().generation:  # not OPTIONS
        return
    config: dict[str, Any] = current_app.config
    table: InFlightTable = current_app.extensions["in_flight"]
    if not table.try_acquire(config["MAX_IN_FLIGHT"]):
        raise APIError(503, "overloaded",
                       f"server is at capacity ({config['MAX_IN_FLIGHT']} requests in "
                       "flight); retry later", retry_after_s=config["RETRY_AFTER_S"],
                       details={"scope": "server", "reason": "in_flight"})
    g.in_flight = True


def _hand_over(response: Response) -> Response:
    # A streamed body is still generating when after_request runs: the slot is given back
    # when the server closes the response, i.e. after the last byte (or a hang-up).
    if g.pop("in_flight", False):
        response.call_on_close(current_app.extensions["in_flight"].release)
    return response


def _release_on_error(_error: BaseException | None) -> None:
    # Reached with the flag still set only when no response was built (an unexpected error).
    if g.pop("in_flight", False):
        current_app.extensions["in_flight"].release()


def init_app(app: Flask) -> None:
    """Cap generation requests in flight at ``MAX_IN_FLIGHT`` (0 = no cap)."""
    if not app.config["MAX_IN_FLIGHT"]:
        return
    app.extensions["in_flight"] = InFlightTable(directory=runtime_dir())
    app.before_request(_admit)
    app.after_request(_hand_over)
    app.teardown_request(_release_on_error)
