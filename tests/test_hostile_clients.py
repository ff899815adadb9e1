"""Slow and hostile clients on real Gunicorn with real sockets: stalled bodies and heads cost
no request thread and are closed by the deadline; wrong keys are throttled per address."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import GunicornServer
from tests.conftest import TEST_API_KEY, server_env

READ_TIMEOUT_S = 3.0  # CLIENT_READ_TIMEOUT_S of these servers: short, so the tests are too
# The worker looks at its deadlines once a second (gthread's loop); the rest is scheduling on
# a busy shared box.
CLOSE_MARGIN_S = 3.0
STALLED = 50  # more than the worker's 48 request threads (MAX_BATCH_SIZE + MAX_QUEUE + 8)
BODY = {"prompt": "Once upon a time", "max_new_tokens": 2}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One worker (every stalled client lands on it), the default 48 threads."""
    workdir = tmp_path_factory.mktemp("hostile")
    env = server_env(workdir, CLIENT_READ_TIMEOUT_S=str(READ_TIMEOUT_S))
    with GunicornServer(workdir, env, workers=1) as running:
        yield running


def _open(port: int, head: bytes, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    if head:
        sock.sendall(head)
    return sock


def _until_closed(sock: socket.socket, by: float) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection (EOF or reset) by ``by``."""
    received = b""
    try:
        # not a wait: blocking reads of one socket, each bounded by what is left of ``by``
        while (left := by - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                return received, True
            received += data
    except ConnectionResetError:
        return received, True
    except TimeoutError:
        pass
    finally:
        sock.close()
    return received, False


def _health_s(url: str) -> float:
    started = time.monotonic()
    response = requests.get(url + "/health", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200
    return time.monotonic() - started


def _keyed_request(url: str) -> requests.Response:
    return requests.post(url + "/generate-text", json=BODY, timeout=60,
                         headers={"Authorization": f"Bearer {TEST_API_KEY}"})


def test_stalled_32_mib_bodies_take_no_thread_and_are_closed(server: GunicornServer) -> None:
    """The issue's attack: 50 unauthenticated heads declaring 32 MiB, then nothing."""
    head = (b"POST /generate-text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 33554432\r\n\r\n")
    sent = time.monotonic()
    stalled = [_open(server.port, head) for _ in range(STALLED)]
    assert _health_s(server.url) < 1.0
    keyed = _keyed_request(server.url)
    assert keyed.status_code == 200 and keyed.json()["usage"]["completion_tokens"] > 0
    assert _health_s(server.url) < 1.0
    by = sent + READ_TIMEOUT_S + CLOSE_MARGIN_S
    answers = [_until_closed(sock, by) for sock in stalled]
    assert all(closed for _, closed in answers)
    # Refused at once (no key), the body never read: 401, and the server said it closes.
    for received, _ in answers:
        status_line, _, rest = received.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 401 UNAUTHORIZED" and b"Connection: close" in rest
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("head", [
    b"POST /generate-text HTTP/1.1\r\nHost: x\r\nContent-Le",  # slowloris: part of a head
    b"",                                                       # connected, sends nothing
], ids=["partial-head", "silent"])
def test_stalled_heads_take_no_thread_and_are_closed_at_the_deadline(
        server: GunicornServer, head: bytes) -> None:
    sent = time.monotonic()
    stalled = [_open(server.port, head) for _ in range(STALLED)]
    assert _health_s(server.url) < 1.0
    assert _keyed_request(server.url).status_code == 200
    # A slowloris goes on trickling: still closed by the deadline from its connection.
    for sock in stalled[:10]:
        sock.sendall(b"n")
    assert _health_s(server.url) < 1.0
    answers = [_until_closed(sock, sent + READ_TIMEOUT_S + CLOSE_MARGIN_S) for sock in stalled]
    closed_s = time.monotonic() - sent
    assert all(closed for _, closed in answers) and all(r == b"" for r, _ in answers)
    assert closed_s >= READ_TIMEOUT_S - 0.5  # closed by the deadline, not at once


def test_a_keyed_body_that_stalls_gets_408_and_the_connection_closes(
        server: GunicornServer) -> None:
    head = (f"POST /generate-text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TEST_API_KEY}\r\nContent-Length: 100\r\n\r\n"
            '{"prompt": "Once'.encode())
    sent = time.monotonic()
    received, closed = _until_closed(_open(server.port, head),
                                     sent + READ_TIMEOUT_S + CLOSE_MARGIN_S)
    assert closed and time.monotonic() - sent >= READ_TIMEOUT_S - 0.5
    status_line, _, rest = received.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 408 REQUEST TIMEOUT" and b"Connection: close" in headers
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "CLIENT_READ_TIMEOUT_S" in error["message"]


def test_kept_alive_connections_still_serve_several_requests(server: GunicornServer) -> None:
    """The head is gathered by the event loop on every request of a connection, not only
    the first; a small unread body (a 404 with a key) is drained, not a reason to close."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        statuses = []
        for path in ["/health", "/no-such-route", "/generate-text", "/health"]:
            connection.request("POST" if path != "/health" else "GET", path,
                               body=json.dumps(BODY) if path != "/health" else None,
                               headers={"Authorization": f"Bearer {TEST_API_KEY}",
                                        "Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            statuses.append((response.status, response.getheader("Connection")))
            local = connection.sock.getsockname()
            if path == "/health" and len(statuses) == 1:
                first = local
        assert local == first  # one connection throughout
    finally:
        connection.close()
    assert statuses == [(200, "keep-alive"), (404, "keep-alive"), (200, "keep-alive"),
                        (200, "keep-alive")]


# ---- failed-authentication throttle --------------------------------------------------------


def _post_from(port: int, source: str, key: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                            source_address=(source, 0))
    try:
        connection.request("POST", "/generate-text", body=json.dumps(BODY), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        response = connection.getresponse()
        response.body = response.read()
        return response
    finally:
        connection.close()


def _guess_until_throttled(port: int,
                           guesses: int = 300) -> tuple[list[int], http.client.HTTPResponse]:
    statuses: list[int] = []
    for n in range(guesses):
        response = _post_from(port, "127.0.0.1", f"guess-{n:04d}-0123456789abcdef")
        statuses.append(response.status)
        if response.status == 429:
            return statuses, response
    return statuses, response


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_wrong_keys_from_one_address_are_throttled(tiny_model: Path, tmp_path: Path,
                                                   request: pytest.FixtureRequest,
                                                   storage: str) -> None:
    """Default AUTH_FAILURE_LIMIT (20/minute), 2 workers: with memory:// each worker counts
    its own 20, with Redis they share one count (the 21st wrong key is refused)."""
    uri = request.getfixturevalue("redis_server").uri if storage == "redis" else "memory://"
    env = server_env(tmp_path, RATELIMIT_STORAGE_URI=uri)
    with GunicornServer(tmp_path, env, workers=2) as server:
        statuses, throttled = _guess_until_throttled(server.port)
        assert throttled.status == 429 and len(statuses) < 100
        assert set(statuses[:-1]) == {401}
        assert int(throttled.getheader("Retry-After")) > 0
        assert json.loads(throttled.body)["error"]["code"] == "auth_throttled"
        if storage == "redis":  # (with memory:// the other worker may not have counted 20)
            assert len(statuses) == 21
            # While throttled, the right key from that address is refused too ...
            right_here = _post_from(server.port, "127.0.0.1", TEST_API_KEY)
            assert right_here.status == 429
            assert json.loads(right_here.body)["error"]["code"] == "auth_throttled"
        # ... and another address is unaffected, with the right key or a wrong one.
        assert _post_from(server.port, "127.0.0.2", TEST_API_KEY).status == 200
        assert _post_from(server.port, "127.0.0.2", "wrong-0123456789abcdef").status == 401
        assert "guess-" not in server.log_text()  # no key, right or wrong, in the log
