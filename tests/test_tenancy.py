"""Keys are tenants (issue 29), through real Gunicorn on tiny: key B's short request is not
held behind key A's long ones waiting for KV room (bench.tenants' scenario), and a key at
its share of the queue is refused fast with a 429 that says so, while another key is not."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from bench.tenants import corpus_prompt, head_of_line
from harness.gunicorn_process import GunicornServer
from server.engine.decoding import GenerationRequest
from server.engine.jobs import Job
from server.web.auth import key_id_of
from tests.conftest import server_env

KEY_A, KEY_B = "tenant-a-0123456789abcdef", "tenant-b-0123456789abcdef"


def test_a_short_request_of_one_key_is_not_held_behind_another_keys_long_ones(
        tiny_model: Path, tmp_path: Path) -> None:
    """A's five 950-token generations each need most of KV_TOKENS (950 + 23 prompt tokens of
    1000, B's 10 fit beside one): one runs, four queue. B's 8 tokens take less time than one
    of A's generations: B joins whichever of A's is running. First come, first served made
    B wait for A's queued ones, at least three whole generations. (The check is on B's own
    latency, not on B ending before A's first: B is sent 0.5 s after A's first token, and
    on the Zen 4, where tiny decodes a token in 0.8 ms, A's first had ended by then.)"""
    env = server_env(tmp_path, API_KEYS=f"{KEY_A},{KEY_B}", KV_TOKENS="1000",
                     MAX_NEW_TOKENS_CAP="950", REQUEST_LOG="")
    with GunicornServer(tmp_path, env, workers=1) as server:
        result = head_of_line(server.url, KEY_A, KEY_B, corpus_prompt(20), a_tokens=950)
    assert result.b.status == 200 and result.a_first.status == 200
    assert result.b.latency_s < result.a_first.latency_s, result
    # A's queued ones still end: served, or refused fast as predicted past the timeout
    assert {a.status for a in result.a_rest} <= {200, 503}


def test_a_keys_full_queue_share_is_a_429_that_names_the_key(make_app) -> None:
    """One row, one queue place per key: with A's place taken, A's next request is refused
    at once with 429 key_share_full, and B's is still queued and served."""
    app = make_app(API_KEYS=f"{KEY_A},{KEY_B}", MAX_BATCH_SIZE=1, KEY_MAX_QUEUE=1,
                   IGNORE_EOS=True)
    scheduler = app.extensions["model_service"].scheduler
    a_id = key_id_of(hashlib.sha256(KEY_A.encode()).digest())
    a, b = app.test_client(api_key=KEY_A), app.test_client(api_key=KEY_B)
    running = a.post("/generate-text", buffered=False, json={  # returns at its first token
        "prompt": "x", "max_new_tokens": 256, "stream": True})
    scheduler.submit(Job(GenerationRequest([1, 2], 1, tenant=a_id)))  # A's queue place
    refused = a.post("/generate-text", json={"prompt": "one more", "max_new_tokens": 2})
    served = {}
    other = threading.Thread(target=lambda: served.update(
        r=b.post("/generate-text", json={"prompt": "mine", "max_new_tokens": 2})))
    other.start()
    running.close()
    other.join(300)
    error = refused.json["error"]
    assert refused.status_code == 429 and error["code"] == "key_share_full"
    assert error["details"]["scope"] == "key" and int(refused.headers["Retry-After"]) > 0
    assert served["r"].status_code == 200  # B queued beside A's full share
