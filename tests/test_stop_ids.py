"""Several stop tokens (issue 33): the Llama-family presets state their checkpoints' stop lists
in generation_config.json, LoadedModel reads them, the step engine stops on (and masks) every
one, and the task and OpenAI-compatible routes answer "stop" for each (Flask test client on
synthetic:tiny-llama and synthetic:tiny-qwen; GPT-2 keeps its one id)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from flask import Flask
from transformers import AutoModelForCausalLM

from server import create_app
from server.engine import synthetic
from server.engine.decoding import GenerationRequest
from server.engine.model import LoadedModel, generation_stop_ids
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR, TEST_API_KEY, TEST_OPERATOR_KEY, KeyedClient
from tests.test_streaming import sse_events

# What each checkpoint's generation_config.json lists (Llama-3.2-1B-Instruct,
# Qwen2.5-1.5B-Instruct), with the tokenizer's eos first.
STOPS = {"tiny-llama": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
         "tiny-qwen": ["<|im_end|>", "<|endoftext|>"]}
PUBLISHED_STOP_IDS = {"llama-3.2-1b": [128_001, 128_008, 128_009],
                      "tiny-llama": [128_001, 128_008, 128_009],
                      "qwen2.5-1.5b": [151_645, 151_643], "tiny-qwen": [151_645, 151_643]}
CASES = [(preset, token) for preset, tokens in STOPS.items() for token in tokens]


@pytest.fixture(scope="module")
def apps(tiny_decoders, tmp_path_factory) -> dict[str, Flask]:
    """An app serving each tiny Llama-family preset, by preset."""
    log = tmp_path_factory.mktemp("log") / "server_requests.jsonl"
    built = {}
    for preset in STOPS:
        app = create_app({"MODEL": f"synthetic:{preset}", "MODELS_DIR": MODELS_DIR,
                          "DTYPE": "float32", "REQUEST_LOG": str(log), "TORCH_THREADS": 1,
                          "API_KEYS": TEST_API_KEY, "OPERATOR_KEYS": TEST_OPERATOR_KEY,
                          "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": ""})
        app.test_client_class = KeyedClient
        built[preset] = app
    return built


def _loaded(app: Flask) -> LoadedModel:
    return app.extensions["model_service"].loaded


def _ids(loaded: LoadedModel, tokens: list[str]) -> list[int]:
    return [loaded.tokenizer.convert_tokens_to_ids(t) for t in tokens]


@contextlib.contextmanager
def favoured(loaded: LoadedModel, ranked: list[int]) -> Iterator[None]:
    """Make ``ranked`` the model's top choices, first the best, at every step: a bias on the
    LM head's logits (the tied Llama head has no bias parameter to set)."""
    bias = torch.zeros(loaded.model.config.vocab_size)
    for rank, token in enumerate(ranked):
        bias[token] = 1e6 * (len(ranked) - rank)
    handle = loaded.model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("preset", sorted(PUBLISHED_STOP_IDS))
def test_presets_state_their_checkpoint_s_stop_list(preset: str) -> None:
    with torch.device("meta"):
        model = synthetic.new_model(preset)
    assert model.generation_config.eos_token_id == PUBLISHED_STOP_IDS[preset]


@pytest.mark.parametrize("preset", sorted(STOPS))
def test_built_generation_config_holds_the_list(tiny_decoders, preset: str) -> None:
    written = json.loads((tiny_decoders[preset] / "generation_config.json").read_text())
    assert written["eos_token_id"] == PUBLISHED_STOP_IDS[preset]


def test_gpt2_keeps_its_one_stop_id(tiny_model: Path) -> None:
    written = json.loads((tiny_model / "generation_config.json").read_text())
    assert written["eos_token_id"] == written["bos_token_id"] == 50256
    assert "_from_model_config" in written  # still derived from config.json, as it was
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert generation_stop_ids(model, 50256) == {50256}


@pytest.mark.parametrize("preset", sorted(STOPS))
def test_loaded_model_stops_on_every_listed_id(apps, preset: str) -> None:
    loaded = _loaded(apps[preset])
    assert loaded.stop_ids == frozenset(_ids(loaded, STOPS[preset]))
    assert loaded.eos_id == _ids(loaded, STOPS[preset])[0]  # the tokenizer's eos
    assert apps[preset].extensions["model_service"].scheduler.engine.stop_ids == \
        loaded.stop_ids  # the served engine got them all


@pytest.mark.parametrize(("stated", "expected"), [
    (7, {7, 9}), ([7, 8], {7, 8, 9}), ([], {9}), (None, {9}), (9, {9})])
