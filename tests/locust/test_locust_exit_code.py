"""--check-* targets set Locust's exit code as the run ends (synthetic request events)."""

from __future__ import annotations

from locust.env import Environment

from locustfiles.exit_code import MISSED, ExitCodeCheck
from locustfiles.failures import RateLimited


def fire(environment: Environment, response_time_ms: float, exception=None, n: int = 1) -> None:
    for _ in range(n):
        environment.events.request.fire(
            request_type="POST", name="/generate-text", response_time=response_time_ms,
            response_length=10, exception=exception, context={})


def exit_code(environment: Environment, check: ExitCodeCheck) -> int | None:
    check.register(environment)
    environment.events.quitting.fire(environment=environment)
    return environment.process_exit_code


def test_targets_met_exit_0_even_with_a_failure(environment: Environment) -> None:
    fire(environment, 100, n=99)
    fire(environment, 100, RateLimited("HTTP 429 rate limited"))

    assert exit_code(environment, ExitCodeCheck(p95_ms=200, fail_ratio=0.05)) == 0


def test_a_slow_p95_exits_3(environment: Environment) -> None:
    fire(environment, 100, n=90)
    fire(environment, 900, n=10)

    assert exit_code(environment, ExitCodeCheck(p95_ms=500)) == MISSED == 3


def test_refusals_count_unless_ignored(environment: Environment) -> None:
    fire(environment, 100, n=80)
    fire(environment, 5, RateLimited("HTTP 429 rate limited"), n=20)
    strict, lenient = ExitCodeCheck(fail_ratio=0.01), ExitCodeCheck(fail_ratio=0.01,
                                                                    ignore_refusals=True)

    assert strict.misses(environment) == ["failure ratio 0.200 > 0.01"]
    assert lenient.misses(environment) == []


def test_no_requests_is_a_miss_and_no_targets_no_check(environment: Environment) -> None:
    assert ExitCodeCheck(p95_ms=500).misses(environment) == ["no request was made"]
    assert exit_code(environment, ExitCodeCheck()) is None  # Locust decides, as usual
