"""The main job end to end on synthetic:tiny: scripts/loadtest.py makes a complete run folder."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR
from tests.locust_runs import (
    LOCUST_FILES,
    USER_CLASSES,
    locust_env,
    locust_totals,
    read_csv,
    read_jsonl,
)

RUN_JSON_KEYS = {"label", "model", "dtype", "workers", "torch_threads", "max_batch_size",
                 "users", "spawn_rate", "duration_s", "shape", "git_commit",
                 "host", "versions", "started_at", "ended_at"}


@pytest.fixture(scope="module")
def run_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 20-second run of the run script: 10 users, 2 Gunicorn workers, analysis on."""
    run = tmp_path_factory.mktemp("loadtest") / "run"
    result = run_script(
        [sys.executable, "scripts/loadtest.py", "--model", "synthetic:tiny", "--models-dir",
         MODELS_DIR, "--dtype", "float32", "--users", "10", "--spawn-rate", "5",
         "--duration", "20", "--workers", "2", "--label", "e2e", "--run-dir", str(run),
         "--stop-timeout", "30", "--slo-p95-ms", "5000"],
        cwd=REPO, env=locust_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run


def test_every_file_of_the_run_folder_is_there(run_dir: Path) -> None:
    expected = {*LOCUST_FILES, "run.json", "server_requests.jsonl", "gunicorn.log",
                "report.md"}
    assert expected <= {p.name for p in run_dir.iterdir()}


def test_analysis_wrote_every_chart_and_the_report(run_dir: Path) -> None:
    import matplotlib.image

    from analysis.cli import CHARTS

    charts = {p.stem: p for p in (run_dir / "charts").glob("*.png")}
    assert set(charts) >= {stem for stem, _, _ in CHARTS}
    for path in charts.values():
        pixels = matplotlib.image.imread(path)  # opens as a PNG
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0.01, f"{path.name} is blank"
    report = (run_dir / "report.md").read_text()
    for section in ("## Summary", "## Latency per route", "## SLO verdicts",
                    "## Findings and recommendations", "## Run settings"):
        assert section in report
    for stem in charts:
        assert f"charts/{stem}.png" in report


def test_rows_match_the_server_log_and_locust(run_dir: Path) -> None:
    rows = read_csv(run_dir / "requests.csv")
    served = read_jsonl(run_dir / "server_requests.jsonl")
    requests_total, failures_total = locust_totals(run_dir)

    assert len(rows) == len(served) == requests_total > 20
    assert Counter(r["request_id"] for r in rows) == Counter(s["request_id"] for s in served)
    assert failures_total == 0
    assert {r["success"] for r in rows} == {"1"} and {r["status_code"] for r in rows} == {"200"}
    assert {r["user_class"] for r in rows} == USER_CLASSES
    assert {r["route"] for r in rows} == {"/generate-text", "/summarize-text",
                                          "/answer-question"}


def test_rows_carry_server_memory_and_tokens(run_dir: Path) -> None:
    rows = read_csv(run_dir / "requests.csv")
    memory = read_csv(run_dir / "memory.csv")
    worker_pids = {m["pid"] for m in memory if m["role"] == "worker"}

    assert len(worker_pids) == 2 and {r["worker_pid"] for r in rows} <= worker_pids
    assert all(float(r["worker_pss_mb"]) < float(r["worker_rss_mb"]) for r in rows)
    assert all(int(r["completion_tokens"]) > 0 and int(r["batch_size"]) >= 1 for r in rows)
    # Bodies differ per request by construction (seed / reference line), so do the ids.
    assert len({r["request_id"] for r in rows}) == len(rows)


def test_memory_csv_samples_the_tree_every_second(run_dir: Path) -> None:
    memory = read_csv(run_dir / "memory.csv")
    totals = [m for m in memory if m["role"] == "total"]
    by_time = {t["timestamp"]: [m for m in memory if m["timestamp"] == t["timestamp"]
                                and m["role"] != "total"] for t in totals}

    assert len(totals) >= 15  # ~1/s over a 20 s run
    for total in totals:
        processes = by_time[total["timestamp"]]
        assert Counter(p["role"] for p in processes) == {"master": 1, "worker": 2}
        assert total["pid"] == "0"
        assert float(total["pss_mb"]) == pytest.approx(
            sum(float(p["pss_mb"]) for p in processes), abs=0.2)
        # The preloaded weights are shared: the real footprint is below the summed RSS.
        assert float(total["pss_mb"]) < float(total["rss_mb"])


def test_run_json_records_the_settings(run_dir: Path) -> None:
    run = json.loads((run_dir / "run.json").read_text())

    assert set(run) >= RUN_JSON_KEYS
    assert (run["model"], run["dtype"], run["workers"], run["users"], run["duration_s"]) == (
        "synthetic:tiny", "float32", 2, 10, 20)
    assert run["shape"] is None and run["slo"]["p95_ms"] == 5000
    assert run["host"]["cores"] >= 1 and run["host"]["ram_gb"] > 0
    assert run["versions"]["locust"] and run["started_at"] < run["ended_at"]
    # The Locust suite wrote the record; the script added what only it knows.
    assert run["client"]["mode"] == "headless" and run["server"]["limits"]["max_queue"] > 0
    assert "gunicorn.conf.py" in run["server_command"] and "API_KEYS" not in run["server_command"]
    assert "MODEL=synthetic:tiny" in run["server_command"] and len(run["git_commit"]) >= 40


def test_run_json_names_the_hardware_and_the_server_kernels(run_dir: Path) -> None:
    host = json.loads((run_dir / "run.json").read_text())["host"]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    flags = set(next(line for line in cpuinfo if line.startswith("flags")).split(":")[1].split())

    assert host["cpu_model"] == model and host["cpu_vendor"]
    assert host["isa"] and set(host["isa"]) <= flags
    assert host["torch_cpu_capability"] and host["blas"]
    server = json.loads((run_dir / "run.json").read_text())["server"]
    # The kernel table comes from /ready (this server always measures one at startup).
    table = {t["precision"] for t in server["kernels"]["table"]}
    assert server["kernels"]["chosen"] in table and "float32" in table


def test_loadgen_csv_records_every_tick_of_locust(run_dir: Path) -> None:
    rows = read_csv(run_dir / "loadgen.csv")

    assert len(rows) >= 150  # ~10 ticks a second over a 20 s run
    assert {r["role"] for r in rows} == {"local"}
    cpu = [float(r["cpu_s"]) for r in rows]
    assert cpu == sorted(cpu) and cpu[-1] > cpu[0]  # Locust did work
    assert all(float(r["loop_lag_ms"]) >= 0 for r in rows)


def test_report_names_the_cpu_and_measures_the_load_generator(run_dir: Path) -> None:
    report = (run_dir / "report.md").read_text()
    host = json.loads((run_dir / "run.json").read_text())["host"]

    assert f"Host CPU: **{host['cpu_model']}**" in report.split("\n## ")[0]
    section = report.split("## Load generator")[1].split("\n## ")[0]
    share = re.search(r"\*\*([\d.]+)% of the box's (\d+) cores\*\*", section)
    lag = re.search(r"\*\*p50 ([\d.]+) ms, p99 ([\d.]+) ms\*\*", section)
    assert share and lag, section
    assert 0 < float(share[1]) < 100 and int(share[2]) == host["cores"]
    assert 0 <= float(lag[1]) <= float(lag[2])
