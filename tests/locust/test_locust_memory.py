"""memory.csv and the web UI's memory views: a real process tree, a real server's /metrics,
and the real Locust web app (Flask test client)."""

from __future__ import annotations

import csv
import secrets
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from harness.gunicorn_process import GunicornServer
from harness.processes import free_port
from harness.waiting import wait_until
from locustfiles.memory_sampler import (
    COLUMNS,
    MemorySampler,
    merge_samples,
    parse_metrics,
    sample_hosts,
    sample_metrics,
    split_urls,
)
from locustfiles.memory_tab import MemoryTab
from locustfiles.request_recorder import RequestRecorder
from tests.conftest import server_env
from tests.locust.conftest import SERVER_HEADERS

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
    def built() -> bool:
        # Both children forked AND holding their 32 MB: on a slow machine a child can be
        # seen before it has touched its block.
        kids = psutil.Process(proc.pid).children()
        return bool(pidfile.exists() and pidfile.read_text() and len(kids) == 2
                    and all(k.memory_full_info().uss >= 32 * 2**20 for k in kids))

    wait_until(built, "the process tree is up", timeout_s=300, interval_s=0.05,
               alive=lambda: proc.poll() is None)
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
    # The sampler's own greenlet samples too while sample_once waits on the thread pool.
    assert len(rows) % 4 == 0 and len(rows) >= 3 * 4 and sampler.source == "pidfile"
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
    env = server_env(tmp_path, MEMORY_SAMPLE_S="0.2", API_KEYS=secrets.token_urlsafe(24))
    with GunicornServer(tmp_path, env, workers=2) as server:
        samples = []

        def gauged() -> bool:
            samples.append(sample_metrics(server.url, operator_key=server.operator_key))
            return samples[-1] is not None and len(samples[-1].processes) >= 2

        server.follow(gauged, "per-worker gauges on /metrics", interval_s=0.3)
        sample = samples[-1]
        workers = set(server.worker_pids())
        # Without the operator key the scrape is refused (401): no sample, never a wrong one.
        assert sample_metrics(server.url) is None
        assert sample_metrics(server.url, operator_key=secrets.token_urlsafe(24)) is None

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


def _metrics_text(pid: int, rss_mb: float, uss_mb: float, pss_mb: float,
                  available_mb: float) -> str:
    return "".join(f'{name}{{pid="{pid}"}} {mb * 2**20}\n' for name, mb in
                   (("gpt_worker_rss_bytes", rss_mb), ("gpt_worker_uss_bytes", uss_mb),
                    ("gpt_worker_pss_bytes", pss_mb))) + (
        f"gpt_system_available_bytes {available_mb * 2**20}\n")


SCRAPE_KEY = "scrape-key-0123456789abcdef"


@pytest.fixture
def metrics_hosts() -> Iterator[list[str]]:
    """Base URLs of two loopback servers whose /metrics hold one worker each (for
    ``SCRAPE_KEY`` only, as the real server's operator key)."""
    texts = [_metrics_text(11, 400.0, 40.0, 200.0, 9000.0),
             _metrics_text(11, 300.0, 30.0, 150.0, 7000.0)]  # same pid: another host

    def handler_for(text: str) -> type[BaseHTTPRequestHandler]:
        class Metrics(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                keyed = self.headers.get("Authorization") == f"Bearer {SCRAPE_KEY}"
                body = text.encode() if keyed else b'{"error": {}}'
                self.send_response(404 if self.path != "/metrics" else 200 if keyed else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Metrics

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler_for(t)) for t in texts]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_sampler_scrapes_every_metrics_url_into_one_sample(environment, metrics_hosts,
                                                           tmp_path) -> None:
    sampler = MemorySampler(tmp_path / "memory.csv", metrics_urls=metrics_hosts,
                            operator_key=SCRAPE_KEY)
    sampler.register(environment)
    sample = sampler.sample_once()
    environment.events.quitting.fire(environment=environment)

    rows = read_rows(tmp_path / "memory.csv")
    hosts = [url.removeprefix("http://") for url in metrics_hosts]
    assert sampler.source == "metrics" and len(sample.processes) == 2
    assert [(r["role"], r["pid"], r["host"]) for r in rows] == [
        ("worker", "11", hosts[0]), ("worker", "11", hosts[1]), ("total", "0", "")]
    assert [float(rows[2][f]) for f in ("rss_mb", "uss_mb", "pss_mb")] == [700.0, 70.0, 350.0]
    assert {r["sys_available_mb"] for r in rows} == {"7000.0"}  # the tighter host


def test_a_silent_host_is_missing_from_the_sample(metrics_hosts) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    sample = sample_hosts([dead, metrics_hosts[1]], timeout_s=1.0, operator_key=SCRAPE_KEY)

    assert [(p.pid, p.host) for p in sample.processes] == [
        (11, metrics_hosts[1].removeprefix("http://"))]
    assert sample_hosts([dead], timeout_s=1.0, operator_key=SCRAPE_KEY) is None
    assert sample_hosts(metrics_hosts, timeout_s=1.0) is None  # refused without the key
    assert merge_samples([None, None]) is None


def test_split_urls_drops_blanks() -> None:
    assert split_urls(" http://a:1, ,http://b:2,") == ("http://a:1", "http://b:2")
    assert split_urls("") == ()
