"""Open-loop load: requests fire on one arrival schedule shared by every Locust process.

``--arrival constant|poisson|gamma --rate R [--burstiness B] [--arrival-seed N]`` (schedule
in arrival_schedule.py). Without ``--arrival`` the closed-loop users run unchanged.

* **Schedule start.** The master (or the only process) fixes ``t0`` once spawning completes
  (plus ``START_LEAD_S``) and sends each worker ``t0`` and its part ``p`` of ``n``: worker
  ``p`` sends arrivals ``p, p + n, ...``.
* **Pool.** ``-u`` users of one class, ``ArrivalUser``, form the pool: a cap on requests in
  flight. A free user claims its process's next arrival, sleeps until it is due (Locust's
  ``wait``, so a stopping run ends the sleep) and sends it as the arrival's kind, through an
  instance of that user class (the mix's ``PromptUser``, ``QAUser`` ...; their weights
  drew the kind). When every user is busy, the next arrival waits for the first one free:
  it goes out late, by ``pool_wait_ms``, and its latency from the intended send time still
  counts the wait (no coordinated omission). Size ``-u`` above rate x the longest latency.
* **Records.** Each request's context carries its arrival (requests.csv: ``arrival_index``,
  ``intended_ts``, ``pool_wait_ms``; the recorder adds ``dispatch_lag_ms`` and
  ``intended_latency_ms``). run.json gets ``arrivals``: the settings, the kinds' weights,
  ``start_ts``, ``stop_ts`` and ``scheduled`` (arrivals due before the stop).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from gevent.event import Event
from locust import HttpUser, User, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from harness.run_folder import update_record
from locustfiles.arrival_schedule import (
    Arrival,
    ArrivalSettings,
    DueCounter,
    Ticket,
    schedule,
    share,
)

START_MESSAGE = "gpt_lab_arrivals_start"
START_LEAD_S = 0.5  # t0 lies this far after spawning completes: the workers hear of it first


def settings_from_options(options: Any) -> ArrivalSettings | None:
    """The run's arrival settings, or None for closed-loop users (``--arrival closed``)."""
    process = getattr(options, "arrival", "closed") or "closed"
    if process == "closed":
        return None
    return ArrivalSettings(process, float(options.rate), float(options.burstiness),
                           int(options.arrival_seed))


class Pacer:
    """This process's share of the schedule, handed out in order to users as they free up."""

    def __init__(self, settings: ArrivalSettings, kinds: list[tuple[str, float]]) -> None:
        self.settings = settings
        self.kinds = kinds
        self.t0 = 0.0
        self.claimed = 0
        self._started = Event()
        self._mine: Iterator[Arrival] = iter(())

    def start(self, t0: float, part: int, parts: int) -> None:
        """Begin the schedule at epoch ``t0``; this process sends part ``part`` of ``parts``."""
        self.t0, self.claimed = t0, 0
        self._mine = share(schedule(self.settings, self.kinds), part, parts)
        self._started.set()

    def reset(self) -> None:
        """A new test: users wait for the next ``start``."""
        self._started.clear()

    def claim(self) -> Ticket:
        """The next arrival of this process (waits for the schedule's start)."""
        self._started.wait()
        arrival = next(self._mine)
        self.claimed += 1
        return Ticket(arrival.index, arrival.kind, self.t0 + arrival.offset_s, time.time())


class ArrivalUser(HttpUser):
    """A slot of the open-loop pool: sends each arrival it claims as that arrival's kind.

    Abstract: ``arrival_user_class`` makes the run's concrete class with its pacer and kinds.
    """

    abstract = True
    pacer: ClassVar[Pacer]
    kinds: ClassVar[dict[str, type[User]]]

    def on_start(self) -> None:
        """One sender per kind (each does its own set-up), then wait for the first arrival."""
        self.ticket: Ticket | None = None
        self.senders: dict[str, User] = {}
        for name, cls in self.kinds.items():
            cls.host = self.host  # as Locust's runner does for the classes it spawns
            self.senders[name] = cls(self.environment)
            self.senders[name].on_start()
        self.wait()

    def wait_time(self) -> float:
        """Claim the next arrival; sleep until it is due (0 when it is late)."""
        self.ticket = self.pacer.claim()
        return max(0.0, self.ticket.intended_ts - time.time())

    @task
    def send_arrival(self) -> None:
        """Send the claimed arrival through its kind's one task."""
        sender = self.senders[self.ticket.kind]
        sender.arrival = self.ticket
        try:
            sender.tasks[0](sender)
        finally:
            sender.arrival = None


