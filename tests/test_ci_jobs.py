"""The ready-made CI jobs in deploy/ci/: their YAML runs deploy/ci/*.sh, and those commands
work on synthetic:tiny: a local server and a deployed URL, the SLO and regression gates."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from harness.gunicorn_process import REPO, GunicornServer
from tests.conftest import MODELS_DIR, server_env

CI = REPO / "deploy" / "ci"


def github_commands() -> list[str]:
    jobs = yaml.safe_load((CI / "github-actions.yml").read_text())["jobs"]
    return [step["run"] for step in jobs["loadtest"]["steps"] if "run" in step]


def gitlab_commands() -> list[str]:
    return yaml.safe_load((CI / "gitlab-ci.yml").read_text())["loadtest"]["script"]


@pytest.mark.parametrize("commands", [github_commands, gitlab_commands])
def test_both_jobs_build_the_venv_then_run_the_tested_script(commands) -> None:
    found = commands()
    venv = next(i for i, c in enumerate(found) if c == "bash deploy/ci/venv.sh")
    load = next(i for i, c in enumerate(found) if c.endswith("bash deploy/ci/loadtest.sh"))
    assert venv < load
    for command in found:  # every script a job names exists
        for word in command.split():
            if word.startswith("deploy/ci/"):
                assert (REPO / word).is_file(), word


def test_jobs_upload_the_folder_and_junit_files_the_script_writes() -> None:
    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    env = github["jobs"]["loadtest"]["env"]
    uploads = [s["with"] for s in github["jobs"]["loadtest"]["steps"]
               if s.get("uses", "").startswith(("actions/upload-artifact",
                                                "mikepenz/action-junit-report"))]
    assert uploads == [{"name": "loadtest-run", "path": env["RUN_DIR"]},
                       {"report_paths": f"{env['RUN_DIR']}/**/*-junit.xml"}]
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["loadtest"]
    run_dir = gitlab["variables"]["RUN_DIR"]
    assert gitlab["artifacts"]["paths"] == [f"{run_dir}/"]
    assert gitlab["artifacts"]["reports"]["junit"] == [f"{run_dir}/slo-junit.xml",
                                                       f"{run_dir}/compare/regression-junit.xml"]


def ci_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The jobs' variables, with short runs and this test's interpreter."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("LOCUST_", "GITHUB_")) and k not in ("TARGET_URL",)}
    # 5 s of 4 users: tens of answers from tiny, all the gates need to judge a run (what is
    # tested is the scripts' plumbing and verdicts, not a latency estimate).
    return {**keep, "PYTHON": sys.executable, "PRESET": "tiny", "USERS": "4",
            "DURATION": "5", "MODELS_DIR": MODELS_DIR, "BASELINE": str(tmp_path / "none"),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"), **extra}


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_loadtest_script_serves_tiny_and_applies_the_gates(tiny_model, tmp_path) -> None:
    run_dir = tmp_path / "ci"
    env = ci_env(tmp_path, RUN_DIR=str(run_dir))
    done = run_script(env, "deploy/ci/loadtest.sh")
    out = done.stdout + done.stderr

    assert done.returncode == 0, out[-5000:]
    assert "PASS      requests served" in out and "PASS      p95 latency, All routes" in out
    assert "regression gate skipped" in out
    record = (run_dir / "run.json").read_text()
    assert '"server_command"' in record and '"client"' in record
    suite = ET.parse(run_dir / "slo-junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 3
    assert (tmp_path / "step-summary.md").read_text().startswith("## SLO gate: ci")

    # The same run as its own baseline: every metric is within noise, the gate passes.
    done = run_script(env, "deploy/ci/gates.sh", str(run_dir), str(run_dir))
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "UNCHANGED p95 latency" in done.stdout and "regression gate passed" in done.stdout
    assert ET.parse(run_dir / "compare" / "regression-junit.xml").getroot().find(
        "testsuite").get("failures") == "0"
    # A tighter SLO file makes the same run fail the SLO gate (exit 1, after both gates).
    strict = tmp_path / "strict.toml"
    strict.write_text("[slo]\np95_ms = 0.001\n")
    done = run_script({**env, "SLO_FILE": str(strict)}, "deploy/ci/gates.sh", str(run_dir),
                      str(run_dir))
    assert done.returncode == 1 and "FAIL      p95 latency, All routes" in done.stdout
    assert "regression gate passed" in done.stdout


def test_loadtest_script_loads_a_deployed_server_by_url(tiny_model, tmp_path) -> None:
    api_key = secrets.token_urlsafe(24)
    run_dir = tmp_path / "ci"
    with GunicornServer(tmp_path, server_env(tmp_path, API_KEYS=api_key), workers=1) as server:
        env = ci_env(tmp_path, RUN_DIR=str(run_dir), TARGET_URL=server.url,
                     LOCUST_API_KEY=api_key, LOCUST_OPERATOR_KEY=server.operator_key)
        done = run_script(env, "deploy/ci/loadtest.sh")

    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "PASS      requests served" in done.stdout
    record = (run_dir / "run.json").read_text()
    assert f'"target_url": "{server.url}"' in record and '"workers": 1' in record
    assert "server_command" not in record  # no script started this server
