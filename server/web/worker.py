"""The Gunicorn worker class: gthread that lets go of the listening socket as soon as it stops.

Stock gthread stops polling its listening socket when it begins a graceful stop (SIGTERM or a
``max_requests`` restart) but keeps the socket open until its in-flight requests are done, up
to ``graceful_timeout``. On SIGTERM the master has already closed its own copy, yet the
kernel keeps completing handshakes into the backlog that no worker will ever accept: new
clients hang for the whole grace period (a generation can take a minute) and then get a
reset. This worker closes its copy at once, so:

* on SIGTERM (every process stopping) a new connection is refused immediately;
* on a ``max_requests`` restart the master and the other workers still hold the socket, so
  new connections queue for them and nothing is refused.

Everything else is gthread's: requests already accepted (running, waiting for a batch slot,
or waiting for a thread) are served, and kept-alive connections are answered with
``Connection: close`` for a short linger before they are closed.

Errors Gunicorn answers itself, before the app sees the request (a request line over
``limit_request_line``, a header over ``limit_request_field_size``, malformed HTTP), are
written as the API's JSON envelope with an ``X-Request-ID`` instead of Gunicorn's HTML page:
same status, reason and message. Gunicorn has no setting for that body; its one writer,
``gunicorn.util.write_error`` (pinned gunicorn 27.0.1, called only by
``Worker.handle_error``), is replaced in each worker process when it starts.

Slow and hostile clients (docs/security.md, "Slow and hostile clients") cost no request thread
until they have sent a whole request head, and only ``CLIENT_READ_TIMEOUT_S`` after that:

* A new or kept-alive connection waits in the worker's event loop (not in a thread, as stock
  gthread's first 5 s do) until its request line and headers have arrived; one that has not
  sent them ``CLIENT_READ_TIMEOUT_S`` after it was accepted (or became readable again) is
  closed. A slowloris trickling header bytes holds a socket, never a thread.
* In the thread, every read of the request (its body, a drain) ends by a deadline
  (``server.web.client_reads``); a body that does not arrive is answered 408 by the app.
* An answer that sets ``Connection: close`` (the app does, when it leaves a body unread:
  ``server.web.drain``) closes the connection: Gunicorn drops that hop-by-hop header and would
  otherwise keep the connection and read the unread body in the thread.
* Closing "gracefully" (FIN, then discard what the client still sends so the kernel does not
  reset the answer away) happens in the event loop: stock gthread does it in the loop's own
  thread with a blocking 2 s read per connection, so 50 refused stalled clients stopped it
  from accepting for 100 s. Up to ``LINGER_MAX_BYTES`` are discarded within
  ``CLIENT_READ_TIMEOUT_S``, then the socket is closed.

With TLS terminated by Gunicorn (``certfile``) or HTTP/2 prior knowledge, raw head bytes
cannot be gathered before the handshake: those connections take a thread at once, as in stock
gthread, with the same read deadline. Terminate TLS at a proxy for the full protection.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

from server.config import DEFAULTS
from server.web.client_reads import DeadlineConn, head_complete

# Most bytes discarded from a closed connection's client (the unread rest of a refused
# body), in the event loop: a 12 MB body sent in full before reading still gets its 413.
LINGER_MAX_BYTES = 32 * 2**20
# A request head larger than this is handed to a thread unfinished: the parser refuses it
# (431) or reads the rest by the deadline. Above Gunicorn's own line and field limits.
_HEAD_GATHER_BYTES = 64 * 1024
_RECV_BYTES = 256 * 1024

# Stable machine-readable codes for the statuses Gunicorn answers itself.
_GUNICORN_CODES = {
    400: "bad_request", 403: "forbidden", 414: "uri_too_long",
    417: "expectation_failed", 431: "headers_too_large", 500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Gunicorn's error answer as ``{"error": {"code", "message"}}`` with a new request id."""
    body = json.dumps({"error": {"code": _GUNICORN_CODES.get(status_int, "http_error"),
                                 "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-ID: {uuid.uuid4().hex}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


class _ClosingApp:
    """The WSGI app, with ``Connection: close`` from the app closing Gunicorn's connection.

    Gunicorn's ``start_response`` is its Response's bound method (pinned 27.0.1), whose
    ``force_close()`` makes it answer ``Connection: close`` and close after the answer.
    Attributes (``extensions``, ``config``) are the app's, for the hooks that read them.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            if any(name.lower() == "connection" and value.lower() == "close"
                   for name, value in headers):
                response = getattr(start_response, "__self__", None)
                if hasattr(response, "force_close"):
                    response.force_close()
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


class GracefulThreadWorker(ThreadWorker):
    """gthread, closing this worker's listening sockets the moment it stops accepting,
    answering Gunicorn's own errors in JSON, and keeping slow clients out of its threads."""

    def init_process(self) -> None:
        """Install the JSON error writer in this worker process, then run as gthread."""
        util.write_error = write_json_error
        self.read_timeout_s = float(DEFAULTS["CLIENT_READ_TIMEOUT_S"])
        self.gathering: deque[DeadlineConn] = deque()  # waiting for a whole request head
        self.lingering: deque[DeadlineConn] = deque()  # closed for writing, discarding
        self.stopping_since: float | None = None
        super().init_process()

    def run(self) -> None:
        """Read the app's client deadline, let it close connections, then run as gthread."""
        config = getattr(self.wsgi, "config", {})
        self.read_timeout_s = float(config.get("CLIENT_READ_TIMEOUT_S", self.read_timeout_s))
        self.wsgi = _ClosingApp(self.wsgi)
        super().run()

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and wait for its request head in the event loop."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = DeadlineConn(self.cfg, client_sock, client_addr, listener.getsockname(),
                            self.read_timeout_s, self.linger)
        self.await_head(conn)

    def on_client_socket_readable(self, conn: DeadlineConn, client: socket.socket) -> None:
        """A kept-alive connection has a next request coming: gather its head first."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.await_head(conn)

    def await_head(self, conn: DeadlineConn) -> None:
        """Give ``conn`` to a thread once its request head is in, or close it by the deadline."""
        if self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            self.enqueue_req(conn)  # bytes before a handshake or preface cannot be parsed here
            return
        conn.sock.setblocking(False)
        conn.head_deadline = time.monotonic() + self.read_timeout_s
        self.gathering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_head_bytes, conn))

    def on_head_bytes(self, conn: DeadlineConn, client: socket.socket) -> None:
        """Read what the client sent; hand the connection over once its head is whole."""
        data = _recv_ready(client)
        if data is None:
            return
        conn.head += data
        if data and not head_complete(conn.head) and len(conn.head) < _HEAD_GATHER_BYTES:
            return
        self.poller.unregister(client)
        self.gathering.remove(conn)
        if not data:  # the client went away before sending a whole request
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True  # gthread's own wait for a first byte is not needed
        self.enqueue_req(conn)

    def handle(self, conn: DeadlineConn) -> Any:
        """Serve one request (gthread's), its reads ending by the client read deadline."""
        conn.start_request()
        return super().handle(conn)

    def linger(self, conn: DeadlineConn) -> None:
        """Send FIN, then discard what the client still sends, in the event loop."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self.on_linger_bytes, conn))
        except (OSError, ValueError, KeyError):
            util.close(conn.sock)
            return
        conn.linger_deadline = time.monotonic() + self.read_timeout_s
        self.lingering.append(conn)

    def on_linger_bytes(self, conn: DeadlineConn, client: socket.socket) -> None:
        """Discard a closing client's bytes; close at its end or at the byte cap."""
        data = _recv_ready(client)
        if data is None:
            return
        conn.lingered_bytes += len(data)
        if data and conn.lingered_bytes < LINGER_MAX_BYTES:
            return
        self._drop(self.lingering, conn)

    def murder_pending(self) -> None:
        """Gthread's, then close connections past their head or linger deadline."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and self.stopping_since is None:
            self.stopping_since = now
        # A stopping worker keeps waiting heads only as long as gthread keeps kept-alive ones.
        cutoff = (self.stopping_since + STOP_KEEPALIVE_LINGER if self.stopping_since
                  else float("inf"))
        while self.gathering and min(self.gathering[0].head_deadline, cutoff) <= now:
            self.nr_conns -= 1
            self._drop(self.gathering, self.gathering[0])
        while self.lingering and self.lingering[0].linger_deadline <= now:
            self._drop(self.lingering, self.lingering[0])

    def _drop(self, queue: deque[DeadlineConn], conn: DeadlineConn) -> None:
        queue.remove(conn)
        with contextlib.suppress(OSError, KeyError, ValueError):  # the poller may be closed
            self.poller.unregister(conn.sock)
        util.close(conn.sock)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop (or start) polling the listeners; a stopping worker also closes them."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()  # idempotent: gthread closes them again when it exits


def _recv_ready(client: socket.socket) -> bytes | None:
    """What a non-blocking socket the poller found readable holds: b"" at its end or on an
    error (the client is gone), None when nothing was there after all."""
    try:
        return client.recv(_RECV_BYTES)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
