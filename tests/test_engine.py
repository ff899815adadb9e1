"""The step engine (server.engine.step) and the continuous scheduler (server.engine.scheduler)
on tiny."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import torch

from harness.waiting import wait_until
from server.engine.decoding import GenerationRequest
from server.engine.jobs import Job
from server.engine.kernels import KernelChoice, KernelTiming
from server.engine.model import LoadedModel, load_model
from server.engine.row_cache import RowCache, resolve_kv_dtype
from server.engine.scheduler import Scheduler, WouldTimeOut
from server.engine.step import StepEngine, StepReport, generate_alone
from tests.conftest import MODELS_DIR
from tests.logits_engine import LogitsEngine


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model("synthetic:tiny", "float32", MODELS_DIR)


def _engine(loaded: LoadedModel, chunk: int = 8, ignore_eos: bool = True) -> StepEngine:
    return StepEngine(loaded.model, loaded.eos_id, ignore_eos=ignore_eos, prefill_chunk=chunk)


def _prompt(n: int, first: int = 200) -> list[int]:
    return list(range(first, first + n))


def _run(engine: StepEngine, rows) -> None:
    while any(r.finish_reason is None for r in rows):
        engine.step(rows)


def _alone_together_and_joining(engine: StepEngine, lengths: tuple[int, ...], new: int,
                                first_steps: int) -> tuple[list, list, list]:
    """Each request's tokens alone, all rows started together, and the last row joining
    after the others ran ``first_steps`` steps (its prompt prefilled beside their decode)."""
    requests = [GenerationRequest(_prompt(n, 100 + n), new) for n in lengths]
    alone = [generate_alone(engine, r).token_ids for r in requests]
    together = [engine.new_row(r) for r in requests]
    _run(engine, together)
    early = [engine.new_row(r) for r in requests[:-1]]
    for _ in range(first_steps):
        engine.step(early)
    rows = [*early, engine.new_row(requests[-1])]
    _run(engine, rows)
    return alone, [r.tokens for r in together], [r.tokens for r in rows]


def test_greedy_tokens_are_the_same_alone_batched_and_joining_mid_generation(loaded) -> None:
    # The 12-token prompt joins after 9 steps and is prefilled in chunks of 8.
    alone, together, joined = _alone_together_and_joining(_engine(loaded, chunk=8),
                                                          (3, 37, 12), 10, first_steps=9)
    assert together == alone and joined == alone
    assert all(len(t) == 10 for t in alone)


def test_a_bfloat16_models_greedy_tokens_do_not_depend_on_the_batch(tiny_model: Path) -> None:
    """The served bf16 path (prepacked oneDNN weights, rows padded to a bucket, attention in
    float32): a row's tokens alone, beside others, and joining mid-generation agree."""
    bf16 = load_model("synthetic:tiny", "bfloat16", MODELS_DIR)
    engine = StepEngine(bf16.model, bf16.eos_id, ignore_eos=True, prefill_chunk=8)
    alone, together, joined = _alone_together_and_joining(engine, (3, 21, 12), 8,
                                                          first_steps=5)
    assert together == alone and joined == alone


