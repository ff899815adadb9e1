"""Serve concurrent requests together: a bounded queue and one generation thread per worker.

Request threads (Gunicorn gthread) ``submit`` a Job and wait on it. The generation thread
takes whatever is waiting (up to ``max_batch_size``, after gathering for at most
``batch_wait_ms``), runs one batched decode, and hands each job its own result. A full
queue refuses at once (QueueFull -> 503) instead of piling up memory; a job whose client
gave up (timeout -> 504) is marked cancelled and leaves the batch at the next token.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.decoding import Generation, GenerationRequest
from server.memory import HeapReleaser

log = logging.getLogger(__name__)


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
        """Time spent waiting for a batch slot."""
        end = self.started_at or self.finished_at or time.monotonic()
        return (end - self.enqueued_at) * 1000.0

    @property
    def inference_ms(self) -> float:
        """Time spent in the batch that generated this job."""
        if self.started_at is None:
            return 0.0
        return ((self.finished_at or time.monotonic()) - self.started_at) * 1000.0


# run_batch(requests, cancelled(index) -> bool, on_token(index, token)) -> one result each
RunBatch = Callable[
    [Sequence[GenerationRequest], Callable[[int], bool], Callable[[int, int], None]],
    list[Generation],
]


class Batcher:
    """A bounded queue drained in batches by one daemon thread."""

    def __init__(self, run_batch: RunBatch, max_batch_size: int, batch_wait_ms: float,
                 max_queue: int, on_batch: Callable[[int], None] = lambda size: None) -> None:
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._max_batch_size = max_batch_size
        self._batch_wait_s = batch_wait_ms / 1000.0
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._heap = HeapReleaser()
        self.running = 0  # jobs in the batch being generated now

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the batch being generated)."""
        return self._queue.qsize()

    def submit(self, job: Job) -> Job:
        """Queue ``job`` or raise QueueFull without waiting."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job

    def start(self, before_loop: Callable[[], None] = lambda: None) -> None:
        """Start the generation thread; ``before_loop`` (e.g. warm-up) runs in it first."""
        def main() -> None:
            before_loop()
            while True:
                self.run_once(self._queue.get())

        self._thread = threading.Thread(target=main, name="generation", daemon=True)
        self._thread.start()

    def _gather(self, first: Job) -> list[Job]:
        jobs = [first]
        deadline = time.monotonic() + self._batch_wait_s
        while len(jobs) < self._max_batch_size:
            try:
                jobs.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return [job for job in jobs if not job.cancelled]

    def run_once(self, first: Job) -> None:
        """Generate one batch starting with ``first`` plus whatever else is waiting."""
        jobs = self._gather(first)
        if not jobs:
            return
        started = time.monotonic()
        for job in jobs:
            job.started_at, job.batch_size = started, len(jobs)
        self.running = len(jobs)
        self._on_batch(len(jobs))
        try:
            results = self._run_batch([j.request for j in jobs], lambda i: jobs[i].cancelled,
                                      lambda i, token: jobs[i].on_token(token))
        except Exception as error:  # one bad batch must not kill the worker's only generator
            log.error("batch of %d failed: %s", len(jobs), type(error).__name__)
            for job in jobs:
                job.finish(error=error)
            return
        finally:
            self.running = 0
        for job, result in zip(jobs, results, strict=True):
            job.finish(result=result)
        # Hand the batch's freed memory back when idle, and now and then under steady load.
        self._heap.after_batch(idle=self._queue.empty())
