"""A reverse proxy that records what the load generator sent and got, for the workload tests.

Whole (not streamed) JSON answers only: each successful POST's X-Request-ID, request body
and answer body are kept in ``exchanges``. With ``strip_cached=True`` it removes
``usage.prompt_tokens_details`` from the answers, making our server look like one that
does not report cached prompt tokens (llama.cpp).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from tests.locust.foreign_server import ServedInThread

PASSED = {"authorization", "content-type", "x-request-id"}


class _Record(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""

    def _forward(self, body: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in PASSED}
        upstream = requests.request(self.command, self.server.upstream + self.path,
                                    data=body, headers=headers, timeout=120)
        content = upstream.content
        if body is not None and upstream.ok:
            answer = upstream.json()
            if self.server.strip_cached and isinstance(answer.get("usage"), dict):
                answer["usage"].pop("prompt_tokens_details", None)
                content = json.dumps(answer).encode()
            with self.server.lock:
                self.server.exchanges.append(
                    (self.headers.get("X-Request-ID", ""), json.loads(body), answer))
        self.send_response(upstream.status_code)
        self.send_header("Content-Type", upstream.headers.get("Content-Type", "text/plain"))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream: str
    strip_cached: bool
    exchanges: list[tuple[str, dict[str, Any], dict[str, Any]]]
    lock: threading.Lock


class RecordingProxy(ServedInThread):
    """``with RecordingProxy(server.url) as proxy:`` serves the upstream on ``proxy.url``."""

    def __init__(self, upstream: str, *, strip_cached: bool = False) -> None:
        super().__init__(_RecordingServer(("127.0.0.1", 0), _Record))
        self._server.upstream = upstream.rstrip("/")
        self._server.strip_cached = strip_cached
        self._server.exchanges = []
        self._server.lock = threading.Lock()

    @property
    def exchanges(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(request id, request body, answer body) of every successful POST, in order."""
        return list(self._server.exchanges)
