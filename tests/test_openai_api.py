"""The OpenAI-compatible routes on the Flask test client: shapes, prompts, errors."""

from __future__ import annotations

import pytest
from flask import Flask

from server.engine.decoding import GenerationRequest
from server.engine.step import generate_alone
from server.web.prompts import chat_ids
from tests.test_streaming import read_log, sse_events

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def _tokenizer(app: Flask):
    return app.extensions["model_service"].loaded.tokenizer


def test_models_lists_the_served_model(client) -> None:
    data = client.get("/v1/models").json
    assert data["object"] == "list"
    [model] = data["data"]
    assert model["id"] == "synthetic:tiny" and model["object"] == "model"
    assert isinstance(model["created"], int) and model["owned_by"]


def test_completion_has_openai_shape_and_counts_tokens(app, client) -> None:
    response = client.post("/v1/completions", json={
        "model": "synthetic:tiny", "prompt": "Once upon a time", "max_tokens": 7,
        "temperature": 0})
    assert response.status_code == 200
    assert response.headers["X-Worker-PSS-MB"] and response.headers["X-Batch-Size"] == "1"
    data = response.json
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
    assert data["model"] == "synthetic:tiny" and isinstance(data["created"], int)
    [choice] = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("length", "stop")
    usage = data["usage"]
    assert usage["prompt_tokens"] == len(_tokenizer(app).encode("Once upon a time"))
    assert usage["completion_tokens"] <= 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_without_template_uses_a_role_prefixed_prompt(app, client) -> None:
    data = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3}).json
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    [choice] = data["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    expected = "System: Be brief.\nUser: Hi there\nAssistant:"
    assert data["usage"]["prompt_tokens"] == len(_tokenizer(app).encode(expected))


def test_chat_uses_the_tokenizers_chat_template_when_it_has_one(make_app) -> None:
    app = make_app()
    tokenizer = _tokenizer(app)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    messages = [CHAT[0], {"role": "user", "content": parts}]
    data = app.test_client().post("/v1/chat/completions",
                                  json={"messages": messages, "max_tokens": 2}).json
    expected = "<system>Be brief.\n<user>Hi there\n<assistant>"
    assert data["usage"]["prompt_tokens"] == len(tokenizer.encode(expected))


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_chat_matches_the_whole_answer(client, include_usage) -> None:
    body = {"messages": CHAT, "max_tokens": 10, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body).json
    response = client.post("/v1/chat/completions", json={
        **body, "stream": True, "stream_options": {"include_usage": include_usage}})
    assert response.mimetype == "text/event-stream"
    events = sse_events(response.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    if include_usage:
        *chunks, last = chunks
        # the stream reused the whole answer's cached prompt: only that count differs
        details = last["usage"].pop("prompt_tokens_details")
        assert details["cached_tokens"] > whole["usage"].pop("prompt_tokens_details")[
            "cached_tokens"] == 0
        assert last["choices"] == [] and last["usage"] == whole["usage"]
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]


def test_streamed_completion_chunks(client) -> None:
    body = {"prompt": "The sea", "max_tokens": 8, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json
    events = sse_events(client.post("/v1/completions", json={**body, "stream": True})
                        .get_data(as_text=True))
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


LONG_PROMPT = "word " * 1500  # over the tiny model's 1024-token context, under MAX_INPUT_CHARS


# OpenAI and vLLM answer every invalid request 400 invalid_request_error (the openai client
# raises BadRequestError); our 422 and the 413s for over-long input are 400 here.
@pytest.mark.parametrize(("path", "body", "status", "kind", "code", "param"), [
    ("/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "invalid_request_error",
     "invalid_fields", "logprobs"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "invalid_request_error",
     "invalid_fields", "n"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 100_000}, 400, "invalid_request_error",
     "invalid_fields", "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 4, "min_tokens": 5}, 400,
     "invalid_request_error", "invalid_fields", "min_tokens"),
    ("/v1/completions", {"prompt": "x", "ignore_eos": "yes"}, 400, "invalid_request_error",
     "invalid_fields", "ignore_eos"),
    ("/v1/completions", {"prompt": "x", "stream": True,
                         "stream_options": {"include_usage": True, "chunk_size": 3}}, 400,
     "invalid_request_error", "invalid_fields", "stream_options.chunk_size"),
    ("/v1/chat/completions", {"messages": []}, 400, "invalid_request_error",
     "invalid_fields", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400,
     "invalid_request_error", "invalid_fields", "messages.0.role"),
    ("/v1/completions", {"prompt": "x" * 9000}, 400, "invalid_request_error",
     "input_too_long", "prompt"),
    ("/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 8}, 400,
     "invalid_request_error", "prompt_too_long", "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_PROMPT}],
                              "max_tokens": 8}, 400,
     "invalid_request_error", "prompt_too_long", "messages"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4o"}, 404, "not_found_error",
     "model_not_found", None),
])
def test_v1_errors_use_openais_shape(client, request_log, path, body, status, kind, code,
                                     param) -> None:
    response = client.post(path, json=body, headers={"X-Request-ID": "refused"})
    assert response.status_code == status, response.json
    assert response.json == {"error": {"message": response.json["error"]["message"],
                                       "type": kind, "param": param, "code": code}}
    assert response.json["error"]["message"]
    [logged] = [r for r in read_log(request_log) if r["request_id"] == "refused"]
    assert logged["status"] == status and logged["completion_tokens"] is None


@pytest.mark.parametrize(("api_key", "code"), [("", "missing_api_key"),
                                               ("wrong-key", "invalid_api_key")])
def test_v1_needs_an_api_key(app, api_key, code) -> None:
    response = app.test_client(api_key=api_key).post("/v1/completions", json={"prompt": "x"})
    assert response.status_code == 401
    assert response.json["error"]["type"] == "authentication_error"
    assert response.json["error"]["code"] == code


