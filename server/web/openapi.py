"""The API contract: OpenAPI 3.1 at ``/openapi.json`` and a self-contained docs page at ``/docs``.

The request schemas are the pydantic models that validate the bodies (``server.web.schemas``),
exported with ``model_json_schema``; config-dependent limits (the ``max_new_tokens`` cap,
``MAX_INPUT_CHARS``) are written in from the app's config, so the spec states what this
server accepts. Why not spectree / flask-openapi3 / apiflask: they want to own validation
and its 422 format (ours is the one error envelope, with limits passed as validation
context), apiflask's schemas are marshmallow (a second copy of every schema), and their docs
pages load Swagger UI from a CDN, which this offline-first server must not do. pydantic
already emits JSON Schema 2020-12, which OpenAPI 3.1 uses as is, so the spec is a small dict.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

from flask import Flask, Response, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from server.web import routing
from server.web.answers import Completion
from server.web.openai_compat.spec import SCHEMA_MODELS, SSE_EVENT, v1_paths
from server.web.schemas import AnswerBody, GenerateBody, SummarizeBody


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Strict):
    code: str = Field(description="stable machine-readable code, e.g. invalid_fields")
    message: str
    details: Any = Field(default=None, description="per-field errors, token counts, limit")


class ErrorEnvelope(_Strict):
    """Every error response."""

    error: ErrorBody


class Health(_Strict):
    status: str


class Ready(_Strict):
    """Probes get the status only; the operator credential adds the rest (absent otherwise)."""

    status: str
    model: str | None = None
    dtype: str | None = None
    kernels: dict[str, Any] | None = Field(
        default=None,
        description="startup kernel table (server/engine/kernels.py): chosen, requested, "
                    "allow_int8, "
                    "table of {precision, batch_1_ms, batch_max_ms, max_batch, min_rows}, "
                    "measure_s")
    code_path: dict[str, str] | None = Field(
        default=None,
        description="the code path decided for the model (server/engine/code_path.py): "
                    "precision, linear (blas_fp32 | onednn_fp32 | fbgemm_fp16 | native_f16 | "
                    "onednn_packed_bf16 | torch_bf16 | native_bf16 | fbgemm_int8 | "
                    "native_int8), "
                    "layers (native_c | gpt2_forward | llama_forward | transformers), attention "
                    "(native_decode | torch_sdpa), attention_dtype, kv_dtype, cache_dtype, "
                    "and linear_why, layers_why, attention_why")
    max_batch_size: int | None = None
    prefill_chunk: int | None = None
    kv_dtype: str | None = Field(default=None,
                                 description="KV cache storage as served (KV_DTYPE=auto "
                                             "resolved): float16 (16-bit) | int8 (int8 with a "
                                             "float32 scale per position and head) | model "
                                             "(as computed)")
    kv_tokens: int | None = Field(default=None,
                                  description="KV positions a worker's running rows may "
                                              "reserve together as resolved: KV_TOKENS, or "
                                              "KV_CACHE_MB in the model's positions (0: no "
                                              "limit)")
    prefix_cache_rows: int | None = Field(default=None,
                                          description="finished rows' KV caches a worker keeps "
                                                      "for prompts that start the same way "
                                                      "(0: none)")
    forecast: dict[str, Any] | None = Field(
        default=None,
        description="what this worker's admission prices a job with now "
                    "(server/engine/scheduler.py): step_ms (a one-row decode step), token_ms "
                    "(what a prompt token adds), row_cost (row count -> a step of that many "
                    "rows in one-row steps, as measured: server/engine/row_curve.py), bias "
                    "(finished jobs' lateness against their forecast, >= 1)")
    torch_threads: int | None = Field(default=None,
                                      description="this worker's torch threads now")
    threads_shared: bool | None = Field(default=None,
                                        description="true: a busy worker uses cores / busy "
                                                    "workers (TORCH_THREADS=0); false: a "
                                                    "fixed count")
    limits: dict[str, Any] | None = Field(
        default=None,
        description="max_queue, max_in_flight, request_timeout_s, admit_predicted, "
                    "max_new_tokens_cap, max_input_chars, rate_limit, global_rate_limit")


_TASKS = [("/generate-text", GenerateBody, "Continue a prompt"),
          ("/summarize-text", SummarizeBody, "Summarize a text (TL;DR: prompt)"),
          ("/answer-question", AnswerBody, "Answer a question, optionally from a context")]
_TASK_ERRORS = {
    "400": "malformed_json: the body is not a JSON object",
    "401": "missing_api_key / invalid_api_key",
    "413": "payload_too_large / input_too_long / prompt_too_long (details: token counts)",
    "415": "unsupported_media_type: send Content-Type: application/json",
    "422": "invalid_fields: details name each field",
    "429": "rate_limited: this key's or the global limit (see Retry-After)",
    "503": "overloaded / not_ready (see Retry-After)",
    "504": "generation_timeout",
}
_HEADERS = {name: {"description": text, "schema": {"type": "string"}} for name, text in [
    ("X-Request-ID", "yours echoed, or a new one"), ("X-Worker-PID", "serving worker"),
    ("X-Worker-RSS-MB", "worker resident memory"), ("X-Worker-USS-MB", "worker unique memory"),
    ("X-Worker-PSS-MB", "worker proportional memory"), ("X-Queue-Ms", "queue wait"),
    ("X-Inference-Ms", "decode time"), ("X-Batch-Size", "batch size (0: never reached model)"),
    ("X-CPU-Ms", "worker CPU charged to it, core-ms (whole answers)"),
    ("Retry-After", "seconds to wait (429, 503)"), ("X-RateLimit-Limit", "requests allowed"),
    ("X-RateLimit-Remaining", "requests left"), ("X-RateLimit-Reset", "reset, epoch seconds"),
]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(description: str, schema: str | None, media: str = "application/json",
              headers: tuple[str, ...] = ("X-Request-ID",)) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "headers": {h: {"$ref": f"#/components/headers/{h}"}
                                            for h in headers}}
    if schema is not None:
        response["content"] = {media: {"schema": _ref(schema) if media.endswith("json")
                                       else {"type": "string"}}}
    return response


# Fields capped by MAX_NEW_TOKENS_CAP: ours and the OpenAI routes' two names for it.
_TOKEN_CAPPED = ("max_new_tokens", "max_tokens", "max_completion_tokens")


def _apply_limits(schema: dict[str, Any], config: dict[str, Any]) -> None:
    """Write this server's config-dependent limits into a body schema."""
    for name, prop in schema["properties"].items():
        for option in prop.get("anyOf", [prop]):
            if name in _TOKEN_CAPPED and option.get("type") == "integer":
                option["maximum"] = config["MAX_NEW_TOKENS_CAP"]
        if prop.get("type") == "string":
            prop["maxLength"] = config["MAX_INPUT_CHARS"]
            if name in schema.get("required", []):
                prop["pattern"] = r"\S"  # not blank


