"""Step shapes: the stage table, the shape's ticks, and a real headless run with --shape steps."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import pytest

from harness.gunicorn_process import GunicornServer
from harness.run_folder import new_run_dir, utc_stamp
from locustfiles.shapes import StepShape
from locustfiles.stages import STEP_SWEEP, Stage, parse_stages, shape_record
from tests.conftest import server_env
from tests.locust_runs import read_csv, run_headless


def test_parse_stages_reads_users_and_seconds() -> None:
    assert parse_stages("1:60, 10:120,25:30.5") == (Stage(1, 60), Stage(10, 120),
                                                    Stage(25, 30.5))
    assert shape_record(parse_stages("1:60,10:120")) == {
        "kind": "steps", "stages": [{"users": 1, "duration_s": 60}, {"users": 10,
                                                                     "duration_s": 120}]}
    assert [s.users for s in STEP_SWEEP] == [1, 10, 25, 50, 100]


@pytest.mark.parametrize("text", ["", "10", "10:", "x:60", "10:0", "-1:60", "10:60:"])
def test_parse_stages_rejects_bad_tables(text: str) -> None:
    with pytest.raises(ValueError, match="USERS:SECONDS"):
        parse_stages(text)


@pytest.mark.parametrize(("elapsed_s", "tick"), [
    (0.0, (1, 5.0)), (59.9, (1, 5.0)), (60.1, (10, 5.0)), (179.9, (10, 5.0)), (180.1, None),
])  # fmt: skip
def test_step_shape_holds_each_stage_then_stops(elapsed_s: float, tick) -> None:
    shape = StepShape(parse_stages("1:60,10:120"), spawn_rate=5.0)
    shape.start_time = time.perf_counter() - elapsed_s

    assert shape.tick() == tick


def test_run_dir_names_sort_by_time_and_keep_labels_safe(tmp_path: Path) -> None:
    path = new_run_dir("sweep 2 workers/../x", results=tmp_path)

    assert path.parent == tmp_path and path.is_dir()
    assert re.fullmatch(r"\d{8}T\d{6}Z-sweep-2-workers-..-x", path.name)
    assert path.name[:16] <= utc_stamp()


def test_shape_option_drives_a_real_run(tiny_model: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    api_key = secrets.token_urlsafe(24)
    env = server_env(run_dir, API_KEYS=api_key)
    with GunicornServer(tmp_path, env, workers=2) as server:
        started = time.monotonic()
        result = run_headless(run_dir, server.url, api_key, "--shape", "steps", "--stages",
                              "1:3,3:3", "-r", "10", "--stop-timeout", "30",
                              operator_key=server.operator_key)
        elapsed_s = time.monotonic() - started

    assert result.returncode == 0, (run_dir / "locust.log").read_text()
    assert "Shape test completed" in (run_dir / "locust.log").read_text()
    assert elapsed_s < 30  # it stopped by itself after the last stage (no -t given)
    history = [r for r in read_csv(run_dir / "locust_stats_history.csv")
               if r["Name"] == "Aggregated"]
    assert {int(r["User Count"]) for r in history} - {0} == {1, 3}
