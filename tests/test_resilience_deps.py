"""Dependency faults on real Gunicorn: Redis stopped, restarted and frozen under load; a request
log on a full disk.

tests/test_limits.py covers the fallback itself (per-worker counts while Redis is down, the
switch back logged). Here: steady traffic through the whole outage never sees a 5xx or a
stall, counting is shared again once Redis is back (every worker switched back, exact counts
across workers), a frozen Redis costs a request at most its 0.5 s timeouts (no hang), and
a log write that fails still answers 200 and shows up in /metrics.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from pathlib import Path

import pytest
import redis
import requests

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from tests.conftest import server_env
from tests.steady_load import Outcome, SteadyLoad, post_once

BODY = {"prompt": "Count me", "max_new_tokens": 1}
LIMIT = 5  # RATE_LIMIT per key per minute
BACKGROUND_KEY = "background-key-0123456789abcdef"
BURST_KEYS = [f"burst-key-{i}-0123456789abcdef" for i in range(12)]
RECOVERED = "Rate limit storage recovered"
FELL_BACK = "Rate limit storage unreachable - falling back to in-memory storage"


def _serve(tmp_path: Path, storage_uri: str) -> GunicornServer:
    env = server_env(tmp_path, GUNICORN_ACCESSLOG="",
                     API_KEYS=",".join([BACKGROUND_KEY, *BURST_KEYS]),
                     RATE_LIMIT=f"{LIMIT}/minute", RATELIMIT_STORAGE_URI=storage_uri)
    return GunicornServer(tmp_path, env, workers=2)


def _background(server: GunicornServer, max_s: float) -> SteadyLoad:
    """Four clients on one key all along: mostly 429s, each one a trip through the limiter."""
    return SteadyLoad(f"{server.url}/generate-text",
                      {"Authorization": f"Bearer {BACKGROUND_KEY}"}, lambda i: BODY, threads=4,
                      max_requests=5000, max_s=max_s, timeout_s=30, pause_s=0.05)


def _burst(url: str, key: str, n: int = 12) -> list[Outcome]:
    headers = {"Authorization": f"Bearer {key}"}
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: post_once(f"{url}/generate-text", BODY, headers, 30),
                             range(n)))


def _burst_on_both_workers(url: str, keys: list[str]) -> tuple[str, list[Outcome]]:
    """A burst on a fresh key that both workers answered part of (else sharing is unproven)."""
    for key in list(keys):
        keys.remove(key)
        outcomes = _burst(url, key)
        if len({o.worker_pid for o in outcomes}) == 2:
            return key, outcomes
    pytest.fail("no burst reached both workers")


def _per_worker(outcomes: list[Outcome]) -> int:
    """Successes when each worker counts alone: min(LIMIT, its share) per worker."""
    return sum(min(LIMIT, n) for n in Counter(o.worker_pid for o in outcomes).values())


def _pids_logging(server: GunicornServer, message: str) -> set[int]:
    return {int(pid) for pid in re.findall(rf"\[(\d+)\] [\w.-]+: {re.escape(message)}",
                                           server.log_text())}


def _wait_all_logged(server: GunicornServer, background: SteadyLoad, message: str,
                     workers: set[int]) -> None:
    """Wait until ``workers`` all logged ``message``; the background load drives the workers'
    Redis checks, so fail at once if it (or the server) ended."""
    wait_until(lambda: _pids_logging(server, message) == workers,
               f"every worker logged {message!r}", interval_s=0.2,
               alive=lambda: server.alive() and background.alive(),
               progress=lambda: background.done, detail=lambda: server.log_text()[-3000:])


def _counted_in_redis(uri: str, key: str) -> bool:
    """Whether Redis holds a rate-limit counter of ``key`` (by its key id)."""
    key_id = sha256(key.encode()).hexdigest()[:8]
    return any(f"key:{key_id}" in k.decode() for k in redis.Redis.from_url(uri).keys("*"))


def test_redis_restart_under_load_never_fails_and_shared_limits_resume(
        tiny_model, tmp_path, redis_server) -> None:
    keys = list(BURST_KEYS)
    with _serve(tmp_path, redis_server.uri) as server:
        workers = set(server.worker_pids())
        with _background(server, max_s=150) as background:
            key, before = _burst_on_both_workers(server.url, keys)
            assert Counter(o.status for o in before) == {200: LIMIT, 429: 12 - LIMIT}

            redis_server.stop()
            _, during = _burst_on_both_workers(server.url, keys)
            assert sum(o.status == 200 for o in during) == _per_worker(during)
            # Redis comes back empty; each worker re-checks it with backoff (1, 2, 4 ... s)
            # on its next requests and switches back. The background load drives the checks.
            time.sleep(2)
            redis_server.start()
            _wait_all_logged(server, background, RECOVERED, workers)
            key, after = _burst_on_both_workers(server.url, keys)
        steady = background.stop()
        log_text = server.log_text()

    assert _pids_logging(server, FELL_BACK) == workers, log_text[-3000:]
    # Counts are shared again: exactly LIMIT of a burst spread over both workers pass, and
    # the key's counter is back in Redis.
    assert Counter(o.status for o in after) == {200: LIMIT, 429: 12 - LIMIT}
    assert _counted_in_redis(redis_server.uri, key)
    # Throughout (before, during and after the outage) only 200s and 429s, none slow.
    every = [*steady, *before, *during, *after]
    print(f"\n{len(steady)} background requests: {Counter(o.status for o in steady)}; slowest "
          f"{max(o.ended_at - o.started_at for o in every):.2f} s")
    assert {(o.status, o.error) for o in every} <= {(200, None), (429, None)}
    assert len(steady) > 50
    assert max(o.ended_at - o.started_at for o in every) < 2.0
    assert "Traceback" not in log_text


def test_frozen_redis_costs_a_request_at_most_its_timeouts_then_recovers(
        tiny_model, tmp_path, redis_server) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): requests must not hang."""
    keys = list(BURST_KEYS)
    with _serve(tmp_path, redis_server.uri) as server:
        workers = set(server.worker_pids())
        with _background(server, max_s=150) as background:
            background.wait_for(20)
            redis_server.proc.send_signal(signal.SIGSTOP)
            frozen_at = time.time()
            _wait_all_logged(server, background, FELL_BACK, workers)
            _, during = _burst_on_both_workers(server.url, keys)
            # Stay frozen a while: the workers' backoff re-checks (1, 2 s ...) meet it too.
            time.sleep(max(0.0, frozen_at + 4 - time.time()))
            redis_server.proc.send_signal(signal.SIGCONT)
            thawed_at = time.time()
            _wait_all_logged(server, background, RECOVERED, workers)
            key, after = _burst_on_both_workers(server.url, keys)
        steady = background.stop()

    frozen = [o for o in steady if o.ended_at > frozen_at and o.started_at < thawed_at]
    slowest = max(o.ended_at - o.started_at for o in frozen)
    print(f"\n{len(frozen)} requests while Redis was frozen, slowest {slowest:.2f} s")
    assert len(frozen) > 20
    assert {(o.status, o.error) for o in [*steady, *during, *after]} <= {(200, None),
                                                                         (429, None)}
    assert sum(o.status == 200 for o in during) == _per_worker(during)
    # A request meets the 0.5 s Redis timeout (no retries) at most twice: ~1.0 s measured.
    assert slowest < 2.0
    assert Counter(o.status for o in after) == {200: LIMIT, 429: 12 - LIMIT}
    assert _counted_in_redis(redis_server.uri, key)


