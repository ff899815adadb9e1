"""The OpenAI-compatible routes' part of the OpenAPI document (/v1/completions, /v1/chat/...).

Request bodies are the pydantic models that validate them (``server.web.openai_compat.schemas``);
answers follow OpenAI's shapes, errors OpenAI's ``{"error": {"message", "type", "param",
"code"}}``. With ``"stream": true`` the answer is ``text/event-stream``: ``data: {chunk}``
events, then ``data: [DONE]``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.web.openai_compat.schemas import ChatBody, CompletionBody


class _Open(BaseModel):
    # OpenAI adds fields over time; clients must ignore unknown ones, so the spec allows them.
    model_config = ConfigDict(extra="allow")


class PromptTokensDetails(_Open):
    cached_tokens: int = Field(ge=0, description="prompt tokens copied from this key's own "
                                                  "cached prefixes instead of computed")


class OpenAIUsage(_Open):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: PromptTokensDetails | None = None


class OpenAICompletion(_Open):
    """A text_completion or chat.completion object (one choice)."""

    id: str
    object: str = Field(description="text_completion | chat.completion")
    created: int
    model: str
    choices: list[dict[str, Any]] = Field(min_length=1, max_length=1)
    usage: OpenAIUsage


class OpenAIErrorBody(_Open):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="the first invalid field, if any")
    code: str


class OpenAIError(_Open):
    """Every error under /v1/."""

    error: OpenAIErrorBody


class ModelList(_Open):
    object: str
    data: list[dict[str, Any]]


SCHEMA_MODELS: list[type[BaseModel]] = [CompletionBody, ChatBody, OpenAICompletion,
                                        OpenAIError, ModelList]

_ERRORS = {"400": "invalid_request_error: malformed JSON, invalid fields, a text too long or "
                  "a prompt over the context (param names the field)",
           "401": "no or bad API key (Bearer)",
           "404": "model_not_found: not the served model", "413": "body too large",
           "415": "not application/json",
           "429": "rate limited (Retry-After)", "503": "overloaded or not ready (Retry-After)",
           "504": "generation timed out"}
# One server-sent event, as OpenAPI 3.2's itemSchema (and schemathesis) describe them.
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "a JSON chunk, or [DONE] at the end"},
    "event": {"type": "string"}, "id": {"type": "string"}}}
_STREAM = {"text/event-stream": {"schema": {
    **SSE_EVENT, "description": "with \"stream\": true: data: {chunk} events, then "
                                "data: [DONE]"}}}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _errors() -> dict[str, Any]:
    return {status: {"description": text, "content": _json("OpenAIError")}
            for status, text in _ERRORS.items()}


def _post(operation_id: str, body: type[BaseModel], summary: str) -> dict[str, Any]:
    ok = {"description": "the completion (JSON), or its chunks when streamed",
          "content": {**_json("OpenAICompletion"), **_STREAM}}
    return {"post": {"operationId": operation_id, "summary": summary, "tags": ["OpenAI"],
                     "requestBody": {"required": True, "content": _json(body.__name__)},
                     "responses": {"200": ok, **_errors()}}}


def v1_paths() -> dict[str, Any]:
    """The /v1 path items of the spec (their schemas are in ``SCHEMA_MODELS``)."""
    models_ok = {"description": "the served model", "content": _json("ModelList")}
    return {
        "/v1/completions": _post("v1_completions", CompletionBody, "OpenAI completions"),
        "/v1/chat/completions": _post("v1_chat_completions", ChatBody,
                                      "OpenAI chat completions"),
        "/v1/models": {"get": {"operationId": "v1_models", "summary": "OpenAI model list",
                               "tags": ["OpenAI"], "responses": {
                                   "200": models_ok,
                                   "401": {"description": "no or bad API key",
                                           "content": _json("OpenAIError")}}}},
    }
