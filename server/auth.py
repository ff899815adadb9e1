"""API keys: who may use the API, and the short non-secret id each key is logged under.

Keys come from ``API_KEYS`` (comma-separated) and/or ``API_KEYS_FILE`` (one per line, ``#``
comments; a line ``sha256:<64 hex>`` holds a key's digest so the file need not hold the key).
Only SHA-256 digests are kept in memory; a presented key is hashed and compared with every
known digest by ``hmac.compare_digest`` (no early exit, no ``==`` on secrets). A key's id is
the first 8 hex characters of its digest: it goes to the request's record
(``server.accounting``), hence the request log and the rate limiter, never the key itself.
Nothing in this module logs or raises a key.

Requests name their key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; when both
are sent, ``Authorization`` wins. Routes declared public (``server.routing``: probes, metrics
and the API description) need no key; every other path, unknown ones included, answers 401
without a valid key, so a scanner learns nothing about the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, request

from server import routing
from server.accounting import record
from server.config import ConfigError
from server.errors import APIError

log = logging.getLogger(__name__)

# Keys shorter than this are accepted but logged as weak (by position, never by value).
_WEAK_KEY_CHARS = 16
_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_BEARER = re.compile(r"^Bearer[ \t]+(\S+)[ \t]*$", re.IGNORECASE)


def key_id_of(digest: bytes) -> str:
    """The short, non-secret id of the key with this SHA-256 digest."""
    return digest.hex()[:8]


def _digest(entry: str, where: str) -> bytes:
    if entry.lower().startswith("sha256:"):
        match = _DIGEST.match(entry)
        if not match:
            raise ConfigError(f"{where}: a sha256: entry needs exactly 64 hex characters")
        return bytes.fromhex(match.group(1))
    if len(entry) < _WEAK_KEY_CHARS:
        log.warning("%s: API key shorter than %d characters", where, _WEAK_KEY_CHARS)
    return hashlib.sha256(entry.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """The SHA-256 digests of the accepted API keys."""

    digests: tuple[bytes, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KeyRing:
        """Read ``API_KEYS`` and ``API_KEYS_FILE``; raise ConfigError on a malformed entry."""
        digests = [_digest(entry.strip(), f"API_KEYS entry {n}")
                   for n, entry in enumerate(str(config["API_KEYS"]).split(","), 1)
                   if entry.strip()]
        if config["API_KEYS_FILE"]:
            path = Path(config["API_KEYS_FILE"])
            try:
                lines = path.read_text().splitlines()
            except OSError as error:
                raise ConfigError(f"API_KEYS_FILE {path}: {error.strerror}") from None
            digests += [_digest(line.strip(), f"{path} line {n}")
                        for n, line in enumerate(lines, 1)
                        if line.strip() and not line.lstrip().startswith("#")]
        return cls(tuple(dict.fromkeys(digests)))

    def identify(self, presented: str) -> str | None:
        """The id of ``presented`` if it is a known key, else None (constant-time compare)."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known in self.digests:  # every digest is compared: timing says nothing
            if hmac.compare_digest(digest, known):
                found = known
        return key_id_of(found) if found is not None else None


def presented_key() -> str | None:
    """The key this request names: ``Authorization: Bearer`` first, then ``X-API-Key``."""
    authorization = request.headers.get("Authorization", "")
    if authorization:
        match = _BEARER.match(authorization)
        return match.group(1) if match else None
    return request.headers.get("X-API-Key", "").strip() or None


def _require_key() -> None:
    if routing.current().public:
        return
    keys: KeyRing | None = current_app.extensions["api_keys"]
    if keys is None:  # ALLOW_ANONYMOUS=1 and no keys: open by explicit choice
        return
    presented = presented_key()
    if presented is None:
        raise APIError(401, "missing_api_key",
                       "send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    key_id = record().key_id = keys.identify(presented)
    if key_id is None:
        raise APIError(401, "invalid_api_key", "the API key is not valid")


def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="gpt-load-lab"'
    return response


def init_app(app: Flask) -> None:
    """Require a valid key on every non-public path; refuse to start without keys."""
    keys = KeyRing.from_config(app.config)
    # The plaintext keys are not needed once hashed: keep them out of any config dump.
    app.config["API_KEYS"] = f"<{len(keys.digests)} key(s), redacted>" if keys.digests else ""
    if keys.digests:
        app.extensions["api_keys"] = keys
        log.info("API keys required: %d key(s) loaded, ids %s", len(keys.digests),
                 ", ".join(key_id_of(d) for d in keys.digests))
    elif app.config["ALLOW_ANONYMOUS"]:
        app.extensions["api_keys"] = None
        log.warning("!!! ALLOW_ANONYMOUS=1 and no API keys: ANYONE who can reach this server "
                    "can use the model. Never expose it to a network like this. !!!")
    else:
        raise ConfigError(
            "no API keys configured: set API_KEYS (comma-separated) or API_KEYS_FILE "
            "(one key or sha256:<hex> per line), or ALLOW_ANONYMOUS=1 to serve without keys")
    app.before_request(_require_key)
    app.after_request(_challenge)
