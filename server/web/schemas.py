"""Request bodies of the task routes, validated by pydantic (unknown fields are errors).

Field checks (text, token cap, temperature) are ``server.web.validation``'s, shared with the
OpenAI-compatible bodies; config limits arrive as validation context.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from server.web.validation import NewTokens, OptionalText, Seed, Temperature, Text, TopP


class _Body(BaseModel):
    # strict: "5" is not an int and 1 is not a str; NaN/inf are not numbers.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_new_tokens: NewTokens = None
    # true: server-sent events, one per token (format in server.web.streaming.task_stream).
    stream: bool = False
    # vLLM's cache_salt: cached prompt prefixes are reused only among this key's requests
    # with the same salt (server.engine.prefix_cache).
    cache_salt: str | None = Field(default=None, min_length=1, max_length=256)


class GenerateBody(_Body):
    """POST /generate-text."""

    prompt: Text
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: Seed = None


class SummarizeBody(_Body):
    """POST /summarize-text."""

    text: Text


class AnswerBody(_Body):
    """POST /answer-question (context optional)."""

    question: Text
    context: OptionalText = ""
