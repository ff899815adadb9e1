"""The continuous scheduler's queue (server.engine.scheduler) around a real step engine on tiny:
fast refusal when full, at most max_batch_size rows, cancelled jobs skipped, a failed step
fails only the rows that fail alone and the thread goes on, streaming gets every token then
the end."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.waiting import wait_until
from server.engine.decoding import GenerationRequest
from server.engine.jobs import Job, QueueFull
from server.engine.model import LoadedModel, load_model
from server.engine.scheduler import Scheduler
from server.engine.step import StepEngine, StepReport
from tests.conftest import MODELS_DIR


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model("synthetic:tiny", "float32", MODELS_DIR)


class _GatedEngine(StepEngine):
    """The real engine, holding each step until ``release`` is set; records rows per step,
    fails the next step when ``fail_next`` is set, and every step when ``fail_always``."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded.model, loaded.eos_id, ignore_eos=True)
        self.release, self.entered = threading.Event(), threading.Event()
        self.rows: list[int] = []
        self.fail_next = self.fail_always = False

    def step(self, rows, prefill=None) -> StepReport:
        self.entered.set()
        assert self.release.wait(300)
        self.rows.append(len(rows))
        if self.fail_next or self.fail_always:
            self.fail_next = False
            raise RuntimeError("step failed")
        return super().step(rows, prefill)


def _start(loaded: LoadedModel, max_batch: int, max_queue: int) -> tuple[Scheduler, _GatedEngine]:
    engine = _GatedEngine(loaded)
    scheduler = Scheduler(engine, max_batch, max_queue, timeout_s=float("inf"))
    scheduler.start()
    return scheduler, engine


def _job(n: int = 1) -> Job:
    return Job(GenerationRequest([1, 2, 3], max_new_tokens=n))


def test_full_queue_refuses_at_once(loaded) -> None:
    scheduler, engine = _start(loaded, max_batch=1, max_queue=2)
    busy = scheduler.submit(_job())
    assert engine.entered.wait(300)
    waiting = [scheduler.submit(_job()), scheduler.submit(_job())]
    started = time.monotonic()
    with pytest.raises(QueueFull):
        scheduler.submit(_job())
    assert time.monotonic() - started < 0.1  # a refusal, not a wait
    engine.release.set()
    assert all(job.wait(300) for job in [busy, *waiting])


def test_at_most_max_batch_rows_run_each_with_its_own_length(loaded) -> None:
    scheduler, engine = _start(loaded, max_batch=4, max_queue=16)
    first = scheduler.submit(_job(1))
    assert engine.entered.wait(300)
    queued = [scheduler.submit(_job(n)) for n in (2, 3, 4, 5, 6)]
    engine.release.set()
    assert all(job.wait(300) for job in [first, *queued])
    assert max(engine.rows) == 4 and engine.rows[0] == 1
    assert [len(job.result.token_ids) for job in queued] == [2, 3, 4, 5, 6]


def test_cancelled_waiting_job_never_runs(loaded) -> None:
    scheduler, engine = _start(loaded, max_batch=1, max_queue=4)
    scheduler.submit(_job())
    assert engine.entered.wait(300)
    gone, kept = scheduler.submit(_job()), scheduler.submit(_job())
    gone.cancelled = True
    engine.release.set()
    assert gone.wait(300) and kept.wait(300)
    assert gone.result is None and isinstance(gone.error, TimeoutError)
    assert gone.started_at is None and kept.result.finish_reason == "length"


def test_failing_step_fails_its_jobs_and_the_thread_goes_on(loaded) -> None:
    scheduler, engine = _start(loaded, max_batch=1, max_queue=4)
    engine.fail_always = True
    bad = scheduler.submit(_job())
    engine.release.set()
    assert bad.wait(300) and isinstance(bad.error, RuntimeError)
    engine.fail_always = False
    good = scheduler.submit(_job(3))
    assert good.wait(300) and len(good.result.token_ids) == 3
    wait_until(lambda: scheduler.running == 0, "the finished row to leave", timeout_s=300)


def test_step_that_fails_once_is_retried_row_by_row(loaded) -> None:
    scheduler, engine = _start(loaded, max_batch=2, max_queue=4)
    engine.fail_next = True
    job = scheduler.submit(_job(3))
    engine.release.set()
    assert job.wait(300) and job.error is None and len(job.result.token_ids) == 3


def test_a_row_that_fails_fails_alone(loaded) -> None:
    """A prompt the model cannot read (a token id past the vocabulary: the embedding raises)
    packed beside a good row: only its own request fails; the good row's greedy tokens are
    the ones it gets alone."""
    alone, engine_alone = _start(loaded, max_batch=2, max_queue=4)
    engine_alone.release.set()
    reference = alone.submit(_job(5))
    assert reference.wait(300) and reference.error is None
    scheduler, engine = _start(loaded, max_batch=2, max_queue=4)
    good = scheduler.submit(_job(5))
    assert engine.entered.wait(300)  # the good row's first step is held: the bad one queues
    vocab = loaded.model.config.vocab_size
    bad = scheduler.submit(Job(GenerationRequest([1, vocab + 7], max_new_tokens=5)))
    engine.release.set()
    assert good.wait(300) and bad.wait(300)
    assert isinstance(bad.error, IndexError) and bad.result is None
    assert good.error is None and good.result.token_ids == reference.result.token_ids
    assert 2 in engine.rows  # they were stepped together, and that step failed


def test_streaming_job_receives_every_token_then_the_end(loaded) -> None:
    scheduler, engine = _start(loaded, max_batch=2, max_queue=4)
    engine.release.set()
    job = Job(GenerationRequest([5, 6, 7], max_new_tokens=5), stream=queue.SimpleQueue())
    scheduler.submit(job)
    assert job.wait(300)
    streamed = []
    while (token := job.stream.get(timeout=1)) is not None:
        streamed.append(token)
    assert streamed == job.result.token_ids and len(streamed) == 5


def test_an_error_outside_a_step_fails_the_running_jobs_and_the_thread_goes_on(
        loaded) -> None:
    """A bug in the bookkeeping around a step (once: a prefix-cache compare that raised)
    stopped the generation thread, and every later request hung."""
    scheduler, engine = _start(loaded, max_batch=2, max_queue=4)
    engine.release.set()
    broken = {"once": True}
    real_keep = scheduler.prefixes.keep

    def keep(*args, **kwargs):
        if broken.pop("once", False):
            raise RuntimeError("bookkeeping failed")
        return real_keep(*args, **kwargs)

    scheduler.prefixes.keep = keep
    first = scheduler.submit(_job(2))
    assert first.wait(300) and isinstance(first.error, RuntimeError)
    second = scheduler.submit(_job(2))
    assert second.wait(300) and second.error is None and len(second.result.token_ids) == 2
