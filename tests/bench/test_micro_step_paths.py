"""python -m bench step paths: one line per row count, every forward path timed, for a bf16
GPT-2 (the native bf16 kernels where they run) and for GPT-2 and a Llama-family decoder on
the native fp16 GEMM (AVX2: their C layers, server.engine.native_gpt2 and native_llama)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from harness.gunicorn_process import REPO
from server.engine import native_f16, native_gemm

F16_LAYERS = native_f16.layers_library()[0] is not None
CASES = [("synthetic:tiny", "bfloat16+native" if native_gemm.available() else "bfloat16",
          native_gemm.available())]
CASES += [(model, "float16+native", True) for model in ("synthetic:tiny",
                                                          "synthetic:tiny-llama") if F16_LAYERS]


@pytest.mark.parametrize(("model", "dtype", "native"), CASES)
def test_probe_times_each_forward_path(tiny_model, tiny_decoders, model: str, dtype: str,
                                       native: bool) -> None:
    run = subprocess.run([sys.executable, "-m", "bench", "step", "paths", "--model", model,
                          "--dtype", dtype, "--rows", "1,3", "--context", "12",
                          "--threads", "1", "--reps", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"served as {dtype}" in run.stdout
    lines = re.findall(r"^\s*(\d+) rows: (.*)$", run.stdout, re.MULTILINE)
    assert [rows for rows, _ in lines] == ["1", "3"]
    names = ["torch layers"]
    if native:
        names += ["GEMMs only", "C layers", "attention only"]
    for _, timings in lines:
        found = dict(re.findall(r"([a-zA-Z ]+?) ([\d.]+)(?:, |$)", timings))
        assert sorted(found) == sorted(names)
        assert float(found["torch layers"]) > 0  # a whole forward takes measurable time
