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
"""

from __future__ import annotations

import json
import socket
import uuid

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

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


class GracefulThreadWorker(ThreadWorker):
    """gthread, closing this worker's listening sockets the moment it stops accepting, and
    answering Gunicorn's own errors in JSON."""

    def init_process(self) -> None:
        """Install the JSON error writer in this worker process, then run as gthread."""
        util.write_error = write_json_error
        super().init_process()

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop (or start) polling the listeners; a stopping worker also closes them."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()  # idempotent: gthread closes them again when it exits
