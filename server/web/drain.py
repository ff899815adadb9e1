"""Request bodies the app did not read, or could not: a short drain, a closed connection, a 408.

After an answer, a body the view left unread is either read and discarded here, so the
connection can be kept alive, or left unread and the connection closed:

* A refusal (401, 403, 408, 413, 429), a body over ``MAX_CONTENT_LENGTH`` or a chunked one is
  never read: the answer says ``Connection: close``. Under Gunicorn our worker
  (``server.web.worker``) then sends the answer, half-closes, and discards what the client still
  sends (up to 32 MiB, within ``CLIENT_READ_TIMEOUT_S``) in its event loop, without a
  request thread: a client that sends its whole body before reading (Python's http.client,
  curl with a file, most load generators) still reads its 413, and one that stalls after
  its headers holds no thread.
* Any other answer (say a 404 or a 503 before the view read the body) drains the rest, at
  most ``MAX_CONTENT_LENGTH`` bytes, for at most ``DRAIN_TIMEOUT_S``; a drain that does not
  finish in time closes the connection instead.

A body read that passes the client read deadline (``server.web.client_reads``) reaches the app as
Werkzeug's ``ClientDisconnected`` raised from a ``TimeoutError``: it is answered 408
``request_timeout``, and the connection is closed.
"""

from __future__ import annotations

import time

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import ClientDisconnected

from server.web.errors import error_response

# Seconds a drain may wait for the rest of a body before the connection is closed instead.
DRAIN_TIMEOUT_S = 1.0
# Answers after which the body is not wanted: it is not read, and the connection closes.
REFUSALS = frozenset({401, 403, 408, 413, 429})
_CHUNK_BYTES = 64 * 1024


def _drained(length: int) -> bool:
    """Read and discard what is left of a body of ``length`` bytes, within the deadline."""
    # Opened (the view parsed the body): its stream knows what is left. Never opened: all of
    # it is unread, so exactly ``length`` bytes are read from the server's input, never more
    # (Werkzeug's dev server hands over the raw socket, where more would block).
    opened = "stream" in request.__dict__  # werkzeug's cached_property, once made
    stream = request.stream if opened else request.environ["wsgi.input"]
    sock = request.environ.get("gunicorn.socket")
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    left = length
    try:
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if sock is not None:  # our worker's reads wait at most the socket's timeout
                sock.settimeout(remaining)
            chunk = stream.read(min(_CHUNK_BYTES, left))
            if not chunk:
                return True
            left -= len(chunk)
        return True
    except (OSError, ClientDisconnected):  # timed out or gone: close, do not keep alive
        return False
    finally:
        if sock is not None:
            sock.settimeout(None)


def _drain(response: Response) -> Response:
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    length = request.content_length or 0
    if not (length or chunked):
        return response
    if (response.status_code in REFUSALS or chunked
            or length > current_app.config["MAX_CONTENT_LENGTH"] or not _drained(length)):
        response.headers["Connection"] = "close"
    return response


def _body_timed_out(error: ClientDisconnected) -> Response:
    if isinstance(error.__context__, TimeoutError):
        seconds = current_app.config["CLIENT_READ_TIMEOUT_S"]
        response = error_response(408, "request_timeout",
                                  f"the request body did not arrive within {seconds:g} s "
                                  "(CLIENT_READ_TIMEOUT_S)")
    else:
        response = error_response(400, "client_disconnected",
                                  "the request body ended before its Content-Length")
    response.headers["Connection"] = "close"
    return response


def init_app(app: Flask) -> None:
    """Drain or refuse unread request bodies after every answer; 408 a body that stalled."""
    app.register_error_handler(ClientDisconnected, _body_timed_out)
    app.after_request(_drain)
