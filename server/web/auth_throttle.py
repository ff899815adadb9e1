"""Failed-authentication throttle: an address that keeps presenting wrong keys is refused.

Each wrong key (not a missing one: that is a mistake, not a guess) is counted against the
client's address under ``AUTH_FAILURE_LIMIT`` (flask-limiter syntax, e.g. ``20/minute``), in
the rate limiter's storage (``RATELIMIT_STORAGE_URI``, moving window): with ``redis://`` the
count is shared by every worker and host, with ``memory://`` each worker counts on its own (an
address then gets up to workers x the limit). Once an address is over the limit, every
request from it that needs a key is refused with 429 ``auth_throttled`` and ``Retry-After``
before its key is looked at, right keys included, so guessing costs the guesser time whether
or not a guess is right. It lifts when the oldest counted failure leaves the window.

The address is the peer's (``request.remote_addr``): behind a reverse proxy every client
shares the proxy's, and one guesser throttles them all (docs/security.md, "Slow and hostile
clients"). If the storage fails, this worker counts in its own memory for a while rather
than wait on a dead Redis for every wrong key.
"""

from __future__ import annotations

import logging
import math
import time

from flask import current_app
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter

from server.web.errors import APIError

log = logging.getLogger(__name__)

# Seconds a worker counts in its own memory after the shared storage failed.
_FALLBACK_S = 30.0
_SCOPE = "gpt-load-lab-auth-failures"


class AuthThrottle:
    """Counts wrong keys per client address; refuses addresses over the limit."""

    def __init__(self, limit: str) -> None:
        self.items: list[RateLimitItem] = parse_many(limit)
        self._fallback = MovingWindowRateLimiter(MemoryStorage())
        self._fallback_until = 0.0

    def _strategy(self) -> RateLimiter:
        if time.monotonic() < self._fallback_until:
            return self._fallback
        return current_app.extensions["rate_limiter"].limiter

    def _storage_failed(self) -> RateLimiter:
        log.warning("auth failure counts: limit storage unreachable; counting in this "
                    "worker's memory for %.0f s", _FALLBACK_S)
        self._fallback_until = time.monotonic() + _FALLBACK_S
        return self._fallback

    def check(self, address: str) -> None:
        """Raise 429 ``auth_throttled`` if ``address`` has used up its failed attempts."""
        try:
            strategy = self._strategy()
            over = [item for item in self.items if not strategy.test(item, _SCOPE, address)]
            stats = [strategy.get_window_stats(item, _SCOPE, address) for item in over]
        except StorageError:
            self._storage_failed()
            return self.check(address)
        if over:
            wait_s = max(1, math.ceil(max(s.reset_time for s in stats) - time.time()))
            raise APIError(429, "auth_throttled",
                           "too many requests with a wrong API key from this address; "
                           "retry after the Retry-After seconds",
                           details={"limit": str(over[0])}, retry_after_s=wait_s)

    def failed(self, address: str) -> None:
        """Count one wrong key presented from ``address``."""
        try:
            strategy = self._strategy()
            for item in self.items:
                strategy.hit(item, _SCOPE, address)
        except StorageError:
            strategy = self._storage_failed()
            for item in self.items:
                strategy.hit(item, _SCOPE, address)
