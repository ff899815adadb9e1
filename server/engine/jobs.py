"""What travels between a request thread and its worker's generation thread.

A request thread (Gunicorn gthread) builds a ``Job``, submits it to the scheduler
(server.engine.scheduler) and waits on it; the generation thread feeds it tokens (streaming) and
finishes it. ``QueueFull`` is the scheduler's fast refusal (503) when its bounded queue is
at capacity, so overload costs no memory.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from server.engine.decoding import Generation, GenerationRequest


class QueueFull(Exception):
    """The worker's queue is at capacity; the request was not accepted."""


@dataclass
class Job:
    """A request travelling from a request thread to the generation thread and back."""

    request: GenerationRequest
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    batch_size: int = 0
    result: Generation | None = None
    error: BaseException | None = None
    cancelled: bool = False
    predicted_s: float = 0.0  # the scheduler's forecast at admission (server.engine.scheduler)
    cached_tokens: int = 0  # prompt tokens copied from its tenant's kept caches at joining
    cpu_s: float = 0.0  # its share of the worker's CPU over its steps (server.engine.step_cost)
    # Set by a streaming request: receives each token id as it is generated, then None.
    stream: queue.SimpleQueue | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def on_token(self, token: int) -> None:
        """Forward a freshly generated token to the streaming reader, if any."""
        if self.stream is not None:
            self.stream.put(token)

    def wait(self, timeout_s: float) -> bool:
        """Block until the job is finished; False if ``timeout_s`` passed first."""
        return self._done.wait(timeout_s)

    def finish(self, result: Generation | None = None, error: BaseException | None = None):
        """Record the outcome and wake the waiting request thread."""
        self.result, self.error = result, error
        self.finished_at = time.monotonic()
        self._done.set()
        if self.stream is not None:
            self.stream.put(None)  # end of stream

    @property
    def queue_ms(self) -> float:
        """Time spent waiting for a row in the running set."""
        end = self.started_at or self.finished_at or time.monotonic()
        return (end - self.enqueued_at) * 1000.0

    @property
    def inference_ms(self) -> float:
        """Time from joining the running set to the result."""
        if self.started_at is None:
            return 0.0
        return ((self.finished_at or time.monotonic()) - self.started_at) * 1000.0
