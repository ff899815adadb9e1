"""Make our server look like someone else's: a reverse proxy that drops its own X-* headers.

A ``--target openai`` run is meant for vLLM, TGI, llama.cpp ... which send none of GPT Load
Lab's ``X-Worker-*`` memory headers (nor X-Request-ID, X-Queue-Ms ...). Putting this proxy in
front of Gunicorn gives such a server without a second model stack: same OpenAI-compatible
API, same SSE stream (passed on chunk by chunk as it arrives), none of those headers.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import requests

# Per-connection headers: each side of the proxy sets its own.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
              "accept-encoding", "content-encoding"}


class _Forward(BaseHTTPRequestHandler):
    """Forward one request upstream; answer HTTP/1.0 style (the body ends when we close)."""

    server: _ProxyServer

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet (the default writes every request to stderr)."""

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        with requests.Session() as session, session.request(
                self.command, self.server.upstream + self.path, data=body, headers=headers,
                stream=True, timeout=120) as upstream:
            self.send_response(upstream.status_code)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP and not name.lower().startswith("x-"):
                    self.send_header(name, value)
            self.end_headers()
            try:
                for chunk in upstream.iter_content(chunk_size=None):  # as it arrives
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away; nothing left to tell it


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream: str


class ServedInThread:
    """An HTTP server on 127.0.0.1 served by a thread between ``with``'s enter and exit."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class ForeignServer(ServedInThread):
    """``with ForeignServer(server.url) as foreign:`` serves the upstream on ``foreign.url``."""

    def __init__(self, upstream: str) -> None:
        super().__init__(_ProxyServer(("127.0.0.1", 0), _Forward))
        self._server.upstream = upstream.rstrip("/")
