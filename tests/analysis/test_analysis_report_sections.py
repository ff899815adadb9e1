"""The "Streaming and goodput" section, the memory-header note, the TTFT/TPOT chart, the flags."""

from __future__ import annotations

import pytest
from analysis_run_builders import (
    PRE_STREAMING_HEADER,
    STREAMED_ROWS,
    history_row,
    request_row,
    streamed_row,
    write_csv,
)
from matplotlib.figure import Figure

from analysis.charts import plot_ttft_tpot
from analysis.cli import main
from analysis.config import AnalysisConfig
from analysis.findings import build_findings
from analysis.report import render_markdown
from analysis.run import load_run

CONFIG = AnalysisConfig(slo_ttft_ms=350, slo_tpot_ms=500, slo_e2e_ms=5000, slo_attainment=0.9)
NO_STREAMS = "No streamed requests in this run: TTFT/TPOT not measured"
NO_MEMORY = "The memory columns of `requests.csv`"


def section(text: str) -> str:
    """The "Streaming and goodput" section of a report."""
    return text.split("## Streaming and goodput")[1].split("\n## ")[0]


def test_section_quotes_goodput_and_attainment(write_run) -> None:
    text = render_markdown(build_findings(load_run(write_run(requests=STREAMED_ROWS)), CONFIG))
    body = section(text)
    assert NO_STREAMS not in text
    assert "6 streamed requests (5 successful)." in body
    assert "TTFT <= 350 ms, TPOT <= 500 ms, E2E <= 5,000 ms; SLO attainment >= 90.0%" in body
    # TTFT over all routes: 100 150 200 250 300 -> p50 200, p90 280, p95 290, p99 298.
    assert "| All routes | TTFT (ms) | 5 | 200.0 | 280.0 | 290.0 | 298.0 | 200.0 |" in body
    assert "| Good (succeeded and met every target) | 4 |" in body
    assert "| Missed: failed | 1 |" in body
    assert "| Missed: succeeded, TPOT over target | 1 |" in body
    # 4 good / 7.25 s = 0.552 req/s; (10 + 10 + 11 + 1) / 7.25 = 4.4 tokens/s; 4 / 6 good.
    assert "| Goodput | 0.552 req/s |" in body
    assert "| Good output tokens/s | 4.4 tokens/s |" in body
    assert "| SLO attainment | 66.7% (FAIL against 90.0%) |" in body
    assert "| SLO attainment | 0.900 | 0.667 | FAIL |" in text  # in the SLO verdicts too
    assert "SLO attainment was 0.667 against a target of 0.900" in text  # slo_missed fires


def test_section_shows_the_sweep_limit(write_run) -> None:
    # 2 -> 4 -> 6 users, 20 s each; windows [5, 20), [25, 40), [45, 60) after settling.
    history = [history_row(t, 2 * (t // 20 + 1)) for t in range(60)]
    # A streamed request every 2 s; from 40 s on, every other one waits 900 ms for its first
    # token (over the 350 ms target): t = 42, 46, 50, ...
    rows = [streamed_row(t, 900 if t >= 40 and t % 4 else 100, 1000, 10) for t in range(0, 60, 2)]
    f = build_findings(load_run(write_run(run={}, requests=rows, history=history)), CONFIG)
    body = section(render_markdown(f))
    # 6 users: t = 46 .. 58 is 7 requests; 46, 50, 54, 58 missed -> 3 / 7 = 42.9%.
    assert "| 2 | 7 | 7 | 100.0% | yes |" in body and "| 4 | 7 | 7 | 100.0% | yes |" in body
    assert "| 6 | 7 | 3 | 42.9% | no |" in body
    assert "Highest sweep step with SLO attainment >= 90.0%: 4 users." in body


@pytest.mark.parametrize(
    "header_rows",
    [
        pytest.param("pre-streaming", id="run from before streaming: no stream columns"),
        pytest.param("not-streamed", id="stream columns, every request stream=0"),
    ],
)
def test_section_notes_a_run_without_streamed_requests(write_run, header_rows) -> None:
    folder = write_run(run={})
    rows = [request_row(t, response_time_ms=800) for t in range(5)]
    if header_rows == "pre-streaming":
        write_csv(folder / "requests.csv", PRE_STREAMING_HEADER, rows)
    else:
        write_csv(folder / "requests.csv", [*rows[0], "stream"], [r | {"stream": 0} for r in rows])
    text = render_markdown(build_findings(load_run(folder), CONFIG))
    assert NO_STREAMS in section(text)
    assert "| SLO attainment |" not in text


def test_note_when_the_target_sends_no_memory_headers(write_run) -> None:
    blank = {"worker_pid": "", "worker_rss_mb": "", "worker_uss_mb": "", "worker_pss_mb": ""}
    rows = [streamed_row(t, 100, 1000, 10, **blank) for t in range(3)]
    folder = write_run(run={"target": "openai"}, requests=rows)
    notes = build_findings(load_run(folder), CONFIG).notes
    assert any(NO_MEMORY in n and "(`openai`) sends no memory headers" in n for n in notes)
    # This server's answers carry the headers: no such note.
    lab = write_run("lab", run={}, requests=[streamed_row(0, 100, 1000, 10)])
    assert not any(NO_MEMORY in n for n in build_findings(load_run(lab), CONFIG).notes)


def test_ttft_tpot_chart_draws_one_series_per_route_and_the_targets(write_run) -> None:
    requests = load_run(write_run(requests=STREAMED_ROWS)).requests
    ax = Figure().add_subplot()
    plot_ttft_tpot(ax, requests, 350, 500)
    # /answer-question: 1 point (its one-token answer has no TPOT), /generate-text: 3.
    assert [len(c.get_offsets()) for c in ax.collections] == [1, 3]  # routes sorted
    assert [line.get_label() for line in ax.lines] == ["TTFT target", "TPOT target"]
    assert ax.get_xlabel() == "time to first token, TTFT (ms)"
    # A target over 3x the largest value (TTFT 300 ms) is named, not drawn.
    far = Figure().add_subplot()
    plot_ttft_tpot(far, requests, 3000, 500)
    assert [line.get_label() for line in far.lines] == ["TPOT target"]
    assert [t.get_text() for t in far.texts] == ["TTFT target 3,000 ms off the scale"]
    empty = Figure().add_subplot()
    plot_ttft_tpot(empty, requests[requests["stream"] != 1])
    assert [t.get_text() for t in empty.texts] == ["no streamed requests with TTFT and TPOT"]


def test_cli_goodput_flags_override_run_json(write_run) -> None:
    folder = write_run(run={"slo": {"ttft_ms": 50}}, requests=STREAMED_ROWS)
    main([str(folder), "--no-html", "--slo-ttft-ms", "0", "--slo-attainment", "0.6"])
    body = section((folder / "report.md").read_text())
    assert "TTFT not checked, TPOT <= 500 ms" in body
    assert "| SLO attainment | 66.7% (PASS against 60.0%) |" in body
