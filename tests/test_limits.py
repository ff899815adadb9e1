"""Rate limits: per key and global on the test client; shared (Redis) vs per-worker (memory)
counting and Redis going away on real Gunicorn with a real redis-server."""

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from harness.gunicorn_process import GunicornServer
from server.web.auth import ConfigError
from server.web.limits import per_worker_warning, redact_uri
from tests.conftest import TEST_API_KEY, TEST_OPERATOR_KEY, server_env

OTHER_KEY = "other-key-fedcba9876543210"
BODY = {"prompt": "Count me", "max_new_tokens": 1}
PER_WORKER = "each worker counts on its own"
SPARE_KEYS = [TEST_API_KEY, *(f"spare-key-{i}-0123456789abcdef" for i in range(4))]


def _statuses(client, n: int, path: str = "/generate-text") -> list[int]:
    return [client.post(path, json=BODY).status_code for _ in range(n)]


def test_per_key_limit_answers_429_in_the_envelope_with_headers(make_app, request_log) -> None:
    app = make_app(API_KEYS=f"{TEST_API_KEY},{OTHER_KEY}", RATE_LIMIT="3/minute")
    client = app.test_client()
    responses = [client.post("/generate-text", json=BODY) for _ in range(5)]
    assert [r.status_code for r in responses] == [200 if i < 3 else 429 for i in range(5)]
    ok, refused = responses[0], responses[-1]
    assert ok.headers["X-RateLimit-Limit"] == "3" and ok.headers["X-RateLimit-Remaining"] == "2"
    error = refused.json["error"]
    assert error["code"] == "rate_limited" and error["details"] == {
        "limit": "3 per 1 minute", "scope": "key"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) > time.time()
    assert refused.headers["X-Batch-Size"] == "0" and "X-Worker-PSS-MB" in refused.headers
    # Refused before any model work: the log shows no prompt tokens and no batch.
    records = [json.loads(line) for line in request_log.read_text().splitlines()]
    assert [(r["status"], r["prompt_tokens"] is None, r["batch_size"]) for r in records[3:]] == [
        (429, True, 0), (429, True, 0)]
    # Another key has its own budget.
    assert _statuses(app.test_client(api_key=OTHER_KEY), 3) == [200, 200, 200]


def test_per_key_limit_counts_all_routes_together(make_app) -> None:
    client = make_app(RATE_LIMIT="3/minute").test_client()
    answer = {"question": "Who counts?", "max_new_tokens": 1}
    assert [client.post("/generate-text", json=BODY).status_code,
            client.post("/summarize-text", json={"text": "Count me too.", "max_new_tokens": 1}
                        ).status_code,
            client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code,
            client.post("/answer-question", json=answer).status_code] == [200, 200, 200, 429]
    refused = client.post("/generate-text", json=BODY)
    assert refused.status_code == 429 and refused.json["error"]["details"]["scope"] == "key"


def test_global_ceiling_counts_all_keys_together(make_app) -> None:
    app = make_app(API_KEYS=f"{TEST_API_KEY},{OTHER_KEY}", GLOBAL_RATE_LIMIT="4/minute")
    clients = [app.test_client(), app.test_client(api_key=OTHER_KEY)]
    responses = [clients[i % 2].post("/generate-text", json=BODY) for i in range(6)]
    assert [r.status_code for r in responses] == [200] * 4 + [429] * 2
    assert responses[-1].json["error"]["details"]["scope"] == "global"


def test_probes_and_the_spec_are_not_limited(make_app) -> None:
    app = make_app(RATE_LIMIT="1/minute", GLOBAL_RATE_LIMIT="1/minute")
    client = app.test_client()
    for path in ("/health", "/openapi.json", "/docs"):
        assert [client.get(path).status_code for _ in range(3)] == [200] * 3, path
    scraper = app.test_client(api_key=TEST_OPERATOR_KEY)
    assert [scraper.get("/metrics").status_code for _ in range(3)] == [200] * 3
    assert _statuses(client, 2) == [200, 429]


def test_unauthorized_requests_do_not_spend_a_keys_budget(make_app) -> None:
    app = make_app(RATE_LIMIT="2/minute")
    assert _statuses(app.test_client(api_key="wrong-key-0123456789"), 4) == [401] * 4
    assert _statuses(app.test_client(), 3) == [200, 200, 429]


def test_a_malformed_limit_is_a_config_error(make_app) -> None:
    with pytest.raises(ConfigError, match=r"RATE_LIMIT='5 a minute'.*120/minute"):
        make_app(RATE_LIMIT="5 a minute")


def test_per_worker_warning_only_for_memory_with_several_workers() -> None:
    config = {"RATE_LIMIT": "5/minute", "GLOBAL_RATE_LIMIT": "",
              "RATELIMIT_STORAGE_URI": "memory://"}
    assert PER_WORKER in per_worker_warning(config, 2)
    assert per_worker_warning(config, 1) is None
    assert per_worker_warning({**config, "RATELIMIT_STORAGE_URI": "redis://h:6379"}, 4) is None
    assert per_worker_warning({**config, "RATE_LIMIT": ""}, 4) is None


