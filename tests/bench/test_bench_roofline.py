"""The decode limit on hand-worked numbers, and a real (small) measurement of this host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import roofline as probe
from bench.roofline import (
    Roofline,
    buffer_sizes_mb,
    decode_limit,
    load,
    model_params,
    read_bandwidth_gb_s,
    render,
)
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
        [sys.executable, "-m", "bench", "roofline", "--model", "synthetic:tiny", "--models-dir",
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


GPT2_LARGE_PARAMS = 774_030_080  # 2 x params bytes = 1476 MiB in bf16


@pytest.mark.parametrize(("params", "buffer_mb", "expected"), [
    (GPT2_LARGE_PARAMS, None, (256, 1476, 2952)),  # 256 MiB, the bf16 weights, twice that
    (1_000_000, None, (256,)),                     # tiny weights: raised to 256 MiB, once
    (4_000_000_000, None, (256, 4096)),            # 7.6 and 15 GiB: both capped at 4 GiB
    (GPT2_LARGE_PARAMS, 16, (16,)),                # --buffer-mb: that one size, as given
])  # fmt: skip
def test_bandwidth_buffer_sizes(params: int, buffer_mb: int | None,
                                expected: tuple[int, ...]) -> None:
    assert buffer_sizes_mb(params, buffer_mb) == expected


def test_read_bandwidth_is_the_median_over_buffer_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Per-size rates as on the EPYC box, except that the weights-sized buffer is the lucky
    # one here: its best rate (53.3) and even its median (47.8) must not be what is kept.
    medians = {256: 30.5, 1476: 47.8, 2952: 32.5}
    calls: list[tuple[int, bool]] = []

    def fake_read(buffer_mb: int, seconds: float, median: bool = False) -> float:
        calls.append((buffer_mb, median))
        return medians[buffer_mb] if median else 53.3

    monkeypatch.setattr(probe, "model_params", lambda model, models_dir: GPT2_LARGE_PARAMS)
    monkeypatch.setattr(probe, "read_bandwidth_gb_s", fake_read)
    monkeypatch.setattr(probe, "concurrent_read_bandwidth_gb_s",
                        lambda processes, buffer_mb, seconds: (15.0,) * processes)
    monkeypatch.setattr(probe, "matmul_gflop_s", lambda dtype, size, seconds: 100.0)
    monkeypatch.setattr(probe, "int8_matmul_gflop_s", lambda size, seconds: 200.0)
    roofline = probe.measure("synthetic:gpt2-large", "models", threads=2, size=8,
                             buffer_mb=None, seconds=0.0)
    assert sorted(calls) == [(256, True), (1476, False), (1476, True), (2952, True)]
    assert roofline.bandwidth_by_buffer_mb == medians
    assert roofline.read_bandwidth_gb_s == pytest.approx(32.5)  # median of 30.5, 47.8, 32.5
    assert roofline.buffer_mb == 1476  # the single-thread reads use the weights' size
    assert roofline.one_thread_bandwidth_gb_s == pytest.approx(53.3)
    assert ("- memory read bandwidth: 32.5 GB/s (median of float32 sums of 256 / 1476 / "
            "2952 MiB: 30.5 / 47.8 / 32.5 GB/s)\n") in render(roofline)


def test_per_size_bandwidth_survives_save_and_load(tmp_path: Path) -> None:
    roofline = Roofline(model="m", params=10, threads=2, read_bandwidth_gb_s=31.0,
                        matmul_gflop_s={"float32": 400.0}, matmul_size=8, buffer_mb=256,
                        measured_at="", cpu="", bandwidth_by_buffer_mb={256: 30.0, 512: 31.0})
    probe.save(roofline, tmp_path / "roofline.json")
    assert load(tmp_path / "roofline.json") == roofline


def test_read_bandwidth_of_a_small_buffer_is_positive_best_and_median() -> None:
    assert read_bandwidth_gb_s(1, 0.0) > 0
    assert read_bandwidth_gb_s(1, 0.0, median=True) > 0


def test_a_roofline_saved_before_the_per_size_bandwidth_still_loads(tmp_path: Path) -> None:
    old = {"model": "synthetic:gpt2-large", "params": GPT2_LARGE_PARAMS, "threads": 2,
           "read_bandwidth_gb_s": 51.3, "matmul_gflop_s": {"float32": 198.0},
           "matmul_size": 2048, "buffer_mb": 1024, "measured_at": "2026-11-25T14:23:19Z",
           "cpu": "AMD EPYC", "one_thread_bandwidth_gb_s": 20.0,
           "process_bandwidth_gb_s": [15.0, 15.5]}
    (tmp_path / "roofline.json").write_text(json.dumps(old))
    roofline = load(tmp_path / "roofline.json")
    assert roofline.bandwidth_by_buffer_mb == {}
    assert roofline.read_bandwidth_gb_s == 51.3
    assert ("- memory read bandwidth: 51.3 GB/s (sum of a 1024 MiB float32 tensor)"
            in render(roofline))


def test_the_results_rooflines_still_load() -> None:
    for path in sorted((REPO / "results").rglob("roofline.json")):
        assert load(path).read_bandwidth_gb_s > 0, path
