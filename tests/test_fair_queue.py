"""Tenants share a worker fairly (server.engine.fair_queue, server.engine.scheduler): keys are
served in
turn, a small job runs ahead of a big one still waiting for KV room (until the big one has
aged), a key's share of rows and of the queue is bounded, and the forecast follows the
same order. Around the real step engine on tiny."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from server.engine.decoding import GenerationRequest
from server.engine.fair_queue import FairQueue, TenantQueueFull
from server.engine.jobs import Job, QueueFull
from server.engine.model import LoadedModel, load_model
from server.engine.scheduler import Scheduler, _start_step
from server.engine.step import StepEngine
from tests.conftest import MODELS_DIR


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model("synthetic:tiny", "float32", MODELS_DIR)


def _job(tenant: str, prompt: int = 3, new: int = 1) -> Job:
    return Job(GenerationRequest(list(range(1, prompt + 1)), max_new_tokens=new, tenant=tenant))


def test_order_interleaves_tenants_fewest_running_rows_first() -> None:
    fair = FairQueue(maxsize=16)
    jobs = {name: [_job(name[0]) for _ in range(3)] for name in ("a", "b")}
    for job in jobs["a"] + jobs["b"]:  # a's three arrive first
        fair.put(job)
    a, b = jobs["a"], jobs["b"]
    assert fair.order() == [a[0], b[0], a[1], b[1], a[2], b[2]]
    # a already runs two rows: b's jobs go first until b has as many
    assert fair.order({"a": 2}) == [b[0], b[1], a[0], b[2], a[1], a[2]]
    newcomer = _job("c")  # no rows either: right after b's older job, ahead of the rest
    assert fair.order({"a": 2}, extra=newcomer)[:3] == [b[0], newcomer, b[1]]


def test_a_tenants_queue_share_is_bounded_and_says_so() -> None:
    fair = FairQueue(maxsize=4, tenant_max=2)
    fair.put(_job("a"))
    fair.put(_job("a"))
    with pytest.raises(TenantQueueFull):
        fair.put(_job("a"))
    fair.put(_job("b"))
    fair.put(_job("b"))
    with pytest.raises(QueueFull) as refused:
        fair.put(_job("c"))
    assert not isinstance(refused.value, TenantQueueFull)  # the server's queue is full


def test_forecast_lets_a_job_that_fits_start_beside_a_head_that_does_not() -> None:
    # one row runs 10 steps holding 900 of 1,000 positions; a 900-position job waits for
    # it; a 10-position job behind it fits at once
    assert _start_step([(10, 900)], [(10, 900)], 10, max_rows=8, kv_tokens=1000) == (0, 2)
    assert _start_step([(10, 900)], [(10, 10)], 900, max_rows=8, kv_tokens=1000) == (10, 2)
    assert _start_step([(10, 900)], [], 900, max_rows=8, kv_tokens=1000) == (10, 1)
    assert _start_step([(10, 5)], [(3, 5)], 5, max_rows=2, kv_tokens=0) == (3, 2)


def test_forecast_counts_the_rows_the_kv_budget_lets_run_together() -> None:
    # 32 rows allowed, but 1,280 positions hold 6 jobs of 192: the 32nd job waits for
    # five rounds and never runs beside more than 6 rows
    joining = _start_step([], [(129, 192)] * 31, 192, max_rows=32, kv_tokens=1280)
    assert joining.rows == 6 and joining.step == 5 * 129
    assert _start_step([], [(129, 192)] * 31, 192, max_rows=32, kv_tokens=0).rows == 32


def _scheduler(loaded: LoadedModel, **kwargs) -> Scheduler:
    engine = StepEngine(loaded.model, loaded.eos_id, ignore_eos=True)
    scheduler = Scheduler(engine, kwargs.pop("max_batch", 8), 16, timeout_s=math.inf, **kwargs)
    scheduler.start()
    return scheduler


def _wait_all(*jobs: Job) -> None:
    for job in jobs:
        assert job.wait(300)
        assert job.error is None, job.error


def test_small_job_of_another_key_is_not_held_behind_a_key_waiting_for_kv(loaded) -> None:
    """Key a's long jobs each need most of the KV budget, so they run one at a time; key
    b's short job joins beside a's running row instead of waiting behind a's queue (first
    come, first served made it finish after a's second job)."""
    scheduler = _scheduler(loaded, kv_tokens=300)
    long = [_job("a", prompt=40, new=200) for _ in range(3)]
    for job in long:
        scheduler.submit(job)
    short = scheduler.submit(_job("b", prompt=2, new=2))
    _wait_all(short, *long)
    assert short.finished_at < long[0].finished_at
    assert long[0].finished_at <= long[1].started_at  # a's jobs did not fit together


@pytest.mark.parametrize("aging_s", [math.inf, 0.0])
def test_job_that_fits_overtakes_one_that_does_not_until_it_has_aged(loaded, aging_s) -> None:
    """Behind a running long job, a second long one waits for KV room and a short one of the
    same key fits: it overtakes, unless the waiting one has aged (here at once), when
    nothing overtakes it, so it cannot starve."""
    scheduler = _scheduler(loaded, kv_tokens=300, aging_s=aging_s)
    first, second = _job("a", prompt=40, new=200), _job("a", prompt=40, new=200)
    short = _job("a", prompt=2, new=2)
    for job in (first, second, short):
        scheduler.submit(job)
    _wait_all(first, second, short)
    overtook = short.started_at < second.started_at
    assert overtook == (aging_s > 0), (short.started_at, second.started_at)


def test_a_keys_row_share_leaves_rows_for_other_keys(loaded) -> None:
    scheduler = _scheduler(loaded, max_batch=2, tenant_rows=1)
    a = [scheduler.submit(_job("a", new=50)) for _ in range(2)]
    b = scheduler.submit(_job("b", new=50))
    _wait_all(*a, b)
    assert b.started_at < a[1].started_at  # b took the row a's second job could not
    assert a[0].finished_at <= a[1].started_at  # a never ran two rows at once
