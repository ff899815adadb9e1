"""loadgen.csv (event-loop lag and CPU of the Locust processes) and the memory sampler kept off
the event loop: on a bare Environment, and in real headless runs against real Gunicorn."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gevent
import numpy as np
import psutil
import pytest

from analysis.loadgen import load_window, loadgen_summary
from analysis.readers import read_loadgen, read_requests
from harness.gunicorn_process import GunicornServer
from harness.processes import tree_progress
from harness.waiting import wait_until
from locustfiles.loadgen_monitor import COLUMNS, LoopMonitor
from locustfiles.memory_sampler import MemorySampler
from tests.conftest import TEST_API_KEY, server_env
from tests.locust_runs import locust_totals, read_csv, run_headless

# A parent and two children holding 1 GB each, so that one sample of the tree is slow enough
# (> 10 ms) to show on the loop if it ran there: with 512 MB each a sample took 8.8 ms on an
# AMD EPYC Zen 2 (CI, 2026-12-07), too fast for the test to tell; 17 ms with 1 GB each.
BIG_TREE = textwrap.dedent("""
    import os, sys, time
    for _ in range(2):
        if os.fork() == 0:
            block = bytearray(2**30)
            block[::4096] = b"x" * len(block[::4096])
            time.sleep(120)
            os._exit(0)
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(120)
""")


@pytest.fixture
def big_tree(tmp_path: Path) -> Iterator[Path]:
    """Pidfile of a running parent whose two children hold 1 GB each."""
    pidfile = tmp_path / "tree.pid"
    proc = subprocess.Popen([sys.executable, "-c", BIG_TREE, str(pidfile)])

    def built() -> bool:
        kids = psutil.Process(proc.pid).children()
        return bool(pidfile.exists() and pidfile.read_text() and len(kids) == 2
                    and min(k.memory_info().rss for k in kids) >= 2**30)

    wait_until(built, "the 2 x 1 GB process tree is up", interval_s=0.05,
               alive=lambda: proc.poll() is None, progress=lambda: tree_progress(proc.pid))
    children = psutil.Process(proc.pid).children()
    yield pidfile
    for child in children:
        child.kill()
    proc.kill()
    proc.wait()


def test_monitor_records_lag_of_a_blocked_loop_and_cpu(environment, tmp_path) -> None:
    monitor = LoopMonitor(tmp_path / "loadgen.csv", interval_s=0.02)
    monitor.register(environment)
    gevent.sleep(0.2)
    time.sleep(0.3)  # blocks the loop: the next tick fires at least 300 - 20 ms late
    busy_until = time.monotonic() + 0.3
    while time.monotonic() < busy_until:  # not a wait: burns CPU cooperatively for 0.3 s
        gevent.sleep(0)
    environment.events.quitting.fire(environment=environment)

    rows = read_csv(tmp_path / "loadgen.csv")
    assert list(rows[0]) == list(COLUMNS)
    lags = [float(r["loop_lag_ms"]) for r in rows]
    # The tick due next was scheduled at most one interval (20 ms) before the block began.
    assert max(lags) >= 280 - 1 and sorted(lags)[len(lags) // 2] < 20
    assert {r["role"] for r in rows} == {"local"} and int(rows[0]["cores"]) >= 1
    cpu = [float(r["cpu_s"]) for r in rows]
    # The busy loop used CPU (even on a crowded core it gets a share of its 0.3 s).
    assert cpu == sorted(cpu) and cpu[-1] - cpu[0] > 0.03
    assert max(float(r["cpu_percent"]) for r in rows) > 5


def test_sampling_a_big_tree_does_not_stall_the_loop(environment, big_tree, tmp_path) -> None:
    sampler = MemorySampler(tmp_path / "memory.csv", pidfile=big_tree, interval_s=0.05)
    sample_s = []
    for _ in range(3):  # how long one sample of the tree takes, warm
        started = time.perf_counter()
        sample = sampler.sample_once()
        sample_s.append(time.perf_counter() - started)
    lags: list[float] = []

    def ticker() -> None:
        while True:  # not a wait: measures each tick's lag until killed
            due = time.monotonic() + 0.005
            gevent.sleep(0.005)
            lags.append(time.monotonic() - due)

    ticks = gevent.spawn(ticker)
    sampler.register(environment)
    gevent.sleep(2.0)
    ticks.kill()
    environment.events.quitting.fire(environment=environment)

    assert sample is not None and len(sample.processes) == 3
    assert sampler.samples_written >= 10
    one_sample_s = float(np.median(sample_s))
    assert one_sample_s > 0.01
    # Sampling on the loop: every tick during a sample waits for it (p90 ~ 0.8 x a sample).
    # Off the loop, a tick waits at most for the CPU: on one core the kernel's page walk is
    # not preempted at once, so some ticks are a few ms late anyway.
    assert np.percentile(lags, 90) < one_sample_s / 4, (one_sample_s, np.percentile(lags, 90))


def _loop_lag_p99_ms(run_dir: Path) -> float:
    """p99 of the Locust process's tick lateness while load ran (as the report computes it)."""
    requests = read_requests(run_dir / "requests.csv")
    ticks = read_loadgen(run_dir / "loadgen.csv", float(requests["timestamp"].min()))
    summary = loadgen_summary(ticks, load_window(requests))
    assert summary.ticks > 500  # a tick every 20 ms over ~20 s of load
    return summary.lag_p99_ms


def test_memory_sampling_leaves_the_loop_lag_alone(tiny_model, tmp_path) -> None:
    """Two headless runs at the same time against one server: sampling at the default 1 s,
    and none. Both see the same CPU contention; only the sampling differs. Ticks every
    20 ms: a p99 over a thousand ticks, not the third-largest of two hundred."""
    env = server_env(tmp_path)
    with GunicornServer(tmp_path, env, workers=2) as server:
        runs = {"on": tmp_path / "on", "off": tmp_path / "off"}
        # Light load: a server saturating the core would make both loops wait for CPU.
        common = ("-u", "2", "-r", "2", "-t", "20s", "--stop-timeout", "15",
                  "--loop-tick-s", "0.02", "--server-pidfile", str(server.pidfile),
                  "--label", secrets.token_hex(4))
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(run_headless, runs["on"], server.url, TEST_API_KEY, *common,
                                "--memory-sample-s", "1", operator_key=server.operator_key),
                    pool.submit(run_headless, runs["off"], server.url, TEST_API_KEY, *common,
                                "--memory-sample-s", "0", operator_key=server.operator_key)]
            for future in done:
                future.result()

    for run_dir in runs.values():
        requests_total, failures = locust_totals(run_dir)
        assert requests_total > 5 and failures == 0, (run_dir / "locust.log").read_text()
    samples = [r for r in read_csv(runs["on"] / "memory.csv") if r["role"] == "total"]
    assert len(samples) >= 15  # the sampler really ran: a sample of the whole tree each second
    assert not (runs["off"] / "memory.csv").exists()
    on, off = _loop_lag_p99_ms(runs["on"]), _loop_lag_p99_ms(runs["off"])
    # In the loop, each sample of the tree (~20 ms) stalled it: p99 ~20 ms above "off".
    assert on <= off + 5.0, f"loop lag p99 with sampling {on:.1f} ms, without {off:.1f} ms"
