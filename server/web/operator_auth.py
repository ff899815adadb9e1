"""The operator credential, and who counts as authenticated for telemetry headers.

Operator surfaces (routes declared ``operator`` in ``server.web.routing``: ``/metrics``) show
the whole server's load: request counts by status, prompt tokens copied from kept caches,
per-worker memory, the kernel table. One tenant must not read another's traffic there, so
they answer only the operator credential: a key from ``OPERATOR_KEYS`` (comma-separated,
``sha256:<64 hex>`` entries allowed, as ``API_KEYS``), sent like a tenant key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. It is a separate credential: a
tenant key does not open an operator surface, and an operator key is not a tenant key
(generation routes answer it 401; a key configured as both stops startup). Without
``OPERATOR_KEYS`` the surfaces are off: 404, and startup says so. ``/ready`` stays open for
probes and adds its details for the operator (``granted()``); ``/health`` stays open.

Per-request telemetry headers (``X-Worker-*``, ``X-Queue-Ms``, ``X-Inference-Ms``,
``X-Batch-Size``; ``server.web.accounting``) go only to authenticated callers: a valid tenant
key, the operator key, or any caller when the server serves without keys by explicit choice
(``ALLOW_ANONYMOUS=1``). This hook runs after auth's: when auth refused the request (401),
it never runs, and the refusal carries no telemetry. Keys are hashed once; nothing here logs
or raises a key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, request

from server.config import ConfigError
from server.web import routing
from server.web.accounting import record
from server.web.auth import KeyRing, _digest, key_id_of, presented_key
from server.web.auth_throttle import AuthThrottle
from server.web.errors import APIError

log = logging.getLogger(__name__)


def operator_ring(config: Mapping[str, Any]) -> KeyRing:
    """The digests of ``OPERATOR_KEYS``; raise ConfigError on a malformed entry."""
    digests = [_digest(entry.strip(), f"OPERATOR_KEYS entry {n}")
               for n, entry in enumerate(str(config["OPERATOR_KEYS"]).split(","), 1)
               if entry.strip()]
    return KeyRing(tuple(dict.fromkeys(digests)))


def granted() -> bool:
    """True when this request carries a valid operator credential."""
    return record().operator


def _authenticated(presented: str | None) -> bool:
    """Auth let this request through with a valid key (tenant or operator), or serves all."""
    rec = record()
    if rec.key_id is not None or rec.operator:
        return True
    tenants: KeyRing | None = current_app.extensions["api_keys"]
    if tenants is None:  # ALLOW_ANONYMOUS=1 and no keys: open to all by explicit choice
        return True
    # A public route: auth did not look at the key, so it is checked here.
    return presented is not None and tenants.identify(presented) is not None


def _check() -> None:
    ring: KeyRing | None = current_app.extensions["operator_keys"]
    rec = record()
    presented = presented_key()
    # Public routes (/ready, /metrics) answer more to a valid key, so a key sent there is a
    # guess like any other: throttled per address as auth throttles the others.
    guess = presented is not None and routing.current().public
    throttle: AuthThrottle | None = current_app.extensions.get("auth_throttle")
    if guess and throttle is not None:
        throttle.check(request.remote_addr or "")
    if ring is not None and presented is not None:
        rec.operator = ring.identify(presented) is not None
    rec.authenticated = _authenticated(presented)
    if guess and throttle is not None and not (rec.operator or rec.authenticated):
        throttle.failed(request.remote_addr or "")
    if not routing.current().operator or rec.operator:
        return
    rec.authenticated = False  # a refused credential gets no telemetry, whoever asks
    if ring is None:
        raise APIError(404, "not_found", "operator surfaces are off on this server "
                       "(no OPERATOR_KEYS configured)")
    if presented is None:
        raise APIError(401, "missing_operator_key", "send the operator key as "
                       "'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    raise APIError(401, "invalid_operator_key", "this surface needs the operator key "
                   "(OPERATOR_KEYS); an API key does not open it")


def init_app(app: Flask) -> None:
    """Guard operator surfaces with ``OPERATOR_KEYS``; register after ``auth.init_app``."""
    ring = operator_ring(app.config)
    app.config["OPERATOR_KEYS"] = (f"<{len(ring.digests)} key(s), redacted>" if ring.digests
                                   else "")
    tenants: KeyRing | None = app.extensions["api_keys"]
    if tenants is not None and set(ring.digests) & set(tenants.digests):
        raise ConfigError("a key is in both OPERATOR_KEYS and the API keys: the operator "
                          "credential must be a key of its own")
    app.extensions["operator_keys"] = ring if ring.digests else None
    if ring.digests:
        log.info("operator surfaces (/metrics, /ready details) need the operator key: "
                 "%d key(s) loaded, ids %s", len(ring.digests),
                 ", ".join(key_id_of(d) for d in ring.digests))
    else:
        log.info("no OPERATOR_KEYS: operator surfaces are off (/metrics answers 404, /ready "
                 "only its status)")
    app.before_request(_check)
