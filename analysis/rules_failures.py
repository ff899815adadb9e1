"""Rules on failed requests, one per status code (see analysis.rules for the rule contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from analysis.formatting import num, pct
from analysis.rules import WARNING, Recommendation, setting, status_count

if TYPE_CHECKING:
    from analysis.findings import Findings


def _failure_rule(
    rule: str, status: int, cause: str, advice: str
) -> Callable[[Findings], Recommendation | None]:
    """A rule that fires when any request ended with ``status``; ``advice`` is formatted."""

    def check(f: Findings) -> Recommendation | None:
        n = status_count(f, status, cause)
        if n == 0 or f.traffic is None:
            return None
        p99 = f.overall.p99_ms if f.overall else None
        return Recommendation(
            rule,
            WARNING,
            advice.format(
                n=n,
                share=pct(n / f.traffic.requests),
                users=num(setting(f, "users")),
                p99=num(p99, 0),
                slo=num(f.config.slo_p95_ms, 0),
            ),
        )

    check.__name__ = rule
    check.__doc__ = f"Any request with status {status} -> {rule.replace('_', ' ')}."
    return check


rate_limited = _failure_rule(
    "rate_limited",
    429,
    "rate_limited",
    "{n} request(s) ({share}) were refused with 429: the rate limits are tighter than this "
    "load ({users} users). Raise the per-key limit for load tests or spread users over keys.",
)
overloaded = _failure_rule(
    "overloaded",
    503,
    "overloaded",
    "{n} request(s) ({share}) were refused with 503: the server's queue was full. Add workers "
    "or batch more; raise the queue bound only while p99 ({p99} ms) stays well under the "
    "SLO ({slo} ms), since a longer queue trades refusals for latency.",
)
timed_out = _failure_rule(
    "timed_out",
    504,
    "timeout",
    "{n} request(s) ({share}) hit the generation timeout (504); p99 of served requests was "
    "{p99} ms. Lower max_new_tokens, raise the timeout, or reduce load.",
)
server_errors = _failure_rule(
    "server_errors",
    500,
    "http_500",
    "{n} request(s) ({share}) failed with 500: a server bug, not load. Read the server log "
    "for those request ids before trusting the other numbers.",
)
connection_errors = _failure_rule(
    "connection_errors",
    0,
    "connection",
    "{n} request(s) ({share}) got no HTTP answer (connection errors): workers died or the "
    "listen backlog overflowed. Check the server log for worker restarts or OOM kills.",
)


RULES = [rate_limited, overloaded, timed_out, server_errors, connection_errors]
