"""python -m bench sampling: one timed line per sampling case, on a small vocabulary."""

from __future__ import annotations

import re
import subprocess
import sys

from harness.gunicorn_process import REPO


def test_probe_times_each_sampling_case() -> None:
    run = subprocess.run([sys.executable, "-m", "bench", "sampling", "--vocab", "500",
                          "--threads", "1", "--repeats", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    times = re.findall(r"^(greedy|temperature 0\.8(?:, top_p 0\.95)?)\s+([\d.]+) ms a token$",
                       run.stdout, re.MULTILINE)
    assert [name for name, _ in times] == ["greedy", "temperature 0.8",
                                           "temperature 0.8, top_p 0.95"]
    assert float(times[-1][1]) > 0  # a sort and a draw take measurable time
