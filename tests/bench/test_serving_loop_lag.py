"""python -m bench loop-lag on the tiny model: two Locust runs at once, sampling on and off."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR
from tests.locust_runs import locust_env, read_csv

# A whole-server run of the measurement tool: `make test-tools`, not `make test` (CI's 30 min).
pytestmark = pytest.mark.tool


def test_probe_compares_loop_lag_with_and_without_sampling(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "lag"
    run = run_script(
        [sys.executable, "-m", "bench", "loop-lag", "--out", str(out), "--model",
         "synthetic:tiny", "--models-dir", MODELS_DIR, "--dtype", "float32", "--workers", "1",
         "--users", "2", "--spawn-rate", "2", "--duration", "10", "--stop-timeout", "20"],
        cwd=REPO, env=locust_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    result = json.loads((out / "loop_lag.json").read_text())
    on, off = result["runs"]["sampler-on"], result["runs"]["sampler-off"]
    assert on["requests"] > 0 and off["requests"] > 0
    assert on["ticks"] > 50 and off["ticks"] > 50  # ~10 ticks a second of each Locust
    assert 0 <= on["lag_p50_ms"] <= on["lag_p99_ms"] and 0 <= off["lag_p50_ms"] <= off["lag_p99_ms"]
    assert len(read_csv(out / "sampler-on" / "memory.csv")) > 0
    assert not (out / "sampler-off" / "memory.csv").exists()
    assert result["host"]["cpu_model"] and "sampler-on" in run.stdout
