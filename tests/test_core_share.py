"""server.engine.core_share across real fork: busy workers split the cores, an idle one frees its
share, a fixed TORCH_THREADS does not share, and a dead worker's slot is released."""

from __future__ import annotations

import multiprocessing

from server.engine.core_share import CoreShare

_fork = multiprocessing.get_context("fork")


def _mark_busy(share: CoreShare, ready, release) -> None:
    share.threads(busy=True)
    ready.set()
    release.wait(300)
    share.threads(busy=False)


def test_busy_workers_split_the_cores_and_idle_ones_give_them_back() -> None:
    share = CoreShare(cores=4)
    assert share.threads(busy=True) == 4  # alone: every core
    ready, release = _fork.Event(), _fork.Event()
    other = _fork.Process(target=_mark_busy, args=(share, ready, release))
    other.start()
    try:
        assert ready.wait(300)
        assert share.busy_workers() == 2 and share.threads(busy=True) == 2
    finally:
        release.set()
        other.join(300)
    assert share.threads(busy=True) == 4
    share.threads(busy=False)
    assert share.busy_workers() == 0


def test_a_dead_busy_worker_is_released() -> None:
    share = CoreShare(cores=2)
    ready, never = _fork.Event(), _fork.Event()
    other = _fork.Process(target=_mark_busy, args=(share, ready, never))
    other.start()
    assert ready.wait(300)
    other.kill()
    other.join(300)
    assert share.threads(busy=True) == 1  # the dead one still counts...
    share.release_dead(other.pid)  # ...until the master frees its slot (child_exit)
    assert share.threads(busy=True) == 2


def test_fixed_threads_do_not_share() -> None:
    share = CoreShare(cores=8, fixed_threads=3)
    assert not share.sharing and share.threads(busy=True) == 3
