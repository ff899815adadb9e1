"""End to end on real Gunicorn: preload, fork, 2 workers, concurrent requests on every route."""

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import GunicornServer
from tests.conftest import MODELS_DIR

BODIES = {
    "/generate-text": {"prompt": "Once upon a time", "max_new_tokens": 8},
    "/summarize-text": {"text": "The river rose all week and the town moved uphill. " * 5,
                        "max_new_tokens": 8},
    "/answer-question": {"question": "Where did the town move?",
                         "context": "The town moved uphill.", "max_new_tokens": 8},
}


@pytest.fixture
def server(tiny_model: Path, tmp_path: Path, api_env: dict[str, str]):
    env = {"MODEL": "synthetic:tiny", "MODELS_DIR": MODELS_DIR, "DTYPE": "float32",
           "REQUEST_LOG": str(tmp_path / "server_requests.jsonl"), "BATCH_WAIT_MS": "50",
           **api_env}
    with GunicornServer(tmp_path, env, workers=2) as running:
        yield running


def test_preloaded_workers_answer_concurrent_requests(server: GunicornServer, tmp_path,
                                                      api_headers) -> None:
    routes = [list(BODIES)[i % 3] for i in range(16)]

    def post(route: str) -> requests.Response:
        return requests.post(server.url + route, json=BODIES[route], headers=api_headers,
                             timeout=60)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post, routes))

    assert [r.status_code for r in responses] == [200] * 16
    assert all(r.json()["text"] is not None and r.json()["usage"]["completion_tokens"] > 0
               for r in responses)
    workers = set(server.worker_pids())
    assert len(workers) == 2
    assert {int(r.headers["X-Worker-PID"]) for r in responses} <= workers
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1
    log_lines = (tmp_path / "server_requests.jsonl").read_text().splitlines()
    assert len(log_lines) == 16


def test_model_is_loaded_once_by_the_master(server: GunicornServer) -> None:
    master = int(server.pidfile.read_text())
    log = server.log_text()
    loads = re.findall(r"\[(\d+)\] server\.model: loaded synthetic:tiny as float32: "
                       r"[\d.]+ GB of weights in [\d.]+ s", log)
    assert loads == [str(master)]
    assert re.search(r"forking 2 workers x \d+ torch threads", log)
    # Each worker reports its own memory once warm (startup log of the memory issue).
    pattern = (r"\[(\d+)\] server\.service: worker \d+ warmed up in [\d.]+ s: RSS \d+ MB, "
               r"USS \d+ MB, PSS \d+ MB")
    deadline = time.monotonic() + 30
    while len(warmed := re.findall(pattern, server.log_text())) < 2:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)
    assert sorted(map(int, warmed)) == sorted(server.worker_pids())


def test_sigterm_stops_cleanly(server: GunicornServer) -> None:
    assert server.stop() == 0
