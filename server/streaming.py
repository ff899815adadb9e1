"""Server-sent events: a generation's text sent token by token as each batched step ends.

The flow of one streamed request: the view submits a Job with a ``stream`` queue and calls
``open_stream``, which waits for the first token *before* the response starts, so a full
queue, a timeout in the queue or a failed batch is still an ordinary HTTP error with its
status. Then the body is an SSE stream (``data: <json>`` events, ``data: [DONE]`` last);
each generated token's new text is sent as soon as the generation thread hands it over.

A client that disconnects closes the body iterator (Gunicorn does so when a write fails;
Werkzeug's test client on ``close()``): the generator's ``finally`` marks the job cancelled,
so the batch drops it at the next step and its slot is free. The request-log record of a
streamed request is written when the stream ends (``accounting.log_streamed``), with the
tokens actually sent.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Response, current_app, g, stream_with_context

from server import accounting
from server.errors import APIError, error_body
from server.jobs import Job

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying ``data`` as compact JSON."""
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


class TextDeltas:
    """Incremental detokenization: the new text each token adds, never half a character.

    Byte-level BPE splits multi-byte characters across tokens; decoding such a prefix ends in
    U+FFFD. The decoded text is held back until the character completes, so the deltas
    joined equal ``tokenizer.decode(all tokens)`` exactly.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        """Add ``token``; return the text not yet sent ("" while a character is incomplete)."""
        self.token_ids.append(token)
        text = self._decode()
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """The text still held back at the end (an incomplete character stays U+FFFD)."""
        return self._advance(self._decode()) if self.token_ids else ""

    def _decode(self) -> str:
        return self._tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def _advance(self, text: str) -> str:
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text if text.startswith(self.sent) else self.sent
        return delta


@dataclass
class StreamedGeneration:
    """What a finished stream produced: text deltas already sent, and how it ended."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"


def _next_token(job: Job, deadline: float) -> int | None:
    try:
        return job.stream.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        job.cancelled = True  # the generation thread drops it at the next token
        raise APIError(504, "generation_timeout", "generation did not finish within "
                       f"{current_app.config['REQUEST_TIMEOUT_S']} s") from None


def _failed(job: Job) -> APIError:
    return APIError(500, "generation_failed", "generation failed")


def open_stream(job: Job, tokenizer: Any,
                render: Callable[[Iterator[str], StreamedGeneration], Iterator[str]]) -> Response:
    """Wait for ``job``'s first token, then stream the events ``render`` makes of its text.

    ``render(deltas, outcome)`` gets an iterator of text deltas and yields SSE strings; once
    the deltas are exhausted, ``outcome`` holds the token ids and finish reason. Errors
    before the first token raise APIError (a normal error response); later ones end the
    stream with a ``data: {"error": {...}}`` event (the route's error shape), then [DONE].
    """
    deadline = time.monotonic() + current_app.config["REQUEST_TIMEOUT_S"]
    first = _next_token(job, deadline)
    if first is None and job.error is not None:
        raise _failed(job)
    outcome = StreamedGeneration()
    deltas = TextDeltas(tokenizer)
    g.completion_tokens = 0

    def token_texts() -> Iterator[str]:
        token = first
        while token is not None:
            g.completion_tokens = len(deltas.token_ids) + 1
            text = deltas.push(token)
            if text:
                yield text
            token = _next_token(job, deadline)
        if job.error is not None:
            raise _failed(job)
        tail = deltas.flush()
        if tail:
            yield tail
        outcome.token_ids = list(deltas.token_ids)
        outcome.finish_reason = job.result.finish_reason

    def body() -> Iterator[str]:
        try:
            yield from render(token_texts(), outcome)
        except APIError as error:  # the status line is gone: report it in the stream
            yield sse({"error": error_body(error.status, error.code, error.message)}) + DONE
        finally:
            if job.finished_at is None:
                job.cancelled = True  # client gone (or error): free the batch slot
            accounting.log_streamed(200)

    g.log_when_stream_ends = True
    response = Response(stream_with_context(body()), mimetype="text/event-stream")
    # No proxy buffering (nginx honours X-Accel-Buffering) and no caching of a live stream.
    response.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return response


def task_stream(job: Job, tokenizer: Any,
                summary: Callable[[StreamedGeneration], dict[str, Any]]) -> Response:
    """Stream a task route's answer as SSE.

    Events: ``{"text": "<new text>"}`` per token that completes some text; then one
    ``{"text": "", **summary}`` (the task answer's other fields: model, finish_reason, usage,
    timings_ms); then ``[DONE]``. A failure after the first token is a
    ``{"error": {"code", "message"}}`` event, then ``[DONE]``.
    """
    def render(deltas: Iterator[str], outcome: StreamedGeneration) -> Iterator[str]:
        for text in deltas:
            yield sse({"text": text})
        yield sse({"text": "", **summary(outcome)})
        yield DONE

    return open_stream(job, tokenizer, render)
