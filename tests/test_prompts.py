"""server.web.prompts with the chat templates the Llama-family presets ship: the task routes
and /v1/chat/completions send the model exactly the family's chat format (Flask test client
on synthetic:tiny-llama and synthetic:tiny-qwen)."""

from __future__ import annotations

import pytest
from flask import Flask

from server import create_app
from server.engine.decoding import GenerationRequest
from server.engine.step import StepEngine, generate_alone
from server.web.prompts import has_template
from tests.conftest import (
    MODELS_DIR,
    TEST_API_KEY,
    TEST_OPERATOR_KEY,
    TINY_DECODERS,
    KeyedClient,
)


def _llama(system: str, user: str) -> str:
    return (f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
            f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")


def _qwen(system: str, user: str) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


FORMATS = {"tiny-llama": _llama, "tiny-qwen": _qwen}
# Task route -> its body and the (system, user) messages prompts.py makes of it.
TASKS = {
    "/generate-text": ({"prompt": "Once upon a time"},
                       ("Continue the user's text.", "Once upon a time")),
    "/summarize-text": ({"text": "The bakery opens at six."},
                        ("Summarize the user's text in a few sentences.",
                         "The bakery opens at six.")),
    "/answer-question": ({"question": "When does it open?", "context": "At six."},
                         ("Answer the question. Use the context when one is given.",
                          "Context: At six.\n\nWhen does it open?")),
}


@pytest.fixture(scope="module", params=TINY_DECODERS)
def family_app(request: pytest.FixtureRequest, tiny_decoders, tiny_model,
               tmp_path_factory) -> tuple[str, Flask]:
    """(preset, an app serving it) for each tiny Llama-family preset."""
    log = tmp_path_factory.mktemp("log") / "server_requests.jsonl"
    app = create_app({"MODEL": f"synthetic:{request.param}", "MODELS_DIR": MODELS_DIR,
                      "DTYPE": "float32", "REQUEST_LOG": str(log), "TORCH_THREADS": 1,
                      "API_KEYS": TEST_API_KEY, "OPERATOR_KEYS": TEST_OPERATOR_KEY,
                      "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": ""})
    app.test_client_class = KeyedClient
    return request.param, app


def _expected(app: Flask, text: str, new: int) -> tuple[list[int], str]:
    """The ids of the literal chat ``text`` and the greedy answer the model gives them."""
    loaded = app.extensions["model_service"].loaded
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    engine = StepEngine(loaded.model, loaded.eos_id, stop_ids=loaded.stop_ids)
    tokens = generate_alone(engine, GenerationRequest(ids, new)).token_ids
    return ids, loaded.tokenizer.decode(tokens, skip_special_tokens=True)


@pytest.mark.parametrize("route", sorted(TASKS))
def test_task_routes_send_the_family_s_chat_format(family_app, route: str) -> None:
    preset, app = family_app
    body, (system, user) = TASKS[route]
    assert has_template(app.extensions["model_service"].loaded.tokenizer)
    ids, text = _expected(app, FORMATS[preset](system, user), 4)
    data = app.test_client().post(route, json={**body, "max_new_tokens": 4}).json
    assert data["usage"]["prompt_tokens"] == len(ids)
    assert data["text"] == text  # the greedy answer to exactly those ids


def test_chat_completions_send_the_family_s_chat_format(family_app) -> None:
    preset, app = family_app
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi there"}]
    ids, text = _expected(app, FORMATS[preset]("Be brief.", "Hi there"), 4)
    data = app.test_client().post("/v1/chat/completions", json={
        "messages": messages, "max_tokens": 4, "temperature": 0}).json
    assert data["usage"]["prompt_tokens"] == len(ids)
    assert data["choices"][0]["message"]["content"] == text


def test_a_chat_that_ends_stops_at_the_family_s_end_of_turn(family_app) -> None:
    """The stop token is the end-of-turn token the template closes each message with."""
    preset, app = family_app
    tokenizer = app.extensions["model_service"].loaded.tokenizer
    end_of_turn = {"tiny-llama": "<|eot_id|>", "tiny-qwen": "<|im_end|>"}[preset]
    assert tokenizer.eos_token == end_of_turn
    assert app.extensions["model_service"].loaded.eos_id == \
        tokenizer.convert_tokens_to_ids(end_of_turn)
