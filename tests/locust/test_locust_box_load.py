"""The busy-box detector's readings (locustfiles/box_load.py) and their memory.csv columns,
with a real CPU hog the test starts and stops."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from locustfiles.box_load import BoxLoad
from locustfiles.memory_sampler import COLUMNS, MemorySampler
from tests.locust.test_locust_memory import process_tree, read_rows  # noqa: F401 (fixture)

HOG = "while True: pass"


@pytest.fixture
def hog() -> Iterator[psutil.Process]:
    """A busy-loop process, stopped by its pid at the end."""
    proc = subprocess.Popen([sys.executable, "-c", HOG])
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


def _cpu_s(process: psutil.Process) -> float:
    t = process.cpu_times()
    return t.user + t.system


@pytest.fixture
def locust_stand_in() -> Iterator[psutil.Process]:
    """An idle process standing in for Locust: the hog is this test process's child, and a
    BoxLoad of this process would count it as Locust's own CPU (its children are the
    --processes workers)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


def test_a_hog_is_other_load_unless_it_is_the_server(hog, locust_stand_in) -> None:
    as_other = BoxLoad(locust_pid=locust_stand_in.pid)
    as_server = BoxLoad(locust_pid=locust_stand_in.pid)
    as_other.shares({})
    as_server.shares({hog.pid: _cpu_s(hog)})
    hog_before, box_before = _cpu_s(hog), sum(psutil.cpu_times()[:8])
    time.sleep(1.0)
    other = as_other.shares({})
    server = as_server.shares({hog.pid: _cpu_s(hog)})
    hog_share = (_cpu_s(hog) - hog_before) / (sum(psutil.cpu_times()[:8]) - box_before)

    # The hog got a real share of the box (half a core of two, even on a crowded box).
    assert hog_share > 0.2
    # Counted as the server's, it leaves the other processes' share; as anyone's, it is in it.
    # The two readers read microseconds apart: their difference is the hog's share.
    assert other.other_cpu_share - server.other_cpu_share == pytest.approx(hog_share, abs=0.05)
    assert 0.0 <= other.steal_share <= 1.0 and other.steal_share == pytest.approx(
        server.steal_share, abs=0.01)


def test_memory_csv_carries_cpu_and_the_box_shares(environment, process_tree,  # noqa: F811
                                                   tmp_path) -> None:
    pidfile, _ = process_tree
    sampler = MemorySampler(tmp_path / "memory.csv", pidfile=pidfile, interval_s=60)
    sampler.register(environment)
    sampler.sample_once()
    time.sleep(0.3)  # CPU time passes (psutil's clock ticks every 10 ms)
    sampler.sample_once()
    environment.events.quitting.fire(environment=environment)

    rows = read_rows(tmp_path / "memory.csv")
    assert list(rows[0]) == list(COLUMNS)
    totals = [r for r in rows if r["role"] == "total"]
    processes = [r for r in rows if r["role"] != "total"]
    assert all(float(r["cpu_s"]) >= 0 and r["other_cpu_share"] == "" for r in processes)
    last = totals[-1]
    assert float(last["cpu_s"]) == pytest.approx(
        sum(float(r["cpu_s"]) for r in processes[-3:]), abs=0.01)
    # The first reading has no interval before it (nor has one taken before any CPU time
    # passed: the sampler's own loop samples too, beside the test's first call); the last,
    # 0.3 s later, has both shares.
    assert totals[0]["other_cpu_share"] == "" and totals[0]["steal_share"] == ""
    assert 0.0 <= float(last["other_cpu_share"]) <= 1.0
    assert 0.0 <= float(last["steal_share"]) <= 1.0
