"""The worker's CPU charged to requests (server.engine.step_cost): the split by tokens fed,
and a real scheduler on tiny charging its jobs every core-second it spent after warm-up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from harness.waiting import wait_until
from server.engine.decoding import GenerationRequest
from server.engine.jobs import Job
from server.engine.model import LoadedModel, load_model
from server.engine.scheduler import Scheduler
from server.engine.step import StepEngine
from server.engine.step_cost import StepClock, apportion
from tests.conftest import MODELS_DIR


@pytest.mark.parametrize(("fed", "expected"), [
    ({0: 1, 1: 1}, {0: 0.5, 1: 0.5}),  # two decoding rows
    ({0: 1, 1: 3}, {0: 0.25, 1: 0.75}),  # a decoding row beside a 3-token prompt chunk
    ({0: 0, 1: 4}, {1: 1.0}),  # a row that fed nothing pays nothing
    ({}, {}),
])
def test_apportion_follows_tokens_fed(fed, expected) -> None:
    assert apportion(1.0, fed) == pytest.approx(expected)


def test_step_clock_laps_from_its_reset() -> None:
    ticks = iter([5.0, 7.5, 7.0, 9.0])
    clock = StepClock(lambda: next(ticks))
    assert clock.lap() == 0.0  # never reset: nothing to charge
    assert clock.lap() == 2.5
    assert clock.lap() == 0.0  # a clock never runs backwards; a lap never goes negative
    assert clock.lap() == 2.0


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model("synthetic:tiny", "float32", MODELS_DIR)


def test_jobs_are_charged_the_worker_cpu_after_warm_up(loaded) -> None:
    engine = StepEngine(loaded.model, loaded.eos_id, ignore_eos=True, prefill_chunk=16)
    scheduler = Scheduler(engine, max_batch_size=4, max_queue=8, timeout_s=float("inf"))
    warmed = []
    scheduler.start(before_loop=lambda: warmed.append(time.process_time()))
    wait_until(lambda: warmed, "the generation thread started", timeout_s=60)
    long_prompt = Job(GenerationRequest(list(range(1, 200)), max_new_tokens=8))
    short_prompt = Job(GenerationRequest([1, 2, 3], max_new_tokens=8))
    for job in (long_prompt, short_prompt):
        scheduler.submit(job)
    assert long_prompt.wait(60) and short_prompt.wait(60)
    spent_s = time.process_time() - warmed[0]

    charged_s = long_prompt.cpu_s + short_prompt.cpu_s
    assert long_prompt.cpu_s > 0 and short_prompt.cpu_s > 0
    # Everything between the warm-up and the last step is charged; this thread's own CPU
    # (submitting, waiting) is all of the process's that is not.
    assert 0.8 * spent_s <= charged_s <= spent_s
    # 199 prompt tokens in 16-token chunks beside 3: the long prompt pays most of the steps.
    assert long_prompt.cpu_s > 3 * short_prompt.cpu_s
