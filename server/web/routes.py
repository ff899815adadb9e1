"""HTTP routes: the three task routes (JSON, or SSE with ``"stream": true``), /health, /ready."""

from __future__ import annotations

import torch
from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel

from server.engine.jobs import Job
from server.web import operator_auth, pipeline, routing
from server.web.answers import Completion, Timings, Usage
from server.web.errors import APIError
from server.web.prompts import tokenize
from server.web.schemas import AnswerBody, GenerateBody, SummarizeBody
from server.web.service import ModelService
from server.web.streaming import task_stream

bp = Blueprint("api", __name__)


def _service() -> ModelService:
    return current_app.extensions["model_service"]


def _generate(task: str, body: BaseModel, fields: dict[str, str]) -> Response:
    loaded = _service().loaded
    ids = tokenize(loaded.tokenizer, task, fields)
    sampling = {k: getattr(body, k) for k in ("temperature", "top_p", "seed") if hasattr(body, k)}
    job = pipeline.start(ids, body.max_new_tokens, param=next(iter(fields)),
                         stream=body.stream, cache_salt=body.cache_salt, **sampling)

    def answer(text: str, token_ids: list[int], finish_reason: str) -> Completion:
        return Completion(text=text, model=loaded.name, finish_reason=finish_reason,
                          usage=Usage(prompt_tokens=len(ids), completion_tokens=len(token_ids)),
                          timings_ms=timings_ms(job))

    if body.stream:  # the last event is the answer with its text already sent
        return task_stream(job, loaded.tokenizer, lambda done: answer(
            "", done.token_ids, done.finish_reason).model_dump())
    result = pipeline.wait_for(job)
    text = loaded.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    return jsonify(answer(text, result.token_ids, result.finish_reason).model_dump())


def timings_ms(job: Job) -> Timings:
    """The ``timings_ms`` object of a task answer: queue, inference and their total."""
    return Timings(queue=round(job.queue_ms, 2), inference=round(job.inference_ms, 2),
                   total=round(job.queue_ms + job.inference_ms, 2))


@bp.post("/generate-text")
@routing.declare(routing.TASK)
def generate_text() -> Response:
    """Continue a prompt."""
    body = pipeline.parse_body(GenerateBody)
    return _generate("generate", body, {"prompt": body.prompt})


@bp.post("/summarize-text")
@routing.declare(routing.TASK)
def summarize_text() -> Response:
    """Summarize a text."""
    body = pipeline.parse_body(SummarizeBody)
    return _generate("summarize", body, {"text": body.text})


@bp.post("/answer-question")
@routing.declare(routing.TASK)
def answer_question() -> Response:
    """Answer a question, optionally from a context."""
    body = pipeline.parse_body(AnswerBody)
    return _generate("answer", body, {"question": body.question, "context": body.context})


@bp.get("/health")
@routing.declare(routing.PROBE)
def health() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


# Limits a load test's run.json records from /ready (locustfiles/server_facts.py).
READY_LIMITS = ("MAX_QUEUE", "MAX_IN_FLIGHT", "REQUEST_TIMEOUT_S", "ADMIT_PREDICTED",
                "MAX_NEW_TOKENS_CAP", "MAX_INPUT_CHARS", "RATE_LIMIT", "GLOBAL_RATE_LIMIT")


@bp.get("/ready")
@routing.declare(routing.PROBE)
def ready() -> Response:
    """Readiness: this worker has loaded the model and finished its warm-up.

    Probes get ``{"status": "ready"}``; the operator credential adds the details (model,
    precision, kernels, the code path with its reasons, limits: server/web/operator_auth.py).
    """
    service = _service()
    service.start()
    if not service.ready.is_set():
        raise APIError(503, "not_ready", "model is warming up", retry_after_s=1)
    if not operator_auth.granted():
        return jsonify({"status": "ready"})
    loaded = service.loaded
    return jsonify({"status": "ready", "model": loaded.name,
                    "dtype": loaded.precision, "kernels": loaded.kernels.as_dict(),
                    "code_path": service.scheduler.engine.path.as_dict(),
                    "max_batch_size": current_app.config["MAX_BATCH_SIZE"],
                    "prefill_chunk": current_app.config["PREFILL_CHUNK"],
                    "kv_dtype": service.scheduler.engine.kv_dtype,  # as resolved
                    "kv_tokens": service.scheduler.kv_tokens,  # as resolved
                    "prefix_cache_rows": current_app.config["PREFIX_CACHE_ROWS"],
                    "forecast": service.scheduler.forecast_state(),
                    "torch_threads": torch.get_num_threads(),
                    "threads_shared": service.cores.sharing,
                    "limits": {key.lower(): current_app.config[key] for key in READY_LIMITS}})
