"""Open-loop arrival schedules: when each request is due and which kind it is (no Locust
import: tests and the run script read it too).

A schedule is a seeded sequence of arrivals from a common start time ``t0``. Arrival ``k``
is due ``offset_s`` seconds after ``t0``: arrival 0 at ``t0``, then one gap after another.
The gaps, for ``rate_rps`` requests per second:

=========  ===============================================================================
constant   every gap is ``1 / rate_rps``
poisson    exponential gaps of mean ``1 / rate_rps`` (a Poisson process)
gamma      gamma gaps of mean ``1 / rate_rps`` and shape ``1 / burstiness``: the squared
           coefficient of variation of the gaps is ``burstiness`` (1 = Poisson, above 1
           burstier, below 1 smoother). vLLM's ``--burstiness`` is the inverse (its shape).
=========  ===============================================================================

Each arrival's kind (a user class) is drawn by the classes' weights from a second seeded
stream, so the times do not depend on the mix. Locust process ``part`` of ``parts`` takes
arrivals ``part, part + parts, ...`` (``share``): together the processes send the whole
schedule, each arrival once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

PROCESSES = ("constant", "poisson", "gamma")


@dataclass(frozen=True)
class ArrivalSettings:
    """What shapes a schedule: the process, its rate, burstiness (gamma) and seed."""

    process: str
    rate_rps: float
    burstiness: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.process not in PROCESSES:
            raise ValueError(f"arrival process {self.process!r}: use one of {PROCESSES}")
        if not self.rate_rps > 0:
            raise ValueError(f"arrival rate {self.rate_rps!r}: give requests/s above 0")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness {self.burstiness!r}: give a number above 0")

    def record(self) -> dict[str, object]:
        """The run.json ``arrivals`` facts of these settings."""
        return {"process": self.process, "rate_rps": self.rate_rps,
                "burstiness": self.burstiness if self.process == "gamma" else None,
                "seed": self.seed}


@dataclass(frozen=True)
class Arrival:
    """One scheduled request: its index in the whole schedule, when it is due, its kind."""

    index: int
    offset_s: float  # seconds after the schedule's start t0
    kind: str


def gaps(settings: ArrivalSettings) -> Iterator[float]:
    """The seconds between consecutive arrivals, forever (seeded)."""
    rng = random.Random(settings.seed)
    mean_s = 1.0 / settings.rate_rps
    while True:
        if settings.process == "constant":
            yield mean_s
        elif settings.process == "poisson":
            yield rng.expovariate(settings.rate_rps)
        else:
            shape = 1.0 / settings.burstiness
            yield rng.gammavariate(shape, mean_s / shape)


def schedule(settings: ArrivalSettings, kinds: Sequence[tuple[str, float]]) -> Iterator[Arrival]:
    """Every arrival of the run, in order: (index, offset, kind drawn by ``kinds``' weights)."""
    names = [name for name, _ in kinds]
    weights = [weight for _, weight in kinds]
    if not names or not sum(weights) > 0:
        raise ValueError("an arrival schedule needs at least one user class of weight > 0")
    picker = random.Random(f"kinds-{settings.seed}")
    offset_s = 0.0
    for index, gap_s in enumerate(gaps(settings)):
        yield Arrival(index, offset_s, picker.choices(names, weights)[0])
        offset_s += gap_s


def share(arrivals: Iterator[Arrival], part: int, parts: int) -> Iterator[Arrival]:
    """The arrivals Locust process ``part`` of ``parts`` sends: ``part``, ``part + parts``..."""
    if not 0 <= part < parts:
        raise ValueError(f"process {part} of {parts}: give 0 <= part < parts")
    return islice(arrivals, part, None, parts)


class DueCounter:
    """How many arrivals of the whole schedule are due in its first ``elapsed_s`` seconds
    (asked with growing ``elapsed_s``: it walks the schedule once)."""

    def __init__(self, settings: ArrivalSettings, kinds: Sequence[tuple[str, float]]) -> None:
        self._arrivals = schedule(settings, kinds)
        self._next = next(self._arrivals)
        self.count = 0

    def due(self, elapsed_s: float) -> int:
        """Arrivals due before ``elapsed_s`` (never fewer than the last answer)."""
        while self._next.offset_s < elapsed_s:
            self.count += 1
            self._next = next(self._arrivals)
        return self.count


@dataclass(frozen=True)
class Ticket:
    """An arrival claimed by a free user: when it was due and when the user took it."""

    index: int
    kind: str
    intended_ts: float  # epoch seconds: t0 + the arrival's offset
    claimed_ts: float  # epoch seconds: when a free user took it (after intended_ts = late)

    def context(self) -> dict[str, float | int]:
        """The request-context fields requests.csv records for this arrival."""
        late_ms = (self.claimed_ts - self.intended_ts) * 1000.0
        return {"arrival_index": self.index, "intended_ts": self.intended_ts,
                "pool_wait_ms": round(max(0.0, late_ms), 3)}
