"""python -m bench profile on the tiny model (Locust load): it runs, and its attribution adds up."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR
from tests.locust_runs import locust_env

# A whole-server run of the measurement tool: `make test-tools`, not `make test` (CI's 30 min).
pytestmark = pytest.mark.tool


def test_profile_splits_worker_time_and_compares_with_a_quiet_step(tiny_model: Path) -> None:
    run = run_script(
        [sys.executable, "-m", "bench", "profile", "--model", "synthetic:tiny",
         "--models-dir", MODELS_DIR, "--dtype", "float32", "--workers", "1", "--users", "2",
         "--prompt-tokens", "16", "--tokens", "8", "--warmup-s", "3", "--measure-s", "6"],
        cwd=REPO, env=locust_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "client errors 0" in out
    host = json.loads(re.search(r"^host facts: (.*)$", out, re.MULTILINE)[1])
    assert host["cpu_model"] and host["torch_cpu_capability"] and "isa" in host
    shares = [float(share) for share in re.findall(r"^\s+(-?[\d.]+)%\s", out, re.MULTILINE)]
    assert len(shares) == 4  # prefill, decode, rest of steps, outside steps
    assert shares[0] > 0 and shares[1] > 0  # the load reached both phases
    # "Outside steps" is the wall time left after the steps: a step counted twice, or one
    # from outside the window, would push it below zero (a step ends within ~20 ms here).
    assert shares[3] > -1.0
    # Two closed-loop users on one worker: decode steps run one or two rows.
    rows = float(re.search(r"decode:\s+\d+ steps, ([\d.]+) rows each", out)[1])
    assert 1.0 <= rows <= 2.0
    # The closed loop's time per decode step holds every decode forward and more.
    forward = float(re.search(r"decode:.* ([\d.]+) ms forward and", out)[1])
    loop = float(re.search(r"closed loop: ([\d.]+) ms of worker time per decode step", out)[1])
    assert loop >= forward > 0
    # Both sides name the kernel path they ran (DTYPE=float32: plain or oneDNN).
    assert re.search(r"synthetic:tiny float32 \(served float32(\+onednn)?\):", out)
    quiet = re.search(r"quiet process, step engine \(float32(?:\+onednn)?\), 1 torch "
                      r"thread\(s\): "
                      r"a step reading \d+ prompts' first chunk .*"
                      r"decode step at (\d+) rows, context 20: ([\d.]+) ms .*"
                      r"closed loop ([\d.]+) ms, ([\d.]+)x\)", out)
    assert quiet and 1 <= int(quiet[1]) <= 2 and float(quiet[2]) > 0
    assert float(quiet[3]) == loop
