"""Request bodies of the OpenAI-compatible routes (/v1/completions, /v1/chat/completions).

The fields follow OpenAI's API reference, plus the vLLM extensions load generators send
(``ignore_eos``, ``min_tokens``, ``stream_options.continuous_usage_stats``). Only what this
server can honour is accepted: unknown or unsupported fields such as ``logprobs``, ``stop``
or ``n > 1`` are 400 errors naming the field, never silently ignored. Sampling defaults are
OpenAI's (temperature 1, top_p 1), unlike the task routes, which default to greedy. Field
checks are ``server.web.validation``'s, shared with the task routes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from server.web.validation import NewTokens, Seed, Temperature, TopP, check_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    """``stream_options``: usage in a final chunk, and (vLLM) in every chunk too."""

    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        default=False, description="vLLM: with include_usage, every chunk carries the usage "
                                   "so far")


class _Sampling(_Strict):
    model: str | None = Field(default=None, description="the served model's id (GET /v1/models)")
    max_tokens: NewTokens = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    seed: Seed = None
    n: Literal[1] = Field(default=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="accepted and ignored")
    ignore_eos: bool = Field(default=False, description="vLLM: generate exactly the requested "
                                                        "tokens, past every stop token")
    min_tokens: int = Field(default=0, ge=0, description="vLLM: no stop before this many tokens")
    # Sent by load generators at their neutral value (guidellm: "stop": null; vLLM bench:
    # "logprobs": null, "repetition_penalty": 1.0): accepted at that value only.
    stop: None = Field(default=None, description="null only: stop sequences are not supported")
    logprobs: None = Field(default=None, description="null only: logprobs are not supported")
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=1.0,
                                      description="vLLM: 1.0 only (no penalty)")
    cache_salt: str | None = Field(default=None, min_length=1, max_length=256,
                                   description="vLLM: reuse cached prompt prefixes only among "
                                               "this key's requests with the same salt")

    def requested_tokens(self) -> int | None:
        """How many new tokens the client asked for (None: the server's default)."""
        return self.max_tokens

    def min_new_tokens(self, max_new_tokens: int) -> int:
        """Tokens to generate before a stop token may end the answer (ignore_eos: all)."""
        return max_new_tokens if self.ignore_eos else self.min_tokens

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Whether every chunk carries the usage so far (vLLM: only with include_usage)."""
        return self.include_usage and self.stream_options.continuous_usage_stats


class CompletionBody(_Sampling):
    """POST /v1/completions: continue ``prompt`` (one string)."""

    prompt: str

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)


class TextPart(_Strict):
    """A text part of a message's content (images and audio are not supported)."""

    type: Literal["text"]
    text: str


class Message(_Strict):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content_text(cls, value: str | list[TextPart], info: ValidationInfo):
        for text in [value] if isinstance(value, str) else [p.text for p in value]:
            check_text(text, info, blank_ok=True)
        return value

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)


class ChatBody(_Sampling):
    """POST /v1/chat/completions: answer the conversation in ``messages``."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: NewTokens = Field(default=None, description="newer name of max_tokens")

    def requested_tokens(self) -> int | None:
        """``max_completion_tokens`` if given, else ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens
