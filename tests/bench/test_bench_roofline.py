"""The decode limit on hand-worked numbers, and a real (small) measurement of this host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.roofline import Roofline, decode_limit, load, model_params, render
from harness.gunicorn_process import REPO
from tests.conftest import MODELS_DIR

# 1e9 parameters in bf16 = 2 GB read per step; 20 GB/s -> 10 steps/s; 400 GFLOP/s / 2 GFLOP
# per token -> 200 tokens/s whatever the batch.
GB, PARAMS = 1e9, 1e9


@pytest.mark.parametrize(("batch", "expected"), [
    (1, 10.0),     # memory bound: 1 x 20 / 2
    (8, 80.0),     # still memory bound: 8 x 20 / 2
    (20, 200.0),   # the two bounds meet: 20 x 20 / 2 = 400 / 2
    (32, 200.0),   # compute bound: 320 allowed by memory, 200 by compute
    (2.5, 25.0),   # a mean batch size need not be whole
])  # fmt: skip
def test_decode_limit_hand_worked(batch: float, expected: float) -> None:
    assert decode_limit(batch, 20 * GB, 2 * PARAMS, 400 * GB, PARAMS) == pytest.approx(expected)


def test_roofline_uses_the_dtype_width_and_its_own_compute() -> None:
    roofline = Roofline(model="m", params=int(PARAMS), threads=2, read_bandwidth_gb_s=20.0,
                        matmul_gflop_s={"float32": 400.0, "bfloat16": 1000.0, "int8": 1500.0},
                        matmul_size=8,
                        buffer_mb=1, measured_at="", cpu="")
    assert roofline.weight_bytes("float32") == 4 * PARAMS
    assert roofline.limit_tokens_per_s(1, "float32") == pytest.approx(5.0)  # 20 / 4
    assert roofline.limit_tokens_per_s(1, "bfloat16") == pytest.approx(10.0)  # 20 / 2
    assert roofline.weight_bytes("int8") == PARAMS
    assert roofline.limit_tokens_per_s(1, "int8") == pytest.approx(20.0)  # 20 / 1
    assert roofline.limit_tokens_per_s(64, "int8") == pytest.approx(750.0)  # 1500 / 2
    assert roofline.limit_tokens_per_s(64, "float32") == pytest.approx(200.0)  # 400 / 2
    assert roofline.limit_tokens_per_s(64, "bfloat16") == pytest.approx(500.0)  # 1000 / 2
    assert "| 1 | 5.0 | 10.0 |" in render(roofline, batches=(1,))


def test_model_params_counts_the_loaded_weights(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert model_params("synthetic:tiny", MODELS_DIR) == sum(
        p.numel() for p in loaded.parameters())


def test_probe_command_measures_and_saves(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "roofline.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.roofline", "--model", "synthetic:tiny", "--models-dir",
         MODELS_DIR, "--threads", "1", "--size", "128", "--buffer-mb", "16", "--seconds",
         "0.05", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    roofline = load(out)
    assert json.loads(out.read_text())["threads"] == 1
    assert roofline.read_bandwidth_gb_s > 0
    assert roofline.one_thread_bandwidth_gb_s > 0
    assert len(roofline.process_bandwidth_gb_s) == 1  # one process per thread
    assert all(rate > 0 for rate in roofline.process_bandwidth_gb_s)
    assert "one-thread processes reading at once" in result.stdout
    assert set(roofline.matmul_gflop_s) == {"float32", "bfloat16", "int8"}
    assert all(v > 0 for v in roofline.matmul_gflop_s.values())
    assert "Decode limit" in result.stdout


def test_a_roofline_saved_before_the_per_worker_bandwidth_still_loads(tmp_path: Path) -> None:
    old = {"model": "m", "params": 10, "threads": 2, "read_bandwidth_gb_s": 20.0,
           "matmul_gflop_s": {"float32": 400.0}, "matmul_size": 64, "buffer_mb": 16,
           "measured_at": "2026-11-25T00:00:00Z", "cpu": "x"}
    (tmp_path / "roofline.json").write_text(json.dumps(old))
    roofline = load(tmp_path / "roofline.json")
    assert roofline.process_bandwidth_gb_s == ()
    assert "one-thread processes" not in render(roofline)
