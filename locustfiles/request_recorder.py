"""requests.csv: one row per request, the client's view plus the server's memory headers.

Modelled on Locust's ``locust.contrib.csv_request_logger.CsvRequestLogger``. Columns (units
in the names):

====================  ==============================================================
timestamp             request start, epoch seconds (float)
user_class            the Locust user class that sent it (from the request context)
method                HTTP method
route                 the request name (the route, e.g. /generate-text)
status_code           HTTP status; 0 = no response (connection error, client timeout)
response_time_ms      Locust's response time, ms
response_bytes        response body size, bytes
success               1 or 0
failure_reason        "" or rate_limited, overloaded, timeout, http_<code>, bad_body,
                      connection_error (see failures.py)
request_id            X-Request-ID (the user sends one; the server echoes it)
worker_pid            X-Worker-PID: the Gunicorn worker that served it
worker_rss_mb         X-Worker-RSS-MB: that worker's resident memory, MB
worker_uss_mb         X-Worker-USS-MB: its unique (private) memory, MB
worker_pss_mb         X-Worker-PSS-MB: its proportional share of memory, MB
queue_ms              X-Queue-Ms: time waiting for a batch slot, ms
inference_ms          X-Inference-Ms: time in the batched decode, ms
batch_size            X-Batch-Size: rows in the batch it ran in (0 = never reached it)
prompt_tokens         usage.prompt_tokens from the body (successes only)
completion_tokens     usage.completion_tokens from the body (successes only); for a
                      streamed answer, from the server's final usage event
stream                1 = streamed answer (SSE), 0 = whole JSON answer, "" = unknown
ttfb_ms               streamed: request start -> response headers, ms
ttft_ms               streamed: request start -> first event with text, ms
tpot_ms               streamed: (response_time_ms - ttft_ms) / (completion_tokens - 1), ms
chunks                streamed: events that carried text
max_chunk_gap_ms      streamed: longest gap between two text events, ms
chunk_gaps_ms         streamed: every gap between text events, ms, space-separated
workload_group        --workload: the request's prefix group (g0, g1 ...) or conversation
                      (<id>@<user>-<n>); "" for the other users
turn                  --workload chat: the turn in its conversation, 1 = first; "" otherwise
context_tokens        --workload: the prompt's tokens as the client counted them (served
                      tokenizer; message texts only, no chat template), tokens
cached_tokens         usage.prompt_tokens_details.cached_tokens (successes only): prompt
                      tokens the server copied from its prefix cache; "" = not reported
cpu_ms                X-CPU-Ms: core-ms of the worker's CPU charged to it (its share of
                      each step by tokens fed, server/engine/step_cost.py); whole
                      answers only (a stream's headers leave before its steps)
arrival_index         open-loop (--arrival): the request's index in the run's schedule
intended_ts           open-loop: when the schedule said to send it, epoch seconds
dispatch_lag_ms       open-loop: actual send (timestamp) - intended_ts, ms
pool_wait_ms          open-loop: the part of the lag spent waiting for a free user (every
                      user busy at intended_ts: the pool of -u users was exhausted), ms
intended_latency_ms   open-loop: dispatch_lag_ms + response_time_ms, i.e. latency measured
                      from the intended send time (no coordinated omission), ms
====================  ==============================================================

The five arrival columns are blank for closed-loop users (the default).

For a streamed answer response_time_ms is the end-to-end time (to the end of the stream)
and response_bytes the text received (see locustfiles/sse.py). The extra TTFB / TTFT / TPOT
entries the streaming users fire for Locust's stats (``context["metric"]``) are not rows.

Header values are copied as the server wrote them; a missing header is an empty cell.
Distributed runs: each Locust worker forwards its rows to the master in a custom message
(``MESSAGE``) about once a second and when its test stops; only the master writes the file.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from locustfiles.failures import failure_reason

# Open-loop arrival columns (locustfiles/arrivals.py), the last three computed here.
ARRIVAL_COLUMNS = ("arrival_index", "intended_ts", "dispatch_lag_ms", "pool_wait_ms",
                   "intended_latency_ms")
COLUMNS = (
    "timestamp", "user_class", "method", "route", "status_code", "response_time_ms",
    "response_bytes", "success", "failure_reason", "request_id", "worker_pid",
    "worker_rss_mb", "worker_uss_mb", "worker_pss_mb", "queue_ms", "inference_ms",
    "batch_size", "prompt_tokens", "completion_tokens", "stream", "ttfb_ms", "ttft_ms",
    "tpot_ms", "chunks", "max_chunk_gap_ms", "chunk_gaps_ms",
    "workload_group", "turn", "context_tokens", "cached_tokens",
    "cpu_ms",
    *ARRIVAL_COLUMNS,
)  # fmt: skip
# Columns of a streamed answer, copied from the request context the streaming users fill.
STREAM_COLUMNS = ("stream", "ttfb_ms", "ttft_ms", "tpot_ms", "chunks", "max_chunk_gap_ms",
                  "chunk_gaps_ms")
# Columns of a --workload request, copied from the context the workload users fill.
WORKLOAD_COLUMNS = ("workload_group", "turn", "context_tokens")

# Columns copied from response headers, in COLUMNS order.
HEADERS = {
    "worker_pid": "X-Worker-PID",
    "worker_rss_mb": "X-Worker-RSS-MB",
    "worker_uss_mb": "X-Worker-USS-MB",
    "worker_pss_mb": "X-Worker-PSS-MB",
    "queue_ms": "X-Queue-Ms",
    "inference_ms": "X-Inference-Ms",
    "batch_size": "X-Batch-Size",
}

MESSAGE = "gpt_lab_request_rows"


def _status_code(response: Any) -> int:
    try:
        return int(response.status_code or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def _usage(response: Any, status_code: int, context: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(prompt_tokens, completion_tokens, cached_tokens) from a 2xx JSON body or a stream's
    usage, else blanks; cached_tokens is blank when the server does not report it."""
    if not 200 <= status_code < 300:
        return "", "", ""
    try:
        # A streamed body has been consumed: its usage came in the context instead.
        usage = context["usage"] if context.get("stream") else response.json()["usage"]
        counts = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return "", "", ""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return *counts, cached if isinstance(cached, int) else ""


