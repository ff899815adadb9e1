"""The official ``openai`` package as a client of real Gunicorn: completions and chat,
streaming and not, concurrent streams in one batch, TTFT vs E2E, a client that hangs up,
its BadRequestError for invalid requests, vLLM's extensions through ``extra_body``."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
from transformers import AutoTokenizer

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from tests.conftest import TEST_API_KEY, server_env

MODEL = "synthetic:tiny"
BATCH = 4


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """One Gunicorn worker; a 100 ms gathering window so concurrent streams share a batch;
    IGNORE_EOS so every answer is exactly max_tokens long."""
    workdir = tmp_path_factory.mktemp("openai-gunicorn")
    env = server_env(workdir, MODEL=MODEL, MAX_BATCH_SIZE=str(BATCH), IGNORE_EOS="1",
                     MEMORY_SAMPLE_S="0.1", GUNICORN_ACCESSLOG="")
    with GunicornServer(workdir, env, workers=1) as running:
        running.request_log = workdir / "server_requests.jsonl"
        yield running


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    """The served model's tokenizer, loaded independently of the server."""
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture
def client(server: GunicornServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_API_KEY, max_retries=0,
                         timeout=60)


def _log(server: GunicornServer) -> dict[str, dict]:
    lines = server.request_log.read_text().splitlines()
    return {r["request_id"]: r for r in map(json.loads, lines)}


def _logged(server: GunicornServer, request_ids: list[str]) -> dict[str, dict]:
    """The request log once it holds every one of ``request_ids``: a streamed request's
    record is written as its stream closes, which can be after the client read [DONE]."""
    server.follow(lambda: set(request_ids) <= set(_log(server)),
                  f"{len(request_ids)} records in the request log", interval_s=0.02)
    return _log(server)


def test_models_list(client) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_completion(client, tokenizer) -> None:
    prompt = "The old lighthouse keeper"
    result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=9, seed=3)
    assert result.object == "text_completion" and result.model == MODEL
    assert result.choices[0].finish_reason == "length"
    assert result.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert result.usage.completion_tokens == 9
    assert result.usage.total_tokens == result.usage.prompt_tokens + 9


def test_chat_completion(client, tokenizer) -> None:
    result = client.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello?"}])
    message = result.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    plain = "System: You are terse.\nUser: Hello?\nAssistant:"
    assert result.usage.prompt_tokens == len(tokenizer.encode(plain))
    assert result.usage.completion_tokens == 6


def test_streamed_completion_with_usage(client, tokenizer) -> None:
    prompt = "Rain fell on"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == len(tokenizer.encode(prompt))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text


def test_streamed_chat_tokens_arrive_while_they_are_generated(server, client) -> None:
    """Chunks are flushed step by step: the first content chunk comes long before the last.

    On the tiny model 64 tokens take only ~0.1 s, so the test compares the spread of the
    chunk arrivals with the server's own inference time for this request (request log):
    an answer buffered until the end would arrive in one burst, spread ~0.
    """
    arrivals, usage = [], None
    # The same request once before: a worker's first call with new shapes pays one-off
    # kernel set-up before its first token (CI: 0.47 s of inference, chunks within 0.03 s).
    for _ in client.chat.completions.create(
            model=MODEL, max_tokens=64, stream=True,
            messages=[{"role": "user", "content": "Tell me a long story."}]):
        pass
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=64, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Tell me a long story."}],
        extra_headers={"X-Request-ID": "streamed-chat"})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
        usage = chunk.usage or usage
    assert usage.completion_tokens == 64
    inference_s = _logged(server, ["streamed-chat"])["streamed-chat"]["inference_ms"] / 1000
    spread_s = arrivals[-1] - arrivals[0]
    assert len(arrivals) > 1 and spread_s > inference_s / 2, (spread_s, inference_s)


def test_concurrent_streams_in_one_batch_each_get_their_own_tokens(server, client) -> None:
    prompts = ["Apples are", "Quantum fields", "The river Thames", "Bicycles"]
    alone = {p: client.completions.create(model=MODEL, prompt=p, max_tokens=16,
                                          temperature=0).choices[0].text for p in prompts}
    clients = [openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_API_KEY, max_retries=0)
               for _ in prompts]
    for c in clients:
        c.models.list()  # connect before the barrier, so the streams arrive together
    barrier = threading.Barrier(len(prompts))

    def stream(i: int) -> str:
        barrier.wait()
        chunks = clients[i].completions.create(
            model=MODEL, prompt=prompts[i], max_tokens=16, temperature=0, stream=True,
            extra_headers={"X-Request-ID": f"together-{i}"})
        return "".join(c.choices[0].text for c in chunks if c.choices)

    with ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(stream, range(len(prompts))))
    assert texts == [alone[p] for p in prompts]
    log = _logged(server, [f"together-{i}" for i in range(len(prompts))])
    assert [log[f"together-{i}"]["batch_size"] for i in range(len(prompts))] == [BATCH] * 4
    assert all(log[f"together-{i}"]["completion_tokens"] == 16 for i in range(len(prompts)))


def _running(server: GunicornServer) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=5, headers=server.operator_headers).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gpt_batch_running"))


def test_client_that_hangs_up_frees_its_slot(server, api_headers) -> None:
    body = {"prompt": "An endless tale", "max_tokens": 256, "stream": True}
    started = time.monotonic()
    with requests.post(f"{server.url}/v1/completions", json={**body, "stream": False},
                       headers=api_headers, timeout=60) as whole:
        assert whole.json()["usage"]["completion_tokens"] == 256
    full_s = time.monotonic() - started
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nX-Request-ID: hangs-up\r\n"
                     + f"Authorization: {api_headers['Authorization']}\r\n"
                       f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200")
    hung_up = time.monotonic()  # closed mid-stream, with hundreds of tokens to go
    record = _logged(server, ["hangs-up"])["hangs-up"]
    assert record["completion_tokens"] < 256
    # Bounded by what is measured, not a readiness wait: freed sooner than a full answer.
    wait_until(lambda: not _running(server), "the hung-up stream's slot is freed",
               timeout_s=hung_up + full_s + 1 - time.monotonic(), interval_s=0.05,
               alive=server.alive)
    assert time.monotonic() - hung_up < full_s, "the slot was held as long as a full answer"


@pytest.mark.parametrize(("create", "param", "code"), [
    (lambda c: c.completions.create(model=MODEL, prompt="x", max_tokens=4, logprobs=2),
     "logprobs", "invalid_fields"),
    (lambda c: c.completions.create(model=MODEL, prompt="x", max_tokens=4,
                                    extra_body={"min_tokens": 9}),
     "min_tokens", "invalid_fields"),
    (lambda c: c.chat.completions.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": "word " * 1500}]), "messages", "prompt_too_long"),
])
def test_invalid_request_raises_the_clients_bad_request_error(client, create, param,
                                                             code) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        create(client)
    error = raised.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert error.param == param and error.code == code


def test_vllm_extensions_through_the_client(client) -> None:
    """guidellm's fields, sent the way an openai-client user would (``extra_body``)."""
    stream = client.chat.completions.create(
        model=MODEL, max_completion_tokens=7, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        messages=[{"role": "user", "content": "Count with me."}],
        extra_body={"ignore_eos": True, "min_tokens": 7})
    usages = [chunk.usage.completion_tokens for chunk in stream]
    assert usages[-1] == 7 and usages == sorted(usages)
