"""Stage tables for load shapes: parse them, and record them in run.json (no Locust import).

A stage holds ``users`` for ``duration_s`` seconds; stages run one after another and the
test stops after the last. This is the shape run.json records and the analysis reads
(``{"kind": "steps", "stages": [{"users", "duration_s"}, ...]}``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Stage:
    """Hold ``users`` users for ``duration_s`` seconds."""

    users: int
    duration_s: float


# The default step sweep: 1 -> 10 (the mission's number) -> 25 -> 50 -> 100 users, each held
# two minutes so a 3 GB model on 2 cores reaches steady state (batches full, queue stable).
STEP_SWEEP = (Stage(1, 120), Stage(10, 120), Stage(25, 120), Stage(50, 120), Stage(100, 120))


def format_stages(stages: tuple[Stage, ...]) -> str:
    """Write ``stages`` as "USERS:SECONDS,..." (what parse_stages reads)."""
    return ",".join(f"{s.users}:{s.duration_s:g}" for s in stages)


# The --stages default of the suite and of scripts/loadtest.py: the step sweep, as text.
DEFAULT_STAGES = format_stages(STEP_SWEEP)


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
