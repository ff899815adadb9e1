"""python -m bench step paths: one line per row count, every forward path timed."""

from __future__ import annotations

import re
import subprocess
import sys

from harness.gunicorn_process import REPO
from server.engine import native_gemm


def test_probe_times_each_forward_path(tiny_model) -> None:
    native = native_gemm.available()
    dtype = "bfloat16+native" if native else "bfloat16"
    run = subprocess.run([sys.executable, "-m", "bench", "step", "paths", "--model",
                          "synthetic:tiny", "--dtype", dtype, "--rows", "1,3", "--context", "12",
                          "--threads", "1", "--reps", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = re.findall(r"^\s*(\d+) rows: (.*)$", run.stdout, re.MULTILINE)
    assert [rows for rows, _ in lines] == ["1", "3"]
    names = ["transformers", "torch layers"]
    if native:
        names += ["GEMMs only", "C layers", "attention only"]
    for _, timings in lines:
        found = dict(re.findall(r"([a-zA-Z ]+?) ([\d.]+)(?:, |$)", timings))
        assert sorted(found) == sorted(names)
        assert float(found["transformers"]) > 0  # a whole forward takes measurable time
