"""server.engine.memory.WorkerMemorySampler: statm every sample, smaps_rollup only within its
budget."""

from __future__ import annotations

import math
import time
from itertools import pairwise

import pytest

from harness.waiting import wait_until
from server.engine.memory import (
    MemorySample,
    WorkerMemorySampler,
    estimate_from,
    read_process_memory,
    read_rss_mb,
)


class FakeProcess:
    """A clock and /proc readers: a full read costs ``read_s`` of the clock."""

    def __init__(self, read_s: float) -> None:
        self.now = 0.0
        self.read_s = read_s
        self.rss_mb = 1000.0

    def clock(self) -> float:
        return self.now

    def read_full(self) -> MemorySample:
        self.now += self.read_s
        return MemorySample(self.now, self.rss_mb, 100.0, 500.0, self.rss_mb - 100.0, 9000.0)

    def read_rss(self) -> float:
        return self.rss_mb


def run(sampler: WorkerMemorySampler, process: FakeProcess, seconds: float) -> list[MemorySample]:
    samples = []
    while process.now < seconds:
        process.now += sampler.interval_s
        samples.append(sampler.sample_once())
    return samples


@pytest.mark.parametrize(("read_s", "budget", "full_every_s"), [
    (0.026, 0.0025, 10.4),  # gpt2-large's read at the default budget
    (0.026, 0.01, 2.6),
    (0.0002, 0.0025, 0.5),  # a cheap read: every sample is full
])
def test_full_reads_keep_to_the_budget(read_s, budget, full_every_s) -> None:
    process = FakeProcess(read_s)
    sampler = WorkerMemorySampler(0.5, full_budget=budget, clock=process.clock,
                            read_full=process.read_full, read_rss=process.read_rss)

    samples = run(sampler, process, 120.0)

    full = [s.at for s in samples if s.measured]
    gaps = [b - a for a, b in pairwise(full)]
    assert min(gaps) >= full_every_s - 1e-9 and max(gaps) < full_every_s + 0.5 + read_s
    assert sampler.full_read_s / 120.0 <= budget * 1.05  # the share of time spent reading
    assert sampler.samples_taken == len(samples) + 1  # + the one taken at construction


def test_inf_budget_reads_smaps_every_sample() -> None:
    process = FakeProcess(0.026)
    sampler = WorkerMemorySampler(0.5, full_budget=math.inf, clock=process.clock,
                            read_full=process.read_full, read_rss=process.read_rss)

    assert all(s.measured for s in run(sampler, process, 10.0))


def test_between_full_reads_uss_and_pss_follow_rss() -> None:
    process = FakeProcess(0.026)
    sampler = WorkerMemorySampler(0.5, clock=process.clock, read_full=process.read_full,
                            read_rss=process.read_rss)
    process.rss_mb = 1064.0  # the worker allocated 64 MB of activations
    process.now += 0.5

    sample = sampler.sample_once()

    assert not sample.measured
    assert (sample.rss_mb, sample.uss_mb, sample.pss_mb, sample.shared_mb) == (
        1064.0, 164.0, 564.0, 900.0)
    assert sampler.latest is sample


def test_estimate_never_goes_below_zero_or_below_uss() -> None:
    full = MemorySample(0.0, 1000.0, 50.0, 60.0, 950.0, 9000.0)

    low = estimate_from(full, 900.0, 1.0, 9000.0)

    assert (low.uss_mb, low.pss_mb, low.shared_mb) == (0.0, 0.0, 900.0)


def test_estimate_tracks_a_real_allocation() -> None:
    full = read_process_memory()
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident and private

    estimate = estimate_from(full, read_rss_mb(), time.monotonic(), 0.0)
    measured = read_process_memory()

    assert estimate.uss_mb == pytest.approx(measured.uss_mb, abs=8.0)
    assert estimate.pss_mb == pytest.approx(measured.pss_mb, abs=8.0)
    assert estimate.uss_mb - full.uss_mb >= 60
    del block


def test_thread_samples_until_stopped() -> None:
    seen: list[MemorySample] = []
    sampler = WorkerMemorySampler(0.01, on_sample=seen.append)
    sampler.start()
    wait_until(lambda: len(seen) >= 5, "5 samples", timeout_s=300, interval_s=0.01)
    sampler.stop()
    taken = sampler.samples_taken
    time.sleep(0.05)

    assert sampler.samples_taken == taken and len(seen) == taken
    assert sampler.latest.rss_mb > 0 and sampler.full_reads >= 1
    assert sampler.peak_rss_mb(0.0) >= sampler.latest.rss_mb
