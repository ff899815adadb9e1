"""Streaming and OpenAI-API users end to end on synthetic:tiny, each run 8 s of real load
(a user sends its first request as it starts and waits at most 5 s between requests; what
is asserted holds per answer and per route, not over a rate).

* ``--mix streaming`` through scripts/loadtest.py (the mix given as ``LOCUST_MIX``: the
  script has no flag for it): requests.csv times every streamed answer, Locust's stats get
  the TTFB/TTFT/TPOT entries, and the report's "Streaming and goodput" section has numbers.
* ``--target openai`` against our server behind foreign_server.ForeignServer (a proxy that
  drops our X-* headers, as vLLM & co. send none): only the OpenAI users run, no memory.csv,
  empty memory columns, and the report says the memory headers are absent.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from analysis.report_sections import NO_STREAMS
from harness.gunicorn_process import REPO, GunicornServer
from harness.script_run import run_script
from tests.conftest import MODELS_DIR, TEST_API_KEY, server_env
from tests.locust.foreign_server import ForeignServer
from tests.locust_runs import locust_env, locust_totals, read_csv, read_jsonl, run_headless

STREAMING_CLASSES = {"StreamingPromptUser", "StreamingSummarizeUser", "StreamingQAUser",
                     "StreamingCompletionUser", "StreamingChatUser"}
OPENAI_CLASSES = {"CompletionUser", "ChatUser", "StreamingCompletionUser", "StreamingChatUser"}
STREAMED_ROUTES = {"/generate-text", "/summarize-text", "/answer-question", "/v1/completions",
                   "/v1/chat/completions"}
MEMORY_COLUMNS = ("worker_pid", "worker_rss_mb", "worker_uss_mb", "worker_pss_mb")
REPORT_METRICS = ("TTFT (ms)", "TPOT (ms)", "E2E (ms)", "Output tokens/s per user")


def run_env(**extra: str) -> dict[str, str]:
    """locust_env with the suite's user selection pinned (a stray LOCUST_MIX must not leak)."""
    return locust_env(**{"LOCUST_MIX": "tasks", "LOCUST_TARGET": "lab",
                         "LOCUST_OPENAI_MODEL": "", **extra})


