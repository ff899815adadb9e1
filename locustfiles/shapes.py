"""Load shapes as stage tables, selected with ``--shape`` (none by default).

The stage table itself (``Stage``, ``parse_stages``, ``STEP_SWEEP``) lives in stages.py so
the run script can read it without importing Locust. The shape class is ``abstract`` so
that Locust does not pick it up by itself when it scans ``locustfiles/``; the init hook
instantiates it only when ``--shape steps`` is given.
"""

from __future__ import annotations

from locust import LoadTestShape

from locustfiles.stages import STEP_SWEEP, Stage


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
