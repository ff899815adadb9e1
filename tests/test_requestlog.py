"""The request log: one whole JSON line per request, across workers, under concurrency."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from harness.gunicorn_process import GunicornServer
from server.engine.requestlog import FIELDS, RequestLog
from tests.conftest import server_env


def test_200_concurrent_requests_give_200_whole_lines(tiny_model: Path, tmp_path: Path,
                                                      api_headers) -> None:
    log_path = tmp_path / "server_requests.jsonl"
    env = server_env(tmp_path, MAX_QUEUE="256", GUNICORN_THREADS="32", GUNICORN_ACCESSLOG="")
    with GunicornServer(tmp_path, env, workers=2) as server:
        def post(i: int) -> requests.Response:
            body = {"prompt": f"Line {i} of the log " + "x" * (i % 50), "max_new_tokens": 2}
            return requests.post(f"{server.url}/generate-text", json=body, headers=api_headers,
                                 timeout=120)

        with ThreadPoolExecutor(200) as pool:
            responses = list(pool.map(post, range(200)))
    assert [r.status_code for r in responses] == [200] * 200
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 200
    assert all(list(record) == list(FIELDS) for record in records)
    assert {r["request_id"] for r in records} == {r.headers["X-Request-ID"] for r in responses}
    assert len({r["worker_pid"] for r in records}) == 2
    assert all(r["pss_mb"] > 0 and r["rss_mb"] >= r["pss_mb"] for r in records)


def test_unwritable_log_is_counted_and_logged_once(tmp_path: Path, caplog) -> None:
    errors = []
    log = RequestLog(str(tmp_path / "missing-dir-is-a-file" / "log.jsonl"),
                     on_error=lambda: errors.append(1))
    (tmp_path / "missing-dir-is-a-file").write_text("not a folder")
    for _ in range(3):
        log.write({"request_id": "r"})
    assert log.write_errors == 3 and len(errors) == 3
    assert sum("not writable" in r.getMessage() for r in caplog.records) == 1


def test_a_record_says_what_the_kept_prefix_rows_hold(tmp_path: Path) -> None:
    """kv_kept_mb: the worker's kept rows' positions x one position's bytes, in MiB; the
    same prompt twice leaves one entry of the same length whichever keep came first."""
    from tests.conftest import build_app

    for rows in (4, 0):
        log_path = tmp_path / f"rows{rows}.jsonl"
        app = build_app(log_path, PREFIX_CACHE_ROWS=rows)
        client = app.test_client()
        for _ in range(2):
            body = {"prompt": "The kept rows of a worker, counted in the log. " * 3,
                    "max_new_tokens": 3}
            assert client.post("/generate-text", json=body).status_code == 200
        service = app.extensions["model_service"]
        held = service.scheduler.prefixes.positions
        last = json.loads(log_path.read_text().splitlines()[-1])
        assert last["kv_kept_mb"] == round(held * service.position_bytes / 2**20, 2)
        assert (held > 0 and last["kv_kept_mb"] > 0) if rows else last["kv_kept_mb"] == 0.0
