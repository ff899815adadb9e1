"""python -m bench sampler-cost on the tiny model: three conditions side by side, host named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR


def test_probe_measures_the_sampler_on_and_off(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    run = run_script(
        [sys.executable, "-m", "bench", "sampler-cost", "--model", "synthetic:tiny",
         "--models-dir", MODELS_DIR, "--dtype", "float32", "--batch", "2",
         "--prompt-tokens", "8", "--tokens", "8", "--rounds", "2", "--window-s", "1.5",
         "--interval-s", "0.05", "--json", str(out)],
        cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    result = json.loads(out.read_text())
    rows = result["summary"]
    assert list(rows) == ["off", "on", "every-sample"]
    assert all(rows[c]["tokens_per_s"] > 0 for c in rows)
    assert rows["off"]["samples_per_s"] == 0 and rows["off"]["sampler_cpu_share"] == 0
    # Every 0.05 s for 1.5 s: ~30 samples a window; the old way reads smaps on each one, the
    # budgeted way only as often as 0.25% of a core pays for.
    every, on = rows["every-sample"], rows["on"]
    assert every["samples_per_s"] > 5 and on["samples_per_s"] > 5
    assert every["full_reads_per_s"] == every["samples_per_s"]
    assert on["full_reads_per_s"] < every["full_reads_per_s"] / 2
    assert on["smaps_read_share"] <= 0.0025 * 1.5 < every["smaps_read_share"]
    assert [w["condition"] for w in result["windows"]] == [
        "off", "on", "every-sample", "on", "every-sample", "off"]  # rotated each round
    cpu_model = next(line.split(":", 1)[1].strip()
                     for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    assert result["host"]["cpu_model"] == cpu_model
    assert f'"cpu_model": "{cpu_model}"' in run.stdout.splitlines()[0]
    assert "sampler at the defaults: throughput on / off = " in run.stdout