def analyse(run_dir: Path) -> str:
    """Run ``python -m analysis`` on the folder; return report.md."""
    result = subprocess.run([sys.executable, "-m", "analysis", str(run_dir)], cwd=REPO,
                            env=run_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return (run_dir / "report.md").read_text()


def streaming_section(report: str) -> str:
    """The "## Streaming and goodput" section of report.md (up to the next ## heading)."""
    match = re.search(r"^## Streaming and goodput\n(.*?)(?=^## |\Z)", report, re.M | re.S)
    assert match, report
    return match.group(1)


def table_rows(section: str) -> list[list[str]]:
    """The cells of every Markdown table row in a section (header and rule rows included)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")]


def number(cell: str) -> float:
    """A report number ("1,038.7", "2.494 req/s") as a float."""
    return float(cell.split()[0].replace(",", ""))


def cell_float(row: dict[str, str], column: str) -> float | None:
    """A numeric requests.csv cell, None when empty."""
    return float(row[column]) if row[column] else None


def streamed_rows(run_dir: Path) -> list[dict[str, str]]:
    """The requests.csv rows of streamed answers."""
    return [r for r in read_csv(run_dir / "requests.csv") if r["stream"] == "1"]


def assert_streams_timed(rows: list[dict[str, str]], served: list[dict]) -> None:
    """Every streamed row succeeded and carries consistent timings and the server's tokens."""
    tokens_served = {s["request_id"]: s["completion_tokens"] for s in served}
    assert rows
    for row in rows:
        assert (row["success"], row["status_code"], row["failure_reason"]) == ("1", "200", "")
        ttfb, ttft, e2e = (float(row[c]) for c in ("ttfb_ms", "ttft_ms", "response_time_ms"))
        tokens, chunks = int(row["completion_tokens"]), int(row["chunks"])
        assert 0 < ttfb <= ttft <= e2e
        # Tokens are the server's count (its usage event = what it logged), not the chunks.
        assert tokens == tokens_served[row["request_id"]] > 0
        assert 1 <= chunks <= tokens
        gaps = [float(g) for g in row["chunk_gaps_ms"].split()]
        assert len(gaps) == chunks - 1
        if gaps:
            assert float(row["max_chunk_gap_ms"]) == pytest.approx(max(gaps), abs=0.06)
        if tokens >= 2:  # (E2E - TTFT) / (tokens - 1), from cells rounded to 0.01 ms
            assert float(row["tpot_ms"]) == pytest.approx((e2e - ttft) / (tokens - 1), abs=0.02)
        else:
            assert row["tpot_ms"] == ""


# --- --mix streaming through the run script ------------------------------------------------


@pytest.fixture(scope="module")
def stream_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 8-second run of scripts/loadtest.py: 5 users (one per streaming class), 1 worker."""
    run = tmp_path_factory.mktemp("streaming") / "run"
    result = run_script(
        [sys.executable, "scripts/loadtest.py", "--model", "synthetic:tiny", "--models-dir",
         MODELS_DIR, "--dtype", "float32", "--users", "5", "--spawn-rate", "5", "--duration",
         "8", "--workers", "1", "--torch-threads", "1", "--label", "stream-e2e", "--run-dir",
         str(run), "--stop-timeout", "30", "--no-analysis"],
        cwd=REPO, env=run_env(LOCUST_MIX="streaming"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run


def test_streaming_mix_streams_every_route(stream_run: Path) -> None:
    rows = read_csv(stream_run / "requests.csv")
    posts = [r for r in rows if r["method"] == "POST"]
    others = {(r["method"], r["route"], r["stream"]) for r in rows if r["method"] != "POST"}

    assert {r["user_class"] for r in rows} == STREAMING_CLASSES  # 5 users: one per class
    assert {r["route"] for r in posts} == STREAMED_ROUTES
    assert {r["stream"] for r in posts} == {"1"}
    assert others <= {("GET", "/v1/models", "")}  # the OpenAI users ask for the model name
    assert locust_totals(stream_run)[1] == 0 and {r["success"] for r in rows} == {"1"}
    served = read_jsonl(stream_run / "server_requests.jsonl")
    assert Counter(r["request_id"] for r in rows) == Counter(s["request_id"] for s in served)


def test_streamed_rows_have_ttft_tpot_and_the_servers_token_count(stream_run: Path) -> None:
    assert_streams_timed(streamed_rows(stream_run),
                         read_jsonl(stream_run / "server_requests.jsonl"))


def test_locust_stats_have_a_ttfb_ttft_tpot_entry_per_route(stream_run: Path) -> None:
    rows = streamed_rows(stream_run)
    stats = {(s["Type"], s["Name"]): s for s in read_csv(stream_run / "locust_stats.csv")}

    for route in STREAMED_ROUTES:
        answers = [r for r in rows if r["route"] == route]
        tpots = [float(r["tpot_ms"]) for r in answers if r["tpot_ms"]]
        counts = {kind: int(stats[kind, route]["Request Count"])
                  for kind in ("POST", "TTFB", "TTFT", "TPOT")}
        assert counts == {"POST": len(answers), "TTFB": len(answers), "TTFT": len(answers),
                          "TPOT": len(tpots)}, route
        # Locust's averages are of the very values requests.csv holds (there rounded to 0.01).
        mean_ttft = statistics.fmean(float(r["ttft_ms"]) for r in answers)
        assert float(stats["TTFT", route]["Average Response Time"]) == pytest.approx(
            mean_ttft, abs=0.01)
        if tpots:
            assert float(stats["TPOT", route]["Average Response Time"]) == pytest.approx(
                statistics.fmean(tpots), abs=0.01)
        assert {int(stats[kind, route]["Failure Count"]) for kind in counts} == {0}


def test_report_streaming_section_has_the_runs_numbers(stream_run: Path) -> None:
    rows = streamed_rows(stream_run)
    section = streaming_section(analyse(stream_run))
    latency = {(r[0], r[1]): r[2:] for r in table_rows(section) if len(r) == 8}
    goodput = {r[0]: r[1] for r in table_rows(section) if len(r) == 2}

    assert NO_STREAMS not in section
    assert f"{len(rows)} streamed requests ({len(rows)} successful)" in section
    for route in STREAMED_ROUTES:
        answers = [r for r in rows if r["route"] == route]
        with_tpot = sum(1 for r in answers if r["tpot_ms"])
        for metric in REPORT_METRICS:
            samples, *percentiles = latency[route, metric]
            assert int(samples) == (with_tpot if metric == "TPOT (ms)" else len(answers))
            assert all(number(p) >= 0 for p in percentiles), (route, metric, percentiles)
    ttft_p50 = number(latency["All routes", "TTFT (ms)"][1])
    assert ttft_p50 == pytest.approx(statistics.median(float(r["ttft_ms"]) for r in rows),
                                     rel=0.01)
    assert (goodput["Streamed requests"], goodput["Missed: failed"]) == (str(len(rows)), "0")
    assert number(goodput["Goodput"]) > 0 and number(goodput["Good output tokens/s"]) > 0


# --- --target openai: the OpenAI users against a server without our headers ----------------


@pytest.fixture(scope="module")
def openai_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s of ``--target openai`` (4 users: one per OpenAI class) through ForeignServer."""
    base = tmp_path_factory.mktemp("openai-target")
    run = base / "run"
    # The server's own log stays outside the run folder: a foreign server has none.
    env = server_env(base)
    with GunicornServer(base, env, workers=1) as server, ForeignServer(server.url) as foreign:
        # --mix streaming is overridden: against another server only the openai mix runs.
        result = run_headless(run, foreign.url, TEST_API_KEY, "--target", "openai", "--mix",
                              "streaming", "-u", "4", "-r", "4", "-t", "8s",
                              "--stop-timeout", "30")
    assert result.returncode == 0, (run / "locust.log").read_text()[-4000:]
    return run


def test_openai_target_runs_only_the_openai_users(openai_run: Path) -> None:
    rows = read_csv(openai_run / "requests.csv")
    served = read_jsonl(openai_run.parent / "server_requests.jsonl")
    posts = [r for r in rows if r["method"] == "POST"]

    assert {r["user_class"] for r in rows} == OPENAI_CLASSES
    assert {r["route"] for r in rows} == {"/v1/models", "/v1/completions",
                                          "/v1/chat/completions"}
    assert locust_totals(openai_run)[1] == 0 and {r["success"] for r in rows} == {"1"}
    for row in posts:
        assert row["stream"] == ("1" if row["user_class"].startswith("Streaming") else "0")
    streamed = [r for r in posts if r["stream"] == "1"]
    assert_streams_timed(streamed, served)
    # The proxy passes the stream on as it arrives: the first text is not the last.
    assert any(float(r["ttft_ms"]) < 0.5 * float(r["response_time_ms"]) for r in streamed)
    whole = [r for r in posts if r["stream"] == "0"]
    assert whole and all(int(r["completion_tokens"]) > 0 and r["ttft_ms"] == r["tpot_ms"] == ""
                         for r in whole)


def test_openai_target_samples_and_records_no_memory(openai_run: Path) -> None:
    rows = read_csv(openai_run / "requests.csv")

    assert not (openai_run / "memory.csv").exists()
    assert "--target openai: no server memory" in (openai_run / "locust.log").read_text()
    assert rows and all(r[column] == "" for r in rows for column in MEMORY_COLUMNS)
    # No X-Request-ID came back either: the ids are the ones the users sent.
    assert all(r["request_id"].startswith(r["user_class"]) for r in rows
               if r["method"] == "POST")


def test_openai_target_report_says_memory_headers_are_absent(openai_run: Path) -> None:
    report = analyse(openai_run)
    streamed = streamed_rows(openai_run)
    section = streaming_section(report)

    # run.json (written by the suite itself) names the target: the note quotes it.
    assert ("The memory columns of `requests.csv` (worker_rss_mb, worker_uss_mb, "
            "worker_pss_mb) are absent: the target (`") in report
    assert "sends no memory headers, so per-request worker memory is not measured" in report
    assert f"{len(streamed)} streamed requests ({len(streamed)} successful)" in section
    assert NO_STREAMS not in section