def test_v1_malformed_json_and_wrong_method(client) -> None:
    malformed = client.post("/v1/completions", data="{", content_type="application/json")
    assert malformed.status_code == 400 and malformed.json["error"]["code"] == "malformed_json"
    wrong = client.get("/v1/completions")
    assert wrong.status_code == 405 and wrong.json["error"]["type"] == "invalid_request_error"


def test_v1_is_rate_limited_per_key(make_app) -> None:
    client = make_app(RATE_LIMIT="2/minute").test_client()
    body = {"prompt": "x", "max_tokens": 1}
    for i in range(3):
        response = client.post("/v1/completions", json=body)
        assert response.status_code == (200 if i < 2 else 429)
    assert response.json["error"]["type"] == "rate_limit_error"
    assert response.json["error"]["code"] == "rate_limited" and response.headers["Retry-After"]


def test_task_routes_keep_their_own_error_shape(client) -> None:
    error = client.post("/generate-text", json={"prompt": "x", "n": 2}).json["error"]
    assert error["code"] == "invalid_fields" and "type" not in error and error["details"]


def _stop_at_first_greedy_token(app: Flask, ids: list[int]) -> None:
    """Make the engine's stop token the one the model greedily picks first after ``ids``, so
    a plain greedy request stops at once (the tiny random model otherwise never meets it)."""
    engine = app.extensions["model_service"].scheduler.engine
    first = generate_alone(engine, GenerationRequest(ids, 1)).token_ids[0]
    engine.stop_ids = engine.stop_ids | {first}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_ignore_eos_and_min_tokens_generate_past_the_stop_token(app, path) -> None:
    prompt = "Once upon a time"
    if path == "/v1/completions":
        body: dict = {"prompt": prompt}
        ids = _tokenizer(app).encode(prompt)
    else:
        body = {"messages": [{"role": "user", "content": prompt}]}
        ids = chat_ids(_tokenizer(app), body["messages"])
    _stop_at_first_greedy_token(app, ids)
    client = app.test_client()

    def generated(extra: dict) -> tuple[int, str]:
        data = client.post(path, json={**body, "max_tokens": 6, "temperature": 0,
                                       **extra}).json
        return data["usage"]["completion_tokens"], data["choices"][0]["finish_reason"]

    assert generated({}) == (0, "stop")
    assert generated({"ignore_eos": True}) == (6, "length")
    assert generated({"min_tokens": 3})[0] >= 3


def test_task_and_v1_routes_share_the_chat_template(make_app) -> None:
    """One chat-template tokenization for both route families (it used to be two copies)."""
    app = make_app()
    tokenizer = _tokenizer(app)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    client = app.test_client()
    task = client.post("/generate-text", json={"prompt": "Hi there", "max_new_tokens": 1}).json
    expected = "<system>Continue the user's text.\n<user>Hi there\n<assistant>"
    assert task["usage"]["prompt_tokens"] == len(tokenizer.encode(expected))
    chat = client.post("/v1/chat/completions", json={"max_tokens": 1, "messages": [
        {"role": "system", "content": "Continue the user's text."},
        {"role": "user", "content": "Hi there"}]}).json
    assert chat["usage"]["prompt_tokens"] == task["usage"]["prompt_tokens"]


@pytest.mark.parametrize(("options", "every_chunk"), [
    ({"include_usage": True, "continuous_usage_stats": True}, True),
    ({"continuous_usage_stats": True}, False),  # vLLM: only together with include_usage
])
def test_continuous_usage_stats_puts_usage_in_every_chunk(client, options, every_chunk) -> None:
    response = client.post("/v1/chat/completions", json={
        "messages": CHAT, "max_tokens": 5, "ignore_eos": True, "stream": True,
        "stream_options": options})
    chunks = sse_events(response.get_data(as_text=True))[:-1]
    if not every_chunk:
        assert all("usage" not in c for c in chunks)
        return
    usages = [c["usage"] for c in chunks]
    assert usages[0]["completion_tokens"] == 0  # the role chunk, before any token
    assert [u["completion_tokens"] for u in usages][-2:] == [5, 5]
    assert len({u["prompt_tokens"] for u in usages}) == 1


def _error_code(response) -> str:
    return response.json["error"]["code"]


@pytest.mark.parametrize(("path", "invalid"), [("/generate-text", 422),
                                               ("/v1/completions", 400)])
@pytest.mark.parametrize(("prompt", "code", "too_long"), [
    ("   ", "invalid_fields", False),  # blank
    ("a\ud800b", "invalid_fields", False),  # a lone surrogate no tokenizer can encode
    ("x" * 9000, "input_too_long", True),  # over MAX_INPUT_CHARS
])
def test_text_checks_are_one_copy_on_both_route_families(module_client, path, invalid, prompt,
                                                         code, too_long) -> None:
    response = module_client.post(path, json={"prompt": prompt})
    expected = 413 if too_long and path == "/generate-text" else invalid
    assert response.status_code == expected and _error_code(response) == code


@pytest.mark.parametrize(("path", "tokens", "text"), [
    ("/generate-text", "max_new_tokens", lambda data: data["text"]),
    ("/v1/completions", "max_tokens", lambda data: data["choices"][0]["text"]),
])
def test_a_tiny_temperature_is_greedy_on_both_route_families(client, path, tokens,
                                                             text) -> None:
    body = {"prompt": "The harbour at dawn", tokens: 6}
    greedy = client.post(path, json={**body, "temperature": 0}).json
    tiny = client.post(path, json={**body, "temperature": 1e-300, "seed": 1}).json
    assert text(tiny) == text(greedy)