def arrival_user_class(pacer: Pacer, kinds: list[type[User]]) -> type[ArrivalUser]:
    """The run's pool class (named ArrivalUser in every process: the master spawns by name)."""
    return type("ArrivalUser", (ArrivalUser,), {
        "abstract": False, "pacer": pacer, "kinds": {cls.__name__: cls for cls in kinds},
        "__module__": __name__, "__doc__": ArrivalUser.__doc__})


class ArrivalHook:
    """Swap the mix's users for the pool; start the schedule; record it in run.json."""

    def __init__(self, settings: ArrivalSettings, run_dir: Path | None = None) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.pacer: Pacer | None = None
        self.environment: Environment | None = None
        self.t0: float | None = None
        self.due: DueCounter | None = None
        self.stop_ts: float | None = None

    def register(self, environment: Environment) -> None:
        """Replace ``environment.user_classes`` by the pool class; listen for start and stop."""
        classes = [cls for cls in environment.user_classes if cls.weight > 0]
        kinds = [(cls.__name__, float(cls.weight)) for cls in classes]
        self.pacer = Pacer(self.settings, kinds)
        self.environment = environment
        environment.user_classes[:] = [arrival_user_class(self.pacer, classes)]
        environment.events.test_start.add_listener(self._on_test_start)
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            runner.register_message(START_MESSAGE, self._on_start_message)
            return
        environment.events.spawning_complete.add_listener(self._on_spawned)
        environment.events.test_stopping.add_listener(self._on_test_stopping)
        environment.events.test_stop.add_listener(self._on_test_stop)

    def facts(self, stop_ts: float | None = None) -> dict[str, Any]:
        """run.json ``arrivals``: settings, kinds, start and, once stopped, the due count."""
        facts: dict[str, Any] = {**self.settings.record(),
                                 "kinds": dict(self.pacer.kinds), "start_ts": self.t0}
        if stop_ts is not None and self.t0 is not None:
            facts |= {"stop_ts": round(stop_ts, 3),
                      "scheduled": self.due.due(max(0.0, stop_ts - self.t0))}
        return facts

    def scheduled_by(self, now: float) -> int:
        """Arrivals of the whole schedule due before epoch ``now`` (0 before it starts)."""
        if self.t0 is None:
            return 0
        return self.due.due(max(0.0, now - self.t0))

    def _on_test_start(self, **kwargs: Any) -> None:
        self.pacer.reset()
        self.t0 = self.stop_ts = None

    def _on_spawned(self, **kwargs: Any) -> None:
        if self.t0 is not None:
            return  # the web UI changed the user count: the schedule runs on
        self.t0 = round(time.time() + START_LEAD_S, 6)
        self.due = DueCounter(self.settings, self.pacer.kinds)
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            workers = runner.clients.ready + runner.clients.spawning + runner.clients.running
            workers.sort(key=lambda w: runner.get_worker_index(w.id))
            for part, worker in enumerate(workers):
                runner.send_message(START_MESSAGE, {"t0": self.t0, "part": part,
                                                    "parts": len(workers)}, client_id=worker.id)
        else:
            self.pacer.start(self.t0, 0, 1)
        if self.run_dir is not None:
            update_record(self.run_dir, arrivals=self.facts())

    def _on_start_message(self, environment: Environment, msg: Any, **kwargs: Any) -> None:
        self.pacer.start(msg.data["t0"], msg.data["part"], msg.data["parts"])

    def _on_test_stopping(self, **kwargs: Any) -> None:
        self.stop_ts = time.time()  # no arrival is sent after this; in-flight ones finish

    def _on_test_stop(self, **kwargs: Any) -> None:
        if self.run_dir is not None and self.t0 is not None:
            update_record(self.run_dir, arrivals=self.facts(self.stop_ts or time.time()))