def test_storage_password_is_redacted_for_logs() -> None:
    assert redact_uri("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_uri("redis://user:s3cret@cache:6379") == "redis://user:***@cache:6379"
    assert redact_uri("memory://") == "memory://"


def test_the_flask_limiter_internals_we_extend_are_the_pinned_ones(app) -> None:
    """server.web.limits extends two non-public parts of flask-limiter 4.1.1 (its check method,
    re-run against the fallback, and its header hook, wrapped); swallow_errors=True would
    replace both but logs a traceback, which no log of ours may hold. An upgrade that moves
    either must fail here, not in production."""
    import inspect
    from functools import partial

    import flask_limiter

    assert flask_limiter.__version__ == "4.1.1"
    check = inspect.signature(flask_limiter.Limiter._check_request_limit)
    assert list(check.parameters) == ["self", "callable_name", "in_middleware"]
    limiter = app.extensions["rate_limiter"]
    assert limiter._storage_dead is False and limiter._fallback_limiter is not None
    wrapped = [f for f in app.after_request_funcs[None] if f.__name__ == "inject_headers"]
    assert len(wrapped) == 1 and isinstance(inspect.getclosurevars(wrapped[0]).nonlocals[
        "inject"], partial)


# ---- real Gunicorn and real Redis -------------------------------------------------------


def _serve(tmp_path: Path, storage_uri: str) -> GunicornServer:
    env = server_env(tmp_path, API_KEYS=",".join([OTHER_KEY, *SPARE_KEYS]),
                     RATE_LIMIT="5/minute", RATELIMIT_STORAGE_URI=storage_uri)
    return GunicornServer(tmp_path, env, workers=2)


def _burst(url: str, key: str, n: int = 12) -> list[requests.Response]:
    """``n`` simultaneous requests, each on its own connection (either worker may accept)."""

    def post(_: int) -> requests.Response:
        return requests.post(f"{url}/generate-text", json=BODY, timeout=30,
                             headers={"Authorization": f"Bearer {key}"})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(post, range(n)))


def _per_worker_successes(responses: list[requests.Response], limit: int) -> int:
    """How many succeed when each worker counts alone: min(limit, its share) per worker."""
    shares = Counter(r.headers["X-Worker-PID"] for r in responses)
    return sum(min(limit, n) for n in shares.values())


def test_redis_limit_is_exact_across_workers(tiny_model, tmp_path, redis_server) -> None:
    with _serve(tmp_path, redis_server.uri) as server:
        # A burst proves sharing only if both workers answered part of it; keys are spare.
        for key in SPARE_KEYS:
            responses = _burst(server.url, key)
            if len({r.headers["X-Worker-PID"] for r in responses}) == 2:
                break
        assert len({r.headers["X-Worker-PID"] for r in responses}) == 2
        assert Counter(r.status_code for r in responses) == {200: 5, 429: 7}
        assert _burst(server.url, OTHER_KEY, 2)[0].status_code == 200  # own budget
        assert PER_WORKER not in server.log_text()
    assert redis.Redis.from_url(redis_server.uri).keys("*gpt-load-lab*")


def test_memory_storage_counts_per_worker(tiny_model, tmp_path) -> None:
    """Documents memory:// with 2 workers: each worker allows 5, so up to 10 of 12 pass."""
    with _serve(tmp_path, "memory://") as server:
        responses = _burst(server.url, TEST_API_KEY)
        successes = sum(r.status_code == 200 for r in responses)
        assert successes == _per_worker_successes(responses, 5)
        assert {r.status_code for r in responses} <= {200, 429}
        assert f"rate limits use memory:// with 2 workers: {PER_WORKER}" in server.log_text()


def test_redis_down_falls_back_to_per_worker_memory_then_recovers(
        tiny_model, tmp_path, redis_server) -> None:
    with _serve(tmp_path, redis_server.uri) as server:
        assert [r.status_code for r in _burst(server.url, TEST_API_KEY, 2)] == [200, 200]
        redis_server.stop()
        started = time.monotonic()
        responses = _burst(server.url, TEST_API_KEY)
        assert time.monotonic() - started < 5  # a dead Redis does not stall requests
        assert {r.status_code for r in responses} <= {200, 429}, server.log_text()[-4000:]
        assert sum(r.status_code == 200 for r in responses) == _per_worker_successes(
            responses, 5)
        assert "falling back to in-memory storage" in server.log_text()
        # Redis returns: workers re-check it with backoff (1, 2, 4 ... s) and switch back.
        redis_server.start()

        def recovered() -> bool:
            if "Rate limit storage recovered" in server.log_text():
                return True
            _burst(server.url, OTHER_KEY, 2)  # requests are what drive the re-checks
            return False

        server.follow(recovered, "the switch back to Redis is logged", interval_s=0.5)
    assert redis.Redis.from_url(redis_server.uri).keys("*gpt-load-lab*")
