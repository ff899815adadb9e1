"""python -m bench engines: the plan of rows, the table from canned results, the OpenVINO
driver's options and result format, the missing-build messages, and one real run of our rows
on the tiny model (no llama.cpp, no OpenVINO: their rows are skipped, naming the build)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from bench import openvino_driver as driver
from bench import openvino_reference as ov
from bench.command_log import Commands
from bench.engine_rows import EngineRow, parse_concurrency, parse_variant, plan_rows
from bench.engine_runs import run_llama, run_openvino
from bench.engine_table import (
    from_driver,
    from_requests,
    read_json,
    render,
    skipped,
    to_json,
)
from bench.engines import parse_args
from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR
from tests.locust_runs import locust_env


def test_default_plan_is_every_engine_at_1_8_32() -> None:
    rows = parse_args([]).rows
    assert [r.name for r in rows] == [
        "ours-auto-c1", "ours-auto-c8", "ours-auto-c32",
        "llama.cpp-f16-c1", "llama.cpp-f16-c8", "llama.cpp-f16-c32",
        "openvino-fp16-c1", "openvino-fp16-c8", "openvino-fp16-c32",
        "openvino-int8-c1", "openvino-int8-c8", "openvino-int8-c32"]
    assert rows[0].env == ()


def test_variants_carry_their_environment_and_engines_can_be_left_out() -> None:
    rows = parse_args(["--ours", "auto=", "--ours", "int8=DTYPE=int8 ALLOW_INT8=1",
                       "--quants", "", "--formats", "int8", "--concurrency", "2"]).rows
    assert [r.name for r in rows] == ["ours-auto-c2", "ours-int8-c2", "openvino-int8-c2"]
    assert rows[1].env == (("DTYPE", "int8"), ("ALLOW_INT8", "1"))
    assert [r.engine for r in parse_args(["--no-ours", "--formats", ""]).rows] == \
        ["llama.cpp"] * 3


@pytest.mark.parametrize("text", ["int8", "=DTYPE=int8", "x=DTYPE"])
def test_a_malformed_variant_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="variant"):
        parse_variant(text)


@pytest.mark.parametrize("text", ["", "0,8", "1,-2"])
def test_concurrency_must_be_positive(text: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_concurrency(text)


def test_rows_need_rounds_or_seconds() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
    assert plan_rows([1], [], [], ["fp16"]) == [EngineRow("openvino", "fp16", 1)]


def canned_requests() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three answers of 4 tokens (one short: 3) between t=100 and t=102, one 503."""
    requests = pd.DataFrame({
        "timestamp": [100.0, 100.5, 101.0, 101.0],
        "method": ["POST"] * 4,
        "status_code": [200, 200, 200, 503],
        "success": [True, True, True, False],
        "response_time_ms": [1000.0, 1000.0, 1000.0, 5.0],
        "completion_tokens": [4, 4, 3, None],
        "ttft_ms": [200.0, 300.0, 400.0, None]})
    memory = pd.DataFrame({"role": ["master", "worker", "total", "total"],
                           "pss_mb": [100.0, 500.0, 600.0, 650.0],
                           "rss_mb": [300.0, 700.0, 1000.0, 990.0]})
    return requests, memory


def test_a_served_row_counts_tokens_over_first_send_to_last_answer() -> None:
    requests, memory = canned_requests()
    r = from_requests(EngineRow("ours", "auto", 3), requests, memory, new_tokens=4)
    assert (r.served, r.refused, r.failed, r.short_answers) == (3, 1, 0, 1)
    assert r.output_tokens == 11 and r.elapsed_s == pytest.approx(2.0)
    assert r.output_tokens_per_s == pytest.approx(5.5) and r.ttft_p50_s == pytest.approx(0.3)
    assert (r.peak_pss_mb, r.peak_rss_mb) == (650.0, 1000.0)


def driver_result(**changes) -> dict:
    result = driver.Result(driver.SCHEMA, "openvino", "/ir", 8, 2, 0.0, 64, 128, 2,
                           requests_served=16, output_tokens=2048, elapsed_s=20.0,
                           output_tokens_per_s=102.4, ttft_p50_s=0.5, peak_rss_mb=900.0,
                           peak_pss_mb=880.0)
    return {**asdict(result), **changes}


def test_the_driver_result_becomes_an_in_process_row() -> None:
    r = from_driver(EngineRow("openvino", "int8", 8), driver_result())
    assert (r.served, r.refused, r.output_tokens, r.output_tokens_per_s) == (16, 0, 2048, 102.4)
    assert r.in_process and r.ttft_p50_s == 0.5 and r.peak_pss_mb == 880.0
    assert math.isnan(from_driver(EngineRow("openvino", "int8", 8),
                                  driver_result(ttft_p50_s=None)).ttft_p50_s)


