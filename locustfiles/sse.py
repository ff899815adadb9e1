"""Read a server-sent-events answer as it arrives and time it: TTFB, TTFT, TPOT, chunk gaps.

No Locust import: the users call ``read_stream`` on the ``requests`` response of a
``stream=True`` request. Definitions (vLLM's ``benchmark_serving`` / guidellm):

================  ==============================================================
ttfb_ms           request start -> response headers received (the first bytes)
ttft_ms           request start -> first event carrying generated text
e2e_ms            request start -> end of the stream ([DONE] or EOF)
chunk_gaps_ms     time between consecutive text-carrying events (inter-chunk latency)
output_tokens     ``usage.completion_tokens`` from the server's final event; None when
                  the server sent no usage. Never counted from chunks: one event may hold
                  several tokens or none (a held-back partial character).
tpot_ms           (e2e_ms - ttft_ms) / (output_tokens - 1); None below 2 tokens
================  ==============================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# Given one decoded event, the text it carries ("" for none).
TextOf = Callable[[dict[str, Any]], str]


@dataclass
class StreamTiming:
    """What one streamed answer looked like to the client (times in ms from request start)."""

    ttfb_ms: float
    e2e_ms: float = 0.0
    ttft_ms: float | None = None
    chunk_gaps_ms: list[float] = field(default_factory=list)
    text_chunks: int = 0
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: bool = False  # [DONE] was received
    text: str = ""

    @property
    def output_tokens(self) -> int | None:
        """The server's completion token count (None when it sent no usage)."""
        tokens = (self.usage or {}).get("completion_tokens")
        return tokens if isinstance(tokens, int) and tokens >= 0 else None

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first: (E2E - TTFT) / (output tokens - 1)."""
        tokens = self.output_tokens
        if self.ttft_ms is None or tokens is None or tokens < 2:
            return None
        return (self.e2e_ms - self.ttft_ms) / (tokens - 1)


def openai_text(event: dict[str, Any]) -> str:
    """Text of an OpenAI chunk: chat ``delta.content`` or completion ``text``."""
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def task_text(event: dict[str, Any]) -> str:
    """Text of a task-route event (``{"text": ...}``)."""
    text = event.get("text")
    return text if isinstance(text, str) else ""


def read_stream(lines: Iterable[bytes], started: float, ttfb_ms: float,
                text_of: TextOf, clock: Callable[[], float] = time.perf_counter,
                ) -> StreamTiming:
    """Consume SSE ``lines`` (``response.iter_lines()``), timing each event on arrival.

    ``started`` is the ``clock()`` reading taken just before the request was sent.
    """
    timing = StreamTiming(ttfb_ms=ttfb_ms)
    last_text_at: float | None = None
    pieces: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), "event:" / "id:" fields
        payload = line.removeprefix("data:").strip()
        now_ms = (clock() - started) * 1000.0
        if payload == "[DONE]":
            timing.done = True
            break
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if isinstance(event.get("error"), dict):
            timing.error = event["error"]
        if isinstance(event.get("usage"), dict):
            timing.usage = event["usage"]
        text = text_of(event)
        if text:
            pieces.append(text)
            timing.text_chunks += 1
            if last_text_at is None:
                timing.ttft_ms = now_ms
            else:
                timing.chunk_gaps_ms.append(now_ms - last_text_at)
            last_text_at = now_ms
    timing.e2e_ms = (clock() - started) * 1000.0
    timing.text = "".join(pieces)
    return timing
