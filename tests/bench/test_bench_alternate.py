"""bench alternate: the sending order, the paired summary, and one real run on tiny (our
Gunicorn alone: llama.cpp is never built in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import alternate
from bench.alternate import Answer, schedule, summarise


def test_every_side_once_a_round_and_the_first_side_rotates() -> None:
    assert list(schedule(["a", "b"], 3)) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"),
                                              (2, "a"), (2, "b")]
    order = list(schedule(["a", "b", "c"], 3))
    assert [name for r, name in order if r == 2] == ["c", "a", "b"]


def _answer(side: str, round_: int, latency_s: float, decode_ms: float,
            status: int = 200) -> Answer:
    return Answer(side, round_, status, 100, 0.5, latency_s, decode_ms)


def test_the_summary_pairs_each_round_and_takes_the_floor_from_the_probe_beside_it() -> None:
    answers = [_answer("ours", 0, 10.0, 80.0), _answer("llama", 0, 12.5, 100.0),
               _answer("llama", 1, 10.0, 80.0), _answer("ours", 1, 10.0, 80.0),
               _answer("ours", 2, 1.0, 1.0, status=503)]
    probes = [40.0, 40.0, 50.0, 50.0, 50.0]
    summary = summarise(answers, probes, weight_bytes=3.2e9)
    ours, llama = summary["ours"], summary["llama"]
    assert ours["requests"] == 2  # the 503 is not a measurement
    assert ours["tok_s"] == pytest.approx(10.0)
    # floor: 3.2 GB at 40 GB/s = 80 ms (100% of ours in round 0), at 50 GB/s 64 ms (80%)
    assert ours["floor_share"] == pytest.approx((1.0 + 0.8) / 2)
    assert llama["floor_share"] == pytest.approx((0.8 + 0.8) / 2)
    # rounds 0 and 1: ours/llama tok/s 10/8 and 10/10; decode speed 100/80 and 80/80
    assert llama["base"] == "ours"
    assert llama["base_tok_s_ratio"] == {"median": pytest.approx(1.125),
                                         "min": pytest.approx(1.0), "max": pytest.approx(1.25)}
    assert llama["base_decode_speed_ratio"]["max"] == pytest.approx(1.25)
    assert "base" not in ours


def test_a_run_on_tiny_writes_each_request_and_its_probe(tiny_model: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("MODELS_DIR", str(tiny_model.parent))
    out = tmp_path / "alt"
    code = alternate.main(["--preset", "tiny", "--models-dir", str(tiny_model.parent),
                           "--rounds", "2", "--new-tokens", "8", "--probe-s", "0.2",
                           "--quants", "", "--out", str(out)])
    assert code == 0
    lines = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert [(r["round"], r["side"], r["status"], r["tokens"]) for r in lines] == [
        (0, "ours", 200, 8), (1, "ours", 200, 8)]
    assert all(r["probe_gb_s"] > 0 and r["decode_ms_per_token"] > 0 for r in lines)
    record = json.loads((out / "alternate.json").read_text())
    assert record["summary"]["ours"]["requests"] == 2 and record["host"]["cpu_model"]
    assert "| ours | 2 |" in (out / "table.md").read_text()
