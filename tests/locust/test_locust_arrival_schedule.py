"""Open-loop schedules: the gaps follow their distribution (a Kolmogorov-Smirnov test against
the exponential, gamma's squared coefficient of variation), weights draw the kinds, and the
Locust processes' shares partition the schedule."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from itertools import islice

import pytest

from locustfiles.arrival_schedule import (
    ArrivalSettings,
    DueCounter,
    Ticket,
    gaps,
    schedule,
    share,
)

KINDS = [("PromptUser", 3.0), ("SummarizeUser", 1.0), ("QAUser", 2.0)]


def ks_exponential(samples: list[float], rate: float) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic D of ``samples`` against Exp(rate), and its asymptotic
    p-value (Kolmogorov's series with Stephens' small-sample correction)."""
    x = sorted(samples)
    n = len(x)
    cdf = [1.0 - math.exp(-rate * v) for v in x]
    d = max(max((i + 1) / n - c, c - i / n) for i, c in enumerate(cdf))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
    return d, min(1.0, max(0.0, p))


def first_gaps(settings: ArrivalSettings, n: int) -> list[float]:
    return list(islice(gaps(settings), n))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_poisson_gaps_pass_ks_against_the_exponential(seed: int) -> None:
    rate = 0.5
    d, p = ks_exponential(first_gaps(ArrivalSettings("poisson", rate, seed=seed), 4000), rate)
    assert p > 0.01, (d, p)


@pytest.mark.parametrize("settings", [ArrivalSettings("gamma", 0.5, burstiness=4.0),
                                      ArrivalSettings("gamma", 0.5, burstiness=0.25),
                                      ArrivalSettings("constant", 0.5)])
def test_the_ks_test_rejects_gaps_that_are_not_exponential(settings) -> None:
    # The check above can fail: non-Poisson gaps of the same mean are rejected.
    d, p = ks_exponential(first_gaps(settings, 4000), 0.5)
    assert p < 0.01, (settings, d, p)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_gaps_have_the_mean_and_squared_cv_asked_for(burstiness: float) -> None:
    sample = first_gaps(ArrivalSettings("gamma", 2.0, burstiness=burstiness, seed=3), 20000)
    mean = statistics.fmean(sample)
    cv2 = statistics.pvariance(sample) / mean**2
    assert mean == pytest.approx(0.5, rel=0.05)
    assert cv2 == pytest.approx(burstiness, rel=0.1)


def test_constant_gaps_are_exact() -> None:
    assert first_gaps(ArrivalSettings("constant", 4.0), 5) == [0.25] * 5


def test_a_seed_gives_one_schedule_and_another_seed_another() -> None:
    a = list(islice(schedule(ArrivalSettings("poisson", 1.0, seed=5), KINDS), 50))
    assert a == list(islice(schedule(ArrivalSettings("poisson", 1.0, seed=5), KINDS), 50))
    assert a != list(islice(schedule(ArrivalSettings("poisson", 1.0, seed=6), KINDS), 50))
    assert a[0].offset_s == 0.0 and [x.index for x in a] == list(range(50))


def test_weights_draw_the_kinds_and_leave_the_times_alone() -> None:
    settings = ArrivalSettings("poisson", 1.0, seed=2)
    arrivals = list(islice(schedule(settings, KINDS), 12000))
    shares = Counter(a.kind for a in arrivals)
    for kind, weight in KINDS:
        assert shares[kind] / len(arrivals) == pytest.approx(weight / 6.0, abs=0.015)
    other_mix = list(islice(schedule(settings, [("QAUser", 1.0)]), 12000))
    assert [a.offset_s for a in other_mix] == [a.offset_s for a in arrivals]


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_the_processes_shares_partition_the_schedule(parts: int) -> None:
    settings = ArrivalSettings("gamma", 3.0, burstiness=2.0, seed=11)
    whole = list(islice(schedule(settings, KINDS), 600))
    shares = [list(islice(share(schedule(settings, KINDS), part, parts), 600 // parts))
              for part in range(parts)]
    for part, mine in enumerate(shares):
        assert all(a.index % parts == part for a in mine)
    sent = [a for mine in shares for a in mine]
    assert len(sent) == len({a.index for a in sent}) == 600  # no arrival twice
    assert sorted(sent, key=lambda a: a.index) == whole  # same times and kinds as the whole


def test_due_counter_counts_arrivals_before_a_time() -> None:
    counter = DueCounter(ArrivalSettings("constant", 2.0), KINDS)
    assert [counter.due(t) for t in (0.0, 0.01, 1.0, 1.01, 10.0)] == [0, 1, 2, 3, 20]


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"process": "uniform", "rate_rps": 1.0}, "constant"),
    ({"process": "poisson", "rate_rps": 0.0}, "above 0"),
    ({"process": "gamma", "rate_rps": 1.0, "burstiness": -1.0}, "above 0"),
])
def test_bad_settings_say_what_is_valid(kwargs, word) -> None:
    with pytest.raises(ValueError, match=word):
        ArrivalSettings(**kwargs)


def test_a_ticket_claimed_late_records_the_pool_wait() -> None:
    assert Ticket(4, "QAUser", 100.0, 100.25).context() == {
        "arrival_index": 4, "intended_ts": 100.0, "pool_wait_ms": 250.0}
    assert Ticket(4, "QAUser", 100.0, 99.0).context()["pool_wait_ms"] == 0.0
