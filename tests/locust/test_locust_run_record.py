"""Any Locust run writes a complete run.json: plain headless, --processes 2 and the web UI
(autostarted), against one real Gunicorn on synthetic:tiny, with no script around Locust.
The --processes 2 run also shows that a master and two workers record every request."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO, GunicornServer
from tests.conftest import TEST_API_KEY, server_env
from tests.locust_runs import (
    LOCUST_FILES,
    USER_CLASSES,
    locust_env,
    locust_totals,
    read_csv,
    read_jsonl,
    run_headless,
)

MODES = {
    # A p95 target no server meets: the suite's --check-* sets Locust's exit code to 3.
    "headless": ("--headless", "--check-p95-ms", "0.001"),
    # A target met on the master, from its workers' statistics: exit code 0.
    "processes-2": ("--headless", "--processes", "2", "--check-p95-ms", "600000",
                    "--check-fail-ratio", "0.5"),
    # The web UI, started and stopped by Locust itself (no browser needed to click "Start").
    "web-ui": ("--autostart", "--autoquit", "0", "--web-host", "127.0.0.1", "--web-port", "0"),
}
EXIT_CODES = {"headless": 3, "processes-2": 0, "web-ui": 0}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GunicornServer]:
    """2 Gunicorn workers (MAX_QUEUE 17) serving the three modes' runs, one after another:
    each run reads the same facts from /ready and /metrics as from a server of its own."""
    workdir = tmp_path_factory.mktemp("server")
    with GunicornServer(workdir, server_env(workdir, MAX_QUEUE="17"), workers=2) as running:
        yield running


def _locust(mode: str, run_dir: Path, server: GunicornServer) -> subprocess.CompletedProcess:
    args = ("-u", "4", "-r", "4", "-t", "8s", "--stop-timeout", "30", "--label", mode)
    if mode == "processes-2":
        # memory.csv's master and worker rows (the distributed test); the other modes keep
        # reading the server's facts with no pidfile at all.
        args = (*args, "--server-pidfile", str(server.pidfile))
    if mode != "web-ui":
        return run_headless(run_dir, server.url, TEST_API_KEY, *MODES[mode][1:], *args,
                            operator_key=server.operator_key)
    with open(run_dir / "locust.log", "wb") as log:
        cmd = [sys.executable, "-m", "locust", "-f", "locustfiles", "--host", server.url,
               "--run-dir", str(run_dir), "--csv", str(run_dir / "locust"),
               "--csv-full-history", *MODES[mode], *args]
        env = locust_env(LOCUST_API_KEY=TEST_API_KEY, LOCUST_OPERATOR_KEY=server.operator_key)
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=300)


@pytest.fixture(scope="module")
def runs(server: GunicornServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Callable[[str], Path]:
    """Factory: the run folder of one 8-second Locust run in ``mode``, made on first use.
    The server's log lines of that run go into its folder (as a server of its own writes)."""
    made: dict[str, Path] = {}
    log = server.pidfile.parent / "server_requests.jsonl"  # server_env's REQUEST_LOG

    def run(mode: str) -> Path:
        if mode in made:
            return made[mode]
        run_dir = tmp_path_factory.mktemp(mode) / "run"
        run_dir.mkdir()
        seen = len(log.read_text().splitlines()) if log.exists() else 0
        done = _locust(mode, run_dir, server)
        # A whole answer's line is written before its response leaves (server/web/
        # accounting.py), and the runs follow one another: these lines are this run's.
        lines = log.read_text().splitlines()[seen:] if log.exists() else []
        (run_dir / "server_requests.jsonl").write_text("".join(f"{x}\n" for x in lines))
        output = (run_dir / "locust.log").read_text()
        assert done.returncode == EXIT_CODES[mode], output[-4000:]
        assert ("target missed: p95" in output) == (mode == "headless")
        made[mode] = run_dir
        return run_dir

    return run


@pytest.fixture(scope="module", params=list(MODES))
def run(request: pytest.FixtureRequest, runs: Callable[[str], Path]) -> tuple[str, Path]:
    """(mode, run folder) of each mode's run."""
    return request.param, runs(request.param)


