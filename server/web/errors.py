"""One JSON error envelope for every failure: {"error": {"code", "message", "details"?}}.

Routes declared ``openai`` (``server.web.routing``: the /v1 family) use OpenAI's shape and
statuses instead: {"error": {"message", "type", "param", "code"}}, and an invalid request (our
422, or a 413 for an over-long text or prompt) is OpenAI's and vLLM's 400
``invalid_request_error``, so OpenAI clients raise their usual ``BadRequestError``.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from server.web import routing

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a view raises; rendered as the JSON envelope with its status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        retry_after_s: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s
        self.param = param  # the request field at fault (OpenAI's "param")


# OpenAI's error "type" by status, for the /v1 routes (OpenAI clients read type and code).
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 429: "rate_limit_error"}
# Our codes that OpenAI (and vLLM) answer as 400 invalid_request_error: invalid fields (our
# 422), an over-long text field, and a prompt that does not fit the context (our 413s).
_OPENAI_BAD_REQUEST = frozenset({"invalid_fields", "input_too_long", "prompt_too_long"})


def openai_status(status: int, code: str) -> int:
    """The status an OpenAI-shaped route answers for our (``status``, ``code``)."""
    return 400 if code in _OPENAI_BAD_REQUEST else status


def _openai_error(status: int, code: str, message: str, param: str | None) -> dict[str, Any]:
    """OpenAI's error object: message, type, param (the first invalid field), code."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"message": message, "type": kind, "param": param, "code": code}


def error_body(status: int, code: str, message: str, details: Any = None,
               param: str | None = None) -> dict[str, Any]:
    """The object under "error": OpenAI's shape on ``openai`` routes, ours everywhere else."""
    if routing.current().openai:
        return _openai_error(openai_status(status, code), code, message, param)
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return body


def error_response(
    status: int, code: str, message: str, details: Any = None, retry_after_s: int | None = None,
    param: str | None = None,
) -> Response:
    """Build the envelope response (used by handlers and by non-view refusals)."""
    if has_request_context():  # the request log's "error": the code and, if named, its reason
        reason = details.get("reason") if isinstance(details, dict) else None
        g.error_code = f"{code}:{reason}" if reason else code
    response = jsonify({"error": error_body(status, code, message, details, param)})
    response.status_code = (openai_status(status, code) if routing.current().openai
                            else status)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


# Werkzeug's HTTP errors mapped to stable machine-readable codes.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _handle_api_error(error: APIError) -> Response:
    return error_response(error.status, error.code, error.message, error.details,
                          error.retry_after_s, error.param)


def _handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    message = error.description or error.name
    if status == 413 and request.content_length:
        message = (f"request body of {request.content_length} bytes is over the limit of "
                   f"{current_app.config['MAX_CONTENT_LENGTH']} bytes (MAX_CONTENT_LENGTH)")
    allowed = getattr(error, "valid_methods", None) if status == 405 else None
    if allowed:
        message = f"Method not allowed; use one of: {', '.join(allowed)}"
    response = error_response(status, code, message)
    if allowed:
        response.headers["Allow"] = ", ".join(allowed)  # required on 405 (RFC 9110)
    return response


def _handle_unexpected(error: Exception) -> Response:
    # Log the type and where it was raised, not the message or the trace: both can carry
    # request data (and, in a bad day, a credential) into the log.
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f"{frame.filename}:{frame.lineno}" if frame else "?"
    log.error("unhandled %s at %s", type(error).__name__, where)
    return error_response(500, "internal_error", "Internal server error")


def register_error_handlers(app: Flask) -> None:
    """Render APIError, HTTP errors and unexpected exceptions as the JSON envelope."""
    app.register_error_handler(APIError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
