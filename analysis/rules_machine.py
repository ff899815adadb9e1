"""Rules on the machine: server memory, the kernel path the server measured at startup, and
the load generator's own load (see analysis.rules for the rule contract)."""

from __future__ import annotations

import math

from analysis.cost import busy_warning
from analysis.document import num, pct
from analysis.hardware import Hardware, KernelTiming
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
    warning; when the kept prefix caches' growth over the same floors
    (``kept_kv_slope_mb_per_min``) accounts for it, an info that says so instead.

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
    grew = (f"Total PSS (its lowest point in each 10 s) kept growing by "
            f"{num(m.slope_mb_per_min, 2)} MB/min over the {num(m.slope_window_s, 0)} s after "
            f"a {num(f.config.warmup_s, 0)} s warm-up")
    kept = m.kept_kv_slope_mb_per_min or 0.0
    if kept > 0 and not m.slope_mb_per_min - kept - noise > f.config.leak_slope_mb_per_min:
        return Recommendation("prefix_cache_filling", INFO, (
            f"{grew}, and the workers' kept prefix caches grew by {num(kept, 2)} MB/min over "
            "the same time (server_requests.jsonl kv_kept_mb): finished requests' KV kept for "
            "prompts that start the same way, which stops at PREFIX_CACHE_ROWS rows and the "
            "KV budget. Not a leak; a run long enough to fill them shows the floor level off."))
    beside = f" ({num(kept, 2)} MB/min of it kept prefix caches)" if kept > 0 else ""
    return Recommendation(
        "memory_growth",
        WARNING,
        (
            f"{grew}{beside} (about {num(m.slope_mb_per_min * 60, 0)} MB per hour if it "
            "continues). That can be a leak: run longer at steady load and watch per-worker "
            "USS; Gunicorn's max_requests with jitter bounds the damage meanwhile."
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



# The kernel path the server measured at startup.

def _measured(hw: Hardware) -> list[KernelTiming]:
    return [k for k in hw.kernels if k.batch_max_ms and k.batch_max_ms > 0]


# The DTYPE setting that serves a precision of the kernel table (server/kernels.py): oneDNN
# fp32 has no DTYPE of its own, auto picks it when it measures fastest.
DTYPE_FOR = {"float32+onednn": "auto", "bfloat16+native": "bfloat16+native (or auto)",
             "int8": "int8 (or DTYPE=auto with ALLOW_INT8=1)"}
# ISA flags that give a CPU native bf16 matmuls; without them int8 is the fast low precision.
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def _steps(fast: KernelTiming, slow: KernelTiming) -> str:
    return f"{num(fast.batch_max_ms, 0)} vs {num(slow.batch_max_ms, 0)} ms per decode step"


def kernel_path(f: Findings) -> Recommendation | None:
    """Served precision's step >= kernel_speedup_min x the fastest -> warning, set DTYPE.

    The steps compared are the server's startup kernel table's, at each precision's largest
    batch. When the fastest is served but the table's spread is that large: info.
    """
    hw = f.hardware
    rows = _measured(hw) if hw is not None else []
    if len(rows) < 2:
        return None
    fastest = min(rows, key=lambda k: k.batch_max_ms)
    slowest = max(rows, key=lambda k: k.batch_max_ms)
    # The chosen path is what the engine serves; run.json's dtype names only its dtype
    # ("float32" for float32+onednn), so it is the fallback for tables without a choice.
    served = hw.timing(hw.chosen) or hw.timing(hw.served)
    cpu = f"{hw.cpu_model or 'this CPU'}, torch kernels {hw.torch_cpu_capability or 'n/a'}"
    limit = f.config.kernel_speedup_min
    if served is not None and served.batch_max_ms / fastest.batch_max_ms >= limit:
        ratio = served.batch_max_ms / fastest.batch_max_ms
        return Recommendation("kernel_path", WARNING, (
            f"{fastest.precision} decodes {num(ratio, 1)}x faster than {served.precision} on "
            f"this CPU ({cpu}) at batch {num(fastest.max_batch)} "
            f"({_steps(fastest, served)}), yet the server served {served.precision}: set "
            f"DTYPE={DTYPE_FOR.get(fastest.precision, fastest.precision)}. The startup kernel "
            "table (run.json `server.kernels`, "
            "the report's \"Hardware and kernel path\") has every candidate."))
    ratio = slowest.batch_max_ms / fastest.batch_max_ms
    if ratio < limit:
        return None
    return Recommendation("kernel_path", INFO, (
        f"The kernel path matters on this CPU ({cpu}): {fastest.precision} decodes "
        f"{num(ratio, 1)}x faster than {slowest.precision} at batch {num(fastest.max_batch)} "
        f"({_steps(fastest, slowest)}); the server served "
        f"{served.precision if served else hw.served or 'n/a'}. Runs on another CPU can "
        "choose differently: compare `host` and `server.kernels` before comparing speed."))


def int8_not_measured(f: Findings) -> Recommendation | None:
    """No native bf16, int8 not allowed, a float32 path served -> info: try ALLOW_INT8=1.

    Only when the kernel table shows the server measured without int8 (allow_int8 false)
    and the host's ISA list is known and lacks avx512_bf16 / amx_bf16.
    """
    hw = f.hardware
    if (hw is None or not hw.kernels or hw.allow_int8 is not False or not hw.isa
            or any(flag in hw.isa for flag in NATIVE_BF16)
            or not str(hw.chosen or "").startswith("float32")
            or hw.timing("int8") is not None):
        return None
    chosen = hw.timing(hw.chosen)
    step = f" ({num(chosen.batch_max_ms, 0)} ms per decode step at batch " \
           f"{num(chosen.max_batch)})" if chosen and chosen.batch_max_ms else ""
    return Recommendation("int8_not_measured", INFO, (
        f"This CPU ({hw.cpu_model or 'n/a'}; ISA {' '.join(hw.isa)}) has no native bf16, so "
        f"the server serves {hw.chosen}{step}, and int8 was not measured: ALLOW_INT8 is off. "
        "On such CPUs int8 decodes several times faster than float32 (server/config.py); if "
        "int8's text is acceptable for your model, set ALLOW_INT8=1 and DTYPE=auto measures it."))



# The load generator's own load.

def load_generator_busy(f: Findings) -> Recommendation | None:
    """Loop lag p99 > loadgen_lag_p99_ms or CPU > loadgen_cpu_share of the box -> warning.

    Both are Locust's own (loadgen.csv): its delays are then in the measured times.
    """
    g, cfg = f.loadgen, f.config
    if g is None:
        return None
    problems = []
    if g.lag_p99_ms > cfg.loadgen_lag_p99_ms:
        problems.append(
            f"its event loop ran {num(g.lag_p99_ms, 1)} ms late at p99 (limit "
            f"{num(cfg.loadgen_lag_p99_ms, 0)} ms; max {num(g.lag_max_ms, 0)} ms), and every "
            "response time, TTFT and chunk gap it recorded can be that much too long")
    if g.box_share > cfg.loadgen_cpu_share:
        problems.append(
            f"it used {pct(g.box_share)} of the box's {g.box_cores} cores (limit "
            f"{pct(cfg.loadgen_cpu_share, 0)}), CPU the server did not get")
    if not problems:
        return None
    return Recommendation("load_generator_busy", WARNING, (
        "The load generator may have skewed this run: " + "; ".join(problems) + ". Run Locust "
        "on another machine, or with --processes to spread users over cores, or with fewer "
        "users per process."))


def busy_box(f: Findings) -> Recommendation | None:
    """Other processes' CPU share > busy_other_cpu_share or steal > busy_steal_share -> warning.

    Means over the load window of memory.csv's other_cpu_share and steal_share (the server
    sampled with --server-pidfile; steal alone when scraped).
    """
    text = busy_warning(f.busy, f.config)
    if text is None:
        return None
    return Recommendation("busy_box", WARNING, text + " Run again on a quiet box, or "
                          "somewhere no other job shares the cores.")


RULES = [sharing_works, sharing_broken, memory_growth, memory_headroom, workers_replaced,
         kernel_path, int8_not_measured, load_generator_busy, busy_box]
