"""Request bodies of the task routes, validated by pydantic (unknown fields are errors).

Limits that come from config (max_new_tokens cap, input length) are passed as validation
context, so one static schema serves every configuration.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

# Error type of an over-long text field: the route answers 413, not 422, for it.
TOO_LONG = "too_long"
# Temperatures below this decode greedily (see GenerateBody).
MIN_SAMPLING_TEMPERATURE = 1e-6

Text = Annotated[str, Field(min_length=1)]


def within_token_cap(value: int | None, info: ValidationInfo) -> int | None:
    """Reject a token count above ``max_new_tokens_cap`` (passed as validation context)."""
    cap = (info.context or {}).get("max_new_tokens_cap")
    if value is not None and cap is not None and value > cap:
        raise ValueError(f"must be at most {cap}")
    return value


class _Body(BaseModel):
    # strict: "5" is not an int and 1 is not a str; NaN/inf are not numbers.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_new_tokens: int | None = Field(default=None, ge=1)
    # true: server-sent events, one per token (format in server.streaming.task_stream).
    stream: bool = False

    @field_validator("max_new_tokens")
    @classmethod
    def _within_cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        return within_token_cap(value, info)

    @field_validator("*", mode="after")
    @classmethod
    def _not_blank_or_too_long(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and info.field_name != "context" and not value.strip():
            raise ValueError("must not be blank")
        if isinstance(value, str) and not value.isascii():
            try:  # JSON may carry lone surrogates ("\ud800"), which no tokenizer can encode
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (no lone surrogates)") from None
        limit = (info.context or {}).get("max_input_chars")
        if isinstance(value, str) and limit is not None and len(value) > limit:
            raise PydanticCustomError(
                TOO_LONG, "too long: {length} characters, at most {limit}",
                {"length": len(value), "limit": limit},
            )
        return value


class GenerateBody(_Body):
    """POST /generate-text."""

    prompt: Text
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    @field_validator("temperature")
    @classmethod
    def _tiny_temperature_is_greedy(cls, value: float) -> float:
        # Sampling this cold is greedy in effect, and logits / 1e-300 overflows float32 to
        # inf/NaN (found by the fuzz test): treat it as 0, i.e. greedy.
        return 0.0 if value < MIN_SAMPLING_TEMPERATURE else value


class SummarizeBody(_Body):
    """POST /summarize-text."""

    text: Text


class AnswerBody(_Body):
    """POST /answer-question (context optional)."""

    question: Text
    context: str = ""
