"""Reading a request from a client that may stall: deadlines, gathered headers, lingering closes.

The parts of ``server.web.worker`` that deal with one client connection (pinned gunicorn 27.0.1):

* ``DeadlineUnreader`` makes every read of a request in a request thread (the rest of its
  headers, its body, a drain) end by a deadline, ``CLIENT_READ_TIMEOUT_S`` after the thread
  took the request. A read past it raises ``ClientReadTimeout``: Gunicorn closes the
  connection quietly (it is a ``NoMoreData``), and a body read inside the app surfaces as
  Werkzeug's ``ClientDisconnected`` caused by a ``TimeoutError``, which ``server.web.drain``
  answers with a JSON 408. Between reads the socket keeps its own timeout (none), so a
  long streamed answer is never cut by the read deadline.
* ``DeadlineConn`` is gthread's connection with those reads, plus the bytes of its request
  head that the worker's event loop gathered before any thread was committed, and a close
  that hands the socket back to the event loop to linger instead of blocking it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn


class ClientReadTimeout(NoMoreData, TimeoutError):
    """The client did not send its request (head or body) before the read deadline."""

    def __str__(self) -> str:
        return "client read deadline passed"


def head_complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a whole request head (or a bare-LF one, for the parser to
    refuse): a thread can then parse it without waiting on the client."""
    return b"\r\n\r\n" in data or b"\n\n" in data


class DeadlineUnreader(SocketUnreader):
    """Gunicorn's socket reader whose reads fail once ``deadline`` (monotonic) has passed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock)
        self.deadline = deadline

    def chunk(self, size_hint: int | None = None) -> bytes:
        """One read from the socket, waiting at most until the deadline (or a shorter
        timeout a caller set on the socket, e.g. Gunicorn's or our drain's)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ClientReadTimeout()
        prior = self.sock.gettimeout()
        self.sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return super().chunk(size_hint)
        except TimeoutError:  # socket.timeout is TimeoutError
            raise ClientReadTimeout() from None
        finally:
            self.sock.settimeout(prior)


class DeadlineConn(TConn):
    """A gthread connection whose request reads end by a deadline."""

    def __init__(self, cfg, sock: socket.socket, client, server, read_timeout_s: float,
                 linger: Callable[[DeadlineConn], None]) -> None:
        super().__init__(cfg, sock, client, server)
        self.read_timeout_s = read_timeout_s
        self.linger = linger
        self.head = bytearray()     # request head bytes gathered by the event loop
        self.head_deadline = 0.0    # when the event loop gives up gathering them
        self.read_deadline = 0.0    # when this request's reads in a thread give up
        self.lingered_bytes = 0     # discarded while lingering on close
        self.linger_deadline = 0.0

    def start_request(self) -> None:
        """Start the read deadline of the request a thread is taking up now."""
        self.read_deadline = time.monotonic() + self.read_timeout_s
        if self.parser is not None and not self.is_http2:
            self.parser.unreader.deadline = self.read_deadline
            self._hand_over_head()

    def init(self) -> None:
        """Gthread's set-up, then reads with this request's deadline."""
        if self.initialized:
            return
        super().init()
        if self.is_http2 or type(self.parser.unreader) is not SocketUnreader:
            return
        reader = DeadlineUnreader(self.sock, self.read_deadline)
        reader.buf = self.parser.unreader.buf  # bytes an h2c check gave back, if any
        self.parser.unreader = reader
        self._hand_over_head()

    def _hand_over_head(self) -> None:
        if self.head:
            self.parser.unreader.unread(bytes(self.head))
            self.head.clear()

    def close(self, graceful: bool = False) -> None:
        """Close; a graceful close lingers in the worker's event loop, not in this call."""
        if graceful:
            self.linger(self)
        else:
            super().close()
