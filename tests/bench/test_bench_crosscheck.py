"""python -m bench crosscheck: guidellm's JSON (a trimmed real output of guidellm 0.8.1 on
tiny) and our run folder read into one frame and summed the same way, the comparison and its
table, guidellm's command line; and one real run of both sides on the tiny model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.crosscheck import GUIDELLM
from bench.crosscheck_compare import Side, compare, render, summarize
from bench.crosscheck_read import guidellm_headline, read_guidellm, read_ours
from bench.crosscheck_runs import KEY_SHOWN, Load, Target, guidellm_command, guidellm_samples
from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR
from tests.locust_runs import locust_env

FIXTURE = REPO / "tests" / "fixtures" / "guidellm" / "constant-tiny.json"


def test_guidellm_requests_and_window_are_read_from_its_json() -> None:
    frame, (start, end) = read_guidellm(FIXTURE)
    assert end - start == pytest.approx(20.0)
    assert list(frame["status"]) == ["successful"] * 4 + ["incomplete"] * 2
    assert frame["start_ts"].min() == pytest.approx(start)
    assert list(frame["output_tokens"][:4]) == [64] * 4
    assert guidellm_headline(FIXTURE) == pytest.approx(
        {"own_output_tokens_per_s": 57.6, "own_ttft_p50_ms": 17.065}, abs=1e-3)


def test_requests_cut_at_the_window_end_count_as_unfinished_not_failed() -> None:
    side = summarize("guidellm", *read_guidellm(FIXTURE))
    assert (side.sent, side.completed, side.failed, side.unfinished) == (6, 4, 0, 2)
    assert side.output_tokens == 4 * 64  # the cancelled ones' partial tokens are left out
    assert side.output_tokens_per_s == pytest.approx(4 * 64 / 20.0)
    assert side.ttft_p50_ms == pytest.approx((11.4627 + 15.2194) / 2, abs=1e-3)


def write_our_run(folder: Path, start: float, rows: list[tuple[float, float, int, int, float]]
                  ) -> Path:
    """A run folder with run.json's arrival window [start, start + 10] and requests.csv rows
    (offset s, response ms, success, completion tokens, ttft ms)."""
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(
        {"arrivals": {"process": "constant", "start_ts": start, "stop_ts": start + 10.0}}))
    pd.DataFrame([{"timestamp": start + t, "method": "POST", "route": "/v1/completions",
                   "status_code": 200 if ok else 503, "response_time_ms": ms, "success": ok,
                   "failure_reason": "" if ok else "overloaded",
                   "completion_tokens": tokens if ok else None, "ttft_ms": ttft}
                  for t, ms, ok, tokens, ttft in rows]).to_csv(folder / "requests.csv",
                                                               index=False)
    return folder


def test_our_run_folder_is_summed_over_the_arrival_window(tmp_path: Path) -> None:
    run = write_our_run(tmp_path / "ours", 1000.0, [
        (0.0, 500.0, 1, 64, 20.0), (2.0, 500.0, 1, 64, 40.0), (4.0, 100.0, 0, 0, 30.0),
        (9.5, 900.0, 1, 64, 10.0),  # ends after stop_ts: unfinished in the window
    ])
    side = summarize("ours", *read_ours(run))
    assert (side.sent, side.completed, side.failed, side.unfinished) == (4, 2, 1, 1)
    assert side.output_tokens_per_s == pytest.approx(128 / 10.0)
    assert side.ttft_p50_ms == pytest.approx(30.0)


def test_a_run_folder_without_arrivals_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="arrivals"):
        read_ours(tmp_path)


def side(tps: float, ttft: float) -> Side:
    return Side("x", 10.0, 10, 10, 0, 0, int(tps * 10), tps, ttft, ttft * 2)


@pytest.mark.parametrize(("ours", "theirs", "agree"), [
    (side(30.0, 100.0), side(30.0, 100.0), True),
    (side(32.9, 109.0), side(30.0, 100.0), True),  # both within 10 %
    (side(30.0, 111.0), side(30.0, 100.0), False),  # TTFT 11 % above
    (side(26.9, 100.0), side(30.0, 100.0), False),  # tok/s 10.3 % below
    (side(30.0, math.nan), side(30.0, 100.0), False),  # no TTFT: no agreement
])
def test_agreement_needs_both_ratios_within_the_tolerance(ours: Side, theirs: Side,
                                                          agree: bool) -> None:
    result = compare(ours, theirs, tolerance=0.10)
    assert result.agree is agree
    assert result.output_tokens_per_s_ratio == pytest.approx(ours.output_tokens_per_s / 30.0)


def test_the_table_gives_ratios_the_verdict_and_a_busy_box_warning() -> None:
    busy = Side("ours", 10.0, 10, 10, 0, 0, 300, 30.0, 100.0, 200.0, other_cpu_share=0.4,
                steal_share=0.0)
    text = render(busy, side(30.0, 100.0), compare(busy, side(30.0, 100.0)))
    assert "| ours / guidellm |" in text and "1.000" in text
    assert "agree: **yes**" in text
    assert "other processes used 40% of the box's CPU" in text and "busy box" in text
    assert "x: other processes used not measured" in text


def test_guidellm_gets_the_same_load_and_never_the_hub() -> None:
    load = Load("poisson", 0.4, 180.0, 64, 64, seed=3)
    server = Target("http://127.0.0.1:8000", "secret", "synthetic:gpt2")
    cmd = guidellm_command(GUIDELLM, load, server, "/m/synthetic-gpt2", Path("g.json"),
                           KEY_SHOWN)
    text = " ".join(cmd)
    assert "--profile kind=poisson,rate=0.4" in text
    assert "kind=synthetic_text,prompt_tokens=64,output_tokens=64" in text
    assert "kind=max_duration,seconds=180" in text and "kind=static,value=3" in text
    assert "model=synthetic:gpt2,request_format=/v1/completions" in text
    assert "kind=huggingface_auto,model=/m/synthetic-gpt2" in text
    assert "secret" not in text and "api_key=<api-key>" in text
    assert guidellm_samples(load) >= 0.4 * 180 + 4 * math.sqrt(0.4 * 180)


@pytest.mark.tool  # a whole-server run: `make test-tools`, not `make test`
def test_both_sides_run_against_one_tiny_server(tiny_model: Path, tmp_path: Path) -> None:
    if not GUIDELLM.is_file():
        pytest.skip(f"guidellm 0.8.1 is not installed at {GUIDELLM} (set $GUIDELLM_BIN)")
    out = tmp_path / "crosscheck"
    run = run_script(
        [sys.executable, "-m", "bench", "crosscheck", "--preset", "tiny", "--models-dir",
         MODELS_DIR, "--rate", "1", "--duration", "8", "--output-tokens", "16",
         "--out", str(out)], cwd=REPO, env=locust_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((out / "comparison.json").read_text())
    for name in ("ours", "guidellm"):
        assert record[name]["completed"] > 0 and record[name]["failed"] == 0
        assert record[name]["output_tokens_per_s"] > 0 and record[name]["ttft_p50_ms"] > 0
    assert record["guidellm"]["own_output_tokens_per_s"] > 0
    assert set(record["comparison"]) >= {"ttft_p50_ratio", "output_tokens_per_s_ratio", "agree"}
    assert (out / "ours" / "requests.csv").exists()
    assert (out / "guidellm" / "guidellm.json").exists()
    assert "agree:" in (out / "comparison.md").read_text()
    commands = (out / "commands.sh").read_text()
    assert "guidellm run" in commands and "CompletionsLoopUser" in commands
    assert "api_key=<api-key>" in commands
