"""Readers: real Locust headers become snake_case with units, N/A becomes NaN, elapsed_s."""

from __future__ import annotations

import json
import math

import pytest
from analysis_run_builders import START_TS, history_row, memory_rows, request_row

from analysis import readers
from analysis.run import load_run


@pytest.mark.parametrize(
    ("header", "column"),
    [
        ("95%", "p95_ms"),
        ("99.9%", "p99_9_ms"),
        ("100%", "p100_ms"),
        ("Requests/s", "requests_per_s"),
        ("Failures/s", "failures_per_s"),
        ("User Count", "user_count"),
        ("Median Response Time", "median_response_time_ms"),
        ("Total Average Response Time", "total_average_response_time_ms"),
        ("Average Content Size", "average_content_size_bytes"),
        ("Request Count", "request_count"),
        ("First Seen", "first_seen"),
    ],
)
def test_locust_headers_become_snake_case_with_units(header: str, column: str) -> None:
    assert readers.locust_column(header) == column


def test_history_reads_na_as_nan_and_counts_elapsed_from_run_start(write_run) -> None:
    folder = write_run(history=[history_row(2, 1, p50="N/A"), history_row(3, 2, p50=800)])
    history = readers.read_locust_history(folder / "locust_stats_history.csv", start_ts=START_TS)
    assert history["elapsed_s"].tolist() == [2.0, 3.0]
    assert math.isnan(history.loc[0, "p50_ms"]) and history.loc[1, "p50_ms"] == 800
    assert history["type"].tolist() == ["", ""]
    assert history["user_count"].tolist() == [1, 2]


def test_requests_types_and_times(write_run) -> None:
    rows = [
        request_row(4.0, response_time_ms=500),
        request_row(1.5, status_code=429, success=0, failure_reason="rate_limited"),
    ]
    folder = write_run(requests=rows)
    requests = readers.read_requests(folder / "requests.csv", start_ts=START_TS)
    assert requests["elapsed_s"].tolist() == [1.5, 4.0]  # sorted by start time
    assert requests["end_elapsed_s"].tolist() == [2.5, 4.5]
    assert requests["success"].tolist() == [False, True]
    assert requests["failure_reason"].tolist() == ["rate_limited", ""]
    assert requests["status_code"].tolist() == [429, 200]


def test_requests_without_server_headers_gets_empty_columns(tmp_path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text(
        "timestamp,route,status_code,response_time_ms,success,failure_reason\n"
        f"{START_TS},/generate-text,0,12.5,0,connection_error\n"
    )
    requests = readers.read_requests(path)
    assert requests.loc[0, "elapsed_s"] == 0.0  # no start given: first row is time zero
    assert requests.loc[0, "failure_reason"] == "connection_error"
    assert requests[["queue_ms", "worker_pss_mb", "batch_size"]].isna().all().all()


def test_memory_and_server_log_elapsed(write_run) -> None:
    folder = write_run(
        memory=memory_rows(10, [(101, 3100, 150, 1150)]),
        server_log=[{"t": 12.0, "route": "/generate-text", "status": 200, "rss_delta_mb": 1.5}],
    )
    memory = readers.read_memory(folder / "memory.csv", start_ts=START_TS)
    assert memory["role"].tolist() == ["total", "master", "worker"]  # sorted by pid
    assert set(memory["elapsed_s"]) == {10.0}
    log = readers.read_server_log(folder / "server_requests.jsonl", start_ts=START_TS)
    assert log.loc[0, "elapsed_s"] == 12.0 and log.loc[0, "rss_delta_mb"] == 1.5
    assert math.isnan(log.loc[0, "rss_peak_mb"])  # a field the line lacks is NaN, not an error


def test_missing_files_become_notes_not_errors(write_run) -> None:
    folder = write_run(requests=[request_row(1.0)])
    run = load_run(folder)
    missing = [
        "run.json", "memory.csv", "server_requests.jsonl", "locust_stats.csv",
        "locust_stats_history.csv", "locust_failures.csv", "locust_exceptions.csv",
    ]  # fmt: skip
    for name in missing:
        assert any(f"`{name}` is missing" in note for note in run.notes), name
    assert not any(note.startswith("`requests.csv`") for note in run.notes)
    assert run.memory.empty and run.server_log.empty
    assert run.start_ts == START_TS + 1.0  # no run.json: the earliest event is time zero
    assert run.label == "run"  # folder name when run.json has no label


def test_empty_or_garbled_file_is_a_note(write_run) -> None:
    folder = write_run(run={})
    (folder / "requests.csv").write_text("")
    (folder / "server_requests.jsonl").write_text('{"ts": 1, "route": \n')
    run = load_run(folder)
    assert any("`requests.csv` could not be read" in n for n in run.notes)
    assert any("`server_requests.jsonl` could not be read" in n for n in run.notes)
    assert run.requests.empty


def test_run_json_start_time_is_time_zero(write_run) -> None:
    folder = write_run(run={"label": "x"}, requests=[request_row(7.0)])
    run = load_run(folder)
    assert run.start_ts == START_TS
    assert run.requests.loc[0, "elapsed_s"] == pytest.approx(7.0)
    assert json.loads((folder / "run.json").read_text())["label"] == run.label == "x"
