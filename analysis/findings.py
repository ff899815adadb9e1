"""Turn a loaded run into Findings (analysis.records): the metrics, SLO verdicts and rules."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import cost, goodput, memory, streaming, sweep, traffic, workloads
from analysis.arrivals import arrival_summary
from analysis.capacity import capacity
from analysis.config import AnalysisConfig
from analysis.hardware import hardware, readable_settings
from analysis.loadgen import load_window, loadgen_summary
from analysis.memory import memory_headers_absent, memory_headers_note
from analysis.records import Findings
from analysis.rules import evaluate, slo_verdicts
from analysis.run import RunData

# run.json keys that describe when or where, not how: left out of the settings table.
# The capacity search's result is a finding (analysis.capacity), not a setting.
_NOT_SETTINGS = {"started_at", "ended_at", "capacity"}


def flatten_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested run.json settings into dotted keys ("host.cores")."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if name in _NOT_SETTINGS:
            continue
        if isinstance(value, dict):
            flat.update(flatten_settings(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def targets(cfg: AnalysisConfig) -> goodput.Targets:
    """The goodput targets of ``cfg``."""
    return goodput.Targets(cfg.slo_ttft_ms, cfg.slo_tpot_ms, cfg.slo_e2e_ms, cfg.slo_attainment)


def build_findings(run: RunData, cfg: AnalysisConfig) -> Findings:
    """Compute every metric of ``run`` under ``cfg``, then the SLO verdicts and the rules."""
    notes = list(run.notes)
    routes = traffic.route_latency(run.requests)
    summary = traffic.traffic(run.requests)
    if not routes and not run.stats.empty:
        routes = traffic.route_latency_from_stats(run.stats)
        summary = traffic.traffic_from_stats(run.stats, run.failures)
        notes.append(
            "Latency and counts come from `locust_stats.csv`: percentiles include "
            "failed requests and are rounded by Locust; tokens/s is not available."
        )
    if memory_headers_absent(run.requests):
        notes.append(memory_headers_note(run.settings))
    pids = run.requests["worker_pid"].dropna().nunique() if not run.requests.empty else 0
    window_s = summary.window_s if summary else np.nan
    findings = Findings(
        label=run.label,
        settings=readable_settings(flatten_settings(run.settings)),
        config=cfg,
        notes=notes,
        routes=routes,
        traffic=summary,
        time_split=traffic.time_split(run.requests),
        memory=memory.memory_summary(run.memory, cfg.warmup_s, cfg.min_slope_samples,
                                     run.server_log),
        ram=memory.ram_per_request(run.server_log),
        sweep=sweep.sweep(
            run.requests,
            run.history,
            run.settings,
            min_step_s=cfg.min_step_s,
            settle_s=cfg.step_settle_s,
            knee_fraction=cfg.knee_fraction,
            slo_p95_ms=cfg.slo_p95_ms,
            slo_error_rate=cfg.slo_error_rate,
        ),
        worker_pids_seen=int(pids),
        streaming=streaming.stream_summary(run.requests, window_s),
    )
    steps = findings.sweep.steps if findings.sweep is not None else None
    findings.goodput = goodput.goodput(run.requests, window_s, targets(cfg), steps)
    findings.hardware = hardware(run.settings)
    host_cores = (run.settings.get("host") or {}).get("cores")
    window = load_window(run.requests)
    findings.loadgen = loadgen_summary(run.loadgen, window, host_cores)
    findings.workload = run.settings.get("workload")
    findings.ram_by_context = memory.ram_by_context(run.server_log)
    findings.prefix_cache = workloads.prefix_cache_hits(run.requests)
    findings.capacity = capacity(run.settings)
    findings.cost = cost.cost(run.server_log, run.requests, run.memory, window)
    findings.busy = cost.busy_box(run.memory, window)
    findings.arrivals = arrival_summary(run.requests, run.settings.get("arrivals"))
    findings.slo = slo_verdicts(findings)
    findings.recommendations = evaluate(findings)
    return findings
