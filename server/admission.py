"""A server-wide cap on generation requests in flight, across all Gunicorn workers.

Each worker already refuses work when its own queue is full (``MAX_QUEUE``), but Gunicorn
hands connections to workers unevenly, so one worker can hold far more than its share.
``MAX_IN_FLIGHT`` bounds the sum: a request beyond it gets a fast 503 with ``Retry-After``
before its body is parsed or tokenized.

The counts live in a small shared-memory table created in the Gunicorn master (the app is
preloaded), so every forked worker sees the same memory: one row per live process
``(pid, in_flight)``. A worker killed mid-request would otherwise leak its slots forever, so
rows of dead processes are cleared (``child_exit`` in gunicorn.conf.py, whenever a new
worker claims a row, and when the cap is reached: a SIGKILLed worker is a zombie until the
master reaps it, and its clients' retries arrived first often enough to be refused).
Without Gunicorn (tests, ``flask run``) the table is simply private.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from flask import Flask, Response, current_app, g, request

from server import routing
from server.errors import APIError

# Rows in the table: far above any worker count (Gunicorn replaces dead workers with new
# pids, and dead rows are recycled).
_ROWS = 256


class InFlightTable:
    """Shared ``(pid, count)`` rows; all access under one cross-process lock."""

    def __init__(self, rows: int = _ROWS) -> None:
        self._pids = multiprocessing.RawArray("i", rows)
        self._counts = multiprocessing.RawArray("i", rows)
        self._lock = multiprocessing.Lock()
        self._mine: tuple[int, int] | None = None  # (pid, row) of this process's row

    def total(self) -> int:
        """Requests in flight in all live processes."""
        with self._lock:
            return sum(self._counts)

    def try_acquire(self, cap: int) -> bool:
        """Count one more request of this process, unless ``cap`` are already in flight."""
        with self._lock:
            if sum(self._counts) >= cap:
                self._forget_dead()  # only at the cap: it reads /proc per row
                if sum(self._counts) >= cap:
                    return False
            self._counts[self._row()] += 1
            return True

    def release(self) -> None:
        """Count one request of this process less."""
        with self._lock:
            row = self._row()
            self._counts[row] = max(0, self._counts[row] - 1)

    def forget(self, pid: int) -> None:
        """Drop a dead process's row (its requests died with it)."""
        with self._lock:
            for row, owner in enumerate(self._pids):
                if owner == pid:
                    self._pids[row], self._counts[row] = 0, 0

    def _forget_dead(self) -> None:
        # Called under the lock: clear the rows of processes that died, reaped or not.
        for row, owner in enumerate(self._pids):
            if owner and self._counts[row] and not _alive(owner):
                self._pids[row], self._counts[row] = 0, 0

    def _row(self) -> int:
        # Called under the lock: this process's row, claimed on first use and remembered
        # (per pid: a forked child must claim its own), so a request does not scan the table.
        pid = os.getpid()
        if self._mine is not None and self._mine[0] == pid and self._pids[self._mine[1]] == pid:
            return self._mine[1]
        for row, owner in enumerate(self._pids):
            if owner == pid:
                self._mine = (pid, row)
                return row
        for row, owner in enumerate(self._pids):
            if owner == 0 or not _alive(owner):
                self._pids[row], self._counts[row] = pid, 0
                self._mine = (pid, row)
                return row
        raise RuntimeError("in-flight table full")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (dead, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: kill(0) is all we know
    return state not in (b"Z", b"X")


def _admit() -> None:
    # Only routes declared as generations (server.routing) are capped: probes, docs and
    # /v1/models are not.
    if request.method != "POST" or not routing.current().generation:  # not OPTIONS
        return
    config: dict[str, Any] = current_app.config
    table: InFlightTable = current_app.extensions["in_flight"]
    if not table.try_acquire(config["MAX_IN_FLIGHT"]):
        raise APIError(503, "overloaded",
                       f"server is at capacity ({config['MAX_IN_FLIGHT']} requests in "
                       "flight); retry later", retry_after_s=config["RETRY_AFTER_S"])
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
    app.extensions["in_flight"] = InFlightTable()
    app.before_request(_admit)
    app.after_request(_hand_over)
    app.teardown_request(_release_on_error)
