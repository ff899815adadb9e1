"""Locust's exit code from targets, checked as the run ends (Locust's "Setting the exit code").

Without targets Locust exits 1 when any request failed, deliberate refusals included. With
``--check-p95-ms`` and/or ``--check-fail-ratio`` the exit code says whether the targets held
instead: 0 when they did, 3 when one was missed (each miss logged). ``--check-ignore-refusals``
leaves the server's 429/503 refusals out of the failure ratio. Numbers are Locust's own
totals (all routes; its percentiles are rounded); ``python -m analysis RUN --gate`` is the
finer gate over requests.csv.
"""

from __future__ import annotations

import logging
from typing import Any

from locust.env import Environment

log = logging.getLogger(__name__)
REFUSALS = ("RateLimited(", "Overloaded(")  # locustfiles/failures.py's 429 and 503
MISSED = 3  # not 1, which Locust uses for "some request failed"


def is_refusal(error: Any) -> bool:
    """True for a 429/503 failure: the exception itself, or its text as workers forward it."""
    text = error if isinstance(error, str) else repr(error)
    return text.startswith(REFUSALS)


class ExitCodeCheck:
    """Sets ``environment.process_exit_code`` on ``quitting`` from the targets given."""

    def __init__(self, p95_ms: float | None = None, fail_ratio: float | None = None,
                 ignore_refusals: bool = False) -> None:
        self.p95_ms, self.fail_ratio, self.ignore_refusals = p95_ms, fail_ratio, ignore_refusals

    @classmethod
    def from_options(cls, options: Any) -> ExitCodeCheck:
        """The check the run's ``--check-*`` options ask for (no targets: no check)."""
        return cls(getattr(options, "check_p95_ms", None) or None,
                   getattr(options, "check_fail_ratio", None),
                   bool(getattr(options, "check_ignore_refusals", False)))

    def register(self, environment: Environment) -> None:
        """Check on ``quitting`` (master or local runner), when any target is given."""
        if self.p95_ms is not None or self.fail_ratio is not None:
            environment.events.quitting.add_listener(self._on_quitting)

    def misses(self, environment: Environment) -> list[str]:
        """One sentence per missed target (empty when all held)."""
        total = environment.stats.total
        found = []
        if self.p95_ms is not None and total.num_requests:
            p95 = total.get_response_time_percentile(0.95)
            if p95 > self.p95_ms:
                found.append(f"p95 {p95:.0f} ms > {self.p95_ms:g} ms")
        if self.fail_ratio is not None and total.num_requests:
            failures = total.num_failures
            if self.ignore_refusals:
                failures -= sum(e.occurrences for e in environment.stats.errors.values()
                                if is_refusal(e.error))
            ratio = max(0, failures) / total.num_requests
            if ratio > self.fail_ratio:
                found.append(f"failure ratio {ratio:.3f} > {self.fail_ratio:g}")
        if not total.num_requests:
            found.append("no request was made")
        return found

    def _on_quitting(self, environment: Environment, **kwargs: Any) -> None:
        missed = self.misses(environment)
        for miss in missed:
            log.error("target missed: %s", miss)
        environment.process_exit_code = MISSED if missed else 0