def test_run_json_has_the_client_facts(run: tuple[str, Path]) -> None:
    mode, run_dir = run
    record = json.loads((run_dir / "run.json").read_text())
    client = record["client"]

    assert (record["label"], record["users"], record["spawn_rate"]) == (mode, 4, 4)
    assert (record["mix"], record["target"], record["duration_s"]) == ("tasks", "lab", 8)
    assert record["target_url"].startswith("http://127.0.0.1:") and record["shape"] is None
    assert record["started_at"] < record["ended_at"] and record["versions"]["locust"]
    assert client["locust_version"] == record["versions"]["locust"]
    assert client["mode"] == ("web-ui" if mode == "web-ui" else "headless")
    assert client["role"] == ("master" if mode == "processes-2" else "local")
    assert client["workers_expected"] == (2 if mode == "processes-2" else None)
    assert set(client["user_classes"]) == {"PromptUser", "SummarizeUser", "QAUser"}
    assert client["host"]["cores"] >= 1 and client["host"]["cpu_model"]


def test_run_json_has_the_server_facts_from_ready_and_metrics(run: tuple[str, Path]) -> None:
    _, run_dir = run
    record = json.loads((run_dir / "run.json").read_text())
    server = record["server"]

    assert (record["model"], record["dtype"], record["workers"]) == ("synthetic:tiny",
                                                                     "float32", 2)
    assert record["torch_threads"] == 1 and server["threads_shared"] is False
    assert server["kernels"]["chosen"] in {t["precision"] for t in server["kernels"]["table"]}
    assert server["limits"]["max_queue"] == 17  # the server's own setting, not a default
    assert server["workers_seen"] == 2 and server["weight_mb"] > 0
    assert "facts_error" not in server
    # The server is on this machine: its host fingerprint includes torch's kernel path.
    assert record["host"]["torch_cpu_capability"] and record["host"]["isa"]


def test_analysis_reports_the_settings_without_missing_notes(run: tuple[str, Path]) -> None:
    _, run_dir = run
    done = subprocess.run([sys.executable, "-m", "analysis", str(run_dir), "--no-html"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    report = (run_dir / "report.md").read_text()

    assert done.returncode == 0, done.stderr[-3000:]
    assert "missing" not in report and "could not be read" not in report
    settings = report.split("## Run settings")[1]
    assert "| model | synthetic:tiny |" in settings and "| server.limits.max_queue | 17 |" \
        in settings


def test_master_and_two_workers_record_every_request(runs: Callable[[str], Path],
                                                     server: GunicornServer) -> None:
    # Requests are still in flight when the run time is up: without the drain
    # (--stop-timeout), the master would quit before the workers' last rows and statistics.
    # (server_env: rate limits off, so a burst of the slowed machine's late replies cannot
    # turn into 429s.)
    run_dir = runs("processes-2")
    worker_pids = set(map(str, server.worker_pids()))
    log = (run_dir / "locust.log").read_text()  # runs() checked its exit code

    assert "2 workers connected" in log or "(index 1) reported as ready" in log, log
    assert all((run_dir / name).is_file() for name in LOCUST_FILES), sorted(run_dir.iterdir())
    rows = read_csv(run_dir / "requests.csv")
    served = read_jsonl(run_dir / "server_requests.jsonl")
    client_only = {r["request_id"] for r in rows} - {s["request_id"] for s in served}
    assert len(rows) == len(served) == locust_totals(run_dir)[0] > 0, (
        [r for r in rows if r["request_id"] in client_only], locust_totals(run_dir))
    assert Counter(r["request_id"] for r in rows) == Counter(s["request_id"] for s in served)
    assert {r["user_class"] for r in rows} == USER_CLASSES
    assert locust_totals(run_dir)[1] == 0 and {r["success"] for r in rows} == {"1"}
    assert {r["worker_pid"] for r in rows} <= worker_pids
    # Users in both Locust workers took distinct numbers: request ids never repeat.
    assert len({r["request_id"] for r in rows}) == len(rows)
    roles = Counter(r["role"] for r in read_csv(run_dir / "memory.csv"))
    assert roles["master"] > 5 and roles["worker"] == 2 * roles["master"] == 2 * roles["total"]
    # Every Locust process ticks into loadgen.csv: the master's own rows, the workers' by message.
    ticks = read_csv(run_dir / "loadgen.csv")
    processes = {(r["role"], r["pid"]) for r in ticks}
    assert Counter(role for role, _ in processes) == {"master": 1, "worker": 2}
    per_process = Counter((r["role"], r["pid"]) for r in ticks)
    # ~10 a second over the 8 s run and the drain after it (61 each in a 2 s run, on this box)
    assert min(per_process.values()) > 50
