"""--shape search on Locust: live windows from Locust's stats (synthetic request events on a
bare Environment), the web UI tab's rows, and real headless runs against the tiny model."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from harness.gunicorn_process import REPO, GunicornServer
from locustfiles.capacity import CapacitySearch, SearchShape, UsersKnob, measure, snapshot
from locustfiles.capacity_search import LATENCY, MAX_LEVEL, RAM, Limits, Plan
from locustfiles.capacity_tab import CapacityTab, capacity_rows
from locustfiles.failures import Overloaded
from locustfiles.memory_sampler import MemorySampler
from locustfiles.memory_tab import MemoryTab
from locustfiles.request_recorder import RequestRecorder
from locustfiles.run_options import add_options
from locustfiles.search_options import limits_from_options, plan_from_options
from scripts import loadtest
from tests.conftest import server_env
from tests.locust_runs import run_headless


def fire(env: Environment, response_time_ms: float, exception: Exception | None = None,
         method: str = "POST") -> None:
    env.events.request.fire(request_type=method, name="/generate-text",
                            response_time=response_time_ms, response_length=10,
                            exception=exception, context={})


def test_a_window_counts_only_what_happened_inside_it(environment: Environment) -> None:
    for _ in range(50):
        fire(environment, 5_000)  # before the window: must not count
    start = snapshot(environment.stats)
    for ms in range(1, 11):
        fire(environment, ms * 10)
    middle = snapshot(environment.stats)
    for ms in range(1, 11):
        fire(environment, ms * 20)
    fire(environment, 3, Overloaded())
    fire(environment, 40, method="TTFT")  # a streaming metric entry, not a request
    window = measure(start, middle, snapshot(environment.stats), None)

    assert (window.requests, window.refusals, window.errors) == (21, 1, 0)
    assert window.p95_ms == 180 and window.p95_halves_ms == (100, 200)  # 20th of 21
    assert window.ttft_p95_ms == 40 and window.peak_pss_mb is None


def test_shape_probes_levels_and_judges_each_window(environment: Environment) -> None:
    # A server whose response time is 100 ms per user, against a 450 ms p95 limit.
    shape = SearchShape(Plan(settle_s=2, measure_s=4, max_level=16), Limits(p95_ms=450),
                        UsersKnob(spawn_rate=5))
    shape.runner = environment.runner
    ticks = []
    for second in range(200):
        shape.start_time = time.perf_counter() - second
        tick = shape.tick()
        ticks.append(tick)
        if tick is None:
            break
        for _ in range(10):
            fire(environment, tick[0] * 100)

    assert [p.level for p in shape.search.probes] == [1, 2, 4, 8, 6, 5]
    found = shape.search.result()
    assert (found.level, found.limit, found.bracket) == (4, LATENCY, (4, 5))
    assert ticks[0] == (1, 5) and ticks[-1] is None
    rows = capacity_rows(shape)
    assert rows[0]["verdict"] == "bracket 4.0 .. 5.0 users; stopped: converged"
    assert rows[1]["level"] == 5 and rows[1]["verdict"] == "FAIL: latency"


def test_the_ui_tab_shows_the_probe_under_way(environment: Environment) -> None:
    shape = SearchShape(Plan(settle_s=5, measure_s=10), Limits(), UsersKnob())
    shape.runner = environment.runner
    shape.tick()
    shape.start_time -= 3
    shape.tick()

    assert capacity_rows(shape)[1]["verdict"].startswith("settling")


def test_search_options_reach_the_plan_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCUST_SEARCH_RAM_MB", "900")
    parser = LocustArgumentParser()
    add_options(parser)
    options = parser.parse_args(["--shape", "search", "--search-slo-p95-ms", "4000",
                                 "--search-window-s", "40", "--search-resolution", "10%",
                                 "--search-min", "2", "--search-max", "64"])
    plan, limits = plan_from_options(options), limits_from_options(options)

    assert (plan.min_level, plan.max_level, plan.measure_s) == (2, 64, 40)
    assert (plan.resolution, plan.resolution_relative) == (0.1, True)
    assert (limits.p95_ms, limits.ram_mb, limits.max_refusals) == (4000, 900, 0.05)


def test_the_run_script_passes_the_search_through(tmp_path: Path) -> None:
    args = loadtest.parse_args(["--shape", "search", "--search-ram-mb", "700",
                                "--search-max", "48", "--search-resolution", "2"])
    server = SimpleNamespace(pidfile=tmp_path / "g.pid", url="http://127.0.0.1:1")
    command = loadtest.locust_command(args, tmp_path, server)

    assert "-t" not in command and "-u" not in command  # the search stops by itself
    at = command.index("--shape")
    assert command[at + 1] == "search"
    assert command[command.index("--search-ram-mb") + 1] == "700.0"
    assert command[command.index("--search-max") + 1] == "48.0"
    assert command[command.index("--search-resolution") + 1] == "2"
    with pytest.raises(SystemExit):
        loadtest.parse_args(["--shape", "search", "--search-min", "9", "--search-max", "4"])


def search_run(run_dir: Path, server: GunicornServer, api_key: str, *options: str):
    return run_headless(run_dir, server.url, api_key, "--shape", "search", "-r", "20",
                        "--search-settle-s", "1", "--search-window-s", "4",
                        "--server-pidfile", str(server.pidfile), "--stop-timeout", "20",
                        "--mix", "tasks", *options, operator_key=server.operator_key)


def test_search_runs_headless_and_records_capacity(tiny_model: Path, tmp_path: Path) -> None:
    api_key = secrets.token_urlsafe(24)
    searched, ram_bound = tmp_path / "searched", tmp_path / "ram-bound"
    # Both searches at once: neither can be bound by latency (a 60 s p95 limit; a 1 MB RAM
    # budget every server breaks), so sharing the server at the same time changes no verdict.
    with (GunicornServer(tmp_path, server_env(tmp_path, API_KEYS=api_key), workers=1) as server,
          ThreadPoolExecutor(1) as pool):
        started = time.monotonic()
        ram_run = pool.submit(search_run, ram_bound, server, api_key, "--search-max", "2",
                              "--search-ram-mb", "1")
        result = search_run(searched, server, api_key, "--search-max", "2",
                            "--search-slo-p95-ms", "60000")
        elapsed_s = time.monotonic() - started
        ram = ram_run.result()

    log = (searched / "locust.log").read_text()
    assert result.returncode == 0, log
    assert elapsed_s < 40  # 1 and 2 users, ~6 s each, then it stopped by itself
    record = json.loads((searched / "run.json").read_text())
    capacity = record["capacity"]
    assert record["shape"]["kind"] == "search" and record["users"] == 2
    assert [p["level"] for p in capacity["probes"]] == [1, 2]
    assert all(p["requests"] > 0 and p["peak_pss_mb"] > 0 for p in capacity["probes"])
    assert (capacity["level"], capacity["limit"]) == (2, MAX_LEVEL)
    assert "capacity: 2 users (limit: max level; bracket 2 .. none" in log

    # A 1 MB RAM budget: the first probe breaks it, and RAM is the limit reported.
    capacity = json.loads((ram_bound / "run.json").read_text())["capacity"]
    assert (capacity["level"], capacity["limit"]) == (None, RAM), ram.stdout
    assert capacity["stopped_by"] == "min level failed"

    # The analysis reports it.
    subprocess.run([sys.executable, "-m", "analysis", str(searched), "--no-charts"], cwd=REPO,
                   check=True, capture_output=True)
    report = (searched / "report.md").read_text()
    assert "## Capacity search" in report and "up to **2 users**" in report


def test_web_ui_shows_the_capacity_tab_beside_the_memory_tabs(
        environment: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["locust"])  # the UI parses argv for its extra options
    monkeypatch.chdir(tmp_path)
    web_ui = environment.create_web_ui("127.0.0.1", 0, delayed_start=True)
    sampler, recorder = MemorySampler(None), RequestRecorder(None)
    MemoryTab(sampler, recorder).register(environment)
    shape = SearchShape(Plan(settle_s=5, measure_s=10), Limits(), UsersKnob())
    CapacitySearch(tmp_path, shape).register(environment)
    CapacityTab(shape).register(environment)
    shape.tick()
    client = web_ui.app.test_client()

    tables = {t["key"]: t["data"] for t in
              client.get("/stats/requests").get_json()["extended_stats"]}
    page = client.get("/").get_data(as_text=True)

    assert {"server-memory", "request-ram", "capacity-search"} <= set(tables)
    assert tables["capacity-search"][1]["level"] == 1
    assert '"capacity-search"' in page and '"server-memory"' in page
    assert environment.shape_class is shape