def test_request_log_on_a_full_disk_still_answers_and_is_counted(
        tiny_model, tmp_path, api_headers) -> None:
    """REQUEST_LOG=/dev/full: every write fails with ENOSPC, like a disk that filled up."""
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode), "/dev/full is not the full device"
    env = server_env(tmp_path, REQUEST_LOG="/dev/full", GUNICORN_ACCESSLOG="")
    with GunicornServer(tmp_path, env, workers=2) as server:
        with SteadyLoad(f"{server.url}/generate-text", api_headers,
                        lambda i: {"prompt": f"Log {i}", "max_new_tokens": 2}, threads=4,
                        max_requests=40, max_s=60) as load:
            load.wait_for(40)
        outcomes = load.stop()
        metrics = requests.get(f"{server.url}/metrics", timeout=10,
                               headers=server.operator_headers).text
        log_text = server.log_text()
    assert Counter(o.status for o in outcomes) == {200: 40}
    match = re.search(r"^gpt_request_log_write_errors_total (\S+)$", metrics, re.MULTILINE)
    assert match and float(match[1]) == 40, metrics
    # Logged once per worker, not once per request; no traceback.
    complaints = re.findall(r"\[(\d+)\] server\.engine\.requestlog: request log /dev/full "
                            r"not writable: No space left on device", log_text)
    served_by = {o.worker_pid for o in outcomes}
    assert sorted(map(int, complaints)) == sorted(served_by), log_text[-3000:]
    assert "Traceback" not in log_text
