"""Rules on failed requests, by status code or cause (see analysis.rules for the contract)."""

from __future__ import annotations

from collections.abc import Callable

from analysis.formatting import num, pct
from analysis.records import WARNING, Findings, Recommendation, setting, status_count

# 5xx answers that are not the server's deliberate refusals (503) or timeouts (504).
SERVER_ERRORS = tuple(s for s in range(500, 600) if s not in (503, 504))


def _failure_rule(
    rule: str, statuses: tuple[int, ...], cause: str, condition: str, advice: str
) -> Callable[[Findings], Recommendation | None]:
    """A rule that fires when any request failed with ``statuses`` (or ``cause``)."""

    def check(f: Findings) -> Recommendation | None:
        n = status_count(f, statuses, cause)
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
    check.__doc__ = f"Any request {condition} -> {rule.replace('_', ' ')}."
    return check


rate_limited = _failure_rule(
    "rate_limited",
    (429,),
    "rate_limited",
    "with status 429",
    "{n} request(s) ({share}) were refused with 429: the rate limits are tighter than this "
    "load ({users} users). Raise the per-key limit for load tests or spread users over keys.",
)
overloaded = _failure_rule(
    "overloaded",
    (503,),
    "overloaded",
    "with status 503",
    "{n} request(s) ({share}) were refused with 503: the server's queue was full (or a worker "
    "was not ready). Add workers or batch more; raise the queue bound only while p99 ({p99} ms) "
    "stays well under the SLO ({slo} ms), since a longer queue trades refusals for latency.",
)
timed_out = _failure_rule(
    "timed_out",
    (504,),
    "timeout",
    "with status 504",
    "{n} request(s) ({share}) hit the generation timeout (504); p99 of served requests was "
    "{p99} ms. Lower max_new_tokens, raise the timeout, or reduce load.",
)
server_errors = _failure_rule(
    "server_errors",
    SERVER_ERRORS,
    "http_5",
    "with a 5xx status other than 503/504",
    "{n} request(s) ({share}) failed with a 5xx error: a server bug, not load. Read the server "
    "log for those request ids before trusting the other numbers.",
)
no_answer = _failure_rule(
    "no_answer",
    (0,),
    "connection",
    "without an HTTP status (status 0)",
    "{n} request(s) ({share}) got no HTTP answer (connection error or client-side timeout): "
    "workers died, the listen backlog overflowed, or a generation outlasted the client's "
    "timeout. Check the server log for worker restarts or OOM kills.",
)
bad_body = _failure_rule(
    "bad_body",
    (),
    "bad_body",
    "failed with the cause bad_body",
    "{n} request(s) ({share}) got a 2xx answer whose body was not the documented completion "
    "(bad_body): a server bug; their latency is not counted as served.",
)

RULES = [rate_limited, overloaded, timed_out, server_errors, no_answer, bad_body]  # fmt: skip
