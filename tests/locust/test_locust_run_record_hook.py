"""The run.json hook on a bare Environment: client facts, unreachable and foreign servers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from locust.env import Environment

from harness.processes import free_port
from locustfiles.run_record_hook import RunRecordHook, is_local_target
from locustfiles.server_facts import parse_metrics_facts


def options(**given) -> argparse.Namespace:
    defaults = {"label": "unit", "num_users": 3, "spawn_rate": 1.5, "run_time": 12,
                "shape": "none", "stages": "", "mix": "tasks", "target": "lab",
                "headless": True, "metrics_urls": "", "server_pidfile": "", "stop_timeout": 5}
    return argparse.Namespace(**{**defaults, **given})


def run_test(environment: Environment, run_dir: Path, parsed: argparse.Namespace) -> dict:
    environment.parsed_options = parsed
    RunRecordHook(run_dir).register(environment)
    environment.events.test_start.fire(environment=environment)
    environment.events.test_stop.fire(environment=environment)
    return json.loads((run_dir / "run.json").read_text())


def test_unreachable_server_is_noted_not_raised(environment, tmp_path) -> None:
    environment.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    record = run_test(environment, tmp_path, options())

    assert (record["label"], record["users"], record["spawn_rate"], record["duration_s"]) == (
        "unit", 3, 1.5, 12)
    assert record["client"]["role"] == "local" and record["client"]["mode"] == "headless"
    assert "/ready: ConnectionError" in record["server"]["facts_error"]
    assert "model" not in record and record["started_at"] <= record["ended_at"]


def test_foreign_openai_server_is_not_asked_for_lab_facts(environment, tmp_path) -> None:
    environment.host = "https://api.example.com"  # never contacted: --target openai
    record = run_test(environment, tmp_path, options(target="openai", mix="tasks"))

    assert (record["target"], record["mix"]) == ("openai", "openai")
    assert "server" not in record and "host" not in record  # not this machine's server
    assert record["client"]["host"]["cores"] >= 1  # the load generator's machine


def test_web_ui_run_records_how_long_it_ran(environment, tmp_path) -> None:
    environment.host = "https://api.example.com"
    record = run_test(environment, tmp_path, options(target="openai", run_time=None,
                                                     headless=False))

    assert record["client"]["mode"] == "web-ui" and 0 <= record["duration_s"] < 5


@pytest.mark.parametrize(("url", "pidfile", "local"), [
    ("http://127.0.0.1:8000", "", True), ("http://localhost", "", True),
    ("http://10.213.0.10", "", False), ("https://staging.example.com", "", False),
    ("http://10.213.0.10", "EXISTING", True), ("http://10.0.0.1", "/no/such.pid", False),
])
def test_local_target_is_loopback_or_a_readable_pidfile(url, pidfile, local, tmp_path) -> None:
    if pidfile == "EXISTING":
        (pidfile := tmp_path / "gunicorn.pid").write_text("1")
    assert is_local_target(url, str(pidfile)) is local


def test_metrics_count_distinct_worker_pids() -> None:
    text = "\n".join([
        "# TYPE gpt_worker_rss_bytes gauge",
        'gpt_worker_rss_bytes{pid="11"} 1.0e8', 'gpt_worker_rss_bytes{pid="12"} 1.0e8',
        "# TYPE gpt_model_weight_bytes gauge", "gpt_model_weight_bytes 1048576.0", ""])
    assert parse_metrics_facts(text) == {"pids": {"11", "12"}, "weight_mb": 1.0}
