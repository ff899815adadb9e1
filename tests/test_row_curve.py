"""The row curve admission prices decode steps by (server.engine.row_curve)."""

from __future__ import annotations

import pytest

from server.engine.row_curve import RowCurve
from tests.conftest import ready_details


def test_the_kernel_tables_line_until_a_row_count_is_measured() -> None:
    curve = RowCurve(growth=0.5)
    assert curve.cost(1) == 1.0 and curve.cost(0) == 1.0
    assert curve.cost(5) == pytest.approx(3.0)


def test_a_measured_count_is_priced_at_its_own_measure_and_between_on_the_line() -> None:
    curve = RowCurve(growth=0.5)  # the table's line would say 8.5 at 16 rows
    curve.learn(16, 4.0)
    assert curve.cost(16) == pytest.approx(4.0)
    assert curve.cost(6) == pytest.approx(1.0 + 3.0 * 5 / 15)  # on the line 1 -> 16
    assert curve.cost(32) == pytest.approx(4.0 + 3.0 / 15 * 16)  # the last slope beyond


def test_two_measured_counts_bound_the_counts_between_them() -> None:
    curve = RowCurve()
    curve.learn(4, 2.0)
    curve.learn(8, 2.4)
    assert curve.cost(6) == pytest.approx(2.2)
    assert curve.cost(2) == pytest.approx(1.0 + 1.0 / 3)  # from one row (1.0) to four
    assert curve.cost(12) == pytest.approx(2.8)  # the slope from 4 to 8 rows, on


def test_extrapolation_never_falls_below_the_largest_measure() -> None:
    curve = RowCurve()
    curve.learn(4, 3.0)
    curve.learn(8, 2.0)  # noise: eight rows measured cheaper than four
    assert curve.cost(16) == pytest.approx(2.0)


def test_a_counts_ratio_follows_its_newer_steps() -> None:
    curve = RowCurve()
    curve.learn(8, 4.0)
    for _ in range(100):
        curve.learn(8, 3.0)
    assert curve.cost(8) == pytest.approx(3.0, abs=1e-3)
    curve.learn(1, 9.0)  # one row is the unit itself: nothing to learn
    curve.learn(3, 0.0)
    assert curve.measured() == {8: pytest.approx(3.0, abs=1e-3)}


def test_each_worker_measures_a_step_of_its_maximum_rows_before_it_is_ready(
        make_app, operator_headers) -> None:
    app = make_app(MAX_BATCH_SIZE=3, WARMUP_TOKENS=4)
    scheduler = app.extensions["model_service"].scheduler
    forecast = ready_details(app.test_client(), operator_headers)["forecast"]
    measured = scheduler.curve.measured()
    assert list(measured) == [3] and measured[3] > 0
    assert scheduler.step_s > 0 and scheduler.token_s > 0  # the prompts' price is seeded too
    assert forecast == {"step_ms": pytest.approx(1000 * scheduler.step_s, abs=1e-3),
                        "token_ms": pytest.approx(1000 * scheduler.token_s, abs=1e-3),
                        "row_cost": {"3": pytest.approx(measured[3], abs=1e-3)},
                        "bias": 1.0}


def test_a_worker_of_one_row_seeds_its_costs_alone(make_app) -> None:
    service = make_app(MAX_BATCH_SIZE=1, WARMUP_TOKENS=4).extensions["model_service"]
    service.start()
    assert service.ready.wait(120)
    assert service.scheduler.curve.measured() == {}
    assert service.scheduler.step_s > 0 and service.scheduler.token_s > 0


def test_the_warm_up_prices_prompts_from_its_second_batch(make_app) -> None:
    """The first prefill of MAX_BATCH_SIZE rows pays one-time costs (16.7 against 10.4 ms a
    prompt token on gpt2-large, Zen 3): the batch runs twice and only the second's prompt
    steps teach the prompt price."""
    service = make_app(MAX_BATCH_SIZE=3, WARMUP_TOKENS=4).extensions["model_service"]
    batches, learned = [], []
    run_together, learn = service._run_together, service.scheduler.learn
    service._run_together = lambda requests: batches.append(run_together(requests)) \
        or batches[-1]
    service.scheduler.learn = lambda report: learned.append(report) or learn(report)
    service.start()
    assert service.ready.wait(120)
    assert len(batches) == 3  # alone, then MAX_BATCH_SIZE rows twice
    assert max(r.rows for r in batches[1]) == max(r.rows for r in batches[2]) == 3
    prompts = [r for r in learned if r.prompt_tokens]
    second = [r for r in prompts if any(r is s for s in batches[2])]
    # The second batch's prompts first; the first batch's only if those priced a prompt
    # token at nothing measurable (tiny models on a fast CPU).
    assert second and prompts[:len(second)] == second
