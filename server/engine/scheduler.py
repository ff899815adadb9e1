"""Continuous batching: one generation thread per worker runs steps, not batches.

Between any two steps the thread admits waiting jobs into the running set (up to
``max_batch_size`` rows); a row that finished, stopped or was cancelled leaves at once and
its slot is free for the next step. No request waits for another request's whole
generation: it waits at most for the step in progress (server.engine.step).

Admission predicts the wait (``predict_s``): from the rows in flight, the jobs queued
ahead and this worker's measured costs, the time until this job would finish. Two costs
are learned from the steps themselves: a decode step (``step_s``) and each prompt token
fed on top of it (``token_s``: a 128-token chunk of gpt2-large costs several decode steps
on a CPU). A job that would not finish within ``REQUEST_TIMEOUT_S`` is refused at once
(503 with Retry-After) instead of being admitted only to time out; a full queue is refused
too. Between steps, a queued job that slower-than-forecast steps have made late (its
forecast from now passes SHED_SHARE of the time it has left, a looser line than
admission's, so that jobs admitted near the line are not refused moments later) is refused
the same way before it costs a step (``_shed_late``): a 503 after a wait rather than a 504
after the whole timeout.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from server.engine.fair_queue import FairQueue
from server.engine.jobs import Job, QueueFull
from server.engine.memory import HeapReleaser
from server.engine.prefix_cache import PrefixCache, cached_tokens
from server.engine.row_curve import RowCurve
from server.engine.step import Row, StepEngine, StepReport, kv_positions
from server.engine.step_cost import StepClock, apportion

log = logging.getLogger(__name__)

# The share of REQUEST_TIMEOUT_S a predicted finish may use: the prediction assumes every
# row runs to its max_new_tokens, but step times wander with the mix (prefill chunks).
ADMIT_SHARE = 0.8
# The share of the time left a queued job's forecast may grow to before it is shed. Above
# ADMIT_SHARE on purpose (hysteresis): a job admitted near the line must not be refused
# seconds later because one step's timing nudged the averages (the 1 -> 100 sweep shed
# such jobs 0-23 s after admitting them); only a job the steps have made really late is.
SHED_SHARE = 0.95
# How much longer than predicted a running row's remaining decode steps may take before
# prompt chunks are held back for it (steps vary with the rows and the machine).
RISK_MARGIN = 1.5
# Forecast calibration: weight of each finished job, the bias's ceiling, and the shortest
# forecast worth learning from.
BIAS_EWMA = 0.2
MAX_BIAS = 4.0
MIN_FORECAST_S = 1.0
# Weight of the newest step in the running step-time average (about the last 20 steps).
STEP_EWMA = 0.05


class WouldTimeOut(QueueFull):
    """Admitting this job would make it finish after the request timeout."""

    def __init__(self, predicted_s: float) -> None:
        super().__init__(f"predicted {predicted_s:.1f} s")
        self.predicted_s = predicted_s


class Scheduler:
    """A bounded queue feeding a step loop over at most ``max_batch_size`` rows."""

    def __init__(self, engine: StepEngine, max_batch_size: int, max_queue: int,
                 timeout_s: float, on_step: Callable[[StepReport], None] = lambda r: None,
                 on_join: Callable[[int], None] = lambda rows: None,
                 row_growth: float = 0.0,
                 on_busy: Callable[[bool], None] = lambda busy: None,
                 kv_tokens: int = 0, prefix_rows: int = 0,
                 on_cached: Callable[[int], None] = lambda tokens: None,
                 tenant_rows: int = 0, tenant_kv_tokens: int = 0, tenant_queue: int = 0,
                 aging_s: float = math.inf) -> None:
        self.engine = engine
        self._max_rows = max(1, max_batch_size)
        # KV positions the running rows may reserve together (0: no limit), as llama.cpp's
        # -c: a row reserves its prompt + max_new_tokens when it joins, so a worker's KV
        # memory stays under kv_tokens x bytes per position whatever the mix.
        self._kv_tokens = max(0, kv_tokens)
        # Finished rows' caches kept for prompts that start the same way: at most kv_tokens
        # positions of them beside the running rows' reservations (as llama.cpp's slots keep
        # their caches in memory of their own), the oldest evicted first. Counted inside the
        # running rows' budget they were evicted as soon as 8 rows ran, and reused nothing.
        self.prefixes = PrefixCache(prefix_rows)
        self._on_cached = on_cached  # prompt tokens a joining row copied from a kept cache
        # Waiting jobs, served fairly across tenants (server.engine.fair_queue); a tenant may hold
        # at most tenant_queue of them, tenant_rows running rows and tenant_kv_tokens KV
        # positions (0: the whole server's, so one key alone may still use all of it).
        self._queue = FairQueue(max_queue, tenant_queue)
        self._tenant_rows = tenant_rows if tenant_rows > 0 else self._max_rows
        self._tenant_kv = max(0, tenant_kv_tokens)
        # A job that does not fit may be overtaken by later ones that do until it has
        # waited this long; then none overtakes it, so big jobs cannot starve.
        self._aging_s = aging_s
        self._timeout_s = timeout_s
        self._on_step = on_step
        self._on_join = on_join  # rows in the running set as a request joins it
        self._on_busy = on_busy  # True before each step, False before waiting idle
        self._rows: list[tuple[Job, Row]] = []
        self._heap = HeapReleaser()
        self._thread: threading.Thread | None = None
        self._clock = StepClock()  # the worker's CPU per step, charged to its rows' jobs
        # What a decode step of n rows costs in one-row steps (server.engine.row_curve): the
        # startup kernel table's line (KernelChoice.row_growth) until steps of n rows are
        # measured. On an AVX2 CPU an 8-row fp32 step costs ~3x a one-row step; learning
        # only the average step would under-predict the first requests of a burst by that
        # much, and admit requests that then time out.
        self.curve = RowCurve(row_growth)
        self.step_s = 0.0  # running average of a one-row decode step (the warm-up seeds it)
        self.token_s = 0.0  # running average of what one prompt token adds to a step
        # Prompt steps learned from: the first sets token_s, later ones move it. Counted, not
        # read off token_s, because 0 is a real price (a tiny model's prompt adds nothing
        # measurable to a step) and must not make the next sample replace the average.
        self.token_samples = 0
        # How much longer finished jobs took than forecast (>= 1): the requests that arrive
        # while a job waits or runs are unknown when it is admitted, and their prompts cost it.
        self.bias = 1.0

    @property
    def depth(self) -> int:
        """Jobs waiting for a row."""
        return self._queue.qsize()

    @property
    def kv_tokens(self) -> int:
        """KV positions the running rows may reserve together (0: no limit)."""
        return self._kv_tokens

    @property
    def tenant_queue(self) -> int:
        """Jobs one tenant may have waiting."""
        return self._queue.tenant_max

    @property
    def running(self) -> int:
        """Rows in the running set."""
        return len(self._rows)

    def submit(self, job: Job) -> Job:
        """Queue ``job``, or raise QueueFull (TenantQueueFull: its key's share) or
        WouldTimeOut without waiting."""
        predicted = self.predict_s(job)
        job.predicted_s = predicted / self.bias  # the forecast before calibration
        if predicted > ADMIT_SHARE * self._timeout_s:
            raise WouldTimeOut(predicted)
        self._queue.put(job)
        return job

    def predict_s(self, job: Job) -> float:
        """Seconds until ``job`` would finish if queued now: every row at its maximum, every
        prompt token served before it (in the fair order) priced in, times the learned
        ``bias`` of past forecasts."""
        order = self._queue.order(self._rows_by_tenant(), extra=job)
        return self._forecast_s(job, order[:order.index(job)])

    def _rows_by_tenant(self) -> Counter[str]:
        """Running rows per tenant."""
        return Counter(job.request.tenant for job, _ in list(self._rows))

    def _forecast_s(self, job: Job, waiting: list[Job]) -> float:
        """Seconds until ``job`` finishes from now, with ``waiting`` queued ahead of it."""
        if self.step_s <= 0.0:
            return 0.0  # nothing measured yet: the warm-up sets it before /ready
        chunk = self.engine.prefill_chunk
        rows = list(self._rows)
        joins = _start_step([(_steps_left(row, chunk), row.cache.capacity) for _, row in rows],
                            [(_job_steps(queued, chunk), kv_positions(queued.request))
                             for queued in waiting],
                            kv_positions(job.request), self._max_rows, self._kv_tokens)
        steps = joins.step + _job_steps(job, chunk)
        own = len(job.request.input_ids)
        ahead = [row.prompt_left for _, row in rows] + [
            len(queued.request.input_ids) for queued in waiting]
        # Every prompt ahead is read while this job waits or runs, and a step that reads
        # prompt tokens costs every row that time, whichever row's tokens they are.
        prompts = own + sum(ahead)
        # Steps carry the rows that run together, which the KV budget may hold below
        # max_rows: pricing them at max_rows (MAX_BATCH_SIZE=32, KV_TOKENS=1,280 runs ~6
        # rows of 192 positions) over-predicted and refused 22 of 32 concurrent requests.
        rows_then = min(self._max_rows, len(rows) + len(waiting) + 1, joins.rows)
        return self.bias * (steps * self.step_s * self._row_cost(rows_then)
                            + prompts * self.token_s)

    def forecast_state(self) -> dict[str, object]:
        """What admission prices with now (/ready's details): a one-row decode step and a
        prompt token in ms, the row counts measured (one-row steps), the calibration."""
        return {"step_ms": round(1000 * self.step_s, 3), "token_ms": round(1000 * self.token_s, 3),
                "row_cost": {str(n): round(r, 3) for n, r in self.curve.measured().items()},
                "bias": round(self.bias, 3)}

    def _row_cost(self, rows: int) -> float:
        """A decode step of ``rows`` rows, in one-row steps."""
        return self.curve.cost(rows)

    def start(self, before_loop: Callable[[], None] = lambda: None) -> None:
        """Start the generation thread; ``before_loop`` (warm-up) runs in it first."""
        def main() -> None:
            before_loop()
            self._clock.reset()  # the warm-up's CPU is nobody's request
            while True:
                try:
                    self.run_once()
                except Exception as error:  # the worker's only generator must go on
                    self._fail_running(error)

        self._thread = threading.Thread(target=main, name="generation", daemon=True)
        self._thread.start()

    def run_once(self) -> None:
        """Admit what fits, run one step, hand out tokens and finished results."""
        if not self._rows:
            self._on_busy(False)  # about to wait: this worker's cores are free for others
        self._shed_late()
        self._admit(block=not self._rows)
        self._drop_cancelled()
        if not self._rows:
            return
        self._on_busy(True)
        try:
            report = self.engine.step([row for _, row in self._rows],
                                      prefill=self._prefill_allowed())
        except Exception as error:  # one bad step must not kill the worker's only generator
            self._clock.lap()  # a failed step is nobody's cost
            finished = self._deliver(self._step_each_alone(error))
        else:
            self._charge(report)  # before any job finishes: its record reads the total
            finished = self._deliver(report.sampled)
            self._on_step(report)
            self.learn(report)
        if finished:  # hand freed KV memory back when idle, and now and then under load
            self._heap.after_batch(idle=not self._rows and self._queue.empty())

    def _charge(self, report: StepReport) -> None:
        """Charge the CPU since the previous step to this step's rows, by tokens fed."""
        for index, cpu_s in apportion(self._clock.lap(), report.fed).items():
            self._rows[index][0].cpu_s += cpu_s

    def _fail_running(self, error: Exception) -> None:
        """Fail every running row's job after an error outside a step (bookkeeping): its
        rows' state is unknown, the queued jobs are not touched."""
        log.error("generation loop error (%s): failing %d running request(s)",
                  type(error).__name__, len(self._rows))
        rows, self._rows = self._rows, []
        for job, row in rows:
            row.cache.release()
            if not job.wait(0):
                job.finish(error=error)

    def _prefill_allowed(self) -> set[int] | None:
        """Which rows may read prompt chunks this step (None: any, shortest first).

        A new row's prefill stalls every running row (on one AMD EPYC core a 128-token
        chunk of gpt2-large costs ~6 decode steps), and the requests that arrive while a row
        runs are unknown when it is admitted. So when some row would miss its deadline if
        this step carried a chunk, the row with the earliest such deadline goes first: if it
        is decoding, the step decodes only; if it is still reading its prompt, only its
        prompt is read."""
        if not self.step_s or math.isinf(self._timeout_s):
            return None
        now = time.monotonic()
        decode_step_s = self.step_s * self._row_cost(len(self._rows))
        chunk = self.engine.prefill_chunk
        chunk_s = chunk * self.token_s
        at_risk = []
        for index, (job, row) in enumerate(self._rows):
            if row.finish_reason is not None:
                continue
            need_s = math.ceil(row.prompt_left / chunk) * chunk_s + \
                max(0, row.steps_left) * decode_step_s
            deadline = job.enqueued_at + self._timeout_s
            if now + chunk_s + RISK_MARGIN * need_s > deadline:
                at_risk.append((deadline, index, row))
        if not at_risk:
            return None
        _, index, row = min(at_risk, key=lambda risk: risk[:2])
        return {index} if row.prompt_left > 0 else set()

    def _shed_late(self) -> None:
        """Refuse (503) each queued job whose forecast from now no longer fits its deadline.

        Admission forecasts a job's finish when it arrives, but the rows and prompts that
        arrive after it are unknown then; when they make a queued job late, it is refused
        before it costs a step instead of being started only to get 504 at the timeout.
        """
        if self.step_s <= 0.0 or math.isinf(self._timeout_s) or self._queue.empty():
            return
        now = time.monotonic()
        waiting = self._queue.order(self._rows_by_tenant())
        ahead: list[Job] = []
        for job in waiting:
            if job.cancelled:
                continue
            forecast = self._forecast_s(job, ahead)
            # A job on schedule keeps its slack (it only shrinks in proportion); one the
            # steps delayed past SHED_SHARE of its time left is refused while it still can be.
            if forecast > SHED_SHARE * (job.enqueued_at + self._timeout_s - now):
                log.info("shed a queued job: %.0f s from now, %.0f s left", forecast,
                         job.enqueued_at + self._timeout_s - now)
                job.finish(error=WouldTimeOut(now - job.enqueued_at + forecast))
                self._queue.remove(job)  # its place is free for the next request at once
            else:
                ahead.append(job)

    def learn(self, report: StepReport) -> None:
        """Update the one-row decode-step and prompt-token costs, and the row curve, from
        one step (also the warm-up's).

        A one-row decode step updates ``step_s``; a decode step of more rows, what that row
        count costs in one-row steps (``curve``), so that a count is priced at what its own
        steps took (a step of n rows updated ``step_s`` divided by the curve's guess before,
        and a wrong guess for n then skewed the price of every count)."""
        if not report.tokens_in:
            return  # nothing ran
        decoding = report.tokens_in - report.prompt_tokens  # one token per decoding row
        if not report.prompt_tokens:
            if decoding > 1 and self.step_s:
                self.curve.learn(decoding, report.step_s / self.step_s)
                return
            unit = report.step_s / self._row_cost(decoding)
            self.step_s += STEP_EWMA * (unit - self.step_s) if self.step_s else unit
            return
        # A step costs at least a one-row decode step (the weights are read once per step).
        decode_s = self.step_s * self._row_cost(decoding)
        extra = max(0.0, report.step_s - decode_s) / report.prompt_tokens
        self.token_s += STEP_EWMA * (extra - self.token_s) if self.token_samples else extra
        self.token_samples += 1

    def _admit(self, block: bool) -> None:
        """Move jobs from the queue into the running set while rows are free (``block``:
        idle, so wait for the first job)."""
        if block:
            self._queue.wait()
        while len(self._rows) < self._max_rows and not self._queue.empty():
            job = self._pick()
            if job is None:
                return
            job.started_at = time.monotonic()
            request = job.request
            row = self.engine.new_row(request, self.prefixes.find(request.input_ids,
                                                                  request.cache_scope))
            self._rows.append((job, row))
            self._on_join(len(self._rows))
            if row.prefilled:
                job.cached_tokens = row.prefilled
                self._on_cached(row.prefilled)

    def _pick(self) -> Job | None:
        """Take the next job to run out of the queue: the first of the fair order whose
        key's share has room and whose KV reservation fits beside the running rows' (an
        empty running set takes any job); a job that does not fit is overtaken only until
        it has waited ``aging_s``. None when no job may start now."""
        rows, kv = self._rows_by_tenant(), self._kv_by_tenant()
        now = time.monotonic()
        for job in self._queue.order(rows):
            if job.cancelled:
                self._queue.remove(job)
                self._calibrate(job)
                job.finish(error=TimeoutError("cancelled while queued"))
                continue
            tenant, need = job.request.tenant, kv_positions(job.request)
            if rows[tenant] >= self._tenant_rows or (
                    self._tenant_kv and rows[tenant] and kv[tenant] + need > self._tenant_kv):
                continue  # its key's share is full: the other keys' jobs go first
            if not self._rows or not self._kv_tokens or \
                    self.kv_reserved + need <= self._kv_tokens:
                self._queue.remove(job)
                return job
            if now - job.enqueued_at >= self._aging_s:
                return None  # it waited long enough: nothing overtakes it any more
        return None

    def _kv_by_tenant(self) -> Counter[str]:
        """KV positions the running rows reserve, per tenant."""
        kv: Counter[str] = Counter()
        for job, row in list(self._rows):
            kv[job.request.tenant] += row.cache.capacity
        return kv

    @property
    def kv_reserved(self) -> int:
        """KV positions the running rows have reserved."""
        return sum(row.cache.capacity for _, row in list(self._rows))

    def _trim_prefixes(self) -> None:
        """Evict kept caches, oldest first, until they hold at most the KV budget."""
        while (self._kv_tokens and self.prefixes.positions > self._kv_tokens
               and self.prefixes.evict_oldest()):
            pass

    def _drop_cancelled(self) -> None:
        for job, row in self._rows:
            if job.cancelled and row.finish_reason is None:
                row.finish_reason = "cancelled"
        self._finish_done()

    def _step_each_alone(self, error: Exception) -> dict[int, int]:
        """After a failed step, step every row by itself, so that only a row that fails
        alone fails (its job gets the error); the tokens the others sampled, by row index.
        A failed forward leaves the rows as they were: caches advance only after it."""
        log.error("step over %d rows failed (%s); stepping each row alone", len(self._rows),
                  type(error).__name__)
        sampled = {}
        for index, (_, row) in enumerate(self._rows):
            try:
                alone = self.engine.step([row])
            except Exception as own:
                log.error("a row failed alone (%s): only its request fails", type(own).__name__)
                row.finish_reason, row.error = "error", own
                continue
            if 0 in alone.sampled:
                sampled[index] = alone.sampled[0]
        return sampled

    def _deliver(self, sampled: dict[int, int]) -> int:
        """Hand each row's new token (row index -> token) to its job; finish the rows that
        are done; how many there were."""
        rows = len(self._rows)
        for index, (job, _) in enumerate(self._rows):
            job.batch_size = max(job.batch_size, rows)
            token = sampled.get(index)
            if token is not None:
                job.on_token(token)
        return self._finish_done()

    def _calibrate(self, job: Job) -> None:
        """Learn how far off the forecast of a job that ends now was (cancelled ones too:
        their clients waited at least this long)."""
        if job.predicted_s < MIN_FORECAST_S:
            return  # too short to say anything about the forecast
        ratio = (time.monotonic() - job.enqueued_at) / job.predicted_s
        self.bias += BIAS_EWMA * (min(MAX_BIAS, max(1.0, ratio)) - self.bias)

    def _finish_done(self) -> int:
        """Finish the rows that are done (their slots free at once); how many there were."""
        keep = []
        for job, row in self._rows:
            if row.finish_reason is None:
                keep.append((job, row))
            elif row.error is not None:  # this row alone failed: its cache is not trusted
                row.cache.release()
                job.finish(error=row.error)
            else:
                self._calibrate(job)
                # Kept for later prompts of its scope or released, before the answer: the
                # RSS its log records holds only what the prefix cache keeps within the KV
                # budget.
                self.prefixes.keep(cached_tokens(row.request.input_ids, row.tokens,
                                                 row.cache.length), row.cache,
                                   row.request.cache_scope, len(row.request.input_ids))
                job.finish(result=row.result())
        finished, self._rows = len(self._rows) - len(keep), keep
        self._trim_prefixes()
        return finished


class Joining(NamedTuple):
    """When a job would join the running set (``step``, in steps from now) and the most
    rows that run together until then, itself included (``rows``)."""

    step: int
    rows: int


def _start_step(running: list[tuple[int, int]], waiting: list[tuple[int, int]], need: int,
                max_rows: int, kv_tokens: int) -> Joining:
    """When a job reserving ``need`` KV positions joins the running set, after the
    ``waiting`` jobs ahead of it (in the fair order). ``running`` and ``waiting`` are
    (steps, reserved positions); a job joins once a row is free and, with a ``kv_tokens``
    budget, its reservation fits beside the rows still running (an empty set takes any);
    one that does not fit yet is overtaken by later ones that do (as the scheduler does
    before a job has aged)."""
    ends = list(running)  # (step at which the row leaves, its reservation)
    heapq.heapify(ends)
    held = sum(tokens for _, tokens in ends)
    now, most = 0, len(ends)
    pending = [*waiting, (-1, need)]
    while True:
        blocked = []
        for steps, tokens in pending:
            if len(ends) < max_rows and (not ends or not kv_tokens
                                         or held + tokens <= kv_tokens):
                if steps < 0:
                    return Joining(now, max(most, len(ends) + 1))
                heapq.heappush(ends, (now + steps, tokens))
                held += tokens
                most = max(most, len(ends))
            else:
                blocked.append((steps, tokens))
        pending = blocked
        end, freed = heapq.heappop(ends)  # something runs: an empty set would take any job
        now, held = max(now, end), held - freed


def _steps_left(row: Row, chunk: int) -> int:
    return math.ceil(row.prompt_left / chunk) + max(0, row.steps_left)


def _job_steps(job: Job, chunk: int) -> int:
    return math.ceil(len(job.request.input_ids) / chunk) + max(0, job.request.max_new_tokens)
