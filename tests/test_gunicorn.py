"""End to end on real Gunicorn: preload, fork, 2 workers, concurrent requests on every route."""

import http.client
import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from tests.conftest import server_env

BODIES = {
    "/generate-text": {"prompt": "Once upon a time", "max_new_tokens": 8},
    "/summarize-text": {"text": "The river rose all week and the town moved uphill. " * 5,
                        "max_new_tokens": 8},
    "/answer-question": {"question": "Where did the town move?",
                         "context": "The town moved uphill.", "max_new_tokens": 8},
}


def _serve(workdir: Path) -> GunicornServer:
    return GunicornServer(workdir, server_env(workdir), workers=2)


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server for the tests that only send it requests (no test here changes a worker,
    the settings or the model); test_sigterm_stops_cleanly stops a server of its own."""
    workdir = tmp_path_factory.mktemp("gunicorn")
    with _serve(workdir) as running:
        yield running


def _log_lines(server: GunicornServer) -> list[str]:
    """The request log's lines so far (server_env's REQUEST_LOG, beside the pidfile)."""
    log = server.pidfile.parent / "server_requests.jsonl"
    return log.read_text().splitlines() if log.exists() else []


def test_preloaded_workers_answer_concurrent_requests(server: GunicornServer,
                                                      api_headers) -> None:
    routes = [list(BODIES)[i % 3] for i in range(16)]
    logged = len(_log_lines(server))

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
    assert len(_log_lines(server)) == logged + 16  # whole answers are logged before they leave


def test_kernel_choice_is_measured_logged_and_reported(server: GunicornServer) -> None:
    """DTYPE=float32 times both fp32 kernel paths in the master; /ready, /metrics and the
    startup log carry the same table and choice."""
    ready = requests.get(server.url + "/ready", timeout=10, headers=server.operator_headers).json()
    kernels = ready["kernels"]
    table = {t["precision"]: t for t in kernels["table"]}
    metrics = requests.get(server.url + "/metrics", timeout=10,
                           headers=server.operator_headers).text
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
    loads = re.findall(r"\[(\d+)\] server\.engine\.model: loaded synthetic:tiny as "
                       r"float32(?:\+onednn)?: [\d.]+ GB of weights in [\d.]+ s", log)
    assert loads == [str(master)]
    assert re.search(r"forking 2 workers x \d+ torch threads", log)
    # Each worker reports its own memory once warm (startup log of the memory issue).
    pattern = (r"\[(\d+)\] server\.web\.service: worker \d+ warmed up in [\d.]+ s: RSS \d+ MB, "
               r"USS \d+ MB, PSS \d+ MB")
    server.follow(lambda: len(re.findall(pattern, server.log_text())) >= 2,
                  "both workers logged their warm-up", interval_s=0.1)
    warmed = re.findall(pattern, server.log_text())
    assert sorted(map(int, warmed)) == sorted(server.worker_pids())


@pytest.mark.parametrize(("path", "field"), [("/generate-text", "prompt"),
                                           ("/v1/completions", "prompt")])
def test_a_12_mb_body_sent_in_full_gets_a_readable_413(server: GunicornServer, api_headers,
                                                       path, field) -> None:
    """A client that sends the whole body before reading (http.client does) must see the
    413, not a broken pipe from a connection closed while it was still sending."""
    body = json.dumps({field: "x" * (12 * 2**20)}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        connection.request("POST", path, body=body, headers={
            **api_headers, "Content-Type": "application/json", "X-Request-ID": "huge-body"})
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413
    assert response.getheader("X-Request-ID") == "huge-body"
    assert answer["error"]["code"] == "payload_too_large"
    assert "65536 bytes" in answer["error"]["message"]


@pytest.mark.parametrize(("headers", "target", "status", "code"), [
    ({"X-Big": "x" * 9000}, "/health", 431, "headers_too_large"),     # > limit_request_field_size
    ({}, "/" + "a" * 5000, 414, "uri_too_long"),                      # > limit_request_line
])
def test_gunicorns_own_errors_are_json_with_a_request_id(server: GunicornServer, headers,
                                                         target, status, code) -> None:
    """What Gunicorn refuses before the app sees it is answered in the API's JSON envelope."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    assert response.status == status
    assert response.getheader("Content-Type") == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", response.getheader("X-Request-ID") or "")
    answer = json.loads(raw)
    assert answer["error"]["code"] == code and answer["error"]["message"]


def test_sigterm_stops_cleanly(tiny_model: Path, tmp_path: Path) -> None:
    with _serve(tmp_path) as server:
        assert server.stop() == 0


def _served(server: GunicornServer, route: str) -> float:
    """The /metrics counter of 200 answers on ``route`` (0 if it has none yet)."""
    text = requests.get(server.url + "/metrics", timeout=10, headers=server.operator_headers).text
    pattern = rf'^gpt_requests_total{{route="{re.escape(route)}",status="200"}} ([\d.]+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))


def test_sighup_reload_keeps_the_metrics_counters(tiny_model: Path, tmp_path: Path,
                                                  api_headers) -> None:
    """A reload (SIGHUP: Gunicorn reads gunicorn.conf.py again and replaces the workers)
    must not wipe the multiprocess metrics files: counters go on from where they were."""
    env = server_env(tmp_path, GUNICORN_ACCESSLOG="")
    with GunicornServer(tmp_path, env, workers=1) as server:
        [before_reload] = server.worker_pids()
        for _ in range(3):
            response = requests.post(server.url + "/generate-text", headers=api_headers,
                                     json=BODIES["/generate-text"], timeout=60)
            assert response.status_code == 200
        assert _served(server, "/generate-text") == 3
        os.kill(server.master_pid(), signal.SIGHUP)
        wait_until(lambda: before_reload not in server.worker_pids() and server.worker_pids(),
                   "the reload replaced the worker", timeout_s=300, alive=server.alive,
                   detail=server.log_text)
        server.wait_ready()
        assert "Hang up" in server.log_text()  # Gunicorn's own log line for the reload
        assert _served(server, "/generate-text") == 3
        requests.post(server.url + "/generate-text", headers=api_headers,
                      json=BODIES["/generate-text"], timeout=60)
        assert _served(server, "/generate-text") == 4
