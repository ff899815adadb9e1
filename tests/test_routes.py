"""The HTTP API on the Flask test client: bodies, headers, every error in the envelope."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask

from harness.waiting import wait_until
from server.engine.row_cache import resolve_kv_dtype
from server.web.service import ModelService

ROUTES = [
    ("/generate-text", {"prompt": "The weather today is", "max_new_tokens": 5}),
    ("/summarize-text", {"text": "A long article about trains. " * 20, "max_new_tokens": 5}),
    ("/answer-question", {"question": "Which colour?", "context": "The door is red.",
                          "max_new_tokens": 5}),
    ("/answer-question", {"question": "Why is the sky blue?", "max_new_tokens": 5}),
]
MEMORY_HEADERS = ["X-Request-ID", "X-Worker-PID", "X-Worker-RSS-MB", "X-Worker-USS-MB",
                  "X-Worker-PSS-MB", "X-Queue-Ms", "X-Inference-Ms", "X-Batch-Size"]


def _service(app: Flask) -> ModelService:
    return app.extensions["model_service"]


@pytest.mark.parametrize(("route", "body"), ROUTES)
def test_task_route_returns_the_documented_body(client, route, body) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 200, response.json
    data = response.json
    assert set(data) >= {"text", "model", "usage", "timings_ms"}
    assert data["model"] == "synthetic:tiny"
    assert data["usage"]["completion_tokens"] <= 5 and data["usage"]["prompt_tokens"] > 0
    assert set(data["timings_ms"]) == {"queue", "inference", "total"}
    for header in MEMORY_HEADERS:
        assert header in response.headers
    assert float(response.headers["X-Worker-PSS-MB"]) > 0
    assert int(response.headers["X-Batch-Size"]) >= 1


def test_the_cpu_a_request_was_charged_is_in_its_header_and_log(client, request_log) -> None:
    response = client.post(*ROUTES[0][:1], json=ROUTES[0][1])
    [record] = [json.loads(line) for line in request_log.read_text().splitlines()
                if json.loads(line)["request_id"] == response.headers["X-Request-ID"]]

    assert response.status_code == 200
    cpu_ms = float(response.headers["X-CPU-Ms"])
    assert cpu_ms > 0 and record["cpu_ms"] == pytest.approx(cpu_ms, abs=0.01)
    tokens = response.json["usage"]["completion_tokens"]
    assert record["cpu_ms_per_token"] == pytest.approx(record["cpu_ms"] / tokens, abs=0.001)
    assert record["error"] is None  # an answer, not an error envelope


def test_summary_prompt_is_longer_than_its_text_by_the_tldr_cue(client) -> None:
    short = client.post("/summarize-text", json={"text": "Trains.", "max_new_tokens": 1}).json
    generated = client.post("/generate-text", json={"prompt": "Trains.", "max_new_tokens": 1}).json
    assert short["usage"]["prompt_tokens"] > generated["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [("post", "/generate-text", {"prompt": ""}, 422), ("get", "/nope", None, 404),
     ("get", "/generate-text", None, 405), ("get", "/health", None, 200)],
)
def test_every_response_carries_the_worker_headers(client, method, path, body, status) -> None:
    response = getattr(client, method)(path, json=body)
    assert response.status_code == status
    for header in MEMORY_HEADERS:
        assert header in response.headers, header
    assert int(response.headers["X-Worker-PID"]) > 0
    assert float(response.headers["X-Worker-RSS-MB"]) >= float(response.headers["X-Worker-USS-MB"])
    assert response.headers["X-Batch-Size"] == "0"  # it never reached the model


def test_request_id_is_echoed_or_made(client) -> None:
    given = client.post(ROUTES[0][0], json=ROUTES[0][1], headers={"X-Request-ID": "abc-1"})
    assert given.headers["X-Request-ID"] == "abc-1"
    unsafe = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["X-Request-ID"] != "bad id\twith spaces"
    assert len(unsafe.headers["X-Request-ID"]) == 32


def test_health_and_ready(client, operator_headers) -> None:
    assert client.get("/health").json == {"status": "ok"}
    answers = []

    def ready() -> bool:  # the details are the operator's (tests/test_operator_surfaces.py)
        answers.append(client.get("/ready", headers=operator_headers))
        return answers[-1].status_code != 503

    wait_until(ready, "/ready says yes", timeout_s=300, interval_s=0.05)
    assert all(a.headers["Retry-After"] for a in answers[:-1])
    assert answers[-1].status_code == 200 and answers[-1].json["model"] == "synthetic:tiny"
    # KV_CACHE_MB's 225 MiB hold 230,400 of tiny's float32 positions: capped at 8 x 1,024
    assert answers[-1].json["kv_tokens"] == 8 * 1024
    assert answers[-1].json["prefix_cache_rows"] == \
        client.application.config["PREFIX_CACHE_ROWS"]
    assert answers[-1].json["kv_dtype"] == resolve_kv_dtype(
        client.application.config["KV_DTYPE"], answers[-1].json["dtype"])


def _assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.json
    error = response.json["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert "X-Worker-PSS-MB" in response.headers
    return error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": 257}, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": "5"}, "max_new_tokens"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "seed": -1}, "seed"),
        ({"prompt": "hi", "stream_it": True}, "stream_it"),
        ({}, "prompt"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(module_client, body, field) -> None:
    error = _assert_envelope(module_client.post("/generate-text", json=body), 422,
                             "invalid_fields")
    assert field in error["message"]
    assert [d["field"] for d in error["details"]] == [field]


def test_nan_is_rejected(client) -> None:
    response = client.post("/generate-text", data='{"prompt": "hi", "temperature": NaN}',
                           content_type="application/json")
    assert _assert_envelope(response, 422, "invalid_fields")["details"][0]["field"] == "temperature"


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "malformed_json"),
        ("[1, 2]", "application/json", 400, "malformed_json"),
        ("prompt=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_unreadable_bodies(client, data, content_type, status, code) -> None:
    response = client.post("/generate-text", data=data, content_type=content_type)
    _assert_envelope(response, status, code)


def test_unknown_route_and_wrong_method_are_json(client) -> None:
    _assert_envelope(client.get("/nope"), 404, "not_found")
    error = _assert_envelope(client.get("/generate-text"), 405, "method_not_allowed")
    assert "POST" in error["message"]


def test_too_large_body_and_prompt_are_413(make_app) -> None:
    client = make_app(MAX_CONTENT_LENGTH=1000, MAX_INPUT_CHARS=400).test_client()
    _assert_envelope(client.post("/generate-text", json={"prompt": "x" * 2000}), 413,
                     "payload_too_large")
    error = _assert_envelope(client.post("/generate-text", json={"prompt": "x" * 500}), 413,
                             "input_too_long")
    assert error["details"][0]["field"] == "prompt"


def test_prompt_over_the_context_window_is_413_with_counts(make_app) -> None:
    client = make_app(MAX_INPUT_CHARS=100_000, MAX_CONTENT_LENGTH=10**6).test_client()
    words = " ".join(f"w{i}" for i in range(2000))
    error = _assert_envelope(
        client.post("/generate-text", json={"prompt": words, "max_new_tokens": 8}),
        413, "prompt_too_long")
    assert error["details"]["prompt_tokens"] > 1000
    assert error["details"]["max_new_tokens"] == 8 and error["details"]["context_window"] == 1024


def _post_many(app: Flask, bodies: list[dict], route: str = "/generate-text") -> list:
    def post(body):
        return app.test_client().post(route, json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_concurrent_requests_are_batched_and_keep_their_own_lengths(make_app) -> None:
    app = make_app(IGNORE_EOS=True)
    bodies = [{"prompt": f"Request number {i} says", "max_new_tokens": 3 + i} for i in range(8)]
    alone = [app.test_client().post("/generate-text", json=b).json["text"] for b in bodies]
    responses = _post_many(app, bodies)
    assert all(r.status_code == 200 for r in responses)
    assert [r.json["usage"]["completion_tokens"] for r in responses] == [3 + i for i in range(8)]
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1
    assert [r.json["text"] for r in responses] == alone


def _wait_for(condition, timeout_s: float = 300.0) -> None:
    # Generous: the warm-up or a generation on a slow, busy CI machine takes many times
    # what it takes on a fast one; the condition's truth is what is tested, not the time.
    wait_until(condition, "condition", timeout_s=timeout_s, interval_s=0.005)


def _logged_error(request_log, response) -> str | None:
    """The request log's "error" for ``response`` (its X-Request-ID)."""
    [line] = [json.loads(line) for line in request_log.read_text().splitlines()
              if json.loads(line)["request_id"] == response.headers["X-Request-ID"]]
    return line["error"]


