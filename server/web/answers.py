"""The task routes' answers as pydantic models: the JSON the routes send and the schemas
``/openapi.json`` publishes are the same objects, so they cannot drift apart."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Strict):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class Timings(_Strict):
    queue: float = Field(ge=0, description="ms waiting for a batch slot")
    inference: float = Field(ge=0, description="ms in the batched decode loop")
    total: float = Field(ge=0, description="queue + inference, ms")


class Completion(_Strict):
    """A generated text (meaningless for synthetic:* models: random weights)."""

    text: str
    model: str
    finish_reason: str = Field(description="length | stop | cancelled")
    usage: Usage
    timings_ms: Timings
