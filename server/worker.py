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
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class GracefulThreadWorker(ThreadWorker):
    """gthread, closing this worker's listening sockets the moment it stops accepting."""

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop (or start) polling the listeners; a stopping worker also closes them."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()  # idempotent: gthread closes them again when it exits
