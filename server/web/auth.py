"""API keys: who may use the API, and the short non-secret id each key is logged under.

Keys come from ``API_KEYS`` (comma-separated) and/or ``API_KEYS_FILE`` (one per line, ``#``
comments; a line ``sha256:<64 hex>`` holds a key's digest so the file need not hold the key).
Only SHA-256 digests are kept in memory; a presented key is hashed and compared with every
known digest by ``hmac.compare_digest`` (no early exit, no ``==`` on secrets). A key's id is
the first 8 hex characters of its digest: it goes to the request's record
(``server.web.accounting``), hence the request log and the rate limiter, never the key itself.
Nothing in this module logs or raises a key.

Requests name their key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; when both
are sent, ``Authorization`` wins. Routes declared public (``server.web.routing``: probes, metrics
and the API description) need no key; every other path, unknown ones included, answers 401
without a valid key, so a scanner learns nothing about the routes. Wrong keys are counted per
client address and, past ``AUTH_FAILURE_LIMIT``, refused with 429 (``server.web.auth_throttle``).

Key rotation: ``API_KEYS_FILE`` is looked at (one ``stat``) at most once a second per worker
and re-read when it changed; each worker re-reads it when it starts, so ``SIGHUP`` to the
master (which forks new workers from the preloaded app) reloads it too. A file that cannot be
read, has a malformed line or holds no key at all leaves the current keys in place and logs an
error naming the line (never a key). ``API_KEYS`` from the environment is fixed at startup.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, request

from server.config import ConfigError
from server.web import routing
from server.web.accounting import record
from server.web.auth_throttle import AuthThrottle
from server.web.errors import APIError

log = logging.getLogger(__name__)

# Keys shorter than this are accepted but logged as weak (by position, never by value).
_WEAK_KEY_CHARS = 16
_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_BEARER = re.compile(r"^Bearer[ \t]+(\S+)[ \t]*$", re.IGNORECASE)
# Seconds between looks at API_KEYS_FILE (a stat) in a worker: a removed key stops working
# within about this long, at the cost of one stat a second.
KEY_FILE_CHECK_S = 1.0


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


def _env_digests(config: Mapping[str, Any]) -> list[bytes]:
    return [_digest(entry.strip(), f"API_KEYS entry {n}")
            for n, entry in enumerate(str(config["API_KEYS"]).split(","), 1) if entry.strip()]


def _file_digests(path: Path) -> list[bytes]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"API_KEYS_FILE {path}: "
                          f"{getattr(error, 'strerror', None) or 'not UTF-8 text'}") from None
    return [_digest(line.strip(), f"{path} line {n}") for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten or replaced (None: it cannot be stat'ed)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class KeyRing:
    """The SHA-256 digests of the accepted API keys."""

    digests: tuple[bytes, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KeyRing:
        """Read ``API_KEYS`` and ``API_KEYS_FILE``; raise ConfigError on a malformed entry."""
        digests = _env_digests(config)
        if config["API_KEYS_FILE"]:
            digests += _file_digests(Path(config["API_KEYS_FILE"]))
        return cls(tuple(dict.fromkeys(digests)))

    def identify(self, presented: str) -> str | None:
        """The id of ``presented`` if it is a known key, else None (constant-time compare)."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known in self.digests:  # every digest is compared: timing says nothing
            if hmac.compare_digest(digest, known):
                found = known
        return key_id_of(found) if found is not None else None


class KeySource:
    """The accepted keys: ``API_KEYS`` (fixed) plus ``API_KEYS_FILE``, re-read on change."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.fixed = _env_digests(config)
        self.path = Path(config["API_KEYS_FILE"]) if config["API_KEYS_FILE"] else None
        self.seen = _file_signature(self.path) if self.path else None
        self.ring = KeyRing.from_config(config)
        self._checked_at = time.monotonic()
        self._lock = threading.Lock()  # one request thread looks at the file, not all

    @property
    def digests(self) -> tuple[bytes, ...]:
        """The current keys' digests."""
        return self.ring.digests

    def identify(self, presented: str) -> str | None:
        """The id of ``presented`` if it is a current key (the file looked at first)."""
        if (self.path and time.monotonic() - self._checked_at >= KEY_FILE_CHECK_S
                and self._lock.acquire(blocking=False)):
            try:
                self._checked_at = time.monotonic()
                if _file_signature(self.path) != self.seen:
                    self.reload()
            finally:
                self._lock.release()
        return self.ring.identify(presented)

    def reload(self) -> None:
        """Re-read the key file; an unusable one leaves the current keys and logs why."""
        if self.path is None:
            return
        self.seen = _file_signature(self.path)  # a bad file is reported once, not each second
        try:
            digests = tuple(dict.fromkeys(self.fixed + _file_digests(self.path)))
            if not digests:
                raise ConfigError(f"API_KEYS_FILE {self.path}: no keys in it")
        except ConfigError as error:
            log.error("API keys not reloaded, the %d current key(s) stay: %s",
                      len(self.ring.digests), error)
            return
        added = [key_id_of(d) for d in digests if d not in self.ring.digests]
        removed = [key_id_of(d) for d in self.ring.digests if d not in digests]
        self.ring = KeyRing(digests)
        if added or removed:
            log.info("API keys reloaded from %s: %d key(s); added %s; removed %s", self.path,
                     len(digests), ", ".join(added) or "none", ", ".join(removed) or "none")


def reload_keys(app: Flask) -> None:
    """Re-read ``API_KEYS_FILE`` now (a worker starting, e.g. after SIGHUP)."""
    source = app.extensions.get("api_keys")
    if isinstance(source, KeySource):
        source.reload()


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
    keys: KeySource | None = current_app.extensions["api_keys"]
    if keys is None:  # ALLOW_ANONYMOUS=1 and no keys: open by explicit choice
        return
    throttle: AuthThrottle | None = current_app.extensions["auth_throttle"]
    address = request.remote_addr or ""
    if throttle is not None:
        throttle.check(address)  # before the key: a throttled guesser learns nothing
    presented = presented_key()
    if presented is None:
        raise APIError(401, "missing_api_key",
                       "send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    key_id = record().key_id = keys.identify(presented)
    if key_id is None:
        if throttle is not None:
            throttle.failed(address)
        raise APIError(401, "invalid_api_key", "the API key is not valid")


def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="gpt-load-lab"'
    return response


def _throttle(config: Mapping[str, Any]) -> AuthThrottle | None:
    limit = str(config["AUTH_FAILURE_LIMIT"]).strip()
    try:
        throttle = AuthThrottle(limit) if limit else None
    except ValueError:
        raise ConfigError(f"AUTH_FAILURE_LIMIT={limit!r} is not a rate limit; use e.g. "
                          "'20/minute' (units: second, minute, hour, day) or '' for off") from None
    log.info("failed authentication throttle: %s per client address", limit or "off")
    return throttle


def init_app(app: Flask) -> None:
    """Require a valid key on every non-public path; refuse to start without keys."""
    keys = KeySource(app.config)
    # The plaintext keys are not needed once hashed: keep them out of any config dump.
    app.config["API_KEYS"] = f"<{len(keys.fixed)} key(s), redacted>" if keys.fixed else ""
    app.extensions["auth_throttle"] = None
    if keys.digests:
        app.extensions["api_keys"] = keys
        app.extensions["auth_throttle"] = _throttle(app.config)
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
