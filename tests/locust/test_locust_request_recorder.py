"""requests.csv: synthetic request events fired at a bare Environment become CSV rows
(modelled on Locust's own test_csv_request_logger.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import requests
from locust.clients import ResponseContextManager
from locust.exception import CatchResponseError

from locustfiles.failures import BadBody, HTTPFailure, Overloaded, RateLimited
from locustfiles.request_recorder import COLUMNS, RequestRecorder
from locustfiles.users import check_completion
from tests.locust.conftest import SERVER_HEADERS

CONTRACT_COLUMNS = [
    "timestamp", "user_class", "method", "route", "status_code", "response_time_ms",
    "response_bytes", "success", "failure_reason", "request_id", "worker_pid",
    "worker_rss_mb", "worker_uss_mb", "worker_pss_mb", "queue_ms", "inference_ms",
    "batch_size", "prompt_tokens", "completion_tokens", "stream", "ttfb_ms", "ttft_ms",
    "tpot_ms", "chunks", "max_chunk_gap_ms", "chunk_gaps_ms",
    "workload_group", "turn", "context_tokens", "cached_tokens",
    "cpu_ms",
    "arrival_index", "intended_ts", "dispatch_lag_ms", "pool_wait_ms", "intended_latency_ms",
]  # fmt: skip


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fire(environment, response, exception=None, **overrides):
    event = {"request_type": "POST", "name": "/generate-text", "response_time": 123.456,
             "response_length": len(response.content) if response is not None else 0,
             "response": response, "exception": exception, "start_time": 1_700_000_000.25,
             "context": {"user_class": "PromptUser", "request_id": "PromptUser-7-1"},
             "url": "http://127.0.0.1:1/generate-text", **overrides}
    environment.events.request.fire(**event)


@pytest.fixture
def recorder(environment, tmp_path: Path) -> RequestRecorder:
    rec = RequestRecorder(tmp_path / "requests.csv")
    rec.register(environment)
    return rec


def test_header_is_the_contract(recorder: RequestRecorder, tmp_path: Path) -> None:
    assert list(COLUMNS) == CONTRACT_COLUMNS
    with open(tmp_path / "requests.csv") as f:
        assert f.readline().strip().split(",") == CONTRACT_COLUMNS


def test_success_row_has_client_view_server_headers_and_usage(
    environment, recorder, tmp_path, make_response, completion_body
) -> None:
    response = make_response(200, completion_body, SERVER_HEADERS)
    fire(environment, response)

    [row] = read_rows(tmp_path / "requests.csv")
    assert row == {
        "timestamp": "1700000000.25", "user_class": "PromptUser", "method": "POST",
        "route": "/generate-text", "status_code": "200", "response_time_ms": "123.46",
        "response_bytes": str(len(response.content)), "success": "1", "failure_reason": "",
        "request_id": "PromptUser-7-1", "worker_pid": "4242", "worker_rss_mb": "812.5",
        "worker_uss_mb": "96.0", "worker_pss_mb": "455.3", "queue_ms": "3.0",
        "inference_ms": "120.4", "batch_size": "3", "prompt_tokens": "11",
        "completion_tokens": "5", "stream": "", "ttfb_ms": "", "ttft_ms": "", "tpot_ms": "",
        "chunks": "", "max_chunk_gap_ms": "", "chunk_gaps_ms": "",
        "workload_group": "", "turn": "", "context_tokens": "", "cached_tokens": "",
        "cpu_ms": "41.25",
        "arrival_index": "", "intended_ts": "", "dispatch_lag_ms": "", "pool_wait_ms": "",
        "intended_latency_ms": "",
    }
    assert recorder.rows_written == 1
    assert recorder.workers["4242"].pss_mb == 455.3


def test_an_arrival_row_has_its_lag_and_latency_from_the_intended_send(
    environment, recorder, tmp_path, make_response, completion_body
) -> None:
    # Due 0.5 s before Locust's start_time; 0.2 s of that spent waiting for a free user.
    context = {"user_class": "QAUser", "request_id": "QAUser-1-1", "arrival_index": 17,
               "intended_ts": 1_699_999_999.75, "pool_wait_ms": 200.0}
    fire(environment, make_response(200, completion_body), context=context)

    [row] = read_rows(tmp_path / "requests.csv")
    assert {k: row[k] for k in ("arrival_index", "intended_ts", "dispatch_lag_ms",
                                "pool_wait_ms", "intended_latency_ms")} == {
        "arrival_index": "17", "intended_ts": "1699999999.75", "dispatch_lag_ms": "500.0",
        "pool_wait_ms": "200.0", "intended_latency_ms": "623.46"}
    assert row["response_time_ms"] == "123.46"  # Locust's own time stays from the actual send


@pytest.mark.parametrize(("status", "exception", "reason"), [
    (429, RateLimited("HTTP 429 rate limited"), "rate_limited"),
    (503, Overloaded("HTTP 503 overloaded"), "overloaded"),
    (504, None, "timeout"),
    (500, HTTPFailure(500, "internal_error"), "http_500"),
    (401, CatchResponseError("unauthorized"), "http_401"),
    (200, BadBody("text is missing or empty"), "bad_body"),
    (0, requests.ConnectionError("refused"), "connection_error"),
    (0, requests.ReadTimeout("read timed out"), "timeout"),
])  # fmt: skip
def test_failure_reason_column(environment, recorder, tmp_path, make_response,
                               status, exception, reason) -> None:
    if exception is None:
        exception = requests.HTTPError("504 Server Error")
    response = make_response(status, {"error": {"code": "x", "message": "m"}})
    fire(environment, response, exception)

    [row] = read_rows(tmp_path / "requests.csv")
    assert (row["success"], row["failure_reason"], row["status_code"]) == ("0", reason,
                                                                         str(status))
    assert (row["prompt_tokens"], row["completion_tokens"]) == ("", "")


def test_no_response_keeps_the_request_id_from_the_context(environment, recorder,
                                                             tmp_path) -> None:
    fire(environment, None, requests.ConnectionError("refused"), response_length=0)

    [row] = read_rows(tmp_path / "requests.csv")
    assert (row["status_code"], row["request_id"], row["worker_pid"]) == ("0", "PromptUser-7-1",
                                                                        "")


def test_rows_accumulate_and_file_closes_on_quitting(environment, recorder, tmp_path,
                                                     make_response, completion_body) -> None:
    for _ in range(5):
        fire(environment, make_response(200, completion_body, SERVER_HEADERS))
    environment.events.quitting.fire(environment=environment)
    fire(environment, make_response(200, completion_body, SERVER_HEADERS))  # after close

    assert len(read_rows(tmp_path / "requests.csv")) == 5
    assert recorder.workers["4242"].requests == 5


def validated(environment, response) -> None:
    """Run the users' validation on ``response`` the way a catch_response block does."""
    meta = {"request_type": "POST", "name": "/generate-text", "response_time": 10.0,
            "response_length": len(response.content), "response": response, "exception": None,
            "start_time": 1_700_000_000.0, "context": {"user_class": "PromptUser"},
            "url": response.url}
    rcm = ResponseContextManager.wrap_response(response, environment.events.request, meta,
                                               catch_response=True)
    with rcm:
        check_completion(rcm)


