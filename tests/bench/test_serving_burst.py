"""python -m bench burst on the tiny model: Locust sends one request, then a staggered burst."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR
from tests.locust_runs import locust_env

# A whole-server run of the measurement tool: `make test-tools`, not `make test` (CI's 30 min).
pytestmark = pytest.mark.tool


def test_burst_times_one_request_against_n_sent_apart(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "burst"
    run = run_script(
        [sys.executable, "-m", "bench", "burst", "--model", "synthetic:tiny", "--models-dir",
         MODELS_DIR, "--dtype", "float32", "--workers", "1", "--tokens", "8",
         "--concurrency", "3", "--stagger-ms", "100", "--out", str(out)],
        cwd=REPO, env=locust_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = run.stdout
    assert re.search(r"^master\s+\d+", text, re.MULTILINE) and "one PSS read of worker" in text
    one = float(re.search(r"^1 request of 8 tokens: ([\d.]+) s", text, re.MULTILINE)[1])
    many = float(re.search(r"^3 concurrent: ([\d.]+) s wall", text, re.MULTILINE)[1])
    assert one > 0 and many >= 0.2  # the last of three is sent 200 ms after the first
    assert "3 sent 100 ms apart took" in text and "slowest request's own latency" in text
    burst = pd.read_csv(out / "burst" / "requests.csv")
    assert len(burst) == 3 and burst["success"].all()
    assert set(burst["completion_tokens"]) == {8} and set(burst["user_class"]) == {"BenchUser"}
    assert len(pd.read_csv(out / "one" / "requests.csv")) == 1
