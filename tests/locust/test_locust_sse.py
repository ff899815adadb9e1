"""Timing a streamed answer (locustfiles/sse.py) and reporting it (streaming_users.py).

Hand-made SSE lines and a scripted clock: every expected number below is worked out by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from locustfiles.failures import BadBody, GenerationTimeout
from locustfiles.request_recorder import RequestRecorder
from locustfiles.sse import StreamTiming, openai_text, read_stream, task_text
from locustfiles.streaming_users import (
    METRICS,
    StreamingPromptUser,
    stream_failure,
    timing_context,
)
from tests.locust_runs import read_csv

STARTED = 100.0  # clock reading just before the request was sent (s)


def data(event: dict[str, Any] | str) -> bytes:
    """One SSE data line as ``response.iter_lines()`` yields it."""
    return f"data: {event if isinstance(event, str) else json.dumps(event)}".encode()


def clock(*readings_s: float) -> Callable[[], float]:
    """A clock that returns ``readings_s`` in turn and fails the test if read once more."""
    readings: Iterator[float] = iter(readings_s)
    return lambda: next(readings)


def task_stream() -> list[bytes]:
    """A task route's answer: 3 text events for 9 tokens (one token's text held back)."""
    return [
        data({"text": " the"}), b"",             # read at 100.200 s: TTFT 200 ms
        b": ping", b"event: message", b"id: 7",  # not data: no clock reading
        data({"text": " harbour"}), b"",         # 100.350 s: gap 150 ms
        data({"text": ""}), b"",                 # 100.400 s: a partial character, no text
        data({"text": " at dawn"}), b"",         # 100.600 s: gap 250 ms
        data({"text": "", "model": "synthetic:tiny", "finish_reason": "length",
              "usage": {"prompt_tokens": 5, "completion_tokens": 9}}), b"",  # 100.700 s
        data("[DONE]"), b"",                     # 100.750 s
    ]  # fmt: skip


def read_task_stream() -> StreamTiming:
    """read_stream over task_stream(): the stream ends (E2E) at 100.800 s."""
    return read_stream(task_stream(), STARTED, 50.0, task_text,
                       clock(100.2, 100.35, 100.4, 100.6, 100.7, 100.75, 100.8))


def test_times_are_taken_as_the_events_arrive() -> None:
    timing = read_task_stream()

    assert timing.ttfb_ms == 50.0
    assert timing.ttft_ms == pytest.approx(200.0)
    assert timing.chunk_gaps_ms == pytest.approx([150.0, 250.0])
    assert timing.e2e_ms == pytest.approx(800.0)
    assert (timing.text, timing.text_chunks, timing.done) == (" the harbour at dawn", 3, True)
    assert timing.error is None


def test_tpot_divides_by_the_servers_token_count_not_the_chunks() -> None:
    timing = read_task_stream()

    assert timing.output_tokens == 9  # usage.completion_tokens; only 3 events carried text
    # (E2E - TTFT) / (output tokens - 1) = (800 - 200) / (9 - 1); by chunks it would be 300.
    assert timing.tpot_ms == pytest.approx(75.0)


@pytest.mark.parametrize(("usage", "tokens", "tpot_ms"), [
    ({"prompt_tokens": 5, "completion_tokens": 2}, 2, 600.0),  # one step after the first
    ({"prompt_tokens": 5, "completion_tokens": 1}, 1, None),   # no time between tokens
    ({"prompt_tokens": 5, "completion_tokens": 0}, 0, None),
    ({"prompt_tokens": 5, "completion_tokens": -3}, None, None),
    ({"prompt_tokens": 5, "completion_tokens": "9"}, None, None),
    ({"prompt_tokens": 5}, None, None),
    (None, None, None),  # the server sent no usage: no token count, no TPOT
])  # fmt: skip
def test_tpot_needs_two_tokens_counted_by_the_server(usage, tokens, tpot_ms) -> None:
    timing = StreamTiming(ttfb_ms=50.0, e2e_ms=800.0, ttft_ms=200.0, text_chunks=5,
                          usage=usage)

    assert timing.output_tokens == tokens
    assert timing.tpot_ms == (pytest.approx(tpot_ms) if tpot_ms is not None else None)


def test_no_text_means_no_ttft_and_no_tpot() -> None:
    lines = [data({"text": ""}), data({"text": "", "usage": {"prompt_tokens": 3,
                                                             "completion_tokens": 4}}),
             data("[DONE]")]
    timing = read_stream(lines, STARTED, 20.0, task_text, clock(100.1, 100.2, 100.3, 100.4))

    assert (timing.ttft_ms, timing.text_chunks, timing.chunk_gaps_ms) == (None, 0, [])
    assert timing.output_tokens == 4 and timing.tpot_ms is None
    assert timing.e2e_ms == pytest.approx(400.0)


def test_openai_chat_stream_keeps_the_final_usage_chunk() -> None:
    # include_usage: every chunk has "usage": null, then a usage chunk with no choices.
    def chunk(content: str) -> bytes:
        return data({"object": "chat.completion.chunk", "usage": None,
                     "choices": [{"index": 0, "delta": {"content": content}}]})

    lines = [data({"object": "chat.completion.chunk", "usage": None,
                   "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
             chunk("Hel"), chunk("lo"), chunk("!"),
             data({"object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 5}}),
             data("[DONE]")]
    timing = read_stream(lines, STARTED, 30.0, openai_text,
                         clock(100.05, 100.1, 100.13, 100.17, 100.18, 100.19, 100.2))

    assert timing.text == "Hello!" and timing.text_chunks == 3
    assert timing.ttft_ms == pytest.approx(100.0)  # the role-only chunk carries no text
    assert timing.chunk_gaps_ms == pytest.approx([30.0, 40.0])
    assert timing.usage == {"prompt_tokens": 12, "completion_tokens": 5}
    assert timing.tpot_ms == pytest.approx((200.0 - 100.0) / 4)


def test_a_stream_cut_off_before_done_is_timed_to_its_end() -> None:
    lines = [data({"text": "a"}), b"data: {not json", data(["a", "list"]), data({"text": "b"})]
    timing = read_stream(lines, STARTED, 10.0, task_text, clock(100.1, 100.2, 100.3, 100.4, 100.5))

    assert timing.done is False and timing.text == "ab"
    assert timing.chunk_gaps_ms == pytest.approx([300.0])  # undecodable events are skipped
    assert timing.e2e_ms == pytest.approx(500.0)
    assert isinstance(stream_failure(timing), BadBody)


def test_reading_stops_at_done() -> None:
    lines = iter([data({"text": "a"}), data("[DONE]"), data({"text": "late"})])
    timing = read_stream(lines, STARTED, 10.0, task_text, clock(100.1, 100.2, 100.3))

    assert timing.text == "a" and timing.done
    assert next(lines) == data({"text": "late"})  # left unread


@pytest.mark.parametrize(("event", "text"), [
    ({"choices": [{"delta": {"content": "hi"}}]}, "hi"),
    ({"choices": [{"text": "hi", "index": 0}]}, "hi"),
    ({"choices": [{"delta": {"role": "assistant"}}]}, ""),
    ({"choices": [{"delta": {"content": None}}]}, ""),
    ({"choices": [], "usage": {"completion_tokens": 3}}, ""),
    ({"choices": ["hi"]}, ""),
    ({"text": "task"}, ""),
])  # fmt: skip
def test_openai_text(event, text) -> None:
    assert openai_text(event) == text


@pytest.mark.parametrize(("event", "text"), [
    ({"text": " x"}, " x"), ({"text": ""}, ""), ({"text": 3}, ""), ({"error": {}}, ""),
])  # fmt: skip
def test_task_text(event, text) -> None:
    assert task_text(event) == text


def test_error_event_fails_the_stream_by_its_code() -> None:
    def ended_with(error: dict[str, Any]) -> StreamTiming:
        lines = [data({"text": "a"}), data({"error": error}), data("[DONE]")]
        return read_stream(lines, STARTED, 10.0, task_text, clock(*[100.1] * 4))

    timeout = ended_with({"code": "generation_timeout", "message": "too slow"})
    failed = ended_with({"type": "server_error", "message": "boom"})  # OpenAI's shape

    assert timeout.error == {"code": "generation_timeout", "message": "too slow"}
    assert isinstance(stream_failure(timeout), GenerationTimeout)
    assert isinstance(stream_failure(failed), BadBody)
    assert "server_error" in str(stream_failure(failed))
    assert stream_failure(read_task_stream()) is None
    assert isinstance(stream_failure(StreamTiming(ttfb_ms=1.0, done=True)), BadBody)  # no text


def test_timing_context_holds_the_requests_csv_stream_columns() -> None:
    context = timing_context(read_task_stream())

    assert context["stream"] == 1 and context["chunks"] == 3
    assert context["ttfb_ms"] == 50.0
    assert context["ttft_ms"] == pytest.approx(200.0)
    assert context["tpot_ms"] == pytest.approx(75.0)
    assert context["max_chunk_gap_ms"] == pytest.approx(250.0)
    assert context["chunk_gaps_ms"] == "150.0 250.0"
    assert context["usage"] == {"prompt_tokens": 5, "completion_tokens": 9}
    one_chunk = timing_context(StreamTiming(ttfb_ms=1.0, ttft_ms=2.0, text_chunks=1))
    assert (one_chunk["max_chunk_gap_ms"], one_chunk["chunk_gaps_ms"]) == (None, "")


def test_metric_entries_reach_locust_stats_but_not_requests_csv(
        environment, monkeypatch, tmp_path: Path) -> None:
    recorder = RequestRecorder(tmp_path / "requests.csv")
    recorder.register(environment)
    monkeypatch.setattr(StreamingPromptUser, "host", "http://127.0.0.1:1")  # nothing is sent
    user = StreamingPromptUser(environment)
    one_token = StreamTiming(ttfb_ms=40.0, e2e_ms=90.0, ttft_ms=80.0, text_chunks=1,
                             usage={"prompt_tokens": 5, "completion_tokens": 1})

    user.report_metrics("/generate-text", read_task_stream(), user.context())
    user.report_metrics("/generate-text", one_token, user.context())  # no TPOT to report
    stats = environment.stats

    assert METRICS == ("TTFB", "TTFT", "TPOT")
    assert stats.get("/generate-text", "TTFB").num_requests == 2
    assert stats.get("/generate-text", "TTFT").num_requests == 2
    assert stats.get("/generate-text", "TPOT").num_requests == 1
    assert stats.get("/generate-text", "TPOT").max_response_time == pytest.approx(75.0)
    assert stats.get("/generate-text", "TTFT").max_response_time == pytest.approx(200.0)
    assert stats.total.num_failures == 0
    recorder.close()
    assert recorder.rows_written == 0 and read_csv(tmp_path / "requests.csv") == []
