"""HTTP routes: the three task routes (JSON, or SSE with ``"stream": true``), /health, /ready."""

from __future__ import annotations

import queue
from typing import Any, TypeVar

import torch
from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from server.decoding import Generation, GenerationRequest
from server.errors import APIError
from server.jobs import Job, QueueFull
from server.scheduler import WouldTimeOut
from server.schemas import TOO_LONG, AnswerBody, GenerateBody, SummarizeBody
from server.service import ModelService
from server.streaming import task_stream
from server.tasks import check_budget, tokenize

bp = Blueprint("api", __name__)
Body = TypeVar("Body", bound=BaseModel)


def _service() -> ModelService:
    return current_app.extensions["model_service"]


def _field_errors(error: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in error.errors(include_url=False, include_input=False)]


def parse_body(schema: type[Body]) -> Body:
    """Validate the JSON body against ``schema``: 400/415 unreadable, 413/422 invalid."""
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
        raise APIError(status, code, f"invalid field(s): {fields}", details=details) from None


def submit(ids: list[int], max_new_tokens: int, sampling: dict[str, Any],
           stream: bool = False) -> Job:
    """Queue this request's generation on the worker's scheduler (503 when the queue is full).

    With ``stream``, the job gets a queue that receives each token as it is generated.
    """
    service, config = _service(), current_app.config
    service.start()  # no-op under Gunicorn (started post-fork); lazy in tests and dev
    g.prompt_tokens = len(ids)
    job = Job(GenerationRequest(ids, max_new_tokens, **sampling))
    if stream:
        job.stream = queue.SimpleQueue()
    try:
        g.job = service.scheduler.submit(job)
    except WouldTimeOut as refused:
        raise APIError(503, "overloaded",
                       f"server is busy: this request would finish in about "
                       f"{refused.predicted_s:.0f} s, past the {config['REQUEST_TIMEOUT_S']:g} s "
                       "timeout; retry later", retry_after_s=config["RETRY_AFTER_S"]) from None
    except QueueFull:
        raise APIError(503, "overloaded", "server is at capacity; retry later",
                       retry_after_s=config["RETRY_AFTER_S"]) from None
    return job


def wait_for(job: Job) -> Generation:
    """The finished generation: 504 after REQUEST_TIMEOUT_S (slot freed), 500 on failure."""
    timeout_s = current_app.config["REQUEST_TIMEOUT_S"]
    if not job.wait(timeout_s):
        job.cancelled = True  # the generation thread drops it at the next token
        raise APIError(504, "generation_timeout",
                       f"generation did not finish within {timeout_s} s")
    if job.error is not None:
        raise APIError(500, "generation_failed", "generation failed")
    g.completion_tokens = len(job.result.token_ids)
    return job.result


def _generate(task: str, body: BaseModel, fields: dict[str, str]) -> Response:
    loaded, config = _service().loaded, current_app.config
    max_new_tokens = body.max_new_tokens or config["DEFAULT_MAX_NEW_TOKENS"]
    ids = tokenize(loaded.tokenizer, task, fields)
    check_budget(len(ids), max_new_tokens, loaded.context_window)
    sampling: dict[str, Any] = {k: getattr(body, k) for k in ("temperature", "top_p", "seed")
                                if hasattr(body, k)}
    job = submit(ids, max_new_tokens, sampling, stream=body.stream)
    if body.stream:
        return task_stream(job, loaded.tokenizer, lambda done: {
            "model": loaded.name, "finish_reason": done.finish_reason,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(done.token_ids)},
            "timings_ms": timings_ms(job)})
    result = wait_for(job)
    return jsonify({
        "text": loaded.tokenizer.decode(result.token_ids, skip_special_tokens=True),
        "model": loaded.name,
        "finish_reason": result.finish_reason,
        "usage": {"prompt_tokens": len(ids), "completion_tokens": len(result.token_ids)},
        "timings_ms": timings_ms(job),
    })


def timings_ms(job: Job) -> dict[str, float]:
    """The ``timings_ms`` object of a task answer: queue, inference and their total."""
    return {"queue": round(job.queue_ms, 2), "inference": round(job.inference_ms, 2),
            "total": round(job.queue_ms + job.inference_ms, 2)}


@bp.post("/generate-text")
def generate_text() -> Response:
    """Continue a prompt."""
    body = parse_body(GenerateBody)
    return _generate("generate", body, {"prompt": body.prompt})


@bp.post("/summarize-text")
def summarize_text() -> Response:
    """Summarize a text."""
    body = parse_body(SummarizeBody)
    return _generate("summarize", body, {"text": body.text})


@bp.post("/answer-question")
def answer_question() -> Response:
    """Answer a question, optionally from a context."""
    body = parse_body(AnswerBody)
    return _generate("answer", body, {"question": body.question, "context": body.context})


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


# Limits a load test's run.json records from /ready (locustfiles/server_facts.py).
READY_LIMITS = ("MAX_QUEUE", "MAX_IN_FLIGHT", "REQUEST_TIMEOUT_S", "ADMIT_PREDICTED",
                "MAX_NEW_TOKENS_CAP", "MAX_INPUT_CHARS", "RATE_LIMIT", "GLOBAL_RATE_LIMIT")


@bp.get("/ready")
def ready() -> Response:
    """Readiness: this worker has loaded the model and finished its warm-up."""
    service = _service()
    service.start()
    if not service.ready.is_set():
        raise APIError(503, "not_ready", "model is warming up", retry_after_s=1)
    loaded = service.loaded
    return jsonify({"status": "ready", "model": loaded.name,
                    "dtype": loaded.precision, "kernels": loaded.kernels.as_dict(),
                    "max_batch_size": current_app.config["MAX_BATCH_SIZE"],
                    "prefill_chunk": current_app.config["PREFILL_CHUNK"],
                    "torch_threads": torch.get_num_threads(),
                    "threads_shared": service.cores.sharing,
                    "limits": {key.lower(): current_app.config[key] for key in READY_LIMITS}})
