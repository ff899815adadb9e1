"""The model holder: loaded once in the Gunicorn master, started in each worker after fork."""

from __future__ import annotations

import logging
import os
import threading
import time

import torch
from flask import Flask

from server.engine import code_path, kv_budget
from server.engine.core_share import CoreShare
from server.engine.decoding import GenerationRequest
from server.engine.kv_budget import KVBudget
from server.engine.memory import (
    MemorySample,
    WorkerMemorySampler,
    pin_mmap_threshold,
    read_process_memory,
    release_free_heap,
)
from server.engine.model import LoadedModel, load_model
from server.engine.requestlog import RequestLog
from server.engine.scheduler import Scheduler
from server.engine.shared_rows import runtime_dir
from server.engine.step import StepEngine, StepReport

log = logging.getLogger(__name__)


class ModelService:
    """Owns the model, the worker's scheduler, memory sampler and request log.

    ``init_app`` loads the weights (in the master under ``preload_app``, before fork, with
    torch pinned to one thread so no OpenMP pool exists to be broken by fork).
    ``start`` runs in each worker after fork: torch threads, sampler, generation thread,
    warm-up; ``ready`` is set when the warm-up generation has finished.
    """

    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None
        self.scheduler: Scheduler | None = None
        self.position_bytes = 0  # one KV position, every layer (set with the scheduler)
        self.cores: CoreShare | None = None
        self.sampler: WorkerMemorySampler | None = None
        self.request_log: RequestLog | None = None
        self.ready = threading.Event()
        self.config: dict = {}
        self._start_lock = threading.Lock()
        self._started_pid: int | None = None

    def init_app(self, app: Flask) -> None:
        """Load the configured model and attach this service to ``app``."""
        self.config = app.config
        self.metrics = app.extensions["metrics"]
        torch.set_num_threads(1)  # no multi-threaded torch op before fork (see docstring)
        self.loaded = load_model(app.config["MODEL"], app.config["DTYPE"],
                                 app.config["MODELS_DIR"], app.config["ALLOW_INT8"],
                                 app.config["MAX_BATCH_SIZE"], app.config["HUGE_PAGES"])
        self.metrics.load_seconds.set(self.loaded.load_s)
        self.metrics.weight_huge_page_bytes.set(self.loaded.huge_page_bytes)
        self.metrics.weight_bytes.set(self.loaded.weight_bytes)
        self.metrics.observe_kernels(self.loaded.kernels)
        # Created before fork: the workers share its slots (server/engine/core_share.py).
        self.cores = CoreShare(len(os.sched_getaffinity(0)), app.config["TORCH_THREADS"],
                               runtime_dir())
        self.scheduler = self._make_scheduler(app.config)
        self.request_log = RequestLog(app.config["REQUEST_LOG"],
                                      on_error=self.metrics.log_write_errors.inc)
        app.extensions["model_service"] = self

    def _make_scheduler(self, config: dict) -> Scheduler:
        """Continuous batching (server.engine.scheduler) over a step engine of the loaded model,
        on the code path decided for it once, here (server.engine.code_path)."""
        path = code_path.decide(self.loaded.model, config["KV_DTYPE"],
                                self.loaded.kernels.chosen)
        log.info(path.summary())
        self.metrics.observe_code_path(path.as_dict())
        budget = self._resolve_kv_budget(config, path.cache_dtype)
        self.position_bytes = budget.position_bytes
        engine = StepEngine(self.loaded.model, self.loaded.eos_id, config["IGNORE_EOS"],
                            config["PREFILL_CHUNK"], path=path, stop_ids=self.loaded.stop_ids)
        timeout_s = config["REQUEST_TIMEOUT_S"] if config["ADMIT_PREDICTED"] else float("inf")
        return Scheduler(engine, config["MAX_BATCH_SIZE"], config["MAX_QUEUE"], timeout_s,
                         on_step=self._observe_step,
                         on_join=self.metrics.batch_size.observe,
                         row_growth=self.loaded.kernels.row_growth(),
                         on_busy=self._share_cores, kv_tokens=budget.tokens,
                         prefix_rows=config["PREFIX_CACHE_ROWS"],
                         on_cached=self.metrics.cached_prompt_tokens.inc,
                         tenant_rows=config["KEY_MAX_ROWS"],
                         tenant_kv_tokens=config["KEY_KV_TOKENS"],
                         tenant_queue=config["KEY_MAX_QUEUE"],
                         aging_s=config["QUEUE_AGING_S"])

    def _resolve_kv_budget(self, config: dict, cache_dtype: str) -> KVBudget:
        """KV_TOKENS, or KV_CACHE_MB in positions of this model's ``cache_dtype`` caches
        (server.engine.kv_budget), logged once: before fork under preload."""
        budget = kv_budget.resolve(self.loaded.model.config, cache_dtype,
                                   kv_tokens=config["KV_TOKENS"],
                                   cache_mb=config["KV_CACHE_MB"],
                                   ceiling=config["MAX_BATCH_SIZE"] * self.loaded.context_window)
        log.info(budget.summary())
        return budget

    def _share_cores(self, busy: bool) -> None:
        """Before a step (busy) or an idle wait: use this worker's share of the cores."""
        threads = self.cores.threads(busy)
        if busy and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.metrics.torch_threads.set(threads)

    def _observe_step(self, report: StepReport) -> None:
        self.metrics.observe_step(report.phase, report.rows, report.forward_s, report.step_s,
                                  report.prompt_tokens)

    def start(self, torch_threads: int = 0) -> None:
        """Start this process's serving threads once (idempotent; call after fork)."""
        with self._start_lock:
            if self._started_pid == os.getpid():
                return
            self._started_pid = os.getpid()
        pin_mmap_threshold()  # before the warm-up: freed activations go back at once
        # The first step's share (server/engine/core_share.py) replaces this unless it is fixed.
        threads = torch_threads or self.config["TORCH_THREADS"] or os.cpu_count() or 1
        torch.set_num_threads(threads)
        self.metrics.torch_threads.set(threads)
        self.sampler = WorkerMemorySampler(self.config["MEMORY_SAMPLE_S"], on_sample=self._publish)
        self.sampler.start()
        self.scheduler.start(before_loop=self._warm_up)
        log.info("worker %d serving with %d torch threads", os.getpid(), threads)

    def _publish(self, sample: MemorySample) -> None:
        self.metrics.observe_sample(sample, self.scheduler.depth, self.scheduler.running)

    def _warm_up(self) -> None:
        """Generate a few tokens alone, then twice with MAX_BATCH_SIZE rows, and seed
        admission's costs from them (server.engine.scheduler): a one-row decode step, what a
        prompt token adds (from the second batch's prompts), and what a step of
        MAX_BATCH_SIZE rows costs on this worker's threads (the kernel table timed one thread
        in the master: server.engine.row_curve)."""
        start = time.monotonic()
        ids = self.loaded.tokenizer.encode("Warm-up: the quick brown fox")
        request = GenerationRequest(ids, max_new_tokens=self.config["WARMUP_TOKENS"])
        # The median decode step: a step at a new shape pays one-time costs first (oneDNN
        # primitives, first-touch pages), and seeding from it priced every job high.
        alone = self._run_together([request])
        self._learn_median(alone)
        rows = self.config["MAX_BATCH_SIZE"]
        if rows == 1:
            self.scheduler.learn(alone[0])  # its prompt, the decode step known
        else:
            # Twice, the prompts priced from the second: the first prefill of many rows paid
            # one-time costs too (gpt2-large on the Zen 3: 16.7 ms a prompt token at warm-up
            # against 10.4 steady, which refused a fourth wave at c = 32 that would have
            # finished in time).
            first = self._run_together([request] * rows)
            reports = self._run_together([request] * rows)
            self._learn_prompts(reports)  # with the decode step known: what the prompts add
            if not self.scheduler.token_s:  # nothing measurable (a tiny model): the first's
                self.scheduler.token_samples = 0  # price alone, not averaged with that 0
                self._learn_prompts(first)
            self._learn_median([r for r in first + reports if r.rows == rows])
        elapsed_s = time.monotonic() - start
        # The warm-up's batches of MAX_BATCH_SIZE rows left their activations' pages in this
        # thread's malloc arena, free but resident (21.9 of its 22.2 MB on llama-3.2-1b,
        # results/profile/warmup-heap-zen2.txt); the generation loop trims only after a
        # request, so an idle worker kept them.
        release_free_heap()
        self.ready.set()
        m = read_process_memory()  # once per worker: the per-request path reads the sampler
        log.info("worker %d warmed up in %.2f s: RSS %.0f MB, USS %.0f MB, PSS %.0f MB, "
                 "shared %.0f MB; a decode step %.1f ms, %d rows %.2f times that, a prompt "
                 "token %.2f ms", os.getpid(), elapsed_s, m.rss_mb, m.uss_mb, m.pss_mb,
                 m.shared_mb, 1000 * self.scheduler.step_s, rows,
                 self.scheduler.curve.cost(rows), 1000 * self.scheduler.token_s)

    def _run_together(self, requests: list[GenerationRequest]) -> list[StepReport]:
        """Step rows for ``requests`` together until all finish; every step's report."""
        engine = self.scheduler.engine
        rows = [engine.new_row(request) for request in requests]
        reports = []
        while live := [row for row in rows if row.finish_reason is None]:
            reports.append(engine.step(live))
        for row in rows:
            row.cache.release()
        return reports

    def _learn_prompts(self, reports: list[StepReport]) -> None:
        """Teach the scheduler what these steps' prompt tokens added."""
        for report in reports:
            if report.prompt_tokens:
                self.scheduler.learn(report)

    def _learn_median(self, reports: list[StepReport]) -> None:
        """Teach the scheduler the median of these steps' decode-only ones."""
        decodes = sorted((r for r in reports if not r.prompt_tokens), key=lambda r: r.step_s)
        if decodes:
            self.scheduler.learn(decodes[len(decodes) // 2])

    def kept_kv_mb(self) -> float:
        """MiB of KV this worker's kept prefix rows hold (0 before the scheduler exists)."""
        if self.scheduler is None:
            return 0.0
        return self.scheduler.prefixes.positions * self.position_bytes / 2**20

    def memory(self) -> MemorySample:
        """This worker's latest memory sample (a direct read before the sampler runs)."""
        return self.sampler.latest if self.sampler else read_process_memory()
