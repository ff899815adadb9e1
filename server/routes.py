"""HTTP routes: the three task routes (JSON, or SSE with ``"stream": true``), /health, /ready."""

from __future__ import annotations

import torch
from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel

from server import pipeline, routing
from server.batching import Job
from server.errors import APIError
from server.prompts import tokenize
from server.schemas import AnswerBody, GenerateBody, SummarizeBody
from server.service import ModelService
from server.streaming import task_stream

bp = Blueprint("api", __name__)


def _service() -> ModelService:
    return current_app.extensions["model_service"]


def _generate(task: str, body: BaseModel, fields: dict[str, str]) -> Response:
    loaded = _service().loaded
    ids = tokenize(loaded.tokenizer, task, fields)
    sampling = {k: getattr(body, k) for k in ("temperature", "top_p", "seed") if hasattr(body, k)}
    job = pipeline.start(ids, body.max_new_tokens, param=next(iter(fields)),
                         stream=body.stream, **sampling)
    if body.stream:
        return task_stream(job, loaded.tokenizer, lambda done: {
            "model": loaded.name, "finish_reason": done.finish_reason,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(done.token_ids)},
            "timings_ms": timings_ms(job)})
    result = pipeline.wait_for(job)
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


@bp.get("/ready")
@routing.declare(routing.PROBE)
def ready() -> Response:
    """Readiness: this worker has loaded the model and finished its warm-up."""
    service = _service()
    service.start()
    if not service.ready.is_set():
        raise APIError(503, "not_ready", "model is warming up", retry_after_s=1)
    loaded = service.loaded
    return jsonify({"status": "ready", "model": loaded.name,
                    "dtype": loaded.precision, "kernels": loaded.kernels.as_dict(),
                    "scheduler": current_app.config["SCHEDULER"],
                    "max_batch_size": current_app.config["MAX_BATCH_SIZE"],
                    "prefill_chunk": current_app.config["PREFILL_CHUNK"],
                    "torch_threads": torch.get_num_threads()})
