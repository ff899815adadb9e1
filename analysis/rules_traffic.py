"""Rules on requests: latency, time split, SLOs, the sweep, and failed requests by status code
or cause (see analysis.rules for the contract)."""

from __future__ import annotations

from collections.abc import Callable

from analysis.document import num, pct
from analysis.records import INFO, WARNING, Findings, Recommendation, setting, status_count


def queue_dominates(f: Findings) -> Recommendation | None:
    """Queue share of server time above queue_share_high -> batch more, add workers if cores."""
    ts = f.time_split
    if ts is None or not ts.queue_share > f.config.queue_share_high:
        return None
    text = (
        f"Requests spent {pct(ts.queue_share)} of their server time waiting in the queue "
        f"(mean {num(ts.mean_queue_ms, 0)} ms queued vs {num(ts.mean_inference_ms, 0)} ms "
        f"generating). "
    )
    max_batch = setting(f, "max_batch_size")
    saturated, busy = _cpu_subscribed(f)
    scale = (
        f"More workers will not help while {busy} threads already cover the "
        f"{setting(f, 'host.cores')} cores: cut compute per token (bf16/int8) or scale out."
        if saturated
        else f"Or add workers (now {num(setting(f, 'workers'))}) if cores and RAM allow."
    )
    if max_batch and ts.mean_batch_size >= 0.8 * max_batch:
        text += (
            f"Batches averaged {num(ts.mean_batch_size)} requests, close to "
            f"max_batch_size = {max_batch}: raise max_batch_size so more waiting "
            f"requests share each decode step. {scale}"
        )
    else:
        text += (
            f"Batches averaged only {num(ts.mean_batch_size)} requests"
            + (f" of a possible {max_batch}" if max_batch else "")
            + ": a request waits only while every row is taken, so the queue time "
            f"comes from bursts. {scale}"
        )
    return Recommendation("queue_dominates", WARNING, text)


def _cpu_subscribed(f: Findings) -> tuple[bool | None, str]:
    """Whether workers x torch threads covers every core, and the sum that says so."""
    workers, threads, cores = (setting(f, k) for k in ("workers", "torch_threads", "host.cores"))
    if workers and cores and threads == 0:
        threads = max(1, cores // workers)  # the server's TORCH_THREADS=0 means cores / workers
    if not (workers and threads and cores):
        return None, ""
    busy = workers * threads
    return busy >= cores, f"workers x torch threads = {workers} x {threads} = {busy}"


def sweep_plateau(f: Findings) -> Recommendation | None:
    """A knee in the sweep: CPU fully subscribed -> bf16/quantization; else use idle cores."""
    s = f.sweep
    if s is None or s.knee_users is None:
        return None
    steps = s.steps.set_index("users")
    knee_rps = steps.loc[s.knee_users, "throughput_rps"]
    top_users = int(steps.index.max())
    gain = (steps.loc[top_users, "throughput_rps"] - knee_rps) / (top_users - s.knee_users)
    head = (
        f"Throughput stopped scaling at {s.knee_users} users ({num(knee_rps, 2)} req/s); "
        f"beyond it each added user brought {num(gain, 3)} req/s against "
        f"{num(s.initial_slope_rps_per_user, 3)} req/s per user at the lightest step. "
    )
    saturated, busy = _cpu_subscribed(f)
    cores = setting(f, "host.cores")
    if saturated:
        dtype = str(setting(f, "dtype") or "unknown")
        cure = (
            "int8 quantization or a smaller model"
            if any(half in dtype for half in ("bf16", "bfloat16", "float16"))
            else "16-bit weights (DTYPE=float16, or bfloat16 where the CPU has it) or int8"
        )
        return Recommendation(
            "cpu_plateau",
            WARNING,
            head
            + (
                f"With {busy} >= {cores} cores the CPU is fully subscribed, so the limit is "
                f"compute per token (dtype {dtype}): serve {cure} to raise it."
            ),
        )
    if saturated is False:
        return Recommendation(
            "plateau_idle_cores",
            WARNING,
            head + (f"Only {busy} of {cores} cores are used: add workers or torch threads first."),
        )
    return Recommendation(
        "plateau",
        INFO,
        head
        + (
            "run.json lacks workers, torch_threads or host.cores, so whether the CPU is the "
            "limit cannot be told."
        ),
    )


def slo_missed(f: Findings) -> Recommendation | None:
    """Any SLO verdict failed -> name which, and the sweep's capacity if there is one."""
    failed = [v for v in f.slo if v.passed is False]
    if not failed:
        return None
    parts = [
        f"{v.name} was {num(v.actual, 3 if v.unit == 'ratio' else 0)} against a target "
        f"of {num(v.target, 3 if v.unit == 'ratio' else 0)}"
        for v in failed
    ]
    text = "The SLO was missed: " + "; ".join(parts) + "."
    if f.sweep is not None:
        best = f.sweep.max_users_within_slo
        text += (
            f" In the sweep it held up to {best} users."
            if best is not None
            else " No sweep step met it."
        )
    return Recommendation("slo_missed", WARNING, text)



# Failed requests, by status code or cause.

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

RULES = [queue_dominates, sweep_plateau, slo_missed,
         rate_limited, overloaded, timed_out, server_errors, no_answer, bad_body]  # fmt: skip