def _stream_cell(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 2) if isinstance(value, float) else value


def arrival_cells(context: Mapping[str, Any], start_time: float | None,
                  response_time: float | None) -> list[Any]:
    """The ARRIVAL_COLUMNS cells of a request: blanks unless an arrival sent it."""
    intended = context.get("intended_ts")
    if intended is None or start_time is None:
        return [""] * len(ARRIVAL_COLUMNS)
    lag_ms = (start_time - intended) * 1000.0
    total = round(lag_ms + response_time, 2) if response_time is not None else ""
    return [context.get("arrival_index", ""), round(intended, 6), round(lag_ms, 3),
            context.get("pool_wait_ms", ""), total]


def is_metric_event(context: Mapping[str, Any] | None) -> bool:
    """True for the TTFB / TTFT / TPOT stats entries (not requests: no row of their own)."""
    return bool(context and context.get("metric"))


def request_row(
    *,
    request_type: str,
    name: str,
    response_time: float | None,
    response_length: int | None,
    response: Any = None,
    context: Mapping[str, Any] | None = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Build one requests.csv row (a list in COLUMNS order) from a request event."""
    context = context or {}
    status_code = _status_code(response)
    headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    prompt_tokens, completion_tokens, cached_tokens = _usage(response, status_code, context)
    return [
        round(start_time, 6) if start_time is not None else "",
        context.get("user_class", ""),
        request_type,
        name,
        status_code,
        round(response_time, 2) if response_time is not None else "",
        response_length or 0,
        0 if exception is not None else 1,
        failure_reason(status_code, exception),
        headers.get("X-Request-ID") or context.get("request_id", ""),
        *(headers.get(header, "") for header in HEADERS.values()),
        prompt_tokens,
        completion_tokens,
        *(_stream_cell(context.get(column)) for column in STREAM_COLUMNS),
        *(_stream_cell(context.get(column)) for column in WORKLOAD_COLUMNS),
        cached_tokens,
        headers.get("X-CPU-Ms", ""),
        *arrival_cells(context, start_time, response_time),
    ]


@dataclass
class WorkerRam:
    """The latest per-request RAM figures one server worker reported in its headers."""

    worker_pid: str
    requests: int = 0
    rss_mb: float = 0.0
    uss_mb: float = 0.0
    pss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    last_request_id: str = ""


class RequestRecorder:
    """Write requests.csv (master or local runner); forward rows to the master (workers)."""

    def __init__(self, path: Path | str | None, *, forward_interval_s: float = 1.0) -> None:
        self.path = Path(path) if path else None
        self.forward_interval_s = forward_interval_s
        self.rows_written = 0
        self.workers: dict[str, WorkerRam] = {}
        # Called with each batch of rows written (e.g. the web UI's arrivals tab).
        self.row_listeners: list[Callable[[list[list[Any]]], None]] = []
        self._file = None
        self._writer = None
        self._outbox: list[list[Any]] = []
        self._runner: WorkerRunner | None = None
        self._forwarder: gevent.Greenlet | None = None

    def register(self, environment: Environment) -> None:
        """Listen to ``environment``'s request events (call once, from an ``init`` listener)."""
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            self._runner = runner
            environment.events.request.add_listener(self._on_worker_request)
            environment.events.test_stop.add_listener(self.forward)
            self._forwarder = gevent.spawn(self._forward_loop)
        else:
            self._open()
            environment.events.request.add_listener(self._on_request)
            if isinstance(runner, MasterRunner):
                runner.register_message(MESSAGE, self._on_rows_message)
        environment.events.quitting.add_listener(self._on_quitting)

    def write_rows(self, rows: list[list[Any]]) -> None:
        """Append rows to the CSV and update the per-worker RAM summary."""
        if self._writer is None:
            return
        self._writer.writerows(rows)
        self._file.flush()  # rows survive a crash, as Locust's CsvRequestLogger does
        self.rows_written += len(rows)
        for row in rows:
            self._note_ram(row)
        for listener in self.row_listeners:
            listener(rows)

    def forward(self, **kwargs: Any) -> None:
        """Send the buffered rows to the master now (worker side)."""
        if self._outbox and self._runner is not None:
            rows, self._outbox = self._outbox, []
            self._runner.send_message(MESSAGE, rows)

    def close(self) -> None:
        """Flush and close the CSV (safe to call twice)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._file = self._writer = None

    def _open(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)
        self._file.flush()

    def _on_request(self, **kwargs: Any) -> None:
        if not is_metric_event(kwargs.get("context")):
            self.write_rows([request_row(**kwargs)])

    def _on_worker_request(self, **kwargs: Any) -> None:
        if not is_metric_event(kwargs.get("context")):
            self._outbox.append(request_row(**kwargs))

    def _on_rows_message(self, environment: Environment, msg: Any, **kwargs: Any) -> None:
        self.write_rows(msg.data)

    def _forward_loop(self) -> None:
        while True:
            gevent.sleep(self.forward_interval_s)
            self.forward()

    def _note_ram(self, row: list[Any]) -> None:
        values = dict(zip(COLUMNS, row, strict=True))
        pid = str(values["worker_pid"])
        if not pid:
            return
        try:
            rss, uss, pss = (float(values[k]) for k in
                             ("worker_rss_mb", "worker_uss_mb", "worker_pss_mb"))
        except ValueError:
            return
        ram = self.workers.setdefault(pid, WorkerRam(pid))
        ram.requests += 1
        ram.rss_mb, ram.uss_mb, ram.pss_mb = rss, uss, pss
        ram.peak_pss_mb = max(ram.peak_pss_mb, pss)
        ram.last_request_id = str(values["request_id"])

    def _on_quitting(self, **kwargs: Any) -> None:
        if self._forwarder is not None:
            self.forward()
            self._forwarder.kill(block=False)
        self.close()
