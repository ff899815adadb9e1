"""Shared fixtures: the tiny synthetic model, apps built from a config mapping, clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from flask import Flask
from flask.testing import FlaskClient

from harness.processes import MARKER, descendants, kill_all, owned_processes
from harness.waiting import wait_until
from server import create_app
from server.engine import synthetic
from tests.browser import browser  # noqa: F401  (headless Chromium, shared by the page tests)
from tests.redis_server import redis_server  # noqa: F401  (fixture shared by the limit tests)

REPO = Path(__file__).resolve().parent.parent
# The tiny model is built once into the repo's models/ folder (.ci/run builds it first).
MODELS_DIR = os.environ.get("TEST_MODELS_DIR", str(REPO / "models"))


# Every process a test starts inherits this marker, so one left running is found even after
# its parent died and it was re-parented (see no_process_left_behind).
os.environ[MARKER] = str(os.getpid())


def _ours() -> dict[int, psutil.Process]:
    here = os.getpid()
    found = [*descendants(here), *owned_processes(str(here))]
    return {p.pid: p for p in found if p.pid != here}


@pytest.fixture(scope="module", autouse=True)
def no_process_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the module that leaves a process running (a server, Locust, a browser), and end
    those processes, so a leak shows where it happens and cannot slow the modules after it."""
    before = set(_ours())
    yield
    left = [p for pid, p in _ours().items() if pid not in before]
    _, still = psutil.wait_procs(left, timeout=15)  # a stop that is still under way
    if not still:
        return
    names = []
    for proc in still:
        try:
            names.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            names.append(str(proc.pid))
    kill_all(still)
    pytest.fail(f"{request.module.__name__} left {len(still)} process(es) running:\n"
                + "\n".join(names), pytrace=False)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """Folder of the synthetic:tiny build (built on first use)."""
    return synthetic.build("tiny", MODELS_DIR)


# The Llama-family test presets (server.engine.synthetic): Llama 3 and Qwen2.5 in miniature.
TINY_DECODERS = ("tiny-llama", "tiny-qwen")


@pytest.fixture(scope="session")
def tiny_decoders() -> dict[str, Path]:
    """Folders of the synthetic:tiny-llama and synthetic:tiny-qwen builds, by preset."""
    return {name: synthetic.build(name, MODELS_DIR) for name in TINY_DECODERS}


@pytest.fixture
def request_log(tmp_path: Path) -> Path:
    """Where the app under test appends its per-request JSON lines."""
    return tmp_path / "server_requests.jsonl"