def _task_operation(path: str, body: type[BaseModel], summary: str) -> dict[str, Any]:
    limited = ("X-Request-ID", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    responses = {"200": _response("the completion", "Completion",
                                  headers=(*limited, *list(_HEADERS)[1:8]))}
    # "stream": true answers with server-sent events instead (see server/web/streaming.py).
    responses["200"]["content"]["text/event-stream"] = {"schema": {
        **SSE_EVENT, "description": 'with "stream": true: data: {"text"} events, a '
                                         "final event with usage, then data: [DONE]"}}
    for status, text in _TASK_ERRORS.items():
        extra = ("Retry-After",) if status in ("429", "503") else ()
        responses[status] = _response(text, "ErrorEnvelope", headers=("X-Request-ID", *extra))
    return {"post": {
        "operationId": path.strip("/").replace("-", "_"), "summary": summary,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref(body.__name__)}}},
        "responses": responses}}


@cache
def _components() -> dict[str, Any]:
    models = [GenerateBody, SummarizeBody, AnswerBody, Completion, ErrorEnvelope, Health, Ready,
              *SCHEMA_MODELS]
    _, defs = models_json_schema([(m, "validation") for m in models],
                                 ref_template="#/components/schemas/{model}")
    return defs["$defs"]


def build_spec(config: dict[str, Any], secured: bool, operator: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this app's configuration (``operator``: OPERATOR_KEYS set)."""
    schemas = copy.deepcopy(_components())
    for body in [*(body for _, body, _ in _TASKS), *SCHEMA_MODELS[:2]]:
        _apply_limits(schemas[body.__name__], config)
    public = {"security": []} if secured else {}
    paths: dict[str, Any] = {path: _task_operation(path, body, summary)
                             for path, body, summary in _TASKS}
    paths["/health"] = {"get": {"operationId": "health", "summary": "Liveness", **public,
                                "responses": {"200": _response("alive", "Health")}}}
    paths["/ready"] = {"get": {"operationId": "ready", **public,
                               "summary": "Readiness: model loaded and warmed in this worker "
                                          "(details with the operator key)",
                               "responses": {"200": _response("ready", "Ready"),
                                             "503": _response("not_ready", "ErrorEnvelope",
                                                              headers=("Retry-After",))}}}
    paths["/metrics"] = _metrics_operation(operator)
    paths.update(v1_paths())
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "GPT Load Lab", "version": "1.0.0",
                 "description": "A GPT-style model behind Flask + Gunicorn. Errors are "
                                "always {\"error\": {\"code\", \"message\", \"details\"?}}."},
        "paths": paths,
        "components": {"schemas": schemas, "headers": _HEADERS},
    }
    if secured:
        spec["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        spec["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    if operator:
        spec["components"].setdefault("securitySchemes", {})["operatorKey"] = {
            "type": "http", "scheme": "bearer",
            "description": "a key of OPERATOR_KEYS (server/web/operator_auth.py), not an API key"}
    return spec


def _metrics_operation(operator: bool) -> dict[str, Any]:
    """/metrics: the operator's (server/web/operator_auth.py), off (404) without OPERATOR_KEYS."""
    summary = "Prometheus metrics (operator key: OPERATOR_KEYS)"
    if not operator:
        return {"get": {"operationId": "metrics", "summary": summary, "security": [],
                        "responses": {"404": _response("not_found: no OPERATOR_KEYS configured",
                                                       "ErrorEnvelope")}}}
    return {"get": {
        "operationId": "metrics", "summary": summary, "security": [{"operatorKey": []}],
        "responses": {"200": _response("text exposition format", "", media="text/plain"),
                      "401": _response("missing_operator_key / invalid_operator_key (an API "
                                       "key does not open it)", "ErrorEnvelope")}}}


# The docs page loads nothing but itself and /openapi.json: no CDN, enforced by the browser.
_DOCS_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
             "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def init_app(app: Flask) -> None:
    """Serve the spec at ``/openapi.json`` and the docs page at ``/docs`` (both public)."""
    spec = build_spec(app.config, secured=app.extensions["api_keys"] is not None,
                      operator=app.extensions["operator_keys"] is not None)
    page = resources.files("server.web").joinpath("docs.html").read_text()

    def openapi_json() -> Response:
        return jsonify(spec)

    def docs() -> Response:
        response = current_app.response_class(page, mimetype="text/html")
        response.headers["Content-Security-Policy"] = _DOCS_CSP
        return response

    app.add_url_rule("/openapi.json", "openapi", routing.declare(routing.PUBLIC_DOC)(openapi_json))
    app.add_url_rule("/docs", "docs", routing.declare(routing.PUBLIC_DOC)(docs))