@pytest.mark.parametrize(("status", "body", "reason"), [
    (200, {"text": "", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, "bad_body"),
    (200, {"text": "ok", "usage": {"prompt_tokens": "1", "completion_tokens": 1}}, "bad_body"),
    (200, {"text": "ok"}, "bad_body"),
    (200, ["not", "an", "object"], "bad_body"),
    (429, {"error": {"code": "rate_limited", "message": "slow down"}}, "rate_limited"),
    (503, {"error": {"code": "overloaded", "message": "full"}}, "overloaded"),
    (504, {"error": {"code": "generation_timeout", "message": "late"}}, "timeout"),
    (422, {"error": {"code": "invalid_fields", "message": "bad"}}, "http_422"),
])  # fmt: skip
def test_users_validation_names_each_failure(environment, recorder, tmp_path, make_response,
                                             status, body, reason) -> None:
    validated(environment, make_response(status, body, SERVER_HEADERS))

    [row] = read_rows(tmp_path / "requests.csv")
    assert (row["success"], row["failure_reason"]) == ("0", reason)
    [error] = environment.runner.stats.errors.values()
    assert error.occurrences == 1


def test_users_validation_accepts_a_completion(environment, recorder, tmp_path, make_response,
                                               completion_body) -> None:
    validated(environment, make_response(200, completion_body, SERVER_HEADERS))

    [row] = read_rows(tmp_path / "requests.csv")
    assert (row["success"], row["failure_reason"], row["completion_tokens"]) == ("1", "", "5")
    assert environment.runner.stats.total.num_failures == 0


def test_non_json_200_is_a_bad_body(environment, recorder, tmp_path, make_response) -> None:
    validated(environment, make_response(200, raw=b"<html>proxy error</html>"))

    [row] = read_rows(tmp_path / "requests.csv")
    assert (row["success"], row["failure_reason"]) == ("0", "bad_body")
