"""server.engine.shared_rows across real fork: a process SIGKILLed while it holds the rows' lock
wedges neither the other processes nor the master's clean-up, which never waits on a live
holder either; the threads of one process exclude each other too.

Each structure built on the rows (the in-flight cap, the core share) is tried the same way.
Operations that could hang run in a daemon thread joined with a bound, so a wedged lock
fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from server.engine.core_share import CoreShare
from server.engine.shared_rows import FORGET_ATTEMPTS, FORGET_INTERVAL_S, SharedRows
from server.web.admission import InFlightTable

BOUND_S = 10.0  # far above what these operations take; a wedged lock never returns


def _within(bound_s: float, action: Callable[[], object]) -> object:
    """``action()``'s result, failing if it has not returned within ``bound_s``."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(action()), daemon=True)
    worker.start()
    worker.join(bound_s)
    assert not worker.is_alive(), f"still blocked after {bound_s} s"
    return result[0]


def _fork_holding(rows: SharedRows) -> int:
    """A forked child that takes the rows' lock and keeps it; returns once it holds it."""
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        with rows.locked():
            os.write(ready_w, b"1")
            time.sleep(600)
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return child


def _in_flight_survives(table: InFlightTable, dead: int) -> None:
    assert table.forget(dead)  # the master's clean-up got the lock
    assert table.try_acquire(cap=1)  # this process claims its row: under the lock
    assert not table.try_acquire(cap=1) and table.total() == 1


def _core_share_survives(share: CoreShare, dead: int) -> None:
    assert share.release_dead(dead)
    assert share.threads(busy=True) == share.cores  # claims its row: under the lock
    assert share.busy_workers() == 1


STRUCTURES = {
    "in_flight": (lambda: InFlightTable(rows=4), _in_flight_survives),
    "core_share": (lambda: CoreShare(cores=2), _core_share_survives),
}


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_holder_killed_with_the_lock_wedges_nothing(name: str, reaped: bool) -> None:
    make, survives = STRUCTURES[name]
    structure = make()
    holder = _fork_holding(structure.rows)
    try:
        os.kill(holder, signal.SIGKILL)
        if reaped:
            os.waitpid(holder, 0)
        else:  # the kernel drops the lock at exit, before the parent reaps the zombie
            time.sleep(0.2)
        _within(BOUND_S, lambda: survives(structure, holder))
    finally:
        if not reaped:
            os.waitpid(holder, 0)


@pytest.mark.parametrize("name", STRUCTURES)
def test_the_masters_clean_up_never_waits_on_a_live_holder(name: str) -> None:
    structure = STRUCTURES[name][0]()
    holder = _fork_holding(structure.rows)
    try:
        started = time.monotonic()
        forget = structure.forget if name == "in_flight" else structure.release_dead
        assert _within(BOUND_S, lambda: forget(12345)) is False  # gave up: lock busy
        assert time.monotonic() - started < 1.0 + FORGET_ATTEMPTS * FORGET_INTERVAL_S
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    assert forget(12345) is True  # free again once the holder is gone


def test_threads_of_one_process_exclude_each_other() -> None:
    """Record locks do not exclude the threads of one process: the paired RLock must."""
    rows = SharedRows("t", 4)
    inside, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with rows.locked():
            inside.set()
            leave.wait(BOUND_S)
            order.append("first out")

    def second() -> None:
        with rows.locked():
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    assert inside.wait(BOUND_S)
    two = threading.Thread(target=second)
    two.start()
    time.sleep(0.2)
    assert order == []  # still waiting for the first thread
    leave.set()
    one.join(BOUND_S)
    two.join(BOUND_S)
    assert order == ["first out", "second in"]


def test_each_process_writes_its_own_row_and_dead_rows_are_recycled() -> None:
    rows = SharedRows("t", 2)
    rows.add(3)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        rows.add(2)
        os._exit(0)
    os.waitpid(child, 0)
    assert rows.total() == 5 and rows.nonzero() == 2  # both rows taken, one dead
    grandchild = os.fork()
    if grandchild == 0:  # pragma: no cover: no free row, so it takes the dead one's
        rows.add(7)
        os._exit(0 if rows.total() == 10 else 1)
    _, status = os.waitpid(grandchild, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rows.forget_dead() == 1 and rows.total() == 3
