"""memory.csv and the web UI's memory views: a real process tree, a real server's /metrics,
and the real Locust web app (Flask test client)."""

from __future__ import annotations

import csv
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from locustfiles.memory_sampler import COLUMNS, MemorySampler, parse_metrics, sample_metrics
from locustfiles.memory_tab import MemoryTab
from locustfiles.request_recorder import RequestRecorder
from tests.conftest import MODELS_DIR
from tests.gunicorn_server import GunicornServer
from tests.locust.conftest import SERVER_HEADERS
from tests.locust.locust_runs import wait_all_workers_ready

# A parent that forks two children holding 32 MB each, then writes its pid to argv[1].
TREE = textwrap.dedent("""
    import os, sys, time
    for _ in range(2):
        if os.fork() == 0:
            block = bytearray(32 * 2**20)
            block[::4096] = b"x" * len(block[::4096])
            time.sleep(120)
            os._exit(0)
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(120)
""")


@pytest.fixture
def process_tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """(pidfile, master pid) of a running parent with two children."""
    pidfile = tmp_path / "tree.pid"
    proc = subprocess.Popen([sys.executable, "-c", TREE, str(pidfile)])
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text()
               and len(psutil.Process(proc.pid).children()) == 2):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children()
    yield pidfile, proc.pid
    for child in children:
        child.kill()
    proc.kill()
    proc.wait()


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pidfile_samples_master_children_and_total(environment, process_tree, tmp_path) -> None:
    pidfile, master = process_tree
    sampler = MemorySampler(tmp_path / "memory.csv", pidfile=pidfile)
    sampler.register(environment)
    for _ in range(3):
        sampler.sample_once()
    environment.events.quitting.fire(environment=environment)

    rows = read_rows(tmp_path / "memory.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == 3 * 4 and sampler.source == "pidfile"
    first = rows[:4]
    assert [r["role"] for r in first] == ["master", "worker", "worker", "total"]
    assert first[0]["pid"] == str(master) and first[3]["pid"] == "0"
    for field in ("rss_mb", "uss_mb", "pss_mb", "shared_mb"):
        assert float(first[3][field]) == pytest.approx(
            sum(float(r[field]) for r in first[:3]), abs=0.2)
    for worker in first[1:3]:
        assert float(worker["uss_mb"]) >= 32  # the child's own 32 MB block
        assert float(worker["uss_mb"]) <= float(worker["pss_mb"]) <= float(worker["rss_mb"])
    assert float(first[0]["sys_available_mb"]) > 0


def test_missing_pidfile_writes_nothing(environment, tmp_path) -> None:
    sampler = MemorySampler(tmp_path / "memory.csv", pidfile=tmp_path / "absent.pid")
    sampler.register(environment)

    assert sampler.sample_once() is None  # no host set either: nothing to scrape
    environment.events.quitting.fire(environment=environment)
    assert read_rows(tmp_path / "memory.csv") == []


def test_parse_metrics_reads_per_worker_gauges() -> None:
    text = textwrap.dedent("""\
        # HELP gpt_worker_rss_bytes Worker RSS (pid label)
        # TYPE gpt_worker_rss_bytes gauge
        gpt_worker_rss_bytes{pid="11"} 1048576000.0
        gpt_worker_rss_bytes{pid="12"} 524288000.0
        # HELP gpt_worker_pss_bytes Worker PSS (pid label)
        # TYPE gpt_worker_pss_bytes gauge
        gpt_worker_pss_bytes{pid="11"} 524288000.0
        gpt_worker_pss_bytes{pid="12"} 262144000.0
        # HELP gpt_worker_uss_bytes Worker USS (pid label)
        # TYPE gpt_worker_uss_bytes gauge
        gpt_worker_uss_bytes{pid="11"} 104857600.0
        gpt_worker_uss_bytes{pid="12"} 52428800.0
        # HELP gpt_queue_depth Requests waiting
        # TYPE gpt_queue_depth gauge
        gpt_queue_depth 3.0
    """)

    sample = parse_metrics(text, 1_700_000_000.0)

    assert [r[:7] for r in sample.rows()] == [
        [1_700_000_000.0, 11, "worker", 1000.0, 100.0, 500.0, 900.0],
        [1_700_000_000.0, 12, "worker", 500.0, 50.0, 250.0, 450.0],
        [1_700_000_000.0, 0, "total", 1500.0, 150.0, 750.0, 1350.0],
    ]
    assert parse_metrics("# nothing here\n", 0.0) is None


def test_metrics_scrape_of_a_real_server_matches_its_workers(tiny_model, tmp_path) -> None:
    env = {"MODEL": "synthetic:tiny", "MODELS_DIR": MODELS_DIR, "DTYPE": "float32",
           "TORCH_THREADS": "1", "REQUEST_LOG": str(tmp_path / "server_requests.jsonl"),
           "MEMORY_SAMPLE_S": "0.2", "API_KEYS": secrets.token_urlsafe(24)}
    with GunicornServer(tmp_path, env, workers=2) as server:
        wait_all_workers_ready(server, 2)
        deadline = time.monotonic() + 20
        while (sample := sample_metrics(server.url)) is None or len(sample.processes) < 2:
            assert time.monotonic() < deadline, "no per-worker gauges on /metrics"
            time.sleep(0.3)
        workers = set(server.worker_pids())

    assert {p.pid for p in sample.processes} == workers
    assert all(0 < p.uss_mb <= p.pss_mb <= p.rss_mb for p in sample.processes)


@pytest.fixture
def web_app(environment, process_tree, tmp_path, monkeypatch):
    """The real Locust web app with the memory tab registered and two samples taken."""
    # The UI parses argv and ./locust.conf for its extra options: give it neither of pytest's.
    monkeypatch.setattr(sys, "argv", ["locust"])
    monkeypatch.chdir(tmp_path)
    web_ui = environment.create_web_ui("127.0.0.1", 0, delayed_start=True)
    sampler = MemorySampler(tmp_path / "memory.csv", pidfile=process_tree[0])
    sampler.register(environment)
    recorder = RequestRecorder(tmp_path / "requests.csv")
    recorder.register(environment)
    MemoryTab(sampler, recorder).register(environment)
    sampler.sample_once()
    sampler.sample_once()
    return web_ui.app.test_client(), recorder


def test_stats_carry_the_memory_tables(web_app, make_response, completion_body,
                                       environment) -> None:
    client, _ = web_app
    environment.events.request.fire(
        request_type="POST", name="/generate-text", response_time=10.0, response_length=10,
        response=make_response(200, completion_body, SERVER_HEADERS), exception=None,
        start_time=1.0, context={"user_class": "PromptUser"})

    stats = client.get("/stats/requests").get_json()
    tables = {t["key"]: t["data"] for t in stats["extended_stats"]}

    [total, master, *workers] = tables["server-memory"]
    assert (total["role"], master["role"], len(workers)) == ("total", "master", 2)
    assert total["pss_mb"] == pytest.approx(master["pss_mb"] + sum(w["pss_mb"] for w in workers),
                                            abs=0.3)
    [ram] = tables["request-ram"]
    assert (ram["worker_pid"], ram["requests"], ram["pss_mb"]) == ("4242", 1, 455.3)


def test_index_declares_the_tabs_and_links(web_app) -> None:
    client, _ = web_app
    page = client.get("/").get_data(as_text=True)

    assert '"extended_tabs"' in page and '"server-memory"' in page and '"request-ram"' in page
    assert "./memory/csv" in page


def test_memory_page_and_csv(web_app, tmp_path) -> None:
    client, _ = web_app
    page = client.get("/memory").get_data(as_text=True)
    with client.get("/memory/csv") as csv_response:
        status, data = csv_response.status_code, csv_response.data

    assert 'data-series="total PSS"' in page and 'data-series="summed RSS"' in page
    assert page.count("<polyline") == 2 + 3  # totals, then one PSS line per process
    assert (status, data) == (200, (tmp_path / "memory.csv").read_bytes())
