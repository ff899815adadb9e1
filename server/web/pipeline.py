"""One generation pipeline for both route families: parse, budget, submit, wait or stream.

The task routes (``server.web.routes``) and the OpenAI-compatible ones
(``server.web.openai_compat``)
differ only in their shapes; every step between the body and the answer is here, and fills
the request's record (``server.web.accounting``) as it goes: prompt tokens when the job is
queued, completion tokens when it ends.
"""

from __future__ import annotations

import queue
from typing import TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from server.engine.decoding import Generation, GenerationRequest
from server.engine.fair_queue import TenantQueueFull
from server.engine.jobs import Job, QueueFull
from server.engine.scheduler import WouldTimeOut
from server.web.accounting import record
from server.web.errors import APIError
from server.web.validation import TOO_LONG

Body = TypeVar("Body", bound=BaseModel)


def _field_errors(error: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in error.errors(include_url=False, include_input=False)]


def parse_body(schema: type[Body]) -> Body:
    """Validate the JSON body against ``schema``: 400/415 unreadable, 413/422 invalid.

    (An OpenAI-shaped route answers 400 for the 413/422 ones, see ``server.web.errors``.)
    """
    if not request.is_json:
        raise APIError(415, "unsupported_media_type",
                       "send the body as JSON with Content-Type: application/json")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # "[[[[...": nesting deeper than the parser's recursion limit
        data = None
    if data is None:
        raise APIError(400, "malformed_json", "request body is not valid JSON")
    if not isinstance(data, dict):
        raise APIError(400, "malformed_json", "request body must be a JSON object")
    config = current_app.config
    context = {"max_new_tokens_cap": config["MAX_NEW_TOKENS_CAP"],
               "max_input_chars": config["MAX_INPUT_CHARS"]}
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as error:
        details = _field_errors(error)
        fields = ", ".join(d["field"] for d in details)
        too_long = all(e["type"] == TOO_LONG for e in error.errors())
        status, code = (413, "input_too_long") if too_long else (422, "invalid_fields")
        raise APIError(status, code, f"invalid field(s): {fields}", details=details,
                       param=details[0]["field"]) from None


def check_budget(prompt_tokens: int, max_new_tokens: int, context_window: int,
                 param: str, kv_limit: int = 0) -> None:
    """Raise 413 when the prompt (field ``param``) plus the requested tokens do not fit the
    model's context, or the most KV positions one request may reserve (``kv_limit``, 0:
    none)."""
    limit, what = context_window, f"the model's {context_window}-token context"
    if 0 < kv_limit < context_window:
        limit, what = kv_limit, f"this server's limit of {kv_limit} positions per request"
    if prompt_tokens + max_new_tokens > limit:
        raise APIError(
            413, "prompt_too_long",
            f"prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}; "
            f"together they must fit {what}",
            details={"prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens,
                     "context_window": context_window, "limit": limit}, param=param)


def request_kv_limit(config: dict, kv_tokens: int) -> int:
    """The most KV positions one request may reserve (0: no limit): MAX_REQUEST_KV_TOKENS,
    else the worker's whole KV budget ``kv_tokens`` (as resolved, server.engine.kv_budget)."""
    return config["MAX_REQUEST_KV_TOKENS"] or kv_tokens


def submit(generation: GenerationRequest, stream: bool = False) -> Job:
    """Queue the generation on the worker's scheduler (503 when it cannot take it in time).

    With ``stream``, the job gets a queue that receives each token as it is generated.
    """
    service, config = current_app.extensions["model_service"], current_app.config
    service.start()  # no-op under Gunicorn (started post-fork); lazy in tests and dev
    rec = record()
    rec.prompt_tokens = len(generation.input_ids)
    job = Job(generation)
    if stream:
        job.stream = queue.SimpleQueue()
    try:
        rec.job = service.scheduler.submit(job)
    except WouldTimeOut as refused:
        raise job_failure(refused) from None
    except TenantQueueFull:
        raise APIError(429, "key_share_full",
                       "this API key already has its share of the queue "
                       f"(KEY_MAX_QUEUE={service.scheduler.tenant_queue}); retry later",
                       retry_after_s=config["RETRY_AFTER_S"], details={"scope": "key"}) from None
    except QueueFull:
        raise APIError(503, "overloaded", "server is at capacity; retry later",
                       retry_after_s=config["RETRY_AFTER_S"],
                       details={"scope": "server", "reason": "queue"}) from None
    return job


def start(ids: list[int], max_new_tokens: int | None, *, param: str, stream: bool = False,
          temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
          min_new_tokens: int = 0, cache_salt: str | None = None) -> Job:
    """Check the token budget of prompt ``ids`` (field ``param``), then queue it as the
    request's tenant (its key id) with its ``cache_salt``.

    ``max_new_tokens`` None is the server's DEFAULT_MAX_NEW_TOKENS.
    """
    config = current_app.config
    limit = max_new_tokens or config["DEFAULT_MAX_NEW_TOKENS"]
    service = current_app.extensions["model_service"]
    check_budget(len(ids), limit, service.loaded.context_window, param,
                 request_kv_limit(config, service.scheduler.kv_tokens))
    generation = GenerationRequest(ids, limit, temperature, top_p, seed,
                                   min_new_tokens=min(min_new_tokens, limit),
                                   tenant=record().key_id or "", cache_salt=cache_salt or "")
    return submit(generation, stream=stream)


def job_failure(error: BaseException) -> APIError:
    """The answer to a job that ended in ``error``: 503 + Retry-After when it was refused as
    predicted to finish past the timeout (at admission or shed while queued), else 500."""
    config = current_app.config
    if isinstance(error, WouldTimeOut):
        return APIError(503, "overloaded",
                        f"server is busy: this request would finish in about "
                        f"{error.predicted_s:.0f} s, past the {config['REQUEST_TIMEOUT_S']:g} s "
                        "timeout; retry later", retry_after_s=config["RETRY_AFTER_S"],
                        details={"scope": "server", "reason": "forecast"})
    return APIError(500, "generation_failed", "generation failed")


def wait_for(job: Job) -> Generation:
    """The finished generation: 504 after REQUEST_TIMEOUT_S (slot freed), 500 on failure."""
    timeout_s = current_app.config["REQUEST_TIMEOUT_S"]
    if not job.wait(timeout_s):
        job.cancelled = True  # the generation thread drops it at the next token
        raise APIError(504, "generation_timeout",
                       f"generation did not finish within {timeout_s} s")
    if job.error is not None:
        raise job_failure(job.error)
    record().completion_tokens = len(job.result.token_ids)
    return job.result