def test_generation_stop_ids_read_an_id_or_a_list(tiny_model: Path, stated,
                                                  expected: set[int]) -> None:
    """Hugging Face's convention: one id or a list; the tokenizer's eos (9 here) always."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.generation_config.eos_token_id = stated
    assert generation_stop_ids(model, 9) == expected
    assert generation_stop_ids(torch.nn.Linear(1, 1), 9) == {9}  # no generation config


def _engine(loaded: LoadedModel, ignore_eos: bool = False) -> StepEngine:
    return StepEngine(loaded.model, loaded.eos_id, ignore_eos=ignore_eos,
                      stop_ids=loaded.stop_ids)


@pytest.mark.parametrize(("preset", "token"), CASES)
def test_sampling_any_stop_id_ends_the_row(apps, preset: str, token: str) -> None:
    loaded = _loaded(apps[preset])
    engine = _engine(loaded)
    row = engine.new_row(GenerationRequest(loaded.tokenizer.encode("Once upon"), 20))
    with favoured(loaded, _ids(loaded, [token])):
        report = engine.step([row])
    assert row.finish_reason == "stop" and row.tokens == [] and report.sampled == {}


@pytest.mark.parametrize("preset", sorted(STOPS))
def test_min_new_tokens_masks_every_stop_id(apps, preset: str) -> None:
    """Every stop id outranks all else, the eos last: masking the eos alone would end the
    row on another stop id at once."""
    loaded = _loaded(apps[preset])
    stops = _ids(loaded, STOPS[preset])
    engine = _engine(loaded)
    row = engine.new_row(GenerationRequest(loaded.tokenizer.encode("Once upon"), 20,
                                           min_new_tokens=3))
    with favoured(loaded, [*stops[1:], stops[0]]):
        while row.finish_reason is None:
            engine.step([row])
    assert row.finish_reason == "stop" and len(row.tokens) == 3
    assert not set(row.tokens) & loaded.stop_ids


@pytest.mark.parametrize("preset", sorted(STOPS))
def test_ignore_eos_ignores_every_stop_id(apps, preset: str) -> None:
    loaded = _loaded(apps[preset])
    other = _ids(loaded, STOPS[preset])[-1]  # not the tokenizer's eos
    with favoured(loaded, [other]):
        result = generate_alone(_engine(loaded, ignore_eos=True),
                                GenerationRequest(loaded.tokenizer.encode("Once upon"), 4))
    assert (result.finish_reason, result.token_ids) == ("length", [other] * 4)


ROUTES = {"/generate-text": ({"prompt": "Once upon a time", "max_new_tokens": 8},
                             lambda data: (data["text"], data["finish_reason"],
                                           data["usage"]["completion_tokens"])),
          "/v1/completions": ({"prompt": "Once upon a time", "max_tokens": 8},
                              lambda data: (data["choices"][0]["text"],
                                            data["choices"][0]["finish_reason"],
                                            data["usage"]["completion_tokens"])),
          "/v1/chat/completions": ({"messages": [{"role": "user", "content": "Hi"}],
                                    "max_tokens": 8},
                                   lambda data: (data["choices"][0]["message"]["content"],
                                                 data["choices"][0]["finish_reason"],
                                                 data["usage"]["completion_tokens"]))}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize(("preset", "token"), CASES)
def test_routes_answer_stop_for_every_stop_id(apps, preset: str, token: str,
                                              route: str) -> None:
    app = apps[preset]
    body, read = ROUTES[route]
    with favoured(_loaded(app), _ids(_loaded(app), [token])):
        response = app.test_client().post(route, json=body)
    assert response.status_code == 200
    assert read(response.json) == ("", "stop", 0)


@pytest.mark.parametrize(("preset", "token"), CASES)
def test_min_tokens_then_any_stop_id_ends_the_answer(apps, preset: str, token: str) -> None:
    app = apps[preset]
    body = {"prompt": "Once upon a time", "max_tokens": 8, "min_tokens": 2, "temperature": 0}
    with favoured(_loaded(app), _ids(_loaded(app), [token])):
        data = app.test_client().post("/v1/completions", json=body).json
    assert (data["choices"][0]["finish_reason"], data["usage"]["completion_tokens"]) == \
        ("stop", 2)


@contextlib.contextmanager
def ignoring_eos(app: Flask) -> Iterator[None]:
    """The served engine as under IGNORE_EOS=true: stop tokens are generated as text."""
    engine = app.extensions["model_service"].scheduler.engine
    engine.ignore_eos = True
    try:
        yield
    finally:
        engine.ignore_eos = False


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("preset", "token"), CASES)
def test_text_never_shows_a_stop_token(apps, preset: str, token: str, stream: bool) -> None:
    """Under IGNORE_EOS the answer is three stop tokens, whole or streamed: no text."""
    app = apps[preset]
    body = {"prompt": "Once upon a time", "max_tokens": 3, "stream": stream}
    with ignoring_eos(app), favoured(_loaded(app), _ids(_loaded(app), [token])):
        response = app.test_client().post("/v1/completions", json=body)
    if stream:
        events = [e for e in sse_events(response.get_data(as_text=True)) if e != "[DONE]"]
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        finish = events[-1]["choices"][0]["finish_reason"]
    else:
        text, finish = (response.json["choices"][0][k] for k in ("text", "finish_reason"))
    assert (text, finish) == ("", "length")
