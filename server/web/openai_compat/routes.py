"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions and /v1/models.

Same path through the server as the task routes (``server.web.pipeline``): API key
(``Authorization: Bearer``), rate limits, body validation, the worker's scheduler, memory
headers and the request log; only the shapes are OpenAI's (responses, SSE chunks, and errors
as ``{"error": {"message", "type", "param", "code"}}`` with 400 for an invalid request, see
``server.web.errors``). So OpenAI clients and load generators (the ``openai`` package, vLLM's
``bench serve``, guidellm, our own ``--target openai`` Locust mode) can drive this server.

Chat prompts go through the tokenizer's chat template when it has one; otherwise (base
models, the synthetic ones) they become a plain role-prefixed prompt (``server.web.prompts``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from server.engine.jobs import Job
from server.web import pipeline, routing
from server.web.errors import APIError
from server.web.openai_compat.schemas import ChatBody, CompletionBody
from server.web.openai_compat.spec import ModelList, OpenAICompletion, OpenAIUsage
from server.web.prompts import chat_ids
from server.web.streaming import DONE, Delta, StreamedGeneration, open_stream, sse

bp = Blueprint("openai", __name__, url_prefix="/v1")


def _loaded():
    return current_app.extensions["model_service"].loaded


def _check_model(requested: str | None) -> None:
    served = _loaded().name
    if requested is not None and requested != served:
        raise APIError(404, "model_not_found",
                       f"model {requested!r} is not served here; use {served!r}")


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None
           ) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens`` (a whole answer's) adds
    ``prompt_tokens_details``, as OpenAI reports prompt caching."""
    details = None if cached_tokens is None else {"cached_tokens": cached_tokens}
    return OpenAIUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                       total_tokens=prompt_tokens + completion_tokens,
                       prompt_tokens_details=details).model_dump(exclude_none=True)


def _answer(kind: str, prefix: str, choice: dict[str, Any], usage: dict[str, Any]) -> Response:
    """A whole (not streamed) answer, built through the spec's model."""
    return jsonify(OpenAICompletion(
        id=f"{prefix}-{uuid.uuid4().hex}", object=kind, created=int(time.time()),
        model=_loaded().name, choices=[choice], usage=usage).model_dump())


def _start(body: CompletionBody | ChatBody, ids: list[int], param: str) -> Job:
    """Check the model, then send the prompt through the pipeline; return the job."""
    _check_model(body.model)
    limit = body.requested_tokens() or current_app.config["DEFAULT_MAX_NEW_TOKENS"]
    if body.min_tokens > limit:
        message = f"min_tokens ({body.min_tokens}) must be at most the maximum tokens ({limit})"
        raise APIError(422, "invalid_fields", message, param="min_tokens",
                       details=[{"field": "min_tokens", "message": message}])
    return pipeline.start(ids, limit, param=param, stream=body.stream,
                          temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                          min_new_tokens=body.min_new_tokens(limit),
                          cache_salt=body.cache_salt)


class _Chunks:
    """The fields every chunk of one streamed answer repeats, and its usage."""

    def __init__(self, kind: str, body: CompletionBody | ChatBody, prompt_tokens: int,
                 job: Job) -> None:
        prefix = "chatcmpl" if kind == "chat.completion.chunk" else "cmpl"
        self.head = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind,
                     "created": int(time.time()), "model": _loaded().name}
        self.include_usage = body.include_usage
        self.continuous_usage = body.continuous_usage
        self.prompt_tokens = prompt_tokens
        self.job = job  # its cached prompt tokens are known once it has joined

    def event(self, choice: dict[str, Any], completion_tokens: int = 0) -> str:
        """A chunk with one choice: ``"usage": null`` when usage comes at the end, the usage
        so far when it is continuous (vLLM's ``continuous_usage_stats``)."""
        chunk = {**self.head, "choices": [{"index": 0, **choice, "logprobs": None}]}
        if self.continuous_usage:
            return sse({**chunk, "usage": _usage(self.prompt_tokens, completion_tokens)})
        return sse({**chunk, "usage": None} if self.include_usage else chunk)

    def ending(self, outcome: StreamedGeneration) -> Iterator[str]:
        """The usage chunk (``choices: []``) if asked for, then [DONE]."""
        if self.include_usage:
            yield sse({**self.head, "choices": [],
                       "usage": _usage(self.prompt_tokens, len(outcome.token_ids),
                                       self.job.cached_tokens)})
        yield DONE


@bp.post("/completions")
@routing.declare(routing.OPENAI_GENERATION)
def completions() -> Response:
    """Continue ``prompt`` (OpenAI's legacy completions API)."""
    body = pipeline.parse_body(CompletionBody)
    tokenizer = _loaded().tokenizer
    ids = tokenizer.encode(body.prompt)
    job = _start(body, ids, param="prompt")
    if body.stream:
        chunks = _Chunks("text_completion", body, len(ids), job)

        def render(deltas: Iterator[Delta], outcome: StreamedGeneration) -> Iterator[str]:
            for delta in deltas:
                yield chunks.event({"text": delta.text, "finish_reason": None},
                                   delta.completion_tokens)
            yield chunks.event({"text": "", "finish_reason": outcome.finish_reason},
                               len(outcome.token_ids))
            yield from chunks.ending(outcome)

        return open_stream(job, tokenizer, render)
    result = pipeline.wait_for(job)
    return _answer("text_completion", "cmpl", {
        "index": 0, "logprobs": None, "finish_reason": result.finish_reason,
        "text": tokenizer.decode(result.token_ids, skip_special_tokens=True)},
        _usage(len(ids), len(result.token_ids), job.cached_tokens))


@bp.post("/chat/completions")
@routing.declare(routing.OPENAI_GENERATION)
def chat_completions() -> Response:
    """Answer the conversation in ``messages`` as the assistant."""
    body = pipeline.parse_body(ChatBody)
    tokenizer = _loaded().tokenizer
    ids = chat_ids(tokenizer, [{"role": m.role, "content": m.text} for m in body.messages])
    job = _start(body, ids, param="messages")
    if body.stream:
        chunks = _Chunks("chat.completion.chunk", body, len(ids), job)

        def render(deltas: Iterator[Delta], outcome: StreamedGeneration) -> Iterator[str]:
            yield chunks.event({"delta": {"role": "assistant", "content": ""},
                                "finish_reason": None})
            for delta in deltas:
                yield chunks.event({"delta": {"content": delta.text}, "finish_reason": None},
                                   delta.completion_tokens)
            yield chunks.event({"delta": {}, "finish_reason": outcome.finish_reason},
                               len(outcome.token_ids))
            yield from chunks.ending(outcome)

        return open_stream(job, tokenizer, render)
    result = pipeline.wait_for(job)
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    return _answer("chat.completion", "chatcmpl", {
        "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
        "finish_reason": result.finish_reason},
        _usage(len(ids), len(result.token_ids), job.cached_tokens))


@bp.get("/models")
@routing.declare(routing.OPENAI)
def models() -> Response:
    """The one model this server serves."""
    return jsonify(ModelList(object="list", data=[
        {"id": _loaded().name, "object": "model",
         "created": current_app.extensions["openai_created"], "owned_by": "gpt-load-lab"}],
    ).model_dump())