def _refused(app, error: str) -> float:
    """gpt_refusals_total{error} as the app's metrics count it."""
    return app.extensions["metrics"].refusals.labels(error=error)._value.get()


def test_full_queue_is_a_fast_503_with_retry_after(make_app, request_log) -> None:
    app = make_app(MAX_QUEUE=1, MAX_BATCH_SIZE=1, IGNORE_EOS=True, MAX_NEW_TOKENS_CAP=1000,
                   ADMIT_PREDICTED=False)  # the queue limit, not the prediction, refuses
    scheduler = _service(app).scheduler
    long = {"prompt": "Go on", "max_new_tokens": 1000}
    running = threading.Thread(target=_post_many, args=(app, [long]))
    running.start()
    _wait_for(lambda: scheduler.running == 1)
    waiting = threading.Thread(target=_post_many, args=(app, [long]))
    waiting.start()
    _wait_for(lambda: scheduler.depth == 1)
    started = time.monotonic()
    response = app.test_client().post("/generate-text", json={"prompt": "one more"})
    elapsed = time.monotonic() - started
    error = _assert_envelope(response, 503, "overloaded")
    assert response.headers["Retry-After"] == "2" and error["details"]["scope"] == "server"
    assert elapsed < 0.5
    # Which check refused it, in the answer and in the request log.
    assert error["details"]["reason"] == "queue"
    assert _logged_error(request_log, response) == "overloaded:queue"
    assert _refused(app, "overloaded:queue") == 1  # and in /metrics, by the same name
    running.join(60)
    waiting.join(60)


