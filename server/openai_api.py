"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions and /v1/models.

Same path through the server as the task routes: API key (``Authorization: Bearer``), rate
limits, body validation, the worker's scheduler, memory headers and the request log; only the
shapes are OpenAI's (responses, SSE chunks, and errors as ``{"error": {"message", "type",
"param", "code"}}``, see ``server.errors``). So OpenAI clients and load generators (the
``openai`` package, vLLM's and guidellm's benchmarks, our own ``--target openai`` Locust
mode) can drive this server, and our suite can drive theirs.

Chat prompts go through the tokenizer's chat template when it has one; otherwise (base
models, the synthetic ones) they become a plain role-prefixed prompt (``plain_chat_prompt``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from server.errors import APIError
from server.openai_schemas import ChatBody, CompletionBody, Message
from server.routes import parse_body, submit, wait_for
from server.streaming import DONE, StreamedGeneration, open_stream, sse
from server.tasks import check_budget

bp = Blueprint("openai", __name__, url_prefix="/v1")

# Speaker labels of the plain prompt ("developer" is OpenAI's newer name for "system").
ROLE_LABELS = {"system": "System", "developer": "System", "user": "User",
               "assistant": "Assistant"}


def plain_chat_prompt(messages: Sequence[Message]) -> str:
    """The prompt of a tokenizer without a chat template: one "Role: text" line each.

    ``System: ...\\nUser: ...\\nAssistant:``; the model continues after the final label.
    """
    lines = [f"{ROLE_LABELS[m.role]}: {m.text.strip()}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def chat_prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of a conversation, through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text} for m in messages],
            add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return tokenizer.encode(plain_chat_prompt(messages))


def _loaded():
    return current_app.extensions["model_service"].loaded


def _check_model(requested: str | None) -> None:
    served = _loaded().name
    if requested is not None and requested != served:
        raise APIError(404, "model_not_found",
                       f"model {requested!r} is not served here; use {served!r}")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _start(body: CompletionBody | ChatBody, ids: list[int]):
    """Check the model and token budget, then queue the generation; return the job."""
    _check_model(body.model)
    loaded = _loaded()
    max_new_tokens = body.requested_tokens() or current_app.config["DEFAULT_MAX_NEW_TOKENS"]
    check_budget(len(ids), max_new_tokens, loaded.context_window)
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed}
    return submit(ids, max_new_tokens, sampling, stream=body.stream)


class _Chunks:
    """The fields every chunk of one streamed answer repeats."""

    def __init__(self, kind: str, body: CompletionBody | ChatBody, prompt_tokens: int) -> None:
        prefix = "chatcmpl" if kind == "chat.completion.chunk" else "cmpl"
        self.head = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind,
                     "created": int(time.time()), "model": _loaded().name}
        self.include_usage = body.include_usage
        self.prompt_tokens = prompt_tokens

    def event(self, choice: dict[str, Any]) -> str:
        """A chunk with one choice (``"usage": null`` when usage comes at the end)."""
        chunk = {**self.head, "choices": [{"index": 0, **choice, "logprobs": None}]}
        return sse({**chunk, "usage": None} if self.include_usage else chunk)

    def ending(self, outcome: StreamedGeneration) -> Iterator[str]:
        """The usage chunk (``choices: []``) if asked for, then [DONE]."""
        if self.include_usage:
            yield sse({**self.head, "choices": [],
                       "usage": _usage(self.prompt_tokens, len(outcome.token_ids))})
        yield DONE


@bp.post("/completions")
def completions() -> Response:
    """Continue ``prompt`` (OpenAI's legacy completions API)."""
    body = parse_body(CompletionBody)
    tokenizer = _loaded().tokenizer
    ids = tokenizer.encode(body.prompt)
    job = _start(body, ids)
    if body.stream:
        chunks = _Chunks("text_completion", body, len(ids))

        def render(deltas: Iterator[str], outcome: StreamedGeneration) -> Iterator[str]:
            for text in deltas:
                yield chunks.event({"text": text, "finish_reason": None})
            yield chunks.event({"text": "", "finish_reason": outcome.finish_reason})
            yield from chunks.ending(outcome)

        return open_stream(job, tokenizer, render)
    result = wait_for(job)
    return jsonify({
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
        "created": int(time.time()), "model": _loaded().name,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": result.finish_reason,
                     "text": tokenizer.decode(result.token_ids, skip_special_tokens=True)}],
        "usage": _usage(len(ids), len(result.token_ids)),
    })


@bp.post("/chat/completions")
def chat_completions() -> Response:
    """Answer the conversation in ``messages`` as the assistant."""
    body = parse_body(ChatBody)
    tokenizer = _loaded().tokenizer
    ids = chat_prompt_ids(tokenizer, body.messages)
    job = _start(body, ids)
    if body.stream:
        chunks = _Chunks("chat.completion.chunk", body, len(ids))

        def render(deltas: Iterator[str], outcome: StreamedGeneration) -> Iterator[str]:
            yield chunks.event({"delta": {"role": "assistant", "content": ""},
                                "finish_reason": None})
            for text in deltas:
                yield chunks.event({"delta": {"content": text}, "finish_reason": None})
            yield chunks.event({"delta": {}, "finish_reason": outcome.finish_reason})
            yield from chunks.ending(outcome)

        return open_stream(job, tokenizer, render)
    result = wait_for(job)
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    return jsonify({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": _loaded().name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": _usage(len(ids), len(result.token_ids)),
    })


@bp.get("/models")
def models() -> Response:
    """The one model this server serves."""
    return jsonify({"object": "list", "data": [
        {"id": _loaded().name, "object": "model",
         "created": current_app.extensions["openai_created"], "owned_by": "gpt-load-lab"}]})


def init_app(app: Flask) -> None:
    """Serve the /v1 routes (after auth and limits, which apply to them as to every route)."""
    app.extensions["openai_created"] = int(time.time())  # the model's "created" stamp
    app.register_blueprint(bp)
