"""When the generation thread hands freed C-heap memory back to the kernel."""

from __future__ import annotations

from server.engine.memory import HeapReleaser


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_when_idle_and_every_interval_under_load() -> None:
    clock, trims = Clock(), []
    heap = HeapReleaser(interval_s=5.0, clock=clock, release=lambda: trims.append(clock.now))
    clock.now = 101.0
    assert heap.after_batch(idle=True)  # idle: always
    clock.now = 104.0
    assert not heap.after_batch(idle=False)  # busy, 3 s since the last trim
    clock.now = 106.5
    assert heap.after_batch(idle=False)  # busy, but 5.5 s since the last trim
    clock.now = 107.0
    assert not heap.after_batch(idle=False)
    assert trims == [101.0, 106.5]


def test_busy_from_the_start_waits_one_interval() -> None:
    clock, trims = Clock(), []
    heap = HeapReleaser(interval_s=5.0, clock=clock, release=lambda: trims.append(clock.now))
    for step in range(1, 12):
        clock.now = 100.0 + step
        heap.after_batch(idle=False)
    assert trims == [105.0, 110.0]


def test_really_releases_on_this_libc() -> None:
    """The default release is glibc's malloc_trim (no error, returns quickly)."""
    assert HeapReleaser(interval_s=0.0).after_batch(idle=False)
