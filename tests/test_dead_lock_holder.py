"""A dead lock holder on real Gunicorn (issue 29, part 5): a separate process takes the lock
of a shared structure (its lock file in the server's runtime folder) and is SIGKILLed; the
next request is served within 5 s, and a worker SIGKILLed afterwards is cleaned up by the
master's ``child_exit`` and replaced. While a live process holds the lock, the master's
clean-up gives up at once (logged) instead of blocking, and the server carries on.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from tests.conftest import server_env

# Takes the lock file's record lock as any process of the server would, then sleeps.
HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")
NEXT_REQUEST_S = 5.0  # the acceptance bound for the request after the holder's death
GAVE_UP = {"in_flight": "in-flight row of worker", "core_share": "busy-core row of worker"}


def _hold(lock: Path) -> subprocess.Popen:
    """A process holding ``lock``'s record lock (returns once it does)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE,
                              text=True)
    readable, _, _ = select.select([holder.stdout], [], [], 60)
    assert readable and holder.stdout.readline().strip() == "locked"
    return holder


def _kill(holder: subprocess.Popen) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(60)
    holder.stdout.close()


def _lock_is_free(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the lock if taken
    return True


def _generate(server: GunicornServer, headers: dict, timeout_s: float) -> requests.Response:
    return requests.post(f"{server.url}/generate-text", headers={**headers, "Connection": "close"},
                         json={"prompt": "After the fault", "max_new_tokens": 3},
                         timeout=timeout_s)


def _served_by(server: GunicornServer, headers: dict, pid: int) -> bool:
    response = _generate(server, headers, 60)
    assert response.status_code == 200, response.text
    return int(response.headers["X-Worker-PID"]) == pid


def _replaced(server: GunicornServer, victim: int, survivor: int) -> int:
    pids = set(server.wait_worker_pids(2, without=(victim,)))
    assert survivor in pids
    return (pids - {survivor}).pop()


@pytest.mark.parametrize("name", ["in_flight", "core_share"])
def test_a_killed_lock_holder_stops_neither_requests_nor_child_exit(
        tiny_model: Path, tmp_path: Path, api_headers: dict, name: str) -> None:
    runtime = tmp_path / "runtime"  # the per-server folder gunicorn.conf.py would create
    env = server_env(tmp_path, GUNICORN_ACCESSLOG="", GUNICORN_MAX_REQUESTS="0",
                     MAX_IN_FLIGHT="4", TORCH_THREADS="0", PROMETHEUS_MULTIPROC_DIR=str(runtime))
    with GunicornServer(tmp_path, env, workers=2) as server:
        lock = runtime / f"{name}.lock"
        assert lock.is_file() and _lock_is_free(lock)

        # A holder killed with the lock: the next request (each worker's first, so each
        # claims its row under that lock) is served within the bound.
        holder = _hold(lock)
        assert not _lock_is_free(lock)
        _kill(holder)
        started = time.monotonic()
        first = _generate(server, api_headers, NEXT_REQUEST_S)
        assert first.status_code == 200 and time.monotonic() - started < NEXT_REQUEST_S

        # child_exit after that: a killed worker's rows are cleared and it is replaced.
        victim = int(first.headers["X-Worker-PID"])
        survivor = next(pid for pid in server.worker_pids() if pid != victim)
        os.kill(victim, signal.SIGKILL)
        replacement = _replaced(server, victim, survivor)
        wait_until(lambda: _served_by(server, api_headers, replacement),
                   "the replacement serves", timeout_s=180, alive=server.alive)
        assert GAVE_UP[name] not in server.log_text()  # the master got the lock

        # A live holder: the master's clean-up gives up at once, logged, and forks anew.
        holder = _hold(lock)
        try:
            os.kill(survivor, signal.SIGKILL)
            second = _replaced(server, survivor, replacement)
            wait_until(lambda: GAVE_UP[name] in server.log_text(), "the give-up is logged",
                       timeout_s=60, alive=server.alive)
        finally:
            _kill(holder)
        wait_until(lambda: _served_by(server, api_headers, second),
                   "the second replacement serves", timeout_s=180, alive=server.alive)
