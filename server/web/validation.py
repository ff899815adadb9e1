"""Field checks shared by both route families' request bodies (one copy of each).

Limits that come from config (the new-token cap, input length) arrive as pydantic
validation context, so one static schema serves every configuration.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

# Error type of an over-long text field: a task route answers 413, not 422, for it.
TOO_LONG = "too_long"
# Temperatures below this decode greedily (see greedy_if_tiny).
MIN_SAMPLING_TEMPERATURE = 1e-6


def check_text(value: str, info: ValidationInfo, blank_ok: bool = False) -> str:
    """Reject blank text (unless ``blank_ok``), lone surrogates, and text over
    ``max_input_chars`` (error type TOO_LONG)."""
    if not blank_ok and not value.strip():
        raise ValueError("must not be blank")
    if not value.isascii():
        try:  # JSON may carry lone surrogates ("\ud800"), which no tokenizer can encode
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    limit = (info.context or {}).get("max_input_chars")
    if limit is not None and len(value) > limit:
        raise PydanticCustomError(TOO_LONG, "too long: {length} characters, at most {limit}",
                                  {"length": len(value), "limit": limit})
    return value


def within_token_cap(value: int | None, info: ValidationInfo) -> int | None:
    """Reject a token count above ``max_new_tokens_cap`` (passed as validation context)."""
    cap = (info.context or {}).get("max_new_tokens_cap")
    if value is not None and cap is not None and value > cap:
        raise ValueError(f"must be at most {cap}")
    return value


def greedy_if_tiny(value: float) -> float:
    """Treat a temperature below MIN_SAMPLING_TEMPERATURE as 0 (greedy).

    Sampling that cold is greedy in effect, and logits / 1e-300 overflows float32 to
    inf/NaN (found by the fuzz test).
    """
    return 0.0 if value < MIN_SAMPLING_TEMPERATURE else value


def text(blank_ok: bool = False) -> AfterValidator:
    """The validator of a text field (see ``check_text``)."""
    return AfterValidator(lambda value, info: check_text(value, info, blank_ok))


# Field types used by both families' bodies (defaults are given where they are used).
Text = Annotated[str, Field(min_length=1), text()]
OptionalText = Annotated[str, text(blank_ok=True)]
NewTokens = Annotated[int | None, Field(ge=1), AfterValidator(within_token_cap)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0), AfterValidator(greedy_if_tiny)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Seed = Annotated[int | None, Field(ge=0, le=2**63 - 1)]
