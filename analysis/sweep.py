"""Step sweeps: throughput and p95 per user step, the saturation knee, the SLO limit.

A step is a stretch of the run where the user count held still for at least ``min_step_s``.
The user count comes from Locust's history (the "Aggregated" rows); without the history it
comes from run.json's shape, whose stages are read as consecutive holds of ``duration_s``
seconds each from the run start. A request belongs to the step in which it started; the
first ``settle_s`` seconds of each step are left out while the new users ramp in. When
run.json has a stage table, only plateaus at its user counts are steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

STEP_COLUMNS = ["users", "start_s", "end_s"]


@dataclass(frozen=True)
class Sweep:
    """Per-step numbers (a DataFrame with one row per step) and what they add up to."""

    steps: pd.DataFrame
    initial_slope_rps_per_user: float
    knee_users: int | None
    max_users_within_slo: int | None


def steps_from_history(history: pd.DataFrame, min_step_s: float) -> pd.DataFrame:
    """User-count plateaus lasting at least ``min_step_s``, from the aggregated history."""
    if history.empty:
        return pd.DataFrame(columns=STEP_COLUMNS)
    agg = history[history["name"] == "Aggregated"]
    return (
        agg.assign(run=lambda d: (d["user_count"] != d["user_count"].shift()).cumsum())
        .groupby("run")
        .agg(
            users=("user_count", "first"), start_s=("elapsed_s", "min"), last_s=("elapsed_s", "max")
        )
        # A history row stands for the second that follows it.
        .assign(end_s=lambda d: d["last_s"] + 1.0)
        .loc[lambda d: (d["end_s"] - d["start_s"] >= min_step_s) & (d["users"] > 0), STEP_COLUMNS]
        .reset_index(drop=True)
    )


def steps_from_shape(settings: dict[str, Any]) -> pd.DataFrame:
    """Steps of a run.json "steps" shape: consecutive holds from the run start."""
    shape = settings.get("shape") or {}
    stages = (shape.get("stages") or []) if shape.get("kind") == "steps" else []
    ends = np.cumsum([float(s["duration_s"]) for s in stages])
    return pd.DataFrame(
        {
            "users": [int(s["users"]) for s in stages],
            "start_s": np.concatenate([[0.0], ends[:-1]]) if len(stages) else [],
            "end_s": ends,
        },
        columns=STEP_COLUMNS,
    )


def step_metrics(
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    settle_s: float,
    slo_p95_ms: float,
    slo_error_rate: float,
) -> pd.DataFrame:
    """Throughput, p95 and error rate of each step.

    Formula: per step, window = [start_s + settle_s, end_s); throughput_rps = successful
    requests started in the window / window length; p95_ms = 95th percentile of their
    response_time_ms; error_rate = failed / all requests started in the window;
    meets_slo = p95_ms <= SLO p95 and error_rate <= SLO error rate.
    """
    rows = []
    for step in steps.itertuples():
        start, end = step.start_s + min(settle_s, (step.end_s - step.start_s) / 2), step.end_s
        inside = requests[(requests["elapsed_s"] >= start) & (requests["elapsed_s"] < end)]
        ok = inside.loc[inside["success"], "response_time_ms"]
        rows.append(
            {
                "users": int(step.users),
                "start_s": start,
                "end_s": end,
                "requests": len(inside),
                "throughput_rps": len(ok) / (end - start),
                "p95_ms": float(ok.quantile(0.95)) if len(ok) else np.nan,
                "error_rate": (len(inside) - len(ok)) / len(inside) if len(inside) else np.nan,
            }
        )
    return pd.DataFrame(
        rows, columns=[*STEP_COLUMNS, "requests", "throughput_rps", "p95_ms", "error_rate"]
    ).assign(meets_slo=lambda d: (d["p95_ms"] <= slo_p95_ms) & (d["error_rate"] <= slo_error_rate))


def find_knee(
    users: list[int], throughput: list[float], fraction: float
) -> tuple[float, int | None]:
    """The initial slope and the saturation knee of a throughput-vs-users curve.

    Formula: initial_slope = throughput at the lightest step / its users; gain_i =
    (throughput_i - throughput_{i-1}) / (users_i - users_{i-1}); the knee is the user count
    of the step before the first step whose gain_i < knee_fraction * initial_slope, i.e. the
    heaviest load that still scaled. No knee when every step still gains.
    """
    if not users or users[0] <= 0:
        return np.nan, None
    initial = throughput[0] / users[0]
    for i in range(1, len(users)):
        gain = (throughput[i] - throughput[i - 1]) / (users[i] - users[i - 1])
        if gain < fraction * initial:
            return initial, users[i - 1]
    return initial, None


def sweep(
    requests: pd.DataFrame,
    history: pd.DataFrame,
    settings: dict[str, Any],
    *,
    min_step_s: float,
    settle_s: float,
    knee_fraction: float,
    slo_p95_ms: float,
    slo_error_rate: float,
) -> Sweep | None:
    """Analyse a step sweep; None for a run at one load level (fewer than two steps)."""
    steps = steps_from_history(history, min_step_s)
    planned = steps_from_shape(settings)
    if len(planned) >= 2:
        # Keep the stage table's levels only: a slow spawn leaves short plateaus at
        # in-between user counts (9, 18, 23 in the gpt2-large sweep) that are not steps.
        steps = steps[steps["users"].isin(planned["users"])]
    if len(steps) < 2:
        steps = planned
    if len(steps) < 2 or requests.empty:
        return None
    table = (
        step_metrics(requests, steps, settle_s, slo_p95_ms, slo_error_rate)
        .sort_values("users", kind="stable")
        .drop_duplicates("users", keep="first")
        .reset_index(drop=True)
    )
    initial, knee = find_knee(
        table["users"].tolist(), table["throughput_rps"].tolist(), knee_fraction
    )
    within = table.loc[table["meets_slo"], "users"]
    return Sweep(
        steps=table.assign(is_knee=lambda d: d["users"] == knee),
        initial_slope_rps_per_user=initial,
        knee_users=knee,
        max_users_within_slo=int(within.max()) if len(within) else None,
    )
