"""Read what a refused request still has in flight, so its client can read the refusal.

A client that sends its whole body before reading the answer (Python's http.client, curl
with a file, most load generators) got a broken pipe instead of our 413: the server
answered after the headers and closed the connection while the body was still arriving.
After any answer, the unread rest of a body up to ``DRAIN_LIMIT_BYTES`` is read and
discarded; a larger one is not (the client then sees a reset, as before): reading
gigabytes for a request already refused would let any client hold a request thread.
"""

from __future__ import annotations

from flask import Flask, Response, request

# Largest body read and discarded after an answer (12 MB reads in ~10 ms on loopback).
DRAIN_LIMIT_BYTES = 32 * 2**20
_CHUNK_BYTES = 256 * 1024


def _drain(response: Response) -> Response:
    length = request.content_length or 0
    if 0 < length <= DRAIN_LIMIT_BYTES:
        # Opened (the view parsed the body): its stream knows what is left. Never opened
        # (refused first, or too large to open: request.stream refuses that): all of it is
        # unread, so exactly ``length`` bytes are read from the server's input, never more
        # (Werkzeug's dev server hands over the raw socket, where more would block).
        opened = "stream" in request.__dict__  # werkzeug's cached_property, once made
        stream = request.stream if opened else request.environ["wsgi.input"]
        left = length
        while left > 0 and (chunk := stream.read(min(_CHUNK_BYTES, left))):
            left -= len(chunk)
    return response


def init_app(app: Flask) -> None:
    """Drain unread request bodies (bounded) after every answer."""
    app.after_request(_drain)
