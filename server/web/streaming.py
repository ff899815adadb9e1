"""Server-sent events: a generation's text sent token by token as each batched step ends.

The flow of one streamed request: the view submits a Job with a ``stream`` queue and calls
``open_stream``, which waits for the first token *before* the response starts, so a full
queue, a timeout in the queue or a failed batch is still an ordinary HTTP error with its
status. Then the body is an SSE stream (``data: <json>`` events, ``data: [DONE]`` last);
each generated token's new text is sent as soon as the generation thread hands it over.

A client that disconnects closes the body iterator (Gunicorn does so when a write fails;
Werkzeug's test client on ``close()``): the generator's ``finally`` marks the job cancelled,
so the batch drops it at the next step and its slot is free. The request's record
(``server.web.accounting``) counts the tokens actually sent and is logged as the stream ends.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Response, current_app, stream_with_context
from tokenizers.decoders import DecodeStream

from server.engine.jobs import Job
from server.web.accounting import record
from server.web.errors import APIError, error_body
from server.web.pipeline import job_failure

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying ``data`` as compact JSON."""
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


class TextDeltas:
    """Incremental detokenization (``tokenizers``' DecodeStream): the new text each token
    adds, never half a character.

    Byte-level BPE splits multi-byte characters across tokens; DecodeStream holds such
    bytes back until the character completes. ``flush`` sends what the end leaves (an
    incomplete character as U+FFFD), so the deltas joined equal ``tokenizer.decode``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        # transformers' fast tokenizers wrap a tokenizers.Tokenizer, which DecodeStream needs.
        self._backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._stream = DecodeStream(skip_special_tokens=True)
        self.token_ids: list[int] = []
        self.sent: list[str] = []

    def push(self, token: int) -> str:
        """Add ``token``; return the text not yet sent ("" while a character is incomplete)."""
        self.token_ids.append(token)
        text = self._stream.step(self._backend, token) or ""
        self.sent.append(text)
        return text

    def flush(self) -> str:
        """The text still held back at the end ("" when every character completed)."""
        whole = self._tokenizer.decode(self.token_ids, skip_special_tokens=True)
        sent = "".join(self.sent)
        tail = whole[len(sent):] if whole.startswith(sent) else ""
        self.sent.append(tail)
        return tail


@dataclass(frozen=True)
class Delta:
    """New text of a stream, and how many tokens were generated up to it."""

    text: str
    completion_tokens: int


@dataclass
class StreamedGeneration:
    """What a finished stream produced: text deltas already sent, and how it ended."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"


def _next_token(job: Job, deadline: float, timeout_s: float) -> int | None:
    try:
        return job.stream.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        job.cancelled = True  # the generation thread drops it at the next token
        raise APIError(504, "generation_timeout",
                       f"generation did not finish within {timeout_s} s") from None


def _failed(job: Job) -> APIError:
    return job_failure(job.error)


def open_stream(job: Job, tokenizer: Any,
                render: Callable[[Iterator[Delta], StreamedGeneration], Iterator[str]]) -> Response:
    """Wait for ``job``'s first token, then stream the events ``render`` makes of its text.

    ``render(deltas, outcome)`` gets an iterator of ``Delta`` and yields SSE strings; once
    the deltas are exhausted, ``outcome`` holds the token ids and finish reason. Errors
    before the first token raise APIError (a normal error response); later ones end the
    stream with a ``data: {"error": {...}}`` event (the route's error shape), then [DONE].
    """
    timeout_s = current_app.config["REQUEST_TIMEOUT_S"]
    deadline = time.monotonic() + timeout_s
    first = _next_token(job, deadline, timeout_s)
    if first is None and job.error is not None:
        raise _failed(job)
    outcome = StreamedGeneration()
    deltas = TextDeltas(tokenizer)
    rec = record()
    rec.streamed, rec.completion_tokens = True, 0

    def token_texts() -> Iterator[Delta]:
        token = first
        while token is not None:
            rec.completion_tokens = len(deltas.token_ids) + 1
            text = deltas.push(token)
            if text:
                yield Delta(text, len(deltas.token_ids))
            token = _next_token(job, deadline, timeout_s)
        if job.error is not None:
            raise _failed(job)
        tail = deltas.flush()
        if tail:
            yield Delta(tail, len(deltas.token_ids))
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
            rec.end()

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
    def render(deltas: Iterator[Delta], outcome: StreamedGeneration) -> Iterator[str]:
        for delta in deltas:
            yield sse({"text": delta.text})
        yield sse({"text": "", **summary(outcome)})
        yield DONE

    return open_stream(job, tokenizer, render)
