"""Overload on real Gunicorn: 100 simultaneous requests against 2 workers.

The server-wide cap (MAX_IN_FLIGHT, shared by the workers) and each worker's queue bound
(MAX_QUEUE) admit a fixed number; the rest get 503 + Retry-After at once, long before any
admitted generation ends, and the cap's slots come back when requests finish.
"""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from server.engine.shared_rows import alive
from server.web.admission import InFlightTable
from tests.conftest import server_env

CAP, CLIENTS = 12, 100


@pytest.fixture
def server(tiny_model: Path, tmp_path: Path):
    env = server_env(tmp_path, GUNICORN_ACCESSLOG="", IGNORE_EOS="1", MAX_BATCH_SIZE="4",
                     MAX_QUEUE="16", MAX_IN_FLIGHT=str(CAP))
    with GunicornServer(tmp_path, env, workers=2) as running:
        yield running


def _burst(url: str, headers: dict[str, str]) -> list[tuple[int, float, float, dict]]:
    """CLIENTS requests released together: (status, sent, answered, headers) each."""
    sessions = [requests.Session() for _ in range(CLIENTS)]
    for s in sessions:  # connect first, so the requests arrive together
        s.get(f"{url}/health", timeout=30)
    barrier = threading.Barrier(CLIENTS)

    def post(i: int) -> tuple[int, float, float, dict]:
        barrier.wait()
        sent = time.monotonic()
        r = sessions[i].post(f"{url}/generate-text", headers=headers, timeout=120,
                             json={"prompt": f"Overload {i}", "max_new_tokens": 256})
        return r.status_code, sent, time.monotonic(), dict(r.headers) | {"body": r.json()}

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(post, range(CLIENTS)))


def test_hundred_simultaneous_requests_refused_fast_beyond_the_cap(server, api_headers):
    results = _burst(server.url, api_headers)
    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(admitted) + len(refused) == CLIENTS  # nothing else: no 5xx, no timeouts
    assert 0 < len(admitted) <= CAP  # the cap holds across both workers together
    assert all(r[3]["body"]["error"]["code"] == "overloaded" and int(r[3]["Retry-After"]) > 0
               and r[3]["body"]["error"]["details"] == {"scope": "server", "reason": "in_flight"}
               for r in refused)
    refused_ms = sorted((answered - sent) * 1000 for _, sent, answered, _ in refused)
    first_done = min(answered for _, _, answered, _ in admitted)
    print(f"\n{len(refused)} refused: median {refused_ms[len(refused_ms) // 2]:.0f} ms, "
          f"max {refused_ms[-1]:.0f} ms; first admitted answer after "
          f"{(first_done - min(r[1] for r in results)) * 1000:.0f} ms")
    # Refusals do not wait for model work: all of them are back before any generation is.
    assert max(answered for _, _, answered, _ in refused) < first_done
    # The slots came back: the next request is admitted.
    again = requests.post(f"{server.url}/generate-text", headers=api_headers, timeout=60,
                          json={"prompt": "After the storm", "max_new_tokens": 4})
    assert again.status_code == 200


def test_a_full_table_forgets_a_killed_process_before_its_parent_reaps_it() -> None:
    """A SIGKILLed worker is a zombie until the master reaps it (child_exit); its slots must
    not refuse the retries of the clients it left, which can arrive first."""
    table = InFlightTable(rows=4)
    child = os.fork()
    if child == 0:  # the child takes both slots, then dies unreaped
        table.try_acquire(cap=2)
        table.try_acquire(cap=2)
        os._exit(0)
    try:
        wait_until(lambda: table.total() == 2 and not alive(child), "the child is a zombie",
                   interval_s=0.01)
        assert Path(f"/proc/{child}").exists()  # not reaped yet
        assert table.try_acquire(cap=2) and table.total() == 1
    finally:
        os.waitpid(child, 0)


def test_table_caps_the_sum_and_forgets_dead_processes() -> None:
    table = InFlightTable(rows=4)
    assert [table.try_acquire(cap=2) for _ in range(3)] == [True, True, False]
    table.release()
    assert table.total() == 1 and table.try_acquire(cap=2)
    table.forget(os.getpid())  # as child_exit does for a dead worker
    assert table.total() == 0
