"""/metrics on real Gunicorn: parses, counts requests, tracks live workers' memory only."""

import os
import signal
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from server.engine.huge_pages import HUGE_PAGE
from server.engine.memory import system_available_mb
from tests.conftest import server_env
from tests.test_huge_pages import CANNOT_COLLAPSE


def _serve(workdir: Path) -> GunicornServer:
    env = server_env(workdir, MEMORY_SAMPLE_S="0.1",
                     PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"))
    return GunicornServer(workdir, env, workers=2)


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server for the request counts and the unsized-file scrape: neither sends requests
    the other counts nor changes a worker."""
    workdir = tmp_path_factory.mktemp("metrics-server")
    with _serve(workdir) as running:
        yield running


@pytest.fixture
def own_server(tiny_model: Path, tmp_path: Path):
    """A server of the test's own, for a test that kills a worker."""
    with _serve(tmp_path) as running:
        yield running


def _samples(server: GunicornServer) -> dict[str, list]:
    text = requests.get(f"{server.url}/metrics", timeout=10,
                        headers=server.operator_headers).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _memory_pids(server: GunicornServer) -> set[int]:
    return {int(s.labels["pid"]) for s in _samples(server).get("gpt_worker_pss_bytes", [])}


def _until(condition, timeout_s: float = 300.0) -> None:
    wait_until(condition, "condition", timeout_s=timeout_s)


def test_metrics_count_requests_and_tokens(server: GunicornServer, api_headers) -> None:
    for _ in range(3):
        response = requests.post(f"{server.url}/generate-text", headers=api_headers,
                                 json={"prompt": "Count me", "max_new_tokens": 4}, timeout=30)
        assert response.status_code == 200
    requests.post(f"{server.url}/generate-text", headers=api_headers, json={"prompt": ""},
                  timeout=30)
    samples = _samples(server)
    counts = {(s.labels["route"], s.labels["status"]): s.value
              for s in samples["gpt_requests_total"]}
    assert counts[("/generate-text", "200")] == 3
    assert counts[("/generate-text", "422")] == 1
    generated = sum(s.value for s in samples["gpt_generated_tokens_total"])
    assert 0 < generated <= 12
    assert samples["gpt_model_weight_bytes"][0].value > 10e6
    # HUGE_PAGES is on by default: where this kernel collapses, whole 2 MB pages moved.
    huge = samples["gpt_model_weight_huge_page_bytes"][0].value
    assert huge % HUGE_PAGE == 0 and huge <= samples["gpt_model_weight_bytes"][0].value
    assert (huge > 0) == (CANNOT_COLLAPSE is None)
    batches = [s for s in samples["gpt_batch_size_count"]]
    assert sum(s.value for s in batches) >= 3
    # Step metrics (the warm-up is not counted): each batch has one prefill step; a request's
    # first token comes from its prefill row, each later one (or a stop token) from a decode row.
    by_phase = {(s.name, s.labels["phase"]): s.value for name in
                ("gpt_step_rows_total", "gpt_forward_seconds_count", "gpt_step_seconds_sum",
                 "gpt_forward_seconds_sum") for s in samples[name]}
    prefills = by_phase[("gpt_forward_seconds_count", "prefill")]
    assert prefills == sum(s.value for s in batches)
    assert by_phase[("gpt_step_rows_total", "prefill")] == 3
    assert generated - 3 <= by_phase[("gpt_step_rows_total", "decode")] <= generated
    for phase in ("prefill", "decode"):
        assert 0 < by_phase[("gpt_forward_seconds_sum", phase)] \
            <= by_phase[("gpt_step_seconds_sum", phase)]


def test_per_worker_memory_only_for_live_workers(own_server: GunicornServer) -> None:
    server = own_server
    _until(lambda: _memory_pids(server) == set(server.worker_pids()))
    pss = {int(s.labels["pid"]): s.value
           for s in _samples(server)["gpt_worker_pss_bytes"]}
    assert all(value > 1e6 for value in pss.values())
    # The host's available memory, one value (the lowest any live worker saw), near /proc's.
    [available] = _samples(server)["gpt_system_available_bytes"]
    assert abs(available.value / 2**20 - system_available_mb()) < 1024
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    _until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2)
    _until(lambda: _memory_pids(server) == set(server.worker_pids()))
    assert victim not in _memory_pids(server)


def test_a_starting_workers_unsized_file_does_not_break_the_scrape(
        server: GunicornServer) -> None:
    # What a worker leaves for an instant as it starts: its file created, not yet sized.
    # Reading it raised struct.error and /metrics answered 500 (seen under load in CI).
    (server.pidfile.parent / "metrics" / "gauge_liveall_999999.db").touch()
    response = requests.get(f"{server.url}/metrics", timeout=10, headers=server.operator_headers)
    assert response.status_code == 200
    assert list(text_string_to_metric_families(response.text))
