"""Rate limits: ``RATE_LIMIT`` per API key plus a ``GLOBAL_RATE_LIMIT`` ceiling (flask-limiter).

Counted in ``RATELIMIT_STORAGE_URI``: with ``redis://`` the counts are exact across every
worker and host; with ``memory://`` each Gunicorn worker counts on its own (a key then gets
up to ``workers x RATE_LIMIT``; gunicorn.conf.py warns at startup). The moving-window
strategy is used so N rapid requests are counted exactly, not per clock-aligned window.

Checks run in a ``before_request`` registered after auth's, so the key id is known and no
model work has started; routes declared public (``server.web.routing``) are exempt.

Redis going away mid-run: flask-limiter's in-memory fallback. The first failed call switches
the worker to its own in-memory counters (a warning is logged), so the API stays up and keys
stay limited, per worker, instead of the whole API failing with Redis; the worker retries
Redis with backoff (1, 2, 4 ... 32 s) and switches back when it answers. Short socket
timeouts and no client retries keep a dead Redis from stalling requests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from limits import parse_many
from limits.errors import StorageError
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.config import ConfigError
from server.web import routing
from server.web.accounting import record
from server.web.errors import error_response

log = logging.getLogger(__name__)

# Seconds to wait for Redis before treating it as down (then the in-memory fallback serves).
_REDIS_TIMEOUT_S = 0.5
# Storage scopes of the two limits (part of their Redis keys): one counter per API key for
# all routes together, and one for everything.
_KEY_SCOPE, _GLOBAL_SCOPE = "per-key", "global"


def limit_key() -> str:
    """What a request is counted under: its key id, or its address when anonymous."""
    key_id = record().key_id
    return f"key:{key_id}" if key_id else f"ip:{request.remote_addr}"


def redact_uri(uri: str) -> str:
    """The storage URI with any password replaced, fit for a log line."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def per_worker_warning(config: Mapping[str, Any], workers: int) -> str | None:
    """The startup warning for limits counted separately by each of ``workers``, if any."""
    limited = config["RATE_LIMIT"] or config["GLOBAL_RATE_LIMIT"]
    if workers > 1 and limited and config["RATELIMIT_STORAGE_URI"].startswith("memory://"):
        return (f"rate limits use memory:// with {workers} workers: each worker counts on its "
                f"own, so a key may get up to {workers}x RATE_LIMIT; set "
                "RATELIMIT_STORAGE_URI=redis://host:6379 for exact limits")
    return None


def _is_public() -> bool:
    return routing.current().public


def _limit_string(config: Mapping[str, Any], name: str) -> str:
    value = str(config[name]).strip()
    try:
        value and parse_many(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a rate limit; use e.g. "
                          "'120/minute;10/second' (units: second, minute, hour, day)") from None
    return value


def _storage_options(uri: str) -> dict[str, Any]:
    # Every storage failure raises limits' StorageError, whatever the backend.
    if not uri.startswith(("redis://", "rediss://", "redis+unix://")):
        return {"wrap_exceptions": True}
    return {"wrap_exceptions": True, "socket_timeout": _REDIS_TIMEOUT_S,
            "socket_connect_timeout": _REDIS_TIMEOUT_S, "retry": Retry(NoBackoff(), 0)}


class _Limiter(Limiter):
    """flask-limiter's Limiter with its switch to the in-memory fallback made thread-safe.

    When several request threads meet a dead Redis at once, flask-limiter switches on the
    first failure and re-raises the others (a 500, found by tests/test_limits.py): those
    are checked again, against the fallback.
    """

    def _check_request_limit(self, callable_name: str | None = None,
                             in_middleware: bool = True) -> None:
        try:
            super()._check_request_limit(callable_name, in_middleware)
        except StorageError:
            if not (self._storage_dead and self._fallback_limiter):
                raise
            self.context.seen_limits.clear()
            super()._check_request_limit(callable_name, in_middleware)


def _headers_never_fail(app: Flask) -> None:
    """Wrap the header hook flask-limiter just registered: if the storage dies between the
    check and the response, the response goes out without X-RateLimit-* instead of a 500."""
    hooks = app.after_request_funcs.setdefault(None, [])
    inject = hooks[-1]
    if not isinstance(inject, partial):  # pinned flask-limiter registers a partial
        raise RuntimeError("flask-limiter's header hook not found; check its version")

    def inject_headers(response: Response) -> Response:
        try:
            return inject(response)
        except StorageError:
            log.warning("rate-limit headers skipped: limit storage unreachable")
            return response

    hooks[-1] = inject_headers


def _rate_limited(error: RateLimitExceeded) -> Response:
    scope = "key" if error.limit.scope == _KEY_SCOPE else "global"
    who = "the server's global" if scope == "global" else "this API key's"
    return error_response(429, "rate_limited", f"{who} rate limit of {error.limit.limit} "
                          "is used up; retry after the Retry-After seconds",
                          details={"limit": str(error.limit.limit), "scope": scope})


def init_app(app: Flask) -> None:
    """Count requests per key and globally; answer 429 in the envelope with the headers."""
    config = app.config
    uri = config["RATELIMIT_STORAGE_URI"]
    per_key = _limit_string(config, "RATE_LIMIT")
    ceiling = _limit_string(config, "GLOBAL_RATE_LIMIT")
    limiter = _Limiter(
        key_func=limit_key,
        # Application limits, not default limits: those are counted per route, so a key got
        # RATE_LIMIT on each of the five routes (found by the scale-out test behind nginx).
        application_limits=[
            *([ApplicationLimit(per_key, key_function=limit_key, scope=_KEY_SCOPE,
                                exempt_when=_is_public)] if per_key else []),
            # One counter for all keys together.
            *([ApplicationLimit(ceiling, key_function=lambda: "all", scope=_GLOBAL_SCOPE,
                                exempt_when=_is_public)] if ceiling else []),
        ],
        storage_uri=uri,
        storage_options=_storage_options(uri),
        strategy="moving-window",
        headers_enabled=True,
        in_memory_fallback_enabled=True,
        key_prefix="gpt-load-lab",
    )
    limiter.init_app(app)
    _headers_never_fail(app)
    app.extensions["rate_limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    log.info("rate limits: per key %r, global %r, storage %s", config["RATE_LIMIT"] or "off",
             config["GLOBAL_RATE_LIMIT"] or "off", redact_uri(uri))
