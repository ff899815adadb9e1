"""Per-request bookkeeping: request id, timings, worker memory headers and the log record.

``X-Request-ID`` goes on every response; the telemetry headers (worker memory, queue and
inference time, batch size, the request's CPU time ``X-CPU-Ms``) only to authenticated
callers (``RequestRecord.authenticated``, set by ``server.web.operator_auth`` once auth let
the request through): an unauthenticated
client must not watch the server's load move with other tenants' requests.

A request's facts travel in one typed ``RequestRecord`` (``record()``), created here when
the request begins, filled by auth (key id) and the generation pipeline (job, token
counts), and written to the request log once when the request ends: after the view for an
ordinary answer, when the body is closed for a stream (the tokens actually sent).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, Response, current_app, g, request

from server.engine.jobs import Job
from server.engine.memory import MemorySample, current_rss_mb
from server.web import routing

# Echo a client's request id only if it is short and plain (it ends up in logs and headers).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class RequestRecord:
    """What one request did, as the request log and the response headers report it."""

    request_id: str
    started_at: float  # time.monotonic()
    rss_start_mb: float
    route: str  # the matched rule, not the raw path: random URLs must not mint new series
    key_id: str | None = None
    operator: bool = False  # the operator credential was presented (server.web.operator_auth)
    authenticated: bool = False  # a tenant key, the operator key or ALLOW_ANONYMOUS: telemetry
    job: Job | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    streamed: bool = False  # the body is still generating when the view returns
    _on_end: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def queue_ms(self) -> float:
        """Time the generation waited for a batch slot (0 without one)."""
        return self.job.queue_ms if self.job else 0.0

    @property
    def inference_ms(self) -> float:
        """Time the generation spent in the running batch (0 without one)."""
        return self.job.inference_ms if self.job else 0.0

    @property
    def batch_size(self) -> int:
        """Rows in the running batch when the generation joined it (0 without one)."""
        return self.job.batch_size if self.job else 0

    @property
    def cpu_ms(self) -> float:
        """Core-ms of the worker's CPU its steps were charged (server.engine.step_cost)."""
        return self.job.cpu_s * 1000.0 if self.job else 0.0

    def cpu_ms_per_token(self) -> float | None:
        """cpu_ms per output token (None without output tokens)."""
        tokens = self.completion_tokens or 0
        return round(self.cpu_ms / tokens, 3) if tokens > 0 else None

    def end(self) -> None:
        """A streamed body ended (last event sent, or the client left): log it, once."""
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()


def record() -> RequestRecord:
    """This request's record (created before any other hook runs)."""
    return g.record


def _begin() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.record = RequestRecord(
        request_id=given if _REQUEST_ID.match(given) else uuid.uuid4().hex,
        started_at=time.monotonic(), rss_start_mb=current_rss_mb(),
        route=request.url_rule.rule if request.url_rule else "<unmatched>")


def _finish(response: Response) -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    rec = record()
    response.headers["X-Request-ID"] = rec.request_id
    if rec.authenticated:
        response.headers.update(_telemetry(app.extensions["model_service"].memory(), rec))
    if not routing.current().logged:
        return response
    status, error = response.status_code, g.get("error_code")
    if rec.streamed:  # written when the stream ends (or is closed unstarted)
        rec._on_end = lambda: _write(app, rec, status, error)
        response.call_on_close(rec.end)
    else:
        _write(app, rec, status, error)
    return response


def _telemetry(memory: MemorySample, rec: RequestRecord) -> dict[str, str]:
    """The per-request telemetry headers: serving worker, its memory, queue and batch, and
    (a whole answer only: a stream's headers leave before its steps) its CPU time."""
    cpu = {} if rec.streamed else {"X-CPU-Ms": f"{rec.cpu_ms:.2f}"}
    return {**cpu,
        "X-Worker-PID": str(os.getpid()),
        "X-Worker-RSS-MB": f"{memory.rss_mb:.1f}",
        "X-Worker-USS-MB": f"{memory.uss_mb:.1f}",
        "X-Worker-PSS-MB": f"{memory.pss_mb:.1f}",
        "X-Queue-Ms": f"{rec.queue_ms:.1f}",
        "X-Inference-Ms": f"{rec.inference_ms:.1f}",
        "X-Batch-Size": str(rec.batch_size),
    }


def _write(app: Flask, rec: RequestRecord, status: int, error: str | None = None) -> None:
    # Runs in or after the request context (a stream's close): uses only what it is given.
    service = app.extensions["model_service"]
    elapsed_s = time.monotonic() - rec.started_at
    app.extensions["metrics"].observe_request(rec.route, status, elapsed_s,
                                              rec.completion_tokens or 0, error)
    memory = service.memory()
    rss_end_mb = current_rss_mb()
    peak = service.sampler.peak_rss_mb(rec.started_at) if service.sampler else 0.0
    service.request_log.write({
        "ts": round(time.time(), 3),
        "request_id": rec.request_id,
        "route": rec.route,
        "status": status,
        "key_id": rec.key_id,
        "worker_pid": os.getpid(),
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "batch_size": rec.batch_size,
        "queue_ms": round(rec.queue_ms, 2),
        "inference_ms": round(rec.inference_ms, 2),
        "total_ms": round(elapsed_s * 1000.0, 2),
        "rss_mb": round(memory.rss_mb, 1),
        "uss_mb": round(memory.uss_mb, 1),
        "pss_mb": round(memory.pss_mb, 1),
        "rss_delta_mb": round(rss_end_mb - rec.rss_start_mb, 2),
        "rss_peak_mb": round(max(peak, rss_end_mb, rec.rss_start_mb), 1),
        "kv_kept_mb": round(service.kept_kv_mb(), 2),
        "sys_available_mb": round(memory.sys_available_mb, 1),
        "cpu_ms": round(rec.cpu_ms, 3),
        "cpu_ms_per_token": rec.cpu_ms_per_token(),
        "error": error,
    })


def init_app(app: Flask) -> None:
    """Tag every request with an id, and authenticated callers' answers with telemetry."""
    app.before_request(_begin)
    app.after_request(_finish)
