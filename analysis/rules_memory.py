"""Rules on server memory (see analysis.rules for the rule contract)."""

from __future__ import annotations

import math

from analysis.formatting import num, pct
from analysis.records import INFO, WARNING, Findings, Recommendation, setting


def sharing_works(f: Findings) -> Recommendation | None:
    """Summed RSS / total PSS at or above sharing_ratio_high -> preload sharing works."""
    m = f.memory
    if m is None or m.workers < 1 or not m.rss_to_pss_ratio >= f.config.sharing_ratio_high:
        return None
    return Recommendation(
        "sharing_works",
        INFO,
        (
            f"Preload sharing works: the {m.workers} worker(s) and the master add up to "
            f"{num(m.mean_rss_mb, 0)} MB of RSS on average, but their total PSS is "
            f"{num(m.mean_pss_mb, 0)} MB ({num(m.rss_to_pss_ratio, 2)}x less), so copy-on-write "
            f"sharing of the model saves {num(m.sharing_saving_mb, 0)} MB "
            f"({pct(m.sharing_saving_share)} of summed RSS). Keep preload_app on."
        ),
    )


def sharing_broken(f: Findings) -> Recommendation | None:
    """Two or more workers but summed RSS / total PSS below sharing_ratio_low -> check preload."""
    m = f.memory
    if m is None or m.workers < 2 or not m.rss_to_pss_ratio < f.config.sharing_ratio_low:
        return None
    return Recommendation(
        "sharing_broken",
        WARNING,
        (
            f"{m.workers} workers share almost nothing: summed RSS {num(m.mean_rss_mb, 0)} MB is "
            f"only {num(m.rss_to_pss_ratio, 2)}x the total PSS of {num(m.mean_pss_mb, 0)} MB. "
            "Check preload_app = True, gc.freeze() before fork, and that the master runs no "
            "inference before forking (each worker then holds its own copy of the weights)."
        ),
    )


def memory_growth(f: Findings) -> Recommendation | None:
    """PSS floor slope minus 3 standard errors > leak_slope_mb_per_min, not a sweep -> leak
    warning.

    Batch activations move total PSS by tens of MB from one sample to the next, so the trend
    is fitted to each 10 s window's lowest sample (analysis/memory.py), and over a few minutes
    even that is noise of a few MB/min: a short run cannot show a 1 MB/min leak and must not
    claim one. Three standard errors, not two: the floors still follow the load's mix, which
    wanders for tens of seconds, so they are not independent and two gave false alarms on
    healthy soaks (tests/test_soak.py). Silent on a step sweep: its load, and with it batch
    sizes and KV caches, rises by design.
    """
    m = f.memory
    if m is None or m.slope_mb_per_min is None or f.sweep is not None:
        return None
    noise = 3 * (m.slope_se_mb_per_min or 0.0)
    if not m.slope_mb_per_min - noise > f.config.leak_slope_mb_per_min:
        return None
    return Recommendation(
        "memory_growth",
        WARNING,
        (
            f"Total PSS (its lowest point in each 10 s) kept growing by "
            f"{num(m.slope_mb_per_min, 2)} MB/min over the "
            f"{num(m.slope_window_s, 0)} s after a {num(f.config.warmup_s, 0)} s warm-up "
            f"(about {num(m.slope_mb_per_min * 60, 0)} MB per hour if it continues). That can be a "
            "leak: run longer at steady load and watch per-worker USS; Gunicorn's max_requests "
            "with jitter bounds the damage meanwhile."
        ),
    )


def memory_headroom(f: Findings) -> Recommendation | None:
    """Lowest available RAM under low_headroom_fraction of host RAM -> OOM risk; else room."""
    m = f.memory
    ram_gb = setting(f, "host.ram_gb")
    if m is None or math.isnan(m.min_sys_available_mb) or not ram_gb:
        return None
    ram_mb = float(ram_gb) * 1024
    share = m.min_sys_available_mb / ram_mb
    if share < f.config.low_headroom_fraction:
        return Recommendation(
            "low_headroom",
            WARNING,
            (
                f"Available memory fell to {num(m.min_sys_available_mb, 0)} MB, {pct(share)} of "
                f"the host's {num(ram_mb, 0)} MB: an OOM kill is close. Do not add workers; "
                "lower the queue bound or batch size, or serve a smaller dtype."
            ),
        )
    if math.isnan(m.mean_worker_uss_mb) or m.mean_worker_uss_mb <= 0:
        return None
    spare = max(0.0, m.min_sys_available_mb - f.config.low_headroom_fraction * ram_mb)
    return Recommendation(
        "headroom",
        INFO,
        (
            f"At least {num(m.min_sys_available_mb, 0)} MB stayed available ({pct(share)} of "
            f"{num(ram_mb, 0)} MB). A worker holds {num(m.mean_worker_uss_mb, 0)} MB privately "
            f"(mean USS), so about {int(spare // m.mean_worker_uss_mb)} more worker(s) would fit "
            f"in RAM while keeping {pct(f.config.low_headroom_fraction, 0)} of it free."
        ),
    )


def workers_replaced(f: Findings) -> Recommendation | None:
    """More distinct worker pids served requests than workers configured -> restarts."""
    workers = setting(f, "workers")
    if not workers or f.worker_pids_seen <= workers:
        return None
    return Recommendation(
        "workers_replaced",
        WARNING,
        (
            f"{f.worker_pids_seen} different worker pids answered requests but {workers} workers "
            "were configured: workers were restarted during the run (crash, OOM kill, timeout or "
            "max_requests). Check the Gunicorn log; memory numbers span several processes."
        ),
    )


RULES = [sharing_works, sharing_broken, memory_growth, memory_headroom, workers_replaced]
