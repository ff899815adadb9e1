"""loadgen.csv: how busy the load generator itself was, so a run can show it did not skew
what it measured.

Every Locust process (the local runner, or the master and each worker) runs a greenlet that
asks gevent to wake it every ``interval_s`` and records how late it woke: the *event-loop
lag*. Anything that blocks the loop (a slow read, CPU-heavy parsing, a starved CPU) delays
every simulated user by as much, and lands in response times, TTFT and chunk gaps. The same
tick reads the process's own CPU time (psutil). Columns (one row per tick per process):

=============  =====================================================================
timestamp      tick time, epoch seconds
elapsed_s      seconds since this process's monitor started
pid            Locust process id
role           local | master | worker
loop_lag_ms    how late the timer fired, ms (0 = on time)
cpu_s          this process's CPU time so far (user + system), seconds
cpu_percent    this process's CPU over the last ~1 s, % of one core
cores          CPUs this process may run on (its affinity): "the box" for CPU shares
=============  =====================================================================

Workers forward their rows to the master in a custom message (``MESSAGE``) about once a
second; only the master (or the local runner) writes the file. Ticks taken before the
test starts and after it stops are recorded too: the analysis picks its window.
"""

from __future__ import annotations

import csv
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import gevent
import psutil
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

COLUMNS = ("timestamp", "elapsed_s", "pid", "role", "loop_lag_ms", "cpu_s", "cpu_percent",
           "cores")
MESSAGE = "gpt_lab_loadgen_rows"
_CPU_WINDOW_S = 1.0  # cpu_percent is taken over this much time: CPU ticks are 10 ms


def role_of(environment: Environment) -> str:
    """local, master or worker: what this Locust process does."""
    if isinstance(environment.runner, WorkerRunner):
        return "worker"
    return "master" if isinstance(environment.runner, MasterRunner) else "local"


class LoopMonitor:
    """Tick every ``interval_s``: loop lag and CPU of this process, into loadgen.csv."""

    def __init__(self, path: Path | str | None, *, interval_s: float = 0.1,
                 forward_interval_s: float = 1.0) -> None:
        self.path = Path(path) if path else None
        self.interval_s = interval_s
        self.forward_interval_s = forward_interval_s
        self.rows_written = 0
        self._role = "local"
        self._process: psutil.Process | None = None
        self._cores = 0
        self._cpu_history: deque[tuple[float, float]] = deque()
        self._outbox: list[list[Any]] = []
        self._runner: WorkerRunner | None = None
        self._file = None
        self._writer = None
        self._greenlets: list[gevent.Greenlet] = []

    def register(self, environment: Environment) -> None:
        """Start ticking in this process; the master/local process opens loadgen.csv."""
        self._role = role_of(environment)
        self._process = psutil.Process(os.getpid())  # here: --processes forks before init
        self._cores = len(os.sched_getaffinity(0))
        if isinstance(environment.runner, WorkerRunner):
            self._runner = environment.runner
            environment.events.test_stop.add_listener(self.forward)
            self._greenlets.append(gevent.spawn(self._forward_loop))
        else:
            self._open()
            if isinstance(environment.runner, MasterRunner):
                environment.runner.register_message(MESSAGE, self._on_rows_message)
        self._greenlets.append(gevent.spawn(self._tick_loop))
        environment.events.quitting.add_listener(self._on_quitting)

    def tick(self, lag_s: float, started: float) -> list[Any]:
        """Record one tick that fired ``lag_s`` late; return its row."""
        now, mono = time.time(), time.monotonic()
        times = self._process.cpu_times()
        cpu_s = times.user + times.system
        self._cpu_history.append((mono, cpu_s))
        while mono - self._cpu_history[0][0] > _CPU_WINDOW_S and len(self._cpu_history) > 2:
            self._cpu_history.popleft()
        first_mono, first_cpu = self._cpu_history[0]
        span = mono - first_mono
        cpu_percent = 100.0 * (cpu_s - first_cpu) / span if span > 0 else 0.0
        row = [round(now, 3), round(mono - started, 3), self._process.pid, self._role,
               round(max(0.0, lag_s) * 1000.0, 3), round(cpu_s, 3), round(cpu_percent, 1),
               self._cores]
        if self._runner is not None:
            self._outbox.append(row)
        else:
            self.write_rows([row])
        return row

    def write_rows(self, rows: list[list[Any]]) -> None:
        """Append rows to loadgen.csv (master/local); flushed now and then, not per tick."""
        if self._writer is None:
            return
        self._writer.writerows(rows)
        self.rows_written += len(rows)

    def forward(self, **kwargs: Any) -> None:
        """Send the buffered rows to the master now (worker side)."""
        if self._outbox and self._runner is not None:
            rows, self._outbox = self._outbox, []
            self._runner.send_message(MESSAGE, rows)

    def _open(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    def _tick_loop(self) -> None:
        started = time.monotonic()
        flushed = started
        while True:
            due = time.monotonic() + self.interval_s
            gevent.sleep(self.interval_s)
            self.tick(time.monotonic() - due, started)
            if self._file is not None and time.monotonic() - flushed >= 1.0:
                self._file.flush()  # rows survive a crash; once a second keeps ticks cheap
                flushed = time.monotonic()

    def _forward_loop(self) -> None:
        while True:
            gevent.sleep(self.forward_interval_s)
            self.forward()

    def _on_rows_message(self, environment: Environment, msg: Any, **kwargs: Any) -> None:
        self.write_rows(msg.data)

    def _on_quitting(self, **kwargs: Any) -> None:
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self.forward()
        if self._file is not None and not self._file.closed:
            self._file.close()
