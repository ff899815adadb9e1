"""Graceful shutdown on real Gunicorn: SIGTERM to the master while generations are running.

The generations accepted before SIGTERM finish with 200 and are logged; a new connection is
refused at once (server/web/worker.py closes each worker's listening socket as it stops), not
parked in a backlog nobody will accept from; the master exits 0 once its workers are done.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from tests.conftest import server_env
from tests.steady_load import Outcome, post_once

IN_FLIGHT = 20
# Batches of one and 128 forced tokens: each worker works through its ~10 requests one after
# the other for a few seconds, so most are still queued or running when SIGTERM arrives.
SETTINGS = {"IGNORE_EOS": "1", "MAX_BATCH_SIZE": "1", "GUNICORN_ACCESSLOG": ""}


def _refused(port: int) -> bool:
    """Whether a TCP connect to ``port`` is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _refused_at(port: int, timeout_s: float = 10) -> float:
    """time.time() when a TCP connect to ``port`` was first refused (polling every 20 ms).

    Bounded by what is tested, not a readiness wait: refusing must follow SIGTERM at once.
    """
    wait_until(lambda: _refused(port), f"port {port} refuses connections after SIGTERM",
               timeout_s=timeout_s, interval_s=0.02)
    return time.time()


def _tcp_sockets() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state hex, rx queue) of every IPv4 TCP socket here."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        rows.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16), state,
                     int(queues.split(":")[1], 16)))
    return rows


def _all_accepted(port: int, outcomes: list[Outcome]) -> bool:
    """Whether every client has its connection accepted by a worker or its answer already.

    Answers are counted first and open client connections second, so a client finishing in
    between is counted not at all (wait longer), never twice; then the listening socket's
    accept queue (its rx queue in /proc/net/tcp) must be empty: a connection still in it
    when a worker closes its listener is reset, and was never in flight.
    """
    done = len(outcomes)
    connected = sum(1 for _, remote, state, _ in _tcp_sockets()
                    if remote == port and state == "01")  # ESTABLISHED
    backlog = sum(rx for local, _, state, rx in _tcp_sockets()
                  if local == port and state == "0A")  # LISTEN
    return done + connected >= IN_FLIGHT and backlog == 0


def _log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigterm_finishes_in_flight_generations_and_refuses_new_connections(
        tiny_model, tmp_path, api_headers) -> None:
    log_path = tmp_path / "server_requests.jsonl"
    env = server_env(tmp_path, **SETTINGS)
    outcomes: list[Outcome] = []
    with GunicornServer(tmp_path, env, workers=2) as server:
        workers = server.worker_pids()
        url = f"{server.url}/generate-text"

        def post(i: int) -> None:
            body = {"prompt": f"Request {i} is in flight", "max_new_tokens": 128, "seed": i}
            outcomes.append(post_once(url, body, api_headers, timeout_s=120))

        clients = [threading.Thread(target=post, args=(i,)) for i in range(IN_FLIGHT)]
        for client in clients:
            client.start()
        # Wait until the first generations are done and every other request is inside a
        # worker (gthread hands each accepted connection to its pool at once). On a loaded
        # host a client thread can still be connecting then: its connection, never
        # accepted, was reset by SIGTERM and failed this test in CI.
        server.follow(lambda: len(_log_lines(log_path)) >= 2
                      and _all_accepted(server.port, outcomes),
                      "two generations done and every other request accepted",
                      progress=lambda: len(outcomes), interval_s=0.02)
        finished_before = len(_log_lines(log_path))
        sigterm_at = time.time()
        server.proc.send_signal(signal.SIGTERM)
        refused_at = _refused_at(server.port)
        with pytest.raises(requests.ConnectionError):
            requests.post(url, json={"prompt": "too late"}, headers=api_headers, timeout=5)
        for client in clients:
            client.join(120)
        assert not any(client.is_alive() for client in clients)
        exit_code = server.proc.wait(60)
        log_text = server.log_text()
    last_answer_at = max(o.ended_at for o in outcomes)
    print(f"\n{finished_before} of {IN_FLIGHT} done at SIGTERM; connect refused after "
          f"{refused_at - sigterm_at:.3f} s; last answer {last_answer_at - sigterm_at:.2f} s "
          "after SIGTERM")

    assert finished_before < IN_FLIGHT // 2, "generations too short to be in flight"
    # Every accepted generation completed, most of them after SIGTERM.
    assert [(o.status, o.error) for o in outcomes] == [(200, None)] * IN_FLIGHT
    assert sum(o.ended_at > sigterm_at for o in outcomes) >= IN_FLIGHT // 2
    # New connections were refused at once, while those generations were still running.
    assert refused_at - sigterm_at < 2.0
    assert refused_at < last_answer_at
    # Each finished request is in the log, and the server stopped cleanly.
    records = [json.loads(line) for line in _log_lines(log_path)]
    assert sorted((r["request_id"], r["status"]) for r in records) == sorted(
        (o.request_id, 200) for o in outcomes)
    assert exit_code == 0, log_text[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
