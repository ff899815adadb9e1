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


_AFTER_FREE = """
import ctypes, sys
from server.engine.memory import pin_mmap_threshold
def private_kib():
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line)
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))
pinned = sys.argv[1] == "pin" and pin_mmap_threshold()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
def touch_and_free(size):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(ctypes.c_void_p(block))
touch_and_free(4 << 20)  # mmapped (above 128 KiB); freed, it raises a dynamic threshold
before = private_kib()
touch_and_free(2 << 20)  # below the raised threshold: from the heap, left resident
print(pinned, private_kib() - before)
"""


def _kept_after_free(mode: str) -> tuple[str, int]:
    """(whether it pinned, KiB still private after the 2 MiB block's free), in a fresh
    interpreter without the caller's MALLOC_* or GLIBC_TUNABLES."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _AFTER_FREE, mode], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"},
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    return out[0], int(out[1])


def test_a_pinned_threshold_hands_freed_blocks_back_at_once() -> None:
    """glibc raises its mmap threshold to each mmapped block freed, so a later 2 MiB block
    comes from the heap and stays resident after free (the control); pinned at 1 MiB it is
    mmapped and unmapped by free."""
    import pytest

    if _glibc_missing():
        pytest.skip("not glibc")
    assert _kept_after_free("dynamic") == ("False", pytest.approx(2048, abs=300))
    pinned, kept_kib = _kept_after_free("pin")
    assert pinned == "True" and kept_kib < 300


def _glibc_missing() -> bool:
    import platform

    return platform.libc_ver()[0] != "glibc"


def test_a_users_own_threshold_is_left_alone(monkeypatch) -> None:
    from server.engine import memory

    calls = []
    monkeypatch.setattr(memory, "_LIBC", type("Libc", (), {
        "mallopt": staticmethod(lambda *args: calls.append(args) or 1)})())
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not memory.pin_mmap_threshold()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert not memory.pin_mmap_threshold()
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert memory.pin_mmap_threshold() and calls == [(memory.M_MMAP_THRESHOLD, 1 << 20)]


def test_a_worker_pins_the_threshold_before_its_warm_up(make_app, monkeypatch) -> None:
    from server.web import service as service_module

    svc = make_app(WARMUP_TOKENS=2).extensions["model_service"]
    pins = []
    monkeypatch.setattr(service_module, "pin_mmap_threshold",
                        lambda: pins.append(svc.ready.is_set()) or True)
    svc.start()
    assert svc.ready.wait(120)
    assert pins == [False]