def test_a_bfloat16_models_attention_runs_in_float32(tiny_model: Path, monkeypatch) -> None:
    """torch's CPU attention is several times slower in bf16 than in float32 (see
    row_cache.attention_dtype): a bf16 model's rows attend in float32, answer in bf16."""
    from server.engine import row_cache

    bf16 = load_model("synthetic:tiny", "bfloat16", MODELS_DIR)
    real, seen = row_cache.functional.scaled_dot_product_attention, []

    def recording(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(row_cache.functional, "scaled_dot_product_attention", recording)
    engine = StepEngine(bf16.model, bf16.eos_id, ignore_eos=True)
    row = engine.new_row(GenerationRequest(_prompt(5), 3))
    _run(engine, [row])
    assert seen and set(seen) == {(torch.float32,) * 3}
    assert row.cache.keys[0].dtype == torch.bfloat16 and len(row.tokens) == 3


def test_short_request_gets_a_token_before_a_long_prompt_is_read_in(loaded) -> None:
    engine = _engine(loaded, chunk=16)
    long = engine.new_row(GenerationRequest(_prompt(200), 4))
    engine.step([long])
    short = engine.new_row(GenerationRequest(_prompt(5, 900), 4))
    rows = [long, short]
    engine.step(rows)
    assert len(short.tokens) == 1 and long.prompt_left > 0
    _run(engine, rows)
    assert long.tokens == generate_alone(engine, long.request).token_ids


def test_each_row_keeps_its_own_length_and_sampling(loaded) -> None:
    engine = _engine(loaded)
    greedy = GenerationRequest(_prompt(6), 3)
    sampled = GenerationRequest(_prompt(6), 12, temperature=1.0, top_p=0.9, seed=7)
    rows = [engine.new_row(greedy), engine.new_row(sampled)]
    _run(engine, rows)
    again = generate_alone(engine, sampled).token_ids

    assert [len(r.tokens) for r in rows] == [3, 12]
    assert rows[0].tokens == generate_alone(engine, greedy).token_ids
    assert rows[1].tokens == again  # the seed alone decides, not the neighbours


def test_kv_memory_follows_each_rows_own_tokens(loaded) -> None:
    engine = _engine(loaded, chunk=512)
    long, short = (engine.new_row(GenerationRequest(_prompt(n), 2)) for n in (400, 10))
    engine.step([long, short])
    assert long.cache.length == 400 and short.cache.length == 10
    assert short.cache.nbytes() * 40 == long.cache.nbytes()  # no padding to 400


def test_stop_token_ends_a_row_without_reporting_it(loaded) -> None:
    engine = _engine(loaded, ignore_eos=False)
    row = engine.new_row(GenerationRequest(_prompt(4), 50))
    # Make the stop token the only choice: the row ends at its first step.
    loaded.model.lm_head.bias = torch.nn.Parameter(torch.zeros(loaded.model.config.vocab_size))
    loaded.model.lm_head.bias.data[loaded.eos_id] = 1e6
    try:
        report = engine.step([row])
    finally:
        loaded.model.lm_head.bias = None
    assert row.finish_reason == "stop" and row.tokens == [] and report.sampled == {}


def test_min_new_tokens_masks_the_stop_token_of_that_row_only(loaded) -> None:
    engine = _engine(loaded, ignore_eos=False)
    bounded = engine.new_row(GenerationRequest(_prompt(4), 50, min_new_tokens=3))
    free = engine.new_row(GenerationRequest(_prompt(4, first=300), 50))
    # The stop token is every row's first choice: the free row stops at once, the bounded
    # one takes the best other token until it has 3, then stops.
    loaded.model.lm_head.bias = torch.nn.Parameter(torch.zeros(loaded.model.config.vocab_size))
    loaded.model.lm_head.bias.data[loaded.eos_id] = 1e6
    try:
        _run(engine, [bounded, free])
    finally:
        loaded.model.lm_head.bias = None
    assert (free.finish_reason, free.tokens) == ("stop", [])
    assert bounded.finish_reason == "stop" and len(bounded.tokens) == 3
    assert loaded.eos_id not in bounded.tokens


def _scheduler(loaded, max_batch: int = 4, timeout_s: float = 60.0) -> Scheduler:
    scheduler = Scheduler(_engine(loaded), max_batch, max_queue=8, timeout_s=timeout_s)
    scheduler.start()
    return scheduler


def test_scheduler_joins_rows_between_steps_and_cancels(loaded) -> None:
    scheduler = _scheduler(loaded)
    long = scheduler.submit(Job(GenerationRequest(_prompt(4), 400)))
    wait_until(lambda: long.batch_size, "the long job is in a batch", interval_s=0.01)
    short = scheduler.submit(Job(GenerationRequest(_prompt(4, 700), 3)))
    assert short.wait(60) and short.result.finish_reason == "length"
    assert not long._done.is_set()  # it joined the running batch and left before it
    assert short.batch_size == 2
    long.cancelled = True
    assert long.wait(60) and long.result.finish_reason == "cancelled"
    assert 0 < len(long.result.token_ids) < 400
    wait_until(lambda: not scheduler.running, "the batch is empty", interval_s=0.01)


def test_scheduler_refuses_what_it_predicts_past_the_timeout(loaded) -> None:
    scheduler = Scheduler(_engine(loaded), 1, max_queue=8, timeout_s=10.0)
    scheduler.step_s = 0.05  # as measured: 50 ms a step
    fits = Job(GenerationRequest(_prompt(4), 100))  # ~5 s
    assert scheduler.predict_s(fits) == pytest.approx(101 * 0.05)
    scheduler.submit(fits)
    # One slot: the next waits for the first's 101 steps, then needs its own 101.
    assert scheduler.predict_s(Job(GenerationRequest(_prompt(4), 100))) == \
        pytest.approx(202 * 0.05)
    with pytest.raises(WouldTimeOut) as refused:
        scheduler.submit(Job(GenerationRequest(_prompt(4), 100)))
    assert refused.value.predicted_s > 8.0


def test_a_queued_job_made_late_by_slower_steps_is_shed_before_it_runs(loaded) -> None:
    scheduler = Scheduler(_engine(loaded), 1, max_queue=8, timeout_s=100.0)
    scheduler.step_s = 1.0  # as measured: 1 s a step
    first = scheduler.submit(Job(GenerationRequest(_prompt(4), 30)))  # 31 s
    second = scheduler.submit(Job(GenerationRequest(_prompt(4, 300), 30)))  # 62 s: admitted
    third = scheduler.submit(Job(GenerationRequest(_prompt(4, 600), 5)))  # 68 s: admitted
    scheduler._shed_late()
    assert not any(job.finished_at for job in (first, second, third))  # all still fit
    scheduler.step_s = 2.0  # the steps became twice as slow
    scheduler._shed_late()
    # second (124 s from now) is refused; first (62 s) and third, which now waits only for
    # first, (74 s) still fit.
    assert isinstance(second.error, WouldTimeOut) and second.predicted_s == 62.0
    assert second.error.predicted_s == pytest.approx(124.0, abs=1.0)
    assert first.finished_at is None and third.finished_at is None
    scheduler.run_once()  # the shed job is skipped, never started
    assert first.started_at is not None and second.started_at is None
    assert scheduler.depth == 1 and third.started_at is None


def test_a_job_admitted_near_the_line_is_not_shed_for_a_small_slowdown(loaded) -> None:
    scheduler = Scheduler(_engine(loaded), 1, max_queue=8, timeout_s=100.0)
    scheduler.step_s = 1.0
    scheduler.submit(Job(GenerationRequest(_prompt(4), 38)))  # 39 s
    queued = scheduler.submit(Job(GenerationRequest(_prompt(4, 300), 38)))  # 78 s: admitted
    scheduler.step_s = 1.15  # 90 s now: past admission's 80 s, within the shed line's 95 s
    scheduler._shed_late()
    assert queued.finished_at is None
    scheduler.step_s = 1.25  # 97.5 s: past 95% of the time left
    scheduler._shed_late()
    assert isinstance(queued.error, WouldTimeOut)


def test_prompt_tokens_ahead_count_in_the_prediction(loaded) -> None:
    scheduler = Scheduler(_engine(loaded), 2, max_queue=8, timeout_s=100.0)
    scheduler.step_s, scheduler.token_s = 0.05, 0.01
    short, article = (Job(GenerationRequest(_prompt(n), 10)) for n in (5, 600))
    assert scheduler.predict_s(short) == pytest.approx(11 * 0.05 + 5 * 0.01)
    scheduler.submit(article)
    # Queued ahead: read shortest first, the short one's tokens go first, but every step
    # that reads the article's chunks costs the short one that time too.
    assert scheduler.predict_s(short) == pytest.approx(11 * 0.05 + 605 * 0.01)
    # A second article waits for the first one's 600 tokens and reads its own (in 75
    # chunks of 8, each a step, then 10 decode steps).
    second = Job(GenerationRequest(_prompt(600), 10))
    assert scheduler.predict_s(second) == pytest.approx(85 * 0.05 + 1200 * 0.01)


def test_forecasts_are_calibrated_by_how_late_finished_jobs_were(loaded) -> None:
    scheduler = Scheduler(_engine(loaded), 2, max_queue=8, timeout_s=1000.0)
    scheduler.step_s = 1.0
    job = scheduler.submit(Job(GenerationRequest(_prompt(4), 9)))  # forecast: 10 s
    assert job.predicted_s == pytest.approx(10.0)
    job.enqueued_at = time.monotonic() - 30.0  # it took three times as long
    scheduler._calibrate(job)
    assert scheduler.bias == pytest.approx(1.0 + 0.2 * (3.0 - 1.0), rel=0.01)
    assert scheduler.predict_s(Job(GenerationRequest(_prompt(4), 9))) == \
        pytest.approx(10.0 * scheduler.bias)
    early = Job(GenerationRequest(_prompt(4), 9), predicted_s=10.0)
    early.enqueued_at = time.monotonic() - 2.0  # faster than forecast: never below 1
    for _ in range(50):
        scheduler._calibrate(early)
    assert scheduler.bias == pytest.approx(1.0, abs=0.01)


def test_prediction_grows_with_the_rows_its_steps_will_carry(loaded) -> None:
    # Each row beyond the first adds half a one-row step (as a kernel table would say).
    scheduler = Scheduler(_engine(loaded), 4, max_queue=8, timeout_s=100.0, row_growth=0.5)
    scheduler.step_s = 0.1
    job = Job(GenerationRequest(_prompt(4), 10))
    assert scheduler.predict_s(job) == pytest.approx(11 * 0.1)  # alone: one-row steps
    scheduler.submit(Job(GenerationRequest(_prompt(4, 300), 10)))
    assert scheduler.predict_s(job) == pytest.approx(11 * 0.1 * 1.5)  # beside a second row
    # Learning divides a step's time by its rows' cost: a 3-row step of 0.4 s is 0.2 s a row.
    scheduler.step_s = 0.0
    scheduler.learn(StepReport("decode", 3, 3, {}, 0.4, 0.4))
    assert scheduler.step_s == pytest.approx(0.2)


def test_prediction_prices_the_rows_the_kv_budget_runs_not_max_batch(loaded) -> None:
    # 32 rows allowed, 30 KV positions: jobs of 14 positions run two at a time, so the
    # steps of a job behind four others carry 2 rows (1.5 one-row steps), not 6 (3.5).
    scheduler = Scheduler(_engine(loaded), 32, max_queue=8, timeout_s=1000.0,
                          kv_tokens=30, row_growth=0.5)
    scheduler.step_s = 0.1
    for n in range(4):
        scheduler.submit(Job(GenerationRequest(_prompt(4, 100 * n), 10)))  # 1 + 10 steps
    job = Job(GenerationRequest(_prompt(4, 900), 10))
    assert scheduler.predict_s(job) == pytest.approx((2 * 11 + 11) * 0.1 * 1.5)


def test_a_row_near_its_deadline_decodes_without_waiting_for_prefill(loaded) -> None:
    # Seconds are large and deadlines set from the clock just before each step, so a slow
    # or crowded machine cannot move the outcome.
    scheduler = Scheduler(_engine(loaded, chunk=8), 4, max_queue=8, timeout_s=100.0)
    scheduler.step_s = 5.0  # as if measured: 5 s a decode step
    old = scheduler.submit(Job(GenerationRequest(_prompt(4), 10)))
    scheduler.run_once()  # admits it; reads its prompt in and samples its first token
    (_, old_row), = scheduler._rows
    new = scheduler.submit(Job(GenerationRequest(_prompt(40, 300), 5)))
    old.enqueued_at = time.monotonic() - 50.0  # 50 s left; 9 steps x ~5 s x 1.5 do not fit
    scheduler.run_once()
    new_row = scheduler._rows[1][1]
    assert len(old_row.tokens) == 2 and new_row.prefilled == 0  # a decode-only step
    old.enqueued_at = time.monotonic()  # 100 s left: the prompt chunk rides along
    scheduler.run_once()
    assert len(old_row.tokens) == 3 and new_row.prefilled == 8
    assert new.started_at is not None


def test_the_earliest_deadline_at_risk_goes_first_even_while_reading_its_prompt(loaded) -> None:
    scheduler = Scheduler(_engine(loaded, chunk=8), 4, max_queue=8, timeout_s=300.0)
    scheduler.step_s, scheduler.token_s = 5.0, 0.01
    jobs = [scheduler.submit(Job(GenerationRequest(_prompt(n, 100 * n), 4))) for n in (9, 30)]
    scheduler.run_once()  # both join; the shorter prompt is read first: 8 of its 9 tokens
    short, long = (row for _, row in scheduler._rows)
    assert (short.prefilled, long.prefilled) == (8, 0)
    # The long prompt's request is now the one about to time out (20 s left).
    jobs[1].enqueued_at = time.monotonic() - 280.0
    scheduler.run_once()
    assert (short.prefilled, long.prefilled) == (8, 8)  # only its prompt was read


def test_row_growth_comes_from_the_served_kernels_timings() -> None:
    table = [KernelTiming("float32", 100.0, 300.0, 8), KernelTiming("bfloat16", 100.0, 800.0, 8)]
    assert KernelChoice("float32", False, "auto", table).row_growth() == pytest.approx(2 / 7)
    assert KernelChoice("bfloat16", False, "auto", table).row_growth() == pytest.approx(1.0)
    untimed = [KernelTiming("float32", 100.0, None, 8)]
    assert KernelChoice("float32", False, "auto", untimed).row_growth() == 0.0


def test_step_costs_are_learned_from_decode_and_prefill_steps(loaded) -> None:
    scheduler = Scheduler(_engine(loaded, chunk=64), 2, max_queue=8, timeout_s=100.0)
    engine = scheduler.engine
    rows = [engine.new_row(GenerationRequest(_prompt(4), 20))]
    scheduler.learn(engine.step(rows))  # a 4-token prefill
    for _ in range(5):
        scheduler.learn(engine.step(rows))
    decode_s = scheduler.step_s
    rows.append(engine.new_row(GenerationRequest(_prompt(64, 500), 5)))
    report = engine.step(rows)
    assert report.phase == "mixed" and report.prompt_tokens == 64
    scheduler.learn(report)
    assert decode_s > 0 and scheduler.token_s > 0


def test_onednn_rows_are_bucketed_and_the_result_unchanged() -> None:
    from server.engine.kernels import OneDNNLinear, bucket_rows, onednn_available

    assert [bucket_rows(n) for n in (1, 2, 3, 5, 9, 16, 17, 33, 129)] == \
        [1, 2, 4, 8, 16, 16, 32, 64, 160]
    if not onednn_available():
        pytest.skip("torch built without oneDNN")
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(2, 5, 64)  # 10 rows: padded to 16 inside
    with torch.inference_mode():
        assert torch.allclose(OneDNNLinear(linear)(x), linear(x), atol=1e-5)


def test_kv_dtype_float16_halves_a_float32_models_cache_and_reads_it_closely(loaded) -> None:
    half = LogitsEngine(loaded.model, loaded.eos_id, ignore_eos=True, prefill_chunk=8,
                         kv_dtype="float16")
    full = LogitsEngine(loaded.model, loaded.eos_id, ignore_eos=True, prefill_chunk=8)
    request = GenerationRequest(_prompt(21), 6)
    rows = {}
    for name, engine in (("half", half), ("full", full)):
        rows[name] = engine.new_row(request)
        _run(engine, [rows[name]])
    assert {k.dtype for k in rows["half"].cache.keys + rows["half"].cache.values} == {
        torch.float16}
    assert {k.dtype for k in rows["full"].cache.keys} == {torch.float32}  # the default
    assert rows["half"].cache.nbytes() * 2 == rows["full"].cache.nbytes()
    # Fed the same tokens (full's greedy choices), the logits differ by 16-bit rounding only.
    half.seen.clear()
    replay = half.new_row(GenerationRequest(request.input_ids + rows["full"].tokens[:-1], 1))
    _run(half, [replay])
    last = full.seen[-1]
    gap = (half.seen[-1] - last).abs().max().item()
    assert 0 < gap < 1e-2 * last.std().item()


def test_an_unknown_kv_dtype_is_refused_when_the_engine_is_built(loaded) -> None:
    with pytest.raises(ValueError, match="KV dtype 'int4'"):
        StepEngine(loaded.model, loaded.eos_id, kv_dtype="int4")


def test_a_released_rows_cache_is_given_back_to_the_kernel_at_once() -> None:
    """Rows' caches are mappings of their own: releasing 18 of 24 rows lowers RSS by ~3/4 of
    what they were written. 16 MB blocks from the heap would stay resident: once glibc has
    freed a block that size, its adaptive mmap threshold serves the next ones from the heap."""
    def rss_mb() -> float:
        return psutil.Process().memory_info().rss / 1e6

    like = torch.zeros(1, 16, 1, 128)
    churn = [torch.ones(2, 2, 1, 16, 512, 128) for _ in range(4)]  # a worker's allocator
    del churn
    before = rss_mb()
    caches = [RowCache(512, "model", layers=2) for _ in range(24)]
    for cache in caches:  # 24 rows x 2 layers x 2 x 4 MB, every page written
        cache.ensure(0, like)
        for buffer in cache.keys + cache.values:
            buffer.fill_(1.0)
    grown = rss_mb() - before
    for cache in caches[:18]:
        cache.release()
    kept = rss_mb() - before
    assert grown > 300 and kept < 0.4 * grown, (grown, kept)


def test_the_scheduler_releases_a_finished_rows_cache_before_answering(loaded) -> None:
    scheduler = _scheduler(loaded)
    seen = []
    real_new_row = scheduler.engine.new_row

    def new_row(request: GenerationRequest, prefix=None):
        row = real_new_row(request, prefix)
        seen.append(row)
        return row

    scheduler.engine.new_row = new_row
    job = scheduler.submit(Job(GenerationRequest(_prompt(4), 3)))
    assert job.wait(60) and len(job.result.token_ids) == 3
    assert seen and seen[0].cache.keys == [] and seen[0].cache.values == []


@pytest.mark.parametrize("aged", [True, False])
def test_a_kv_budget_holds_the_next_job_until_its_reservation_fits(loaded, aged) -> None:
    """A job that does not fit waits; a later one that fits overtakes it only until the
    waiting one has aged (aging_s 0: at once, first come first served)."""
    scheduler = Scheduler(_engine(loaded), 4, max_queue=8, timeout_s=60.0, kv_tokens=30,
                          aging_s=0.0 if aged else 60.0)
    scheduler.start()
    long = scheduler.submit(Job(GenerationRequest(_prompt(4), 20)))  # reserves 24 of 30
    wait_until(lambda: long.batch_size, "the long job is running", interval_s=0.01)
    assert scheduler.kv_reserved == 24
    small = scheduler.submit(Job(GenerationRequest(_prompt(4, 700), 10)))  # 14: no room
    late = scheduler.submit(Job(GenerationRequest(_prompt(2, 900), 2)))  # 4 would fit...
    assert long.wait(60) and small.wait(60) and late.wait(60)
    assert small.started_at >= long.finished_at  # ... the small one never ran beside it
    assert long.result.token_ids and len(small.result.token_ids) == 10
    if aged:
        assert late.started_at >= small.started_at  # nothing overtook the aged head
        assert late.batch_size == 2  # the two that fit together ran together
    else:
        assert late.finished_at <= long.finished_at  # it fitted beside the long job


def test_the_forecast_waits_for_kv_room_as_admission_does(loaded) -> None:
    budget = Scheduler(_engine(loaded), 4, max_queue=8, timeout_s=60.0, kv_tokens=30)
    unlimited = Scheduler(_engine(loaded), 4, max_queue=8, timeout_s=60.0)
    for scheduler in (budget, unlimited):  # not started: the jobs stay queued
        scheduler.step_s = 0.05
        scheduler.submit(Job(GenerationRequest(_prompt(4), 20)))  # 1 prefill + 20 steps
    small = Job(GenerationRequest(_prompt(4, 700), 10))  # 1 + 10 steps
    assert unlimited.predict_s(small) == pytest.approx(11 * 0.05)  # a free row at once
    assert budget.predict_s(small) == pytest.approx((21 + 11) * 0.05)  # after the first


def test_a_job_larger_than_the_kv_budget_runs_alone_rather_than_never(loaded) -> None:
    scheduler = Scheduler(_engine(loaded), 4, max_queue=8, timeout_s=60.0, kv_tokens=10)
    scheduler.step_s = 0.05
    big = Job(GenerationRequest(_prompt(4), 12))  # reserves 16 > 10
    assert scheduler.predict_s(big) == pytest.approx((1 + 12) * 0.05)
    scheduler.start()
    assert scheduler.submit(big).wait(60) and len(big.result.token_ids) == 12


@pytest.mark.parametrize(("setting", "precision", "served"), [
    ("auto", "float32", "model"), ("auto", "float16", "float16"), ("auto", "int8", "float16"),
    ("auto", "bfloat16", "float16"), ("model", "float16", "model"),
    ("float16", "float32", "float16")])
def test_kv_dtype_auto_is_16_bits_unless_the_weights_are_float32(setting, precision,
                                                                   served) -> None:
    assert resolve_kv_dtype(setting, precision) == served


def test_a_decode_step_of_many_rows_teaches_that_row_count_not_the_one_row_step(loaded) -> None:
    # The kernel table's line says a 16-row step costs 8.5 one-row steps; the worker
    # measures 4: the second wave of a 32-request burst is priced at what it takes.
    scheduler = Scheduler(_engine(loaded), 16, max_queue=40, timeout_s=1000.0,
                          row_growth=0.5)
    scheduler.step_s = 0.1
    scheduler.learn(StepReport("decode", 16, 16, {}, 0.4, 0.4))
    assert scheduler.step_s == pytest.approx(0.1)  # unchanged
    for n in range(16):
        scheduler.submit(Job(GenerationRequest(_prompt(4, 100 * n), 10)))  # 1 + 10 steps
    job = Job(GenerationRequest(_prompt(4, 1700), 10))
    assert scheduler.predict_s(job) == pytest.approx((11 + 11) * 0.1 * 4.0)


def test_a_prompt_price_of_nothing_measurable_is_averaged_not_replaced(loaded) -> None:
    """A prompt step that cost no more than its decode rows prices a prompt token at 0, a real
    sample: the next one moves the average by STEP_EWMA rather than replacing it."""
    from server.engine.scheduler import STEP_EWMA
    from server.engine.step import StepReport

    scheduler = Scheduler(_engine(loaded, chunk=64), 2, max_queue=8, timeout_s=100.0)
    scheduler.step_s = 0.010
    free = StepReport("mixed", 2, 33, {}, 0.010, 0.010, prompt_tokens=32)  # as one decode row
    costly = StepReport("mixed", 2, 33, {}, 0.042, 0.042, prompt_tokens=32)  # 1 ms a token
    scheduler.learn(free)
    assert scheduler.token_s == 0 and scheduler.token_samples == 1
    scheduler.learn(costly)
    assert scheduler.token_s == pytest.approx(STEP_EWMA * 0.001)
