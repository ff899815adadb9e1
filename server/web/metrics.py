"""Prometheus metrics, aggregated across Gunicorn workers (prometheus_client multiprocess mode).

Under Gunicorn, gunicorn.conf.py sets ``PROMETHEUS_MULTIPROC_DIR`` before the app is
imported; every worker writes its values to files there, ``/metrics`` merges them, and
``child_exit`` marks dead workers so their per-worker gauges disappear. Without that
variable (tests, ``flask run``) the app's own registry is served.

``/metrics`` is an operator surface (``server.web.operator_auth``): it shows every tenant's
traffic together (request counts, prompt tokens copied from kept caches, per-worker memory),
so it answers only the operator credential (``OPERATOR_KEYS``), 401 to anyone else and 404
when none is configured. Prometheus sends it as a bearer token (docs/security.md).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from flask import Flask, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from server.engine.memory import MemorySample
from server.web import routing

if TYPE_CHECKING:  # type only: importing server.engine.kernels pulls in torch
    from server.engine.kernels import KernelChoice

_MB = 2**20
# gpt_code_path's labels: CodePath's fields without the reasons.
CODE_PATH_LABELS = ("precision", "linear", "layers", "attention", "attention_dtype",
                    "cache_dtype")
# Generations take seconds to minutes: buckets from 50 ms to 5 min.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# One generation step: ~10 ms (tiny model) to seconds (a long prefill of gpt2-large).
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10)


# A dead worker's file can vanish between listing the folder and reading it.
_MERGE_ATTEMPTS = 5
# Bytes a metrics file has once prometheus_client initialized it (its used-size header).
_INITIALIZED_BYTES = 8


class _SizedFilesCollector(multiprocess.MultiProcessCollector):
    """MultiProcessCollector that skips files a starting worker created but has not yet
    sized: reading one fails with struct.error, which turned /metrics into a 500."""

    def collect(self):
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _initialized(f)]
        return self.merge(files, accumulate=True)


def _initialized(path: str) -> bool:
    try:
        return os.path.getsize(path) >= _INITIALIZED_BYTES
    except FileNotFoundError:
        return False


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class Metrics:
    """The server's metrics, created unbound and attached with ``init_app``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gpt_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("gpt_request_duration_seconds", "Time to answer a request",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        # Fast refusals (429, 503) by the envelope's code and reason (errors.error_response:
        # "overloaded:forecast", "rate_limited", ...): a fixed set, never a key or a text.
        self.refusals = Counter("gpt_refusals", "Requests refused fast (429/503), by error",
                                ["error"], registry=r)
        self.tokens = Counter("gpt_generated_tokens", "Completion tokens returned",
                              registry=r)
        self.batch_size = Histogram("gpt_batch_size",
                                    "Rows in the running batch as a request joins it",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("gpt_queue_depth", "Requests waiting for a batch slot",
                                 multiprocess_mode="livesum", registry=r)
        self.running = Gauge("gpt_batch_running", "Requests in the batch being generated",
                             multiprocess_mode="livesum", registry=r)
        self.torch_threads = Gauge("gpt_torch_threads", "Torch threads of a worker's latest "
                                   "step (pid label; server/engine/core_share.py)",
                                   multiprocess_mode="liveall", registry=r)
        self.memory = {
            kind: Gauge(f"gpt_worker_{kind}_bytes", f"Worker {kind.upper()} (pid label)",
                        multiprocess_mode="liveall", registry=r)
            for kind in ("rss", "uss", "pss")
        }
        # The host's MemAvailable as each live worker last saw it (the lowest, the worst
        # case): lets a scraper far from the host (Locust's --metrics-urls) see headroom.
        self.system_available = Gauge("gpt_system_available_bytes",
                                      "Host memory available (MemAvailable)",
                                      multiprocess_mode="livemin", registry=r)
        self.load_seconds = Gauge("gpt_model_load_seconds", "Time the master took to load",
                                  multiprocess_mode="max", registry=r)
        self.weight_bytes = Gauge("gpt_model_weight_bytes", "Bytes of model parameters",
                                  multiprocess_mode="max", registry=r)
        self.weight_huge_page_bytes = Gauge("gpt_model_weight_huge_page_bytes",
                                            "Weight bytes the master moved onto 2 MB pages",
                                            multiprocess_mode="max", registry=r)
        # Where the generation thread's time goes (python -m bench profile reads these):
        # the model forward per step, the whole step (forward + sampling + KV bookkeeping),
        # and the rows computed, each by phase (prefill | decode).
        self.forward_seconds = Histogram("gpt_forward_seconds", "Model forward time per step",
                                         ["phase"], buckets=_STEP_BUCKETS, registry=r)
        self.step_seconds = Histogram("gpt_step_seconds", "Whole generation step time",
                                      ["phase"], buckets=_STEP_BUCKETS, registry=r)
        self.step_rows = Counter("gpt_step_rows", "Sequences computed by steps", ["phase"],
                                 registry=r)
        # Prompt tokens computed by steps, and those a row copied from a kept cache instead
        # (server/engine/prefix_cache.py): their ratio is the prefix cache's hit rate.
        self.prompt_tokens = Counter("gpt_prompt_tokens_computed",
                                     "Prompt tokens computed by generation steps", registry=r)
        self.cached_prompt_tokens = Counter("gpt_prompt_tokens_cached",
                                            "Prompt tokens copied from kept KV caches",
                                            registry=r)
        # Bound once: observe_step runs every generation step (every token).
        self._step_series = {
            phase: (self.forward_seconds.labels(phase=phase),
                    self.step_seconds.labels(phase=phase), self.step_rows.labels(phase=phase))
            for phase in ("prefill", "decode", "mixed")}
        # What server.engine.kernels measured at startup (ms of a decode step on one thread, per
        # candidate and batch) and what it chose: a remote load test can read the CPU's
        # kernel path from /metrics as well as from /ready.
        self.kernel_step_ms = Gauge("gpt_kernel_step_ms",
                                    "Decode step on one thread at startup, per candidate",
                                    ["precision", "batch"], multiprocess_mode="max",
                                    registry=r)
        self.kernel_chosen = Gauge("gpt_kernel_chosen", "1 for the precision served",
                                   ["precision"], multiprocess_mode="max", registry=r)
        # The model's code path (server.engine.code_path) as labels of a constant 1; the
        # reasons are /ready's (code_path.*_why).
        self.code_path = Gauge("gpt_code_path", "1, labelled with the code path served",
                               list(CODE_PATH_LABELS), multiprocess_mode="max", registry=r)
        self.log_write_errors = Counter("gpt_request_log_write_errors",
                                        "Request-log lines that could not be written",
                                        registry=r)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app`` and serve ``GET /metrics``."""
        app.extensions["metrics"] = self

        @routing.declare(routing.OPERATOR)
        def metrics() -> Response:
            return self.render()

        app.add_url_rule("/metrics", "metrics", metrics)

    def observe_kernels(self, choice: KernelChoice) -> None:
        """Publish the startup kernel table and the chosen precision."""
        for timing in choice.table:
            self.kernel_step_ms.labels(timing.precision, "1").set(timing.batch_1_ms)
            if timing.batch_max_ms is not None:
                self.kernel_step_ms.labels(timing.precision, str(timing.max_batch)).set(
                    timing.batch_max_ms)
            self.kernel_chosen.labels(timing.precision).set(
                float(timing.precision == choice.chosen))

    def observe_code_path(self, path: Mapping[str, str]) -> None:
        """Publish the code path (``CodePath.as_dict()``) as the labels of gpt_code_path."""
        self.code_path.labels(*(path[key] for key in CODE_PATH_LABELS)).set(1)

    def observe_request(self, route: str, status: int, seconds: float, tokens: int,
                        error: str | None = None) -> None:
        """Count one answered request (a 429 or 503 also by its ``error`` code:reason)."""
        self.requests.labels(route=route, status=str(status)).inc()
        if status in (429, 503):
            self.refusals.labels(error=error or "unnamed").inc()
        self.latency.labels(route=route).observe(seconds)
        if tokens:
            self.tokens.inc(tokens)

    def observe_step(self, phase: str, rows: int, forward_s: float, step_s: float,
                     prompt_tokens: int = 0) -> None:
        """Count one generation step (the generation thread; see server.engine.decoding)."""
        forward, step, step_rows = self._step_series[phase]
        forward.observe(forward_s)
        step.observe(step_s)
        step_rows.inc(rows)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)

    def observe_sample(self, sample: MemorySample, queue_depth: int, running: int) -> None:
        """Publish this worker's latest memory sample and queue state (sampler thread)."""
        self.memory["rss"].set(sample.rss_mb * _MB)
        self.memory["uss"].set(sample.uss_mb * _MB)
        self.memory["pss"].set(sample.pss_mb * _MB)
        self.system_available.set(sample.sys_available_mb * _MB)
        self.queue_depth.set(queue_depth)
        self.running.set(running)

    def render(self) -> Response:
        """The Prometheus text exposition of every worker (or of this process)."""
        if not _multiprocess_dir():
            return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
        for attempt in range(_MERGE_ATTEMPTS):
            registry = CollectorRegistry()
            _SizedFilesCollector(registry)
            try:
                return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
            except FileNotFoundError:
                # child_exit removed a dead worker's file after we listed it: list again.
                if attempt == _MERGE_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (Gunicorn ``child_exit``)."""
    if _multiprocess_dir():
        multiprocess.mark_process_dead(pid)
