"""Real locust subprocesses and their run folders, for every test that runs Locust
(tests/, tests/locust/, tests/bench/)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.gunicorn_process import REPO
from harness.script_run import run_script

# Every file a run folder holds once Locust has run (analysis adds charts/ and report.md).
LOCUST_FILES = ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                "locust_exceptions.csv", "locust_report.html", "requests.csv", "memory.csv")
USER_CLASSES = {"PromptUser", "SummarizeUser", "QAUser"}


def locust_env(**extra: str) -> dict[str, str]:
    """Environment for a real locust process: gevent patching on, nothing inherited."""
    drop = ("LOCUST_SKIP_MONKEY_PATCH", "LOCUST_API_KEY", "LOCUST_OPERATOR_KEY", "LOCUST_RUN_DIR",
            "LOCUST_SERVER_PIDFILE", "LOCUST_SHAPE", "LOCUST_STAGES", "LOCUST_LABEL",
            "LOCUST_MIX", "LOCUST_TARGET", "LOCUST_OPENAI_MODEL", "LOCUST_METRICS_URLS")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def locust_command(run_dir: Path, host: str, *args: str) -> list[str]:
    """``locust -f locustfiles`` with the run folder's CSV/HTML outputs and ``args``."""
    return [sys.executable, "-m", "locust", "-f", "locustfiles", "--host", host,
            "--run-dir", str(run_dir), "--csv", str(run_dir / "locust"), "--csv-full-history",
            "--html", str(run_dir / "locust_report.html"), *args]


def run_headless(run_dir: Path, host: str, api_key: str, *args: str,
                 operator_key: str = "") -> subprocess.CompletedProcess:
    """Run headless Locust to the end, following it (harness.script_run), not a fixed clock;
    its output goes to run_dir/locust.log. ``operator_key`` (the server's
    ``GunicornServer.operator_key``) lets run.json and memory.csv read /ready and /metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_script(locust_command(run_dir, host, "--headless", *args), cwd=REPO,
                      env=locust_env(LOCUST_API_KEY=api_key, LOCUST_OPERATOR_KEY=operator_key),
                      log_path=run_dir / "locust.log")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON Lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def locust_totals(run_dir: Path) -> tuple[int, int]:
    """(requests, failures) of the Aggregated row of locust_stats.csv."""
    [total] = [r for r in read_csv(run_dir / "locust_stats.csv") if r["Name"] == "Aggregated"]
    return int(total["Request Count"]), int(total["Failure Count"])
