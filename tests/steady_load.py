"""Steady concurrent load for the resilience tests: threads that post until told to stop."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import requests

from harness.waiting import CAP_S, wait_until


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it: a status, or the connection error that ended it."""

    request_id: str
    started_at: float  # time.time() just before sending
    ended_at: float  # time.time() when the answer or the error came back
    status: int | None  # None: no HTTP answer
    error: str | None  # exception class name when status is None
    worker_pid: int | None  # X-Worker-PID of the answer


def post_once(url: str, body: dict, headers: dict[str, str], timeout_s: float = 120,
              session: requests.Session | None = None) -> Outcome:
    """POST ``body`` with a fresh X-Request-ID; a transport error becomes ``error``."""
    request_id = uuid.uuid4().hex
    started = time.time()
    send = session.post if session is not None else requests.post
    try:
        response = send(url, json=body, headers={**headers, "X-Request-ID": request_id},
                        timeout=timeout_s)
    except requests.RequestException as error:
        return Outcome(request_id, started, time.time(), None, type(error).__name__, None)
    pid = response.headers.get("X-Worker-PID")
    return Outcome(request_id, started, time.time(), response.status_code, None,
                   int(pid) if pid else None)


class SteadyLoad:
    """``threads`` clients, each posting ``body_for(i)`` back to back (``pause_s`` apart).

    Bounded twice: at most ``max_requests`` in all and ``max_s`` seconds; ``stop()`` ends it
    sooner. Each request opens a new connection (``keep_alive=False``), so a killed worker
    can only take the requests it was holding, not an idle kept-alive socket.
    """

    def __init__(self, url: str, headers: dict[str, str], body_for: Callable[[int], dict],
                 threads: int, max_requests: int, max_s: float, keep_alive: bool = False,
                 timeout_s: float = 120, pause_s: float = 0.0) -> None:
        self.url, self.headers, self.body_for = url, headers, body_for
        self.max_requests, self.max_s, self.keep_alive = max_requests, max_s, keep_alive
        self.timeout_s, self.pause_s = timeout_s, pause_s
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"load-{i}")
                         for i in range(threads)]
        self._ends_at = 0.0

    def __enter__(self) -> SteadyLoad:
        # The load's own length (max_s), not a wait for anything: the threads stop sending.
        self._ends_at = time.monotonic() + self.max_s
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_index(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.max_requests \
                    or time.monotonic() > self._ends_at:
                return None
            self._sent += 1
            return self._sent - 1

    def _run(self) -> None:
        session = requests.Session() if self.keep_alive else None
        try:
            while (index := self._next_index()) is not None:
                outcome = post_once(self.url, self.body_for(index), self.headers,
                                    self.timeout_s, session)
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(self.pause_s)
        finally:
            if session is not None:
                session.close()

    @property
    def done(self) -> int:
        """Requests that came back so far (answered or failed)."""
        with self._lock:
            return len(self.outcomes)

    def alive(self) -> bool:
        """True while a client thread still sends or waits for an answer."""
        return any(t.is_alive() for t in self._threads)

    def wait_for(self, done: int, timeout_s: float = CAP_S) -> float:
        """Block until ``done`` requests came back; fail if the load ended first, or when no
        request came back for ``STALL_S`` (or ``timeout_s`` passed); return the seconds."""
        return wait_until(lambda: self.done >= done, f"{done} requests back",
                          timeout_s=timeout_s, interval_s=0.05, alive=self.alive,
                          progress=lambda: self.done,
                          detail=lambda: f"{self.done} of {done} back")

    def stop(self, timeout_s: float = 130) -> list[Outcome]:
        """Send no more; wait for the requests in flight; return every outcome."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        assert not any(t.is_alive() for t in self._threads), "a client thread is stuck"
        with self._lock:
            return list(self.outcomes)