def test_request_predicted_past_the_timeout_is_refused_fast(make_app, request_log) -> None:
    """Admission predicts the finish from the measured step time: 1,000 tokens cannot finish
    in 0.3 s, so the request is refused at once instead of admitted to time out."""
    app = make_app(REQUEST_TIMEOUT_S=0.3, IGNORE_EOS=True, MAX_NEW_TOKENS_CAP=1000)
    _service(app).start()
    _wait_for(_service(app).ready.is_set)
    started = time.monotonic()
    response = app.test_client().post("/generate-text",
                                      json={"prompt": "Go on", "max_new_tokens": 1000})
    elapsed = time.monotonic() - started
    error = _assert_envelope(response, 503, "overloaded")
    assert "timeout" in error["message"] and response.headers["Retry-After"] == "2"
    assert elapsed < 0.3 and _service(app).scheduler.running == 0
    assert error["details"]["reason"] == "forecast"
    assert _logged_error(request_log, response) == "overloaded:forecast"
    assert _refused(app, "overloaded:forecast") == 1 and _refused(app, "overloaded:queue") == 0
    short = app.test_client().post("/generate-text", json={"prompt": "hi", "max_new_tokens": 2})
    assert short.status_code == 200


def test_queued_request_made_late_is_refused_503_not_504(make_app) -> None:
    """A request admitted behind another is shed from the queue (503 + Retry-After) once the
    steps turn out slower than forecast, instead of running into the 504 timeout."""
    app = make_app(REQUEST_TIMEOUT_S=60, IGNORE_EOS=True, MAX_NEW_TOKENS_CAP=1000,
                   MAX_BATCH_SIZE=1)
    scheduler = _service(app).scheduler
    _service(app).start()
    _wait_for(_service(app).ready.is_set)
    scheduler.step_s = 0.01  # forecast: 10 ms a step, so two 1,000-token requests fit
    running = threading.Thread(target=_post_many, args=(app, [
        {"prompt": "Go on", "max_new_tokens": 1000}]))
    running.start()
    _wait_for(lambda: scheduler.running == 1)
    queued = {}
    waiting = threading.Thread(target=lambda: queued.update(response=app.test_client().post(
        "/generate-text", json={"prompt": "Then", "max_new_tokens": 1000})))
    waiting.start()
    _wait_for(lambda: scheduler.depth == 1)
    scheduler.step_s = 1.0  # now 1 s a step: the queued one cannot finish within 60 s
    waiting.join(60)
    error = _assert_envelope(queued["response"], 503, "overloaded")
    assert "timeout" in error["message"] and queued["response"].headers["Retry-After"] == "2"
    assert error["details"]["reason"] == "forecast"  # shed from the queue: the same check
    running.join(120)


def test_timeout_is_504_and_frees_the_slot(make_app) -> None:
    # With the prediction off, the request is admitted and the timeout path is what ends it.
    app = make_app(REQUEST_TIMEOUT_S=0.3, IGNORE_EOS=True, MAX_NEW_TOKENS_CAP=1000,
                   MAX_BATCH_SIZE=1, ADMIT_PREDICTED=False)
    _service(app).start()
    _wait_for(_service(app).ready.is_set)
    response = app.test_client().post("/generate-text",
                                      json={"prompt": "Go on", "max_new_tokens": 1000})
    _assert_envelope(response, 504, "generation_timeout")
    _wait_for(lambda: _service(app).scheduler.running == 0)
    after = app.test_client().post("/generate-text", json={"prompt": "hi", "max_new_tokens": 2})
    assert after.status_code == 200


def test_bad_request_changes_nothing_and_is_logged(client, request_log) -> None:
    client.post("/generate-text", json={"prompt": "hi", "max_new_tokens": 2})
    client.post("/generate-text", json={"prompt": ""})
    client.get("/health")
    lines = request_log.read_text().splitlines()
    assert len(lines) == 2  # probes are not logged
    assert '"status":200' in lines[0] and '"status":422' in lines[1]
    assert [json.loads(line)["error"] for line in lines] == [None, "invalid_fields"]


def test_a_llama_serves_its_real_context_capped_by_the_kv_settings(make_app,
                                                                  tiny_decoders) -> None:
    """synthetic:tiny-llama keeps Llama 3's 131,072 positions in its config; what one request
    may reserve is capped by MAX_REQUEST_KV_TOKENS (default: the KV budget), and the 413 says
    both."""
    client = make_app(MODEL="synthetic:tiny-llama", MAX_REQUEST_KV_TOKENS=64).test_client()
    words = " ".join(f"w{i}" for i in range(40))
    error = _assert_envelope(
        client.post("/generate-text", json={"prompt": words, "max_new_tokens": 8}),
        413, "prompt_too_long")
    assert error["details"]["context_window"] == 131_072 and error["details"]["limit"] == 64
    assert "64 positions per request" in error["message"]
    ok = client.post("/generate-text", json={"prompt": "w1 w2", "max_new_tokens": 8})
    assert ok.status_code == 200