def test_the_table_shows_every_row_and_each_skip_reason_once() -> None:
    requests, memory = canned_requests()
    rows = [from_requests(EngineRow("ours", "auto", 3), requests, memory, 4),
            skipped(EngineRow("llama.cpp", "f16", 1), "no build; run X"),
            skipped(EngineRow("llama.cpp", "f16", 8), "no build; run X"),
            from_driver(EngineRow("openvino", "fp16", 8), driver_result())]
    text = render(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| engine | variant | c | output tok/s | TTFT p50 s")
    assert "| ours | auto | 3 | 5.5 | 0.30 | 3 | 1 | 0 | 650 | 1,000 | 1 short answers |" in text
    assert "| openvino | fp16 | 8 | 102.4 | 0.50 | 16 | 0 | 0 | 880 | 900 | in-process" in text
    assert text.count("skipped [1]") == 2 and text.count("[1] no build; run X") == 1
    back = read_json(json.dumps(to_json(rows)))
    assert back[1].skipped == rows[1].skipped and math.isnan(back[1].output_tokens_per_s)
    assert back[0].output_tokens_per_s == rows[0].output_tokens_per_s
    assert to_json(rows)[1]["output_tokens_per_s"] is None


def test_driver_options_round_trip_from_the_bench_command(tmp_path: Path) -> None:
    cmd = ov.driver_command(tmp_path, "gpt2", "int8", tmp_path / "ids.jsonl", 32, 2, 0.0,
                            128, 2, tmp_path / "result.json")
    assert cmd[:2] == [str(tmp_path / "venv/bin/python"), str(ov.DRIVER)]
    args = driver.parse_args(cmd[2:])
    assert args.ir == tmp_path / "ir" / "synthetic-gpt2-int8"
    assert (args.concurrency, args.rounds, args.new_tokens, args.threads) == (32, 2, 128, 2)
    with pytest.raises(SystemExit):
        driver.parse_args(["--ir", "x", "--prompts", "y", "--rounds", "0"])
    with pytest.raises(ValueError, match="fp16, int8"):
        ov.ir_path(tmp_path, "gpt2", "q4")


def test_driver_reads_prompt_ids_and_sizes_its_cache(tmp_path: Path) -> None:
    (tmp_path / "ids.jsonl").write_text('{"ids": [1, 2, 3]}\n\n{"ids": [4, 5, 6]}\n')
    assert driver.read_prompts(tmp_path / "ids.jsonl") == [[1, 2, 3], [4, 5, 6]]
    (tmp_path / "config.json").write_text('{"n_layer": 36, "n_embd": 1280}')
    # gpt2-large, 32 rows x 192 positions, fp16 K and V: 1.05 GB, + 25% -> 2 GB
    assert driver.cache_gb(tmp_path, 32, 192) == 2.0
    assert driver.cache_gb(tmp_path, 1, 192) == 1.0
    assert set(driver.memory_mb()) >= {"rss_mb", "pss_mb", "peak_rss_mb"}


def test_missing_builds_skip_their_rows_naming_the_build(tmp_path: Path) -> None:
    args = argparse.Namespace(preset="gpt2", llama_dir=tmp_path / "llama",
                              ov_dir=tmp_path / "ov", prompt_tokens=64, new_tokens=128,
                              slot_ctx=0, threads=2, rounds=1, seconds=0.0)
    commands = Commands(tmp_path / "commands.sh", "engines", [])
    llama = run_llama(args, EngineRow("llama.cpp", "f16", 8), tmp_path / "r1", commands,
                      tmp_path / "p.jsonl")
    assert llama.skipped.startswith("llama.cpp not built")
    assert f"LLAMA_DIR={tmp_path / 'llama'} bash bench/build_llama_reference.sh gpt2" in \
        llama.skipped
    openvino = run_openvino(args, EngineRow("openvino", "int8", 8), tmp_path / "r2", commands,
                            tmp_path / "ids.jsonl")
    assert "synthetic-gpt2-int8/openvino_model.xml" in openvino.skipped
    assert f"OV_DIR={tmp_path / 'ov'} bash bench/build_openvino_reference.sh gpt2" in \
        openvino.skipped
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    assert "ov/venv/bin/python" in openvino.skipped
    for path in (ov.venv_python(args.ov_dir), ov.ir_path(args.ov_dir, "gpt2", "int8")
                 / "openvino_model.xml"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert ov.missing(args.ov_dir, "gpt2", "int8") == ""


@pytest.mark.tool  # a whole-server run: `make test-tools`, not `make test`
def test_our_rows_run_on_the_tiny_model_and_the_others_are_skipped(tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "engines"
    run = run_script(
        [sys.executable, "-m", "bench", "engines", "--preset", "tiny", "--models-dir",
         MODELS_DIR, "--concurrency", "1,2", "--rounds", "1", "--new-tokens", "16",
         "--formats", "fp16", "--llama-dir", str(tmp_path / "nollama"),
         "--ov-dir", str(tmp_path / "noov"), "--out", str(out)],
        cwd=REPO, env=locust_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads((out / "engines.json").read_text())["rows"]}
    assert list(rows) == ["ours-auto-c1", "ours-auto-c2", "llama.cpp-f16-c1",
                          "llama.cpp-f16-c2", "openvino-fp16-c1", "openvino-fp16-c2"]
    for name, served in (("ours-auto-c1", 1), ("ours-auto-c2", 2)):
        row = rows[name]
        assert (row["served"], row["refused"], row["failed"]) == (served, 0, 0)
        assert row["output_tokens"] == 16 * served and row["short_answers"] == 0
        assert row["output_tokens_per_s"] > 0 and row["ttft_p50_s"] > 0
        assert row["peak_pss_mb"] > 0
    assert "build_llama_reference.sh tiny" in rows["llama.cpp-f16-c1"]["skipped"]
    assert "build_openvino_reference.sh tiny" in rows["openvino-fp16-c2"]["skipped"]
    requests = pd.read_csv(out / "02-ours-auto-c2" / "requests.csv")
    assert set(requests["route"]) == {"/v1/completions"} and set(requests["stream"]) == {1}
    assert set(requests["prompt_tokens"]) == {64} and set(requests["completion_tokens"]) == {16}
    table = (out / "table.md").read_text()
    assert "CPU: " in table and "in-process" in table and "skipped [1]" in table
    assert "CompletionsLoopUser" in (out / "commands.sh").read_text()
