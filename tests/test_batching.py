"""The batcher: bounded queue, batches gathered from what is waiting, cancellation."""

import queue
import threading
import time

import pytest

from server.batching import Batcher, Job, QueueFull
from server.decoding import Generation, GenerationRequest


class _GatedRun:
    """A run_batch that records batch sizes and blocks until released (to fill the queue)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, requests, cancelled, on_token):
        self.sizes.append(len(requests))
        self.entered.set()
        self.release.wait(10)
        return [Generation([1] * r.max_new_tokens, "length") for r in requests]


def _job(n: int = 1) -> Job:
    return Job(GenerationRequest([1, 2, 3], max_new_tokens=n))


def test_full_queue_refuses_at_once() -> None:
    run = _GatedRun()
    batcher = Batcher(run, max_batch_size=1, batch_wait_ms=0, max_queue=2)
    batcher.start()
    busy = batcher.submit(_job())
    assert run.entered.wait(5)
    waiting = [batcher.submit(_job()), batcher.submit(_job())]
    started = time.monotonic()
    with pytest.raises(QueueFull):
        batcher.submit(_job())
    assert time.monotonic() - started < 0.1
    run.release.set()
    assert all(j.wait(5) for j in [busy, *waiting])


def test_waiting_jobs_are_generated_together_with_their_own_lengths() -> None:
    run = _GatedRun()
    batcher = Batcher(run, max_batch_size=4, batch_wait_ms=0, max_queue=16)
    batcher.start()
    first = batcher.submit(_job(1))
    assert run.entered.wait(5)
    queued = [batcher.submit(_job(n)) for n in (2, 3, 4, 5, 6)]
    run.release.set()
    assert all(j.wait(5) for j in [first, *queued])
    assert run.sizes == [1, 4, 1]  # 5 waiting, at most 4 per batch
    assert [len(j.result.token_ids) for j in queued] == [2, 3, 4, 5, 6]
    assert [j.batch_size for j in queued] == [4, 4, 4, 4, 1]


def test_cancelled_waiting_job_is_skipped() -> None:
    run = _GatedRun()
    batcher = Batcher(run, max_batch_size=4, batch_wait_ms=0, max_queue=16)
    batcher.start()
    batcher.submit(_job())
    assert run.entered.wait(5)
    gone, kept = batcher.submit(_job()), batcher.submit(_job())
    gone.cancelled = True
    run.release.set()
    assert kept.wait(5)
    assert run.sizes == [1, 1]
    assert gone.result is None


def test_failed_batch_fails_its_jobs_and_the_thread_goes_on() -> None:
    calls = []

    def flaky(requests, cancelled, on_token):
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [Generation([7], "length") for _ in requests]

    batcher = Batcher(flaky, max_batch_size=1, batch_wait_ms=0, max_queue=4)
    batcher.start()
    bad = batcher.submit(_job())
    assert bad.wait(5) and isinstance(bad.error, RuntimeError)
    good = batcher.submit(_job())
    assert good.wait(5) and good.result.token_ids == [7]


def test_streaming_job_receives_tokens_then_end() -> None:
    def run(requests, cancelled, on_token):
        for token in (4, 5, 6):
            on_token(0, token)
        return [Generation([4, 5, 6], "length")]

    batcher = Batcher(run, max_batch_size=1, batch_wait_ms=0, max_queue=4)
    batcher.start()
    job = _job()
    job.stream = queue.SimpleQueue()
    batcher.submit(job)
    received = [job.stream.get(timeout=5) for _ in range(4)]
    assert received == [4, 5, 6, None]
