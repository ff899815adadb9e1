"""End to end on real Gunicorn: preload, fork, 2 workers, concurrent requests on every route."""

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import GunicornServer
from tests.conftest import server_env

BODIES = {
    "/generate-text": {"prompt": "Once upon a time", "max_new_tokens": 8},
    "/summarize-text": {"text": "The river rose all week and the town moved uphill. " * 5,
                        "max_new_tokens": 8},
    "/answer-question": {"question": "Where did the town move?",
                         "context": "The town moved uphill.", "max_new_tokens": 8},
}


@pytest.fixture
def server(tiny_model: Path, tmp_path: Path):
    env = server_env(tmp_path)
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


def test_kernel_choice_is_measured_logged_and_reported(server: GunicornServer) -> None:
    """DTYPE=float32 times both fp32 kernel paths in the master; /ready, /metrics and the
    startup log carry the same table and choice."""
    ready = requests.get(server.url + "/ready", timeout=10).json()
    kernels = ready["kernels"]
    table = {t["precision"]: t for t in kernels["table"]}
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    log = server.log_text()

    assert ready["dtype"] == "float32" and "scheduler" not in ready
    assert kernels["chosen"] in table and kernels["requested"] == "float32"
    assert set(table) <= {"float32", "float32+onednn"} and "float32" in table
    assert all(t["batch_1_ms"] > 0 and t["max_batch"] == 8 for t in table.values())
    chosen = table[kernels["chosen"]]
    assert chosen["batch_max_ms"] == min(t["batch_max_ms"] for t in table.values()
                                         if t["batch_max_ms"] is not None)
    assert f'gpt_kernel_chosen{{precision="{kernels["chosen"]}"}} 1.0' in metrics
    [step_ms] = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("gpt_kernel_step_ms{") and 'precision="float32"' in line
                 and 'batch="1"' in line]
    assert step_ms == table["float32"]["batch_1_ms"]
    assert re.search(rf"kernel choice \(float32\): {re.escape(kernels['chosen'])}; decode step",
                     log)


def test_model_is_loaded_once_by_the_master(server: GunicornServer) -> None:
    master = int(server.pidfile.read_text())
    log = server.log_text()
    loads = re.findall(r"\[(\d+)\] server\.model: loaded synthetic:tiny as float32(?:\+onednn)?: "
                       r"[\d.]+ GB of weights in [\d.]+ s", log)
    assert loads == [str(master)]
    assert re.search(r"forking 2 workers x \d+ torch threads", log)
    # Each worker reports its own memory once warm (startup log of the memory issue).
    pattern = (r"\[(\d+)\] server\.service: worker \d+ warmed up in [\d.]+ s: RSS \d+ MB, "
               r"USS \d+ MB, PSS \d+ MB")
    server.follow(lambda: len(re.findall(pattern, server.log_text())) >= 2,
                  "both workers logged their warm-up", interval_s=0.1)
    warmed = re.findall(pattern, server.log_text())
    assert sorted(map(int, warmed)) == sorted(server.worker_pids())


def test_sigterm_stops_cleanly(server: GunicornServer) -> None:
    assert server.stop() == 0
