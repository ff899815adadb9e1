"""The capacity finder's bisection and verdicts, against synthetic judges (no Locust, no server)."""

from __future__ import annotations

import math

import pytest

from locustfiles.capacity_search import (
    LATENCY,
    MAX_LEVEL,
    RAM,
    REFUSALS,
    Bisection,
    Limits,
    Plan,
    Window,
    judge,
    parse_resolution,
    search_shape_record,
)


def synthetic_window(level: float, *, ms_per_user: float = 100.0, pss_base_mb: float = 500.0,
                     pss_per_user_mb: float = 10.0, refusals_from: float = math.inf) -> Window:
    """A server whose p95 grows 100 ms per user, PSS 10 MB per user, refusing past a level."""
    p95 = level * ms_per_user
    refused = 50 if level >= refusals_from else 0
    return Window(requests=100, p95_ms=p95, p95_halves_ms=(p95, p95), refusals=refused,
                  peak_pss_mb=pss_base_mb + pss_per_user_mb * level)


def run_search(plan: Plan, limits: Limits, **server) -> Bisection:
    search = Bisection(plan)
    while (level := search.next_level()) is not None:
        search.add(judge(level, synthetic_window(level, **server), limits))
    return search


@pytest.mark.parametrize(("p95_ms", "expected"), [(1_000, 10), (2_350, 23), (150, 1), (4_700, 47)])
def test_search_converges_to_the_synthetic_threshold(p95_ms: float, expected: int) -> None:
    search = run_search(Plan(max_level=256, max_probes=30), Limits(p95_ms=p95_ms))
    found = search.result()

    assert found.level == expected
    assert found.bracket == (expected, expected + 1)
    assert (found.limit, found.stopped_by, found.confidence) == (LATENCY, "converged", "high")
    # doubling then bisection: a handful of probes, not a linear walk
    assert len(search.probes) <= 2 * math.ceil(math.log2(expected + 1)) + 2


def test_levels_double_then_bisect() -> None:
    search = run_search(Plan(max_level=256), Limits(p95_ms=1_000))

    assert [p.level for p in search.probes] == [1, 2, 4, 8, 16, 12, 10, 11]


def test_ram_budget_below_the_latency_point_makes_ram_the_limit() -> None:
    # PSS 500 + 10/user: a 600 MB budget holds to 10 users; latency would hold to 20.
    found = run_search(Plan(), Limits(p95_ms=2_000, ram_mb=600)).result()

    assert (found.level, found.limit) == (10, RAM)


def test_headroom_of_available_memory_is_a_ram_limit() -> None:
    limits = Limits(p95_ms=0, ram_headroom_mb=1_000)
    tight, roomy = Window(requests=10, min_available_mb=900), Window(requests=10,
                                                                     min_available_mb=1_100)

    assert judge(4, tight, limits).failed_limits == [RAM]
    assert judge(4, roomy, limits).passed


def test_refusal_ceiling_limits_the_search() -> None:
    found = run_search(Plan(), Limits(p95_ms=5_000, max_refusals=0.05), refusals_from=7).result()

    assert (found.level, found.limit, found.failed_limits) == (6, REFUSALS, [REFUSALS])


def test_the_most_exceeded_limit_is_the_one_reported() -> None:
    probe = judge(8, Window(requests=10, p95_ms=1_100, refusals=5), Limits(p95_ms=1_000))

    assert probe.failed_limits == [REFUSALS, LATENCY]  # 0.5/0.05 = 10x beats 1.1x


def test_a_window_without_a_completed_request_fails_on_latency() -> None:
    assert judge(64, Window(requests=0), Limits(p95_ms=1_000)).failed_limits == [LATENCY]


def test_unchecked_and_unmeasured_limits_never_fail() -> None:
    probe = judge(4, Window(requests=10, p95_ms=50.0), Limits(p95_ms=100, ram_mb=10))

    assert probe.passed and RAM not in probe.exceeded  # no memory sample: not judged


def test_max_level_passing_reports_the_ceiling() -> None:
    found = run_search(Plan(max_level=12), Limits(p95_ms=100_000)).result()

    assert (found.level, found.limit, found.stopped_by) == (12, MAX_LEVEL, "max level passed")
    assert found.confidence == "low" and found.bracket == (12, None)


def test_min_level_failing_finds_no_capacity() -> None:
    found = run_search(Plan(min_level=2), Limits(p95_ms=50)).result()

    assert (found.level, found.limit, found.stopped_by) == (None, LATENCY, "min level failed")


def test_probe_budget_stops_on_a_wide_bracket_with_low_confidence() -> None:
    search = run_search(Plan(max_probes=6), Limits(p95_ms=2_000))
    found = search.result()

    assert found.stopped_by == "max probes" and len(search.probes) == 6
    assert found.bracket == (16, 32) and found.confidence == "low"


def test_time_budget_stops_before_a_probe_that_would_not_fit() -> None:
    plan = Plan(settle_s=10, measure_s=20, max_time_s=100)
    search = Bisection(plan)
    search.add(judge(1, synthetic_window(1), Limits(p95_ms=1_000)))

    assert search.next_level(elapsed_s=60) == 2
    assert search.next_level(elapsed_s=75) is None and search.stopped_by == "max time"


def test_relative_resolution_stops_within_the_fraction() -> None:
    value, relative = parse_resolution("10%")
    search = run_search(Plan(resolution=value, resolution_relative=relative), Limits(p95_ms=4_700))
    found = search.result()

    assert found.stopped_by == "converged"
    assert found.bracket[1] - found.bracket[0] <= 0.1 * found.level and found.level <= 47


def test_noisy_p95_lowers_confidence() -> None:
    limits = Limits(p95_ms=1_000)
    search = Bisection(Plan())
    search.add(judge(4, Window(requests=10, p95_ms=900, p95_halves_ms=(500, 1000)), limits))
    search.add(judge(5, Window(requests=10, p95_ms=1_200), limits))

    assert search.result().p95_noise == pytest.approx(2 / 3)
    assert search.confidence() == "medium"


def test_records_round_trip_the_numbers() -> None:
    found = run_search(Plan(), Limits(p95_ms=1_000)).result()
    record = found.record()

    assert record["level"] == 10 and record["limit"] == LATENCY
    assert record["bracket"] == [10, 11] and record["bracket_width"] == 1
    assert [p["level"] for p in record["probes"]] == [1, 2, 4, 8, 16, 12, 10, 11]
    assert record["probes"][4]["exceeded"] == {"latency": 1.6, "refusals": 0.0, "errors": 0.0}
    assert search_shape_record(Plan(), Limits())["kind"] == "search"


@pytest.mark.parametrize("text", ["0", "-2", "x", "%", "0%"])
def test_parse_resolution_rejects_bad_values(text: str) -> None:
    with pytest.raises(ValueError, match="level step"):
        parse_resolution(text)
