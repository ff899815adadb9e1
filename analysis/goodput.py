"""Goodput and SLO attainment of streamed requests, as vLLM's benchmark and guidellm define them.

A streamed request is *good* only if it succeeded and met every configured target (TTFT,
TPOT, E2E; a target of 0 is not checked). Failed requests are misses, never left out, so an
overloaded server cannot look good by refusing work. On a step sweep the same test is
applied per step, over the step windows of analysis.sweep (settling time left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.streaming import streamed, tpot_ms


@dataclass(frozen=True)
class Targets:
    """Per-request SLO targets (ms; 0 = not checked) and the attainment threshold (0..1)."""

    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    attainment: float


@dataclass(frozen=True)
class Goodput:
    """How many streamed requests were good, and what that is per second and as a share."""

    requests: int
    good: int
    failed: int
    over_ttft: int
    over_tpot: int
    over_e2e: int
    goodput_rps: float
    good_output_tokens_per_s: float
    attainment: float
    meets_attainment: bool
    steps: pd.DataFrame  # users, requests, good, attainment, meets (empty without a sweep)
    max_users_within_attainment: int | None


def _within(values: pd.Series, target: float) -> pd.Series:
    """values <= target (NaN: not measured, a miss); everything passes a target of 0."""
    if target <= 0:
        return pd.Series(True, index=values.index)
    return values.le(target)


def target_checks(rows: pd.DataFrame, targets: Targets) -> pd.DataFrame:
    """Per streamed row: ok (succeeded), ttft, tpot, e2e (each target met), good (all four)."""
    # A one-token answer has no time between tokens: TPOT 0, as in vLLM's benchmark.
    tpot = tpot_ms(rows).mask(rows["completion_tokens"] < 2, 0.0)
    checks = pd.DataFrame(
        {
            "ok": rows["success"].astype(bool),
            "ttft": _within(rows["ttft_ms"], targets.ttft_ms),
            "tpot": _within(tpot, targets.tpot_ms),
            "e2e": _within(rows["response_time_ms"], targets.e2e_ms),
        }
    )
    return checks.assign(good=checks.all(axis=1))


def attainment_per_step(
    requests: pd.DataFrame, steps: pd.DataFrame, targets: Targets
) -> pd.DataFrame:
    """SLO attainment of the streamed requests started in each sweep step's window.

    Formula: per step, attainment = good streamed requests / all streamed requests started
    in [start_s, end_s) (the sweep's window, settling time left out); meets = attainment >=
    slo_attainment.
    """
    columns = ["users", "requests", "good", "attainment", "meets"]
    rows = streamed(requests)
    out = []
    for step in steps.itertuples():
        inside = rows[(rows["elapsed_s"] >= step.start_s) & (rows["elapsed_s"] < step.end_s)]
        good = int(target_checks(inside, targets)["good"].sum()) if len(inside) else 0
        share = good / len(inside) if len(inside) else np.nan
        out.append((int(step.users), len(inside), good, share, bool(share >= targets.attainment)))
    return pd.DataFrame(out, columns=columns)


def goodput(
    requests: pd.DataFrame,
    window_s: float,
    targets: Targets,
    sweep_steps: pd.DataFrame | None = None,
) -> Goodput | None:
    """Goodput, good output tokens/s and SLO attainment of the streamed requests; None if none.

    Formula: good = succeeded AND TTFT <= slo_ttft_ms AND TPOT <= slo_tpot_ms AND E2E <=
    slo_e2e_ms (a target of 0 is not checked; a one-token answer has TPOT 0; a value not
    measured is a miss); goodput_rps = good requests / window_s; good output tokens/s =
    completion_tokens of good requests / window_s; SLO attainment = good / all streamed
    requests (failed ones count as misses); it meets the SLO when attainment >=
    slo_attainment.
    """
    rows = streamed(requests)
    if rows.empty:
        return None
    checks = target_checks(rows, targets)
    ok = checks["ok"]
    good = checks["good"]
    rate = (lambda n: n / window_s) if window_s > 0 else (lambda n: np.nan)
    attainment = float(good.mean())
    steps = (
        attainment_per_step(requests, sweep_steps, targets)
        if sweep_steps is not None
        else pd.DataFrame(columns=["users", "requests", "good", "attainment", "meets"])
    )
    within = steps.loc[steps["meets"].astype(bool), "users"]
    return Goodput(
        requests=len(rows),
        good=int(good.sum()),
        failed=int((~ok).sum()),
        over_ttft=int((ok & ~checks["ttft"]).sum()),
        over_tpot=int((ok & ~checks["tpot"]).sum()),
        over_e2e=int((ok & ~checks["e2e"]).sum()),
        goodput_rps=rate(int(good.sum())),
        good_output_tokens_per_s=rate(float(rows.loc[good, "completion_tokens"].fillna(0).sum())),
        attainment=attainment,
        meets_attainment=attainment >= targets.attainment,
        steps=steps,
        max_users_within_attainment=int(within.max()) if len(within) else None,
    )
