"""Users that stream: the three task routes with ``"stream": true``, timed token by token.

``StreamsAnswers`` is the shared behaviour (a mixin for ``LabUser`` subclasses): it sends a
``stream=True`` request, reads the SSE answer as it arrives (``locustfiles.sse``), and

* reports the request itself with its **end-to-end** time as the response time, its TTFB,
  TTFT, TPOT, chunk gaps and the server's ``usage`` in the request context (requests.csv
  columns, see ``request_recorder``);
* fires separate ``TTFB``, ``TTFT`` and ``TPOT`` entries (request type = the metric, name =
  the route) for successful answers, so Locust's stats table, charts and CSVs show them.
  They carry ``context["metric"]``; the request recorder leaves them out of requests.csv.
  Note that Locust's "Aggregated" row then counts these entries too.

A failed stream: a non-2xx status (as for the other users), an ``{"error": ...}`` event, a
connection lost mid-stream, no ``[DONE]``, or no text at all.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import requests
from locust.clients import ResponseContextManager

from locustfiles.failures import BadBody, GenerationTimeout, RequestFailure, failure_for_status
from locustfiles.sse import StreamTiming, TextOf, read_stream, task_text
from locustfiles.users import PromptUser, QAUser, SummarizeUser

METRICS = ("TTFB", "TTFT", "TPOT")


class StreamBroken(RequestFailure):
    """The connection failed after the headers, in the middle of the stream."""

    reason = "connection_error"


def timing_context(timing: StreamTiming) -> dict[str, Any]:
    """The request-context fields the request recorder writes for a streamed answer."""
    gaps = timing.chunk_gaps_ms
    return {
        "stream": 1, "ttfb_ms": timing.ttfb_ms, "ttft_ms": timing.ttft_ms,
        "tpot_ms": timing.tpot_ms, "chunks": timing.text_chunks,
        "max_chunk_gap_ms": max(gaps) if gaps else None,
        "chunk_gaps_ms": " ".join(f"{gap:.1f}" for gap in gaps),
        "usage": timing.usage,
    }


def stream_failure(timing: StreamTiming) -> RequestFailure | None:
    """Why a fully read stream counts as failed, or None if it is a good answer."""
    if timing.error is not None:
        code = str(timing.error.get("code") or timing.error.get("type") or "")
        if code == "generation_timeout":
            return GenerationTimeout("stream ended with generation_timeout")
        return BadBody(f"stream ended with error {code}".strip())
    if not timing.done:
        return BadBody("stream ended without [DONE]")
    if not timing.text_chunks:
        return BadBody("stream carried no text")
    return None


def _error_failure(response: ResponseContextManager) -> RequestFailure:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    code = error.get("code") if isinstance(error, dict) else ""
    return failure_for_status(response.status_code, str(code or ""))


class StreamsAnswers:
    """Mixin for LabUser subclasses: POST a streamed request, time it, report it."""

    text_of: ClassVar[TextOf] = staticmethod(task_text)

    def send_streamed(self, route: str, ref: str, body: dict[str, Any]) -> StreamTiming | None:
        """POST ``body`` to ``route`` as a stream; report it and its metric entries."""
        request_id = f"{type(self).__name__}-{ref}"
        started = time.perf_counter()
        timing = None
        with self.client.post(route, json=body, name=route, stream=True,
                              headers={"X-Request-ID": request_id},
                              context={"request_id": request_id, "stream": 1},
                              timeout=self.request_timeout_s,
                              catch_response=True) as response:
            if response.status_code == 0:
                return None  # no response: Locust reports the connection error itself
            if not 200 <= response.status_code < 300:
                response.failure(_error_failure(response))
                return None
            ttfb_ms = (time.perf_counter() - started) * 1000.0
            try:
                timing = read_stream(response.iter_lines(), started, ttfb_ms, self.text_of)
            except requests.RequestException as error:
                response.request_meta["response_time"] = (time.perf_counter() - started) * 1e3
                response.failure(StreamBroken(f"stream broken: {type(error).__name__}"))
                return None
            meta = response.request_meta
            meta["response_time"] = timing.e2e_ms
            meta["response_length"] = len(timing.text.encode())
            meta["context"] = {**meta["context"], **timing_context(timing)}
            failure = stream_failure(timing)
            if failure is not None:
                response.failure(failure)
                return timing
            response.success()
        self.report_metrics(route, timing, {**self.context(), "request_id": request_id})
        return timing

    def report_metrics(self, route: str, timing: StreamTiming, context: dict[str, Any]) -> None:
        """Fire the TTFB / TTFT / TPOT entries of one good answer (those it has)."""
        values = dict(zip(METRICS, (timing.ttfb_ms, timing.ttft_ms, timing.tpot_ms),
                          strict=True))
        for metric, value in values.items():
            if value is not None:
                self.environment.events.request.fire(
                    request_type=metric, name=route, response_time=value, response_length=0,
                    exception=None, context={**context, "metric": metric})

    def send(self, ref: str, body: dict[str, Any]) -> None:
        """Send the task body with ``"stream": true`` (replaces LabUser.send)."""
        self.send_streamed(self.route, ref, {**body, "stream": True})


class StreamingPromptUser(StreamsAnswers, PromptUser):
    """PromptUser, reading its continuation token by token."""


class StreamingSummarizeUser(StreamsAnswers, SummarizeUser):
    """SummarizeUser, streamed."""


class StreamingQAUser(StreamsAnswers, QAUser):
    """QAUser, streamed."""
