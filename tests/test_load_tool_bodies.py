"""Third-party load generators' request bodies (tests/fixtures/load_tools) answered 200.

guidellm and ``vllm bench serve`` send vLLM's extensions with every request: ``ignore_eos``
for a fixed output length and, when streaming, ``stream_options.continuous_usage_stats``.
Each recorded body must get exactly its requested tokens, and usage in every chunk where
asked for; a load test that silently got 4xx answers would measure nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_streaming import sse_events

FIXTURES = Path(__file__).parent / "fixtures" / "load_tools"
REQUESTS = [(f.stem, n, json.loads(line))
            for f in sorted(FIXTURES.glob("*.jsonl"))
            for n, line in enumerate(f.read_text().splitlines())]


@pytest.mark.parametrize(("tool", "n", "recorded"), REQUESTS,
                         ids=[f"{tool}-{n}" for tool, n, _ in REQUESTS])
def test_recorded_load_tool_request_is_answered(client, tool, n, recorded) -> None:
    body = recorded["body"]
    wanted = body.get("max_completion_tokens") or body["max_tokens"]
    assert body["ignore_eos"] is True  # what makes the output length fixed
    response = client.post(recorded["path"], json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    if not body.get("stream"):
        assert response.json["usage"]["completion_tokens"] == wanted
        assert response.json["choices"][0]["finish_reason"] == "length"
        return
    events = sse_events(response.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == wanted
    if body["stream_options"].get("continuous_usage_stats"):
        counts = [c["usage"]["completion_tokens"] for c in chunks[:-1]]
        assert counts == sorted(counts) and counts[-1] == wanted
        assert all(c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + k
                   for c, k in zip(chunks, counts, strict=False))
    else:
        assert all(c["usage"] is None for c in chunks[:-1])
