"""Streaming on the Flask test client: SSE events, incremental text, disconnects, errors."""

from __future__ import annotations

import json
import time

import pytest
from flask import Flask

from harness.waiting import wait_until
from server.engine.decoding import GenerationRequest
from server.engine.jobs import Job
from server.web.streaming import TextDeltas


def sse_events(text: str) -> list:
    """The decoded ``data:`` payloads of an SSE body (``[DONE]`` kept as the string)."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            payload = block.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_text_deltas_never_split_a_character_and_join_to_the_whole_text(app: Flask) -> None:
    tokenizer = app.extensions["model_service"].loaded.tokenizer
    ids = tokenizer.encode("Fahrräder für Köln 🚲🙂 — 日本語のテキスト, ok")
    deltas = TextDeltas(tokenizer)
    sent = [deltas.push(token) for token in ids]
    sent.append(deltas.flush())
    assert "" in sent[:-1], "the emoji should span several byte-level tokens"
    assert not any("\ufffd" in piece for piece in sent)
    assert "".join(sent) == tokenizer.decode(ids)


def test_a_character_split_across_byte_level_tokens_is_sent_whole(app: Flask) -> None:
    """DecodeStream holds the first bytes of a multi-byte character back until it is whole."""
    tokenizer = app.extensions["model_service"].loaded.tokenizer
    ids = tokenizer.encode("🚲 ok")
    split = len(ids) - len(tokenizer.encode(" ok"))  # the emoji's 4 UTF-8 bytes, as tokens
    assert split > 1, "the emoji should span several byte-level tokens"
    deltas = TextDeltas(tokenizer)
    sent = [deltas.push(token) for token in ids]
    assert sent[:split] == [""] * (split - 1) + ["🚲"]
    assert "".join(sent) + deltas.flush() == "🚲 ok"


def test_bytes_that_never_make_a_character_do_not_silence_the_stream(app: Flask) -> None:
    """A lead byte cut short becomes U+FFFD and the text goes on (the stream never goes
    quiet), joined exactly as the whole answer decodes."""
    tokenizer = app.extensions["model_service"].loaded.tokenizer
    vocab = tokenizer.get_vocab()
    ids = [vocab["a"], vocab["ð"], vocab["Ł"], vocab["b"], vocab["c"]]  # 0xF0 0x9F, then "b"
    deltas = TextDeltas(tokenizer)
    sent = [deltas.push(token) for token in ids]
    assert sent == ["a", "", "", "\ufffdb", "c"]
    assert "".join(sent) + deltas.flush() == tokenizer.decode(ids)


@pytest.mark.parametrize("route, body", [
    ("/generate-text", {"prompt": "The weather today is", "temperature": 0.0}),
    ("/summarize-text", {"text": "A long article about trains. " * 5}),
    ("/answer-question", {"question": "Which colour?", "context": "The door is red."}),
])
def test_task_route_streams_the_same_text_as_its_json_answer(client, route, body) -> None:
    whole = client.post(route, json={**body, "max_new_tokens": 12}).json
    response = client.post(route, json={**body, "max_new_tokens": 12, "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["X-Worker-PID"] and response.headers["X-Request-ID"]
    events = sse_events(response.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    *pieces, final = events[:-1]
    assert all(set(p) == {"text"} and p["text"] for p in pieces)
    assert "".join(p["text"] for p in pieces) == whole["text"]
    assert final["text"] == "" and final["usage"] == whole["usage"]
    assert final["finish_reason"] == whole["finish_reason"]
    assert set(final["timings_ms"]) == {"queue", "inference", "total"}


def test_streamed_request_is_logged_when_its_stream_ends(client, request_log) -> None:
    response = client.post("/generate-text", json={"prompt": "Trains", "max_new_tokens": 6,
                                                   "stream": True},
                           headers={"X-Request-ID": "streamed-1"})
    events = sse_events(response.get_data(as_text=True))
    [record] = [r for r in read_log(request_log) if r["request_id"] == "streamed-1"]
    assert record["status"] == 200 and record["route"] == "/generate-text"
    assert record["completion_tokens"] == events[-2]["usage"]["completion_tokens"]
    assert record["batch_size"] == 1 and record["inference_ms"] > 0


def test_disconnecting_client_frees_its_batch_slot(make_app, request_log) -> None:
    app = make_app(IGNORE_EOS=True)
    client, scheduler = app.test_client(), app.extensions["model_service"].scheduler
    body = {"prompt": "A long story", "max_new_tokens": 256}
    started = time.monotonic()
    assert client.post("/generate-text", json=body).json["usage"]["completion_tokens"] == 256
    full_s = time.monotonic() - started  # what a slot kept to the end would cost

    response = client.post("/generate-text", json={**body, "stream": True}, buffered=False,
                           headers={"X-Request-ID": "gone"})
    first = next(iter(response.response))
    assert scheduler.running == 1 and b'"text"' in first
    closed = time.monotonic()
    response.close()  # what Gunicorn does when the client's socket is gone
    # Bounded by what is measured, not a readiness wait: freed well before a full answer.
    wait_until(lambda: not scheduler.running, "the closed stream's slot is freed",
               timeout_s=full_s, interval_s=0.005)
    freed_s = time.monotonic() - closed
    assert freed_s < full_s / 4, (freed_s, full_s)
    [record] = [r for r in read_log(request_log) if r["request_id"] == "gone"]
    assert record["completion_tokens"] < 256


def test_queue_full_is_an_http_error_before_the_stream_starts(make_app) -> None:
    app = make_app(MAX_QUEUE=1, MAX_BATCH_SIZE=1, IGNORE_EOS=True)
    scheduler = app.extensions["model_service"].scheduler
    running = app.test_client().post("/generate-text", buffered=False, json={
        "prompt": "x", "max_new_tokens": 256, "stream": True})  # returns at its first token
    scheduler.submit(Job(GenerationRequest([1, 2], 1)))  # the one queue place
    refused = app.test_client().post("/generate-text",
                                     json={"prompt": "y", "max_new_tokens": 4, "stream": True})
    running.close()
    assert refused.status_code == 503 and refused.mimetype == "application/json"
    assert refused.json["error"]["code"] == "overloaded" and refused.headers["Retry-After"]


def test_timeout_in_the_middle_of_a_stream_is_an_error_event(make_app) -> None:
    app = make_app(IGNORE_EOS=True, MAX_NEW_TOKENS_CAP=1000)
    # The timeout is what 200 tokens took just now, not a fixed figure: on a loaded host a
    # fixed 0.3 s passed before the first token (a 504, not a stream) or after the last.
    started = time.monotonic()
    warm = app.test_client().post("/v1/completions", json={"prompt": "Tick", "max_tokens": 200})
    assert warm.status_code == 200
    app.config["REQUEST_TIMEOUT_S"] = time.monotonic() - started
    response = app.test_client().post("/v1/completions", json={
        "prompt": "Tick", "max_tokens": 1000, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "generation_timeout"
    assert events[-2]["error"]["type"] == "server_error"
    assert any("choices" in e for e in events[:-2])  # some text went out first
