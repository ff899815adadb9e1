"""Analysis settings: defaults in one place, ANALYSIS_* environment on top, overrides last.

One pydantic-settings class, the same scheme as the server's (server/config.py): every
value is validated, so ``ANALYSIS_SLO_COUNT_REFUSALS=ture`` or ``ANALYSIS_WARMUP_S=soon``
stops the analysis with an error naming the variable, instead of reading as false or
failing in ``float()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# run.json "slo" keys (and an SLO file's [slo] table); each sets the setting slo_<key>.
SLO_KEYS = ("p95_ms", "error_rate", "ttft_ms", "tpot_ms", "e2e_ms", "attainment",
            "count_refusals", "memory_slope_mb_per_min")
ENV_PREFIX = "ANALYSIS_"


class AnalysisConfig(BaseSettings):
    """Targets and thresholds the metrics, SLO verdicts and recommendation rules use.

    ``AnalysisConfig()`` reads ``ANALYSIS_<NAME>`` environment variables over the defaults;
    keyword arguments win over both.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid",
                                      validate_default=True)

    # SLO: 95th percentile latency of successful requests (ms). A heavy model on a small CPU
    # box generates tens of tokens in seconds, so the default is generous; run.json "slo"
    # and --slo-p95-ms override it.
    slo_p95_ms: float = 10_000.0
    # SLO: failed requests / all requests.
    slo_error_rate: float = 0.01
    # Whether the server's deliberate refusals (429 rate limited, 503 overloaded) count as
    # errors in the error-rate SLO. True: a refusal is a request the user did not get served.
    # False: they are the server protecting itself as designed (a load test that pushes past
    # capacity on purpose), so only other failures count.
    slo_count_refusals: bool = True
    # SLO: slope of the total PSS after warm-up (MB/min; 0 = not checked). Off by default: a
    # short run's slope is mostly allocator warm-up; soak tests and CI jobs set it.
    slo_memory_slope_mb_per_min: float = 0.0
    # Goodput targets, per streamed request (ms; 0 = not checked). A request is "good" when
    # it succeeded and met all of them. Generous for a CPU box: the first token waits for a
    # batch slot and the prompt's forward pass; run.json "slo" and --slo-* override them.
    slo_ttft_ms: float = 3_000.0
    # Time per output token after the first (a decode step of a full batch on CPU).
    slo_tpot_ms: float = 500.0
    # End-to-end time of a streamed request (same default as the p95 target).
    slo_e2e_ms: float = 10_000.0
    # SLO attainment: the share of streamed requests that must be good (DistServe's 90%).
    slo_attainment: float = 0.9
    # Seconds after the run start that the memory slope ignores (model warm-up, allocator
    # growth while the first batches arrive).
    warmup_s: float = 30.0
    # Fewest memory samples after warm-up needed to fit a slope.
    min_slope_samples: int = 10
    # Width of the time bins for tokens/s over time (s).
    bin_s: float = 5.0
    # A plateau in the user count shorter than this is a ramp, not a sweep step (s).
    min_step_s: float = 10.0
    # Seconds at the start of each sweep step left out while the load settles.
    step_settle_s: float = 5.0
    # Knee: first step whose throughput gain per added user is below this fraction of the
    # initial slope (throughput per user at the lightest step).
    knee_fraction: float = 0.25
    # Rule: queue time is "dominating" above this share of queue + inference time.
    queue_share_high: float = 0.5
    # Rule: preload sharing "works" when summed RSS / total PSS is at least this.
    sharing_ratio_high: float = 1.25
    # Rule: sharing "is not working" with >1 worker below this ratio.
    sharing_ratio_low: float = 1.05
    # Rule: a total-PSS slope above this after warm-up is a possible leak (MB/min).
    leak_slope_mb_per_min: float = 1.0
    # Rule: warn when system available memory fell below this fraction of host RAM.
    low_headroom_fraction: float = 0.10
    # Rule: Locust's event loop is "lagging" when its p99 timer lateness passes this (ms).
    loadgen_lag_p99_ms: float = 10.0
    # Rule: the load generator "competes with the server" above this share of the box's CPU.
    loadgen_cpu_share: float = 0.20
    # Rule (busy box): warn when processes other than the server and Locust used more than
    # this share of the box's CPU over the load window (memory.csv other_cpu_share, mean).
    busy_other_cpu_share: float = 0.10
    # Rule (busy box): warn when the hypervisor stole more than this share of the CPU.
    busy_steal_share: float = 0.05
    # Rule: a precision whose decode step is this many times faster is worth switching to.
    kernel_speedup_min: float = 1.5

    def with_overrides(self, overrides: Mapping[str, Any]) -> AnalysisConfig:
        """Return a copy with the known keys of ``overrides`` applied (None values skipped)."""
        known = type(self).model_fields
        unknown = set(overrides) - set(known)
        if unknown:
            raise ValueError(f"unknown analysis settings {sorted(unknown)}; valid: {sorted(known)}")
        values = {k: v for k, v in overrides.items() if v is not None}
        return _validated(self.model_dump() | values, given=set(values))

    def for_run(self, settings: Mapping[str, Any]) -> AnalysisConfig:
        """Return a copy with the SLO targets of run.json's "slo" object, where it has them."""
        slo = settings.get("slo") or {}
        return self.with_overrides({f"slo_{key}": slo.get(key) for key in SLO_KEYS})


def _validated(
    values: Mapping[str, Any] | None = None, given: frozenset[str] | set[str] = frozenset()
) -> AnalysisConfig:
    """``AnalysisConfig(**values)``; a bad value raises ValueError naming where it came from."""
    try:
        return AnalysisConfig(**(values or {}))
    except ValidationError as error:
        problems = []
        for e in error.errors(include_url=False):
            name = str(e["loc"][0])
            source = "given" if name in given else f"environment {ENV_PREFIX}{name.upper()}"
            problems.append(f"{name}={e['input']!r} ({source}): {e['msg']}")
        raise ValueError("invalid analysis setting(s): " + "; ".join(problems)) from None


def load_config(overrides: Mapping[str, Any] | None = None) -> AnalysisConfig:
    """Return the defaults, updated by ANALYSIS_<NAME> environment variables, then ``overrides``."""
    return _validated().with_overrides(overrides or {})
