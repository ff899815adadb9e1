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


def test_the_warm_up_hands_its_heap_back_before_ready(make_app, monkeypatch) -> None:
    """The warm-up's batches leave their activations free in the generation thread's arena;
    the worker trims before it reports ready, else an idle worker keeps them (no request
    ends, so the loop's own trim never comes)."""
    import threading

    from server.web import service as service_module

    svc = make_app(MAX_BATCH_SIZE=2, WARMUP_TOKENS=2).extensions["model_service"]
    trims = []
    monkeypatch.setattr(service_module, "release_free_heap",
                        lambda: trims.append((threading.current_thread().name,
                                              svc.ready.is_set())))
    svc.start()
    assert svc.ready.wait(120)
    assert ("generation", False) in trims
