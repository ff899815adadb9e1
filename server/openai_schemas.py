"""Request bodies of the OpenAI-compatible routes (/v1/completions, /v1/chat/completions).

The fields follow OpenAI's API reference; only what this server can honour is accepted
(unknown or unsupported fields such as ``logprobs``, ``stop`` or ``n > 1`` are 422 errors
naming the field, never silently ignored). Sampling defaults are OpenAI's (temperature 1,
top_p 1), unlike the task routes, which default to greedy. Limits from config (the
``max_tokens`` cap, input length) come as validation context, as in ``server.schemas``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from server.schemas import TOO_LONG, within_token_cap


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _check_text(value: str, info: ValidationInfo, blank_ok: bool = False) -> str:
    """Reject blank text (unless ``blank_ok``) and text over ``max_input_chars`` (413)."""
    if not blank_ok and not value.strip():
        raise ValueError("must not be blank")
    try:  # JSON may carry lone surrogates ("\ud800"), which no tokenizer can encode
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    limit = (info.context or {}).get("max_input_chars")
    if limit is not None and len(value) > limit:
        raise PydanticCustomError(TOO_LONG, "too long: {length} characters, at most {limit}",
                                  {"length": len(value), "limit": limit})
    return value


class StreamOptions(_Strict):
    """``stream_options``: ask for a final chunk carrying ``usage``."""

    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = Field(default=None, description="the served model's id (GET /v1/models)")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: Literal[1] = Field(default=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="accepted and ignored")

    @field_validator("max_tokens", "max_completion_tokens", check_fields=False)
    @classmethod
    def _within_cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        return within_token_cap(value, info)

    @field_validator("temperature")
    @classmethod
    def _tiny_temperature_is_greedy(cls, value: float) -> float:
        # logits / 1e-300 overflows to inf/NaN; sampling that cold is greedy anyway.
        return 0.0 if value < 1e-6 else value

    def requested_tokens(self) -> int | None:
        """How many new tokens the client asked for (None: the server's default)."""
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(_Sampling):
    """POST /v1/completions: continue ``prompt`` (one string)."""

    prompt: str

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, value: str, info: ValidationInfo) -> str:
        return _check_text(value, info)


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
    def _content_text(cls, value: Any, info: ValidationInfo) -> Any:
        for text in [value] if isinstance(value, str) else [p.text for p in value]:
            _check_text(text, info, blank_ok=True)
        return value

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)


class ChatBody(_Sampling):
    """POST /v1/chat/completions: answer the conversation in ``messages``."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = Field(default=None, ge=1,
                                              description="newer name of max_tokens")

    def requested_tokens(self) -> int | None:
        """``max_completion_tokens`` if given, else ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens
