"""Why a request failed: typed failures the users report, and the reason requests.csv records.

The users pass these exceptions to ``response.failure(...)``, so Locust's failure table
groups them by a fixed message and the request recorder reads ``reason`` off the exception
instead of parsing message text.
"""

from __future__ import annotations

import requests

# Every value the failure_reason column of requests.csv can hold ("" = success).
REASONS = ("rate_limited", "overloaded", "timeout", "bad_body", "connection_error")


class RequestFailure(Exception):
    """A failed request, with the short machine-readable ``reason`` for requests.csv."""

    reason = "http_error"


class RateLimited(RequestFailure):
    """HTTP 429: the API key's rate limit was hit."""

    reason = "rate_limited"


class Overloaded(RequestFailure):
    """HTTP 503: the worker's queue is full (or it is not ready yet)."""

    reason = "overloaded"


class GenerationTimeout(RequestFailure):
    """HTTP 504: the server gave up on the generation."""

    reason = "timeout"


class BadBody(RequestFailure):
    """A 2xx response whose body is not the documented completion envelope."""

    reason = "bad_body"


class HTTPFailure(RequestFailure):
    """Any other non-2xx status, recorded as ``http_<code>``."""

    def __init__(self, status_code: int, code: str = "") -> None:
        super().__init__(f"HTTP {status_code} {code}".rstrip())
        self.reason = f"http_{status_code}"


def failure_for_status(status_code: int, code: str = "") -> RequestFailure:
    """The failure to report for a non-2xx ``status_code`` (``code`` from the error body)."""
    if status_code == 429:
        return RateLimited("HTTP 429 rate limited")
    if status_code == 503:
        return Overloaded(f"HTTP 503 {code or 'overloaded'}")
    if status_code == 504:
        return GenerationTimeout("HTTP 504 generation timed out")
    return HTTPFailure(status_code, code)


def failure_reason(status_code: int, exception: BaseException | None) -> str:
    """The failure_reason column: "" for success, else one of REASONS or ``http_<code>``."""
    if exception is None:
        return ""
    if isinstance(exception, RequestFailure):
        return exception.reason
    if isinstance(exception, requests.Timeout):
        return "timeout"
    if status_code == 0:
        return "connection_error"
    if status_code >= 300:
        return failure_for_status(status_code).reason
    return "bad_body"  # a 2xx the user marked failed with some other exception
