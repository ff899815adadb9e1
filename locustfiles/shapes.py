"""Load shapes as stage tables, selected with ``--shape`` (none by default).

A stage holds ``users`` for ``duration_s`` seconds; stages run one after another and the
test stops after the last. This is the shape run.json records and the analysis reads
(``{"kind": "steps", "stages": [{"users", "duration_s"}, ...]}``).

The shape class is ``abstract`` so that Locust does not pick it up by itself when it scans
``locustfiles/``; the init hook instantiates it only when ``--shape steps`` is given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from locust import LoadTestShape


@dataclass(frozen=True)
class Stage:
    """Hold ``users`` users for ``duration_s`` seconds."""

    users: int
    duration_s: float


# The default step sweep: 1 -> 10 (the mission's number) -> 25 -> 50 -> 100 users, each held
# two minutes so a 3 GB model on 2 cores reaches steady state (batches full, queue stable).
STEP_SWEEP = (Stage(1, 120), Stage(10, 120), Stage(25, 120), Stage(50, 120), Stage(100, 120))


def parse_stages(text: str) -> tuple[Stage, ...]:
    """Parse "USERS:SECONDS,USERS:SECONDS,..." (e.g. "1:60,10:120")."""
    stages = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        users, sep, seconds = part.partition(":")
        try:
            stage = Stage(int(users), float(seconds))
        except ValueError:
            stage = None
        if not sep or stage is None or stage.users < 0 or stage.duration_s <= 0:
            raise ValueError(f"bad stage {part!r}: write USERS:SECONDS, e.g. 10:120")
        stages.append(stage)
    if not stages:
        raise ValueError("no stages: write USERS:SECONDS,..., e.g. 1:60,10:120")
    return tuple(stages)


def shape_record(stages: tuple[Stage, ...]) -> dict:
    """The run.json "shape" entry for ``stages``."""
    return {"kind": "steps", "stages": [asdict(s) for s in stages]}


class StepShape(LoadTestShape):
    """Step through ``stages``; each step spawns at ``spawn_rate`` users/s."""

    abstract = True  # instantiated by the init hook for --shape steps, never auto-selected

    def __init__(self, stages: tuple[Stage, ...] = STEP_SWEEP, spawn_rate: float = 10.0) -> None:
        super().__init__()
        self.stages = stages
        self.spawn_rate = spawn_rate

    def tick(self) -> tuple[int, float] | None:
        """(users, spawn rate) for the current stage, None after the last one."""
        elapsed = self.get_run_time()
        for stage in self.stages:
            if elapsed < stage.duration_s:
                return stage.users, self.spawn_rate
            elapsed -= stage.duration_s
        return None