class KeyedClient(FlaskClient):
    """A test client that sends ``api_key`` (default: the test key; ``""``: no key)."""

    def __init__(self, *args, api_key: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        key = TEST_API_KEY if api_key is None else api_key
        if key:
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"


def build_app(request_log: Path, **overrides) -> Flask:
    """An app serving synthetic:tiny with ``overrides`` on top of the test config (a plain
    function, so module-scoped fixtures build one too)."""
    config = {
        "MODEL": "synthetic:tiny",
        "MODELS_DIR": MODELS_DIR,
        "DTYPE": "float32",
        "REQUEST_LOG": str(request_log),
        "TORCH_THREADS": 1,
        "API_KEYS": TEST_API_KEY,
        "OPERATOR_KEYS": TEST_OPERATOR_KEY,
        # Off unless a test sets them: other tests must not trip over a limit.
        "RATE_LIMIT": "",
        "GLOBAL_RATE_LIMIT": "",
        **overrides,
    }
    app = create_app(config)
    app.test_client_class = KeyedClient
    return app


@pytest.fixture
def make_app(tiny_model: Path, request_log: Path) -> Callable[..., Flask]:
    """Factory: an app serving synthetic:tiny with ``overrides`` on top of the test config."""

    def factory(**overrides) -> Flask:
        return build_app(request_log, **overrides)

    return factory


@pytest.fixture(scope="module")
def module_client(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    """A test client (test key) of one app with the test config, shared by a module's tests
    that only send a request and read its answer (not the request log): building an app
    loads tiny and times its kernels, ~0.5 s, more than such a test's request."""
    log = tmp_path_factory.mktemp("module-app") / "server_requests.jsonl"
    return build_app(log).test_client()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """An app with the test config."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A Flask test client of ``app`` that sends the test API key."""
    return app.test_client()


# The API key tests run the server with (never a real secret).
TEST_API_KEY = "test-key-0123456789abcdef"
# The operator key (OPERATOR_KEYS) that opens /metrics and /ready's details in tests.
TEST_OPERATOR_KEY = "test-operator-key-0123456789abcdef"


def server_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """Environment of a Gunicorn server under test (the twin of ``make_app``'s config).

    synthetic:tiny in float32 on one torch thread, the test API key and operator key (which
    GunicornServer sends to /ready and tests send to /metrics), rate limits off (bursts
    from one key are how these tests load the server), the request log in ``workdir``;
    ``overrides`` on top (``""`` turns a setting off). A plain function, not a fixture, so
    module-scoped fixtures and helpers that start servers use it too.
    """
    return {"MODEL": "synthetic:tiny", "MODELS_DIR": MODELS_DIR, "DTYPE": "float32",
            "TORCH_THREADS": "1", "REQUEST_LOG": str(workdir / "server_requests.jsonl"),
            "API_KEYS": TEST_API_KEY, "OPERATOR_KEYS": TEST_OPERATOR_KEY, "RATE_LIMIT": "",
            "GLOBAL_RATE_LIMIT": "", **overrides}


@pytest.fixture
def api_headers() -> dict[str, str]:
    """Headers that authenticate a request to a server under test."""
    return {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture
def operator_headers() -> dict[str, str]:
    """Headers that open a server's operator surfaces (/metrics, /ready's details)."""
    return {"Authorization": f"Bearer {TEST_OPERATOR_KEY}"}


def ready_details(client: FlaskClient, operator_headers: dict[str, str]) -> dict:
    """/ready's operator details once the worker has warmed up."""
    answers = []

    def ready() -> bool:
        answers.append(client.get("/ready", headers=operator_headers))
        return answers[-1].status_code != 503

    wait_until(ready, "/ready says yes", timeout_s=300, interval_s=0.05)
    return answers[-1].json


def lean_logits(model, ids: list[int], split: int):  # -> torch.Tensor [len(ids), vocab]
    """The model family's lean forward's logits at every position of ``ids``, read into one
    row's cache in two chunks (``ids[:split]``, then the rest)."""
    import torch

    from server.engine import gpt2_forward, llama_forward
    from server.engine.row_cache import PackedStep, RowCache, Segment

    lean = gpt2_forward if gpt2_forward.supports(model) else llama_forward
    cache = RowCache(len(ids), "model", model.config.num_hidden_layers)
    outs = []
    for start, stop in ((0, split), (split, len(ids))):
        step = PackedStep([Segment(cache, 0, stop - start)], native=False)
        with torch.inference_mode():
            outs.append(lean.forward(model, torch.tensor(ids[start:stop]),
                                     torch.arange(start, stop), step,
                                     torch.arange(stop - start)))
        step.advance()
    return torch.cat(outs)


def alone_together_joined(engine, requests: list, after: int = 9) -> tuple[list, list, list]:
    """Each request's tokens generated alone, with all started together, and with the last
    joining after the others ran ``after`` steps (it is read in beside their decoding): the
    three lists a batch-invariant engine makes equal."""
    from server.engine.step import generate_alone

    def finish(rows: list) -> list:
        while any(r.finish_reason is None for r in rows):
            engine.step(rows)
        return [r.tokens for r in rows]

    alone = [generate_alone(engine, r).token_ids for r in requests]
    together = finish([engine.new_row(r) for r in requests])
    early = [engine.new_row(r) for r in requests[:-1]]
    for _ in range(after):
        engine.step(early)
    return alone, together, finish([*early, engine.new_row(requests[-1])])
