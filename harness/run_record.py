"""The typed record of a run folder's ``run.json``: what ran, where, against which server.

One record, several authors, one writer (harness.run_folder): the Locust suite writes the
client's facts and what the server reported on ``/ready`` and ``/metrics``
(locustfiles/run_record_hook.py); wrappers such as scripts/loadtest.py, bench and deploy then
add only what they alone know (server command line, git commit, their own blocks). Analysis
reads the same record. Every field is optional and unknown keys are kept (``extra="allow"``):
run folders written before a field existed, and blocks such as ``bench``, ``reference`` or
``scaleout``, still load and round-trip unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    """A record part that keeps keys it does not name (older or newer writers)."""

    model_config = ConfigDict(extra="allow")


class HostFacts(_Open):
    """A machine: server/engine/hardware.py's fingerprint (cores = CPUs this process may use)."""

    cores: int | None = None
    ram_gb: float | None = None
    cpu_model: str | None = None
    cpu_vendor: str | None = None
    cpu_id: str | None = None  # x86 "family F model M": tells a Zen 2 from a Zen 3 or 4
    isa: list[str] | None = None
    torch_cpu_capability: str | None = None
    blas: str | None = None


class ServerFacts(_Open):
    """What the target server said about itself (this project's /ready and /metrics)."""

    kernels: dict[str, Any] | None = None  # /ready: measured step ms per candidate, chosen
    scheduler: str | None = None  # runs from before the static scheduler was removed
    torch_threads: int | None = None
    threads_shared: bool | None = None  # /ready: TORCH_THREADS=0 shares cores among busy workers
    max_batch_size: int | None = None
    prefill_chunk: int | None = None
    kv_dtype: str | None = None  # /ready: KV cache storage (float16 | int8 | model)
    kv_tokens: int | None = None  # /ready: KV positions the running rows may reserve (0: any)
    prefix_cache_rows: int | None = None  # /ready: finished caches kept for prefix reuse
    # /metrics at the run's end: prompt tokens computed by steps / copied from kept caches
    prompt_tokens_computed: int | None = None
    prompt_tokens_cached: int | None = None
    limits: dict[str, Any] | None = None  # /ready: queue, in-flight and rate limits
    workers_seen: int | None = None  # distinct worker pids in /metrics
    weight_mb: float | None = None  # /metrics gpt_model_weight_bytes
    load_s: float | None = None  # /metrics gpt_model_load_seconds
    facts_error: str | None = None  # why the facts could not be read, if they could not


class ClientFacts(_Open):
    """The load generator: Locust's mode and version, the URL it loaded, its machine."""

    locust_version: str | None = None
    mode: str | None = None  # headless | web-ui
    role: str | None = None  # local | master (--processes or --master)
    workers_expected: int | None = None  # Locust worker processes (--processes/--expect-workers)
    host_url: str | None = None
    user_classes: list[str] | None = None
    locustfile: str | None = None
    run_time_s: float | None = None  # -t, when given
    stop_timeout_s: float | None = None
    host: HostFacts | None = None  # the load generator's machine


class SloTargets(_Open):
    """Targets recorded with the run (analysis.config SLO_KEYS)."""

    p95_ms: float | None = None
    error_rate: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    attainment: float | None = None


class ArrivalFacts(_Open):
    """Open-loop arrivals (locustfiles/arrivals.py): the schedule and how much of it fell due."""

    process: str | None = None  # constant | poisson | gamma
    rate_rps: float | None = None
    burstiness: float | None = None  # gamma only: squared CV of the gaps
    seed: int | None = None
    kinds: dict[str, float] | None = None  # user class -> weight that drew each arrival's kind
    start_ts: float | None = None  # the schedule's t0, epoch seconds
    stop_ts: float | None = None  # when the test began stopping (no arrival sent after)
    scheduled: int | None = None  # arrivals due in [start_ts, stop_ts)


class RunRecord(_Open):
    """run.json. Top-level server settings stay flat (analysis flattens dotted keys)."""

    label: str | None = None
    model: str | None = None
    dtype: str | None = None
    workers: int | None = None
    torch_threads: int | None = None
    max_batch_size: int | None = None
    batch_wait_ms: int | None = None  # runs from before the static scheduler was removed
    scheduler: str | None = None  # likewise
    prefill_chunk: int | None = None
    users: int | None = None
    spawn_rate: float | None = None
    mix: str | None = None
    target: str | None = None  # lab (this project's server) | openai (any OpenAI server)
    target_url: str | None = None
    duration_s: float | None = None
    shape: dict[str, Any] | None = None
    git_commit: str | None = None
    server_command: str | None = None  # the command that started the server, when known
    host: HostFacts | None = None  # the server's machine, when known (local targets)
    server: ServerFacts | None = None
    client: ClientFacts | None = None
    versions: dict[str, str] | None = None
    started_at: str | None = None
    ended_at: str | None = None
    slo: SloTargets | None = None
    # --workload's dataset manifest (locustfiles/workloads.py manifest()): kind, source,
    # seed, counts, content_sha256, tokenizer, lengths; absent for the --mix users
    workload: dict[str, Any] | None = None
    arrivals: ArrivalFacts | None = None  # --arrival runs only

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: the keys that were set (None included), unknown keys kept."""
        return self.model_dump(mode="json", exclude_unset=True)

    def merged(self, changes: dict[str, Any]) -> RunRecord:
        """A copy with ``changes`` applied; a dict value updates that block key by key."""
        data = self.as_dict()
        for key, value in changes.items():
            old = data.get(key)
            data[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) \
                else value
        return RunRecord.model_validate(data)
