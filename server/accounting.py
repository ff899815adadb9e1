"""Per-request bookkeeping: request id, timings, worker memory headers and the log record."""

from __future__ import annotations

import os
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request

from server.memory import current_rss_mb

# Echo a client's request id only if it is short and plain (it ends up in logs and headers).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes are not requests to account for: a load balancer polls them all day.
UNLOGGED_PATHS = frozenset({"/health", "/ready", "/metrics"})


def _begin() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    g.started_at = time.monotonic()
    g.rss_start_mb = current_rss_mb()


def _finish(response: Response) -> Response:
    service = current_app.extensions["model_service"]
    memory = service.memory()
    job = g.get("job")
    queue_ms = job.queue_ms if job else 0.0
    inference_ms = job.inference_ms if job else 0.0
    batch_size = job.batch_size if job else 0
    response.headers.update({
        "X-Request-ID": g.request_id,
        "X-Worker-PID": str(os.getpid()),
        "X-Worker-RSS-MB": f"{memory.rss_mb:.1f}",
        "X-Worker-USS-MB": f"{memory.uss_mb:.1f}",
        "X-Worker-PSS-MB": f"{memory.pss_mb:.1f}",
        "X-Queue-Ms": f"{queue_ms:.1f}",
        "X-Inference-Ms": f"{inference_ms:.1f}",
        "X-Batch-Size": str(batch_size),
    })
    # A streamed body is still being generated: its record is written when it ends.
    if request.path not in UNLOGGED_PATHS and not g.get("log_when_stream_ends"):
        _log_record(service, response.status_code, memory, queue_ms, inference_ms, batch_size)
    return response


def log_streamed(status: int) -> None:
    """Write the record of a streamed request as its body ends (in its request context)."""
    service = current_app.extensions["model_service"]
    job = g.get("job")
    _log_record(service, status, service.memory(), job.queue_ms if job else 0.0,
                job.inference_ms if job else 0.0, job.batch_size if job else 0)


def _log_record(service, status, memory, queue_ms, inference_ms, batch_size) -> None:
    elapsed_s = time.monotonic() - g.started_at
    # The matched rule, not the raw path: a scanner's random URLs must not mint new series.
    route = request.url_rule.rule if request.url_rule else "<unmatched>"
    current_app.extensions["metrics"].observe_request(
        route, status, elapsed_s, g.get("completion_tokens") or 0)
    rss_end_mb = current_rss_mb()
    peak = service.sampler.peak_rss_mb(g.started_at) if service.sampler else 0.0
    service.request_log.write({
        "ts": round(time.time(), 3),
        "request_id": g.request_id,
        "route": route,
        "status": status,
        "key_id": g.get("key_id"),
        "worker_pid": os.getpid(),
        "prompt_tokens": g.get("prompt_tokens"),
        "completion_tokens": g.get("completion_tokens"),
        "batch_size": batch_size,
        "queue_ms": round(queue_ms, 2),
        "inference_ms": round(inference_ms, 2),
        "total_ms": round(elapsed_s * 1000.0, 2),
        "rss_mb": round(memory.rss_mb, 1),
        "uss_mb": round(memory.uss_mb, 1),
        "pss_mb": round(memory.pss_mb, 1),
        "rss_delta_mb": round(rss_end_mb - g.rss_start_mb, 2),
        "rss_peak_mb": round(max(peak, rss_end_mb, g.rss_start_mb), 1),
        "sys_available_mb": round(memory.sys_available_mb, 1),
    })


def init_app(app: Flask) -> None:
    """Tag every request with an id and every response with timings and worker memory."""
    app.before_request(_begin)
    app.after_request(_finish)
