"""Soak on real Gunicorn with synthetic:gpt2: 2,000 requests at steady concurrency, no growth.

After a warm-up of 800 requests (thread pools, batch shapes, allocator arenas all settled),
each worker's RSS and PSS drift by less than 1% of its memory over the next 1,200 requests,
its open files do not grow, and no thread starts beyond its request pool.

Drift is read idle: the soak runs in 4 rounds of 300 requests, and after warm-up and after
each round the load pauses until every connection is closed, the generation thread has
trimmed its heap (server/engine/memory.py) and each worker is read. The drift is the robust trend
(Theil-Sen, the median of pairwise slopes) through those 5 readings. Under load a worker's
memory moves by +-50 MB with each batch's activations and the load's mix between the two
workers wanders for tens of seconds, so a trend fitted to samples taken under load moved by
+14 MB in 200 s on a healthy server (seen in CI): it is printed, not judged.

PSS is checked on anonymous pages (smaps_rollup's Pss_Anon): what a worker can leak or
un-share. The loader copies the weights out of the safetensors file (server/engine/quantize.py,
own_memory), so they are anonymous copy-on-write pages; while they were served from the
mapped file, a worker's file-backed PSS jumped by ~190 MB whenever the kernel reclaimed
pages only the master had mapped and the workers faulted them back in alone.

The samples (master, workers and total) are written as a run's memory.csv and given to the
analysis: its leak rule (memory_growth, a total-PSS floor slope after warm-up beyond three
times its standard error) must stay silent on them and fire once a leak is added to the same
samples.
"""

from __future__ import annotations

import contextlib
import csv
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from statistics import median

import pytest

from analysis.config import load_config
from analysis.findings import build_findings
from analysis.readers import MEMORY_COLUMNS
from analysis.run import load_run
from harness.gunicorn_process import GunicornServer
from harness.waiting import WaitTimeout, wait_until
from server.engine import synthetic
from server.engine.memory import read_process_memory
from tests.conftest import MODELS_DIR, server_env
from tests.steady_load import Outcome, SteadyLoad, post_once

# The first 800 requests are warm-up: besides thread pools and batch shapes, a worker's
# private memory keeps settling for several hundred requests (glibc arenas, Python's object
# pools filling the holes the preloaded heap left): measured on gpt2 after the 300th request,
# +4 MB USS by the 900th, +1 MB more by the 2,100th.
WARMUP_REQUESTS = 800
SOAK_REQUESTS = 1200
SOAK_ROUNDS = 4  # the soak's requests in rounds, each followed by an idle reading
SAMPLE_S = 0.5
CLIENTS = 32
THREADS = 16  # request threads per worker (pinned: the pool grows lazily up to this)
# Seconds at each end of the soak left out of the trends: the load ramps up from idle (and
# drains at the end), and fewer requests in flight hold less activation memory.
RAMP_S = 5.0
# Added to each worker's samples after warm-up for the rule's positive control (MB/min per
# worker). The rule's threshold is 1 MB/min on the total, but the soak's samples span only
# a minute or two of load: the slope of their floors has a standard error of 20-60 MB/min
# (measured over five soaks), so the rule, asking for three of them, resolves only a leak of
# a few hundred MB/min here. The positive control is that: 5 MB/s per worker.
LEAK_MB_PER_MIN = 300.0

PROMPTS = [
    "The weather report for tomorrow says",
    "In the beginning of the story, the old lighthouse keeper",
    "Write a short note about trains:",
    "Question: why do cats purr? Answer:",
    "A list of things to pack for a long walk in the hills: water, a map,",
]


def _body(i: int) -> dict:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": 4, "seed": i}


@dataclass(frozen=True)
class Idle:
    """A worker read while the server is idle."""

    rss_mb: float
    pss_anon_mb: float
    open_files: int
    threads: int


def _pss_anon_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) / 1024
    pytest.fail("smaps_rollup has no Pss_Anon line (Linux 5.9 or later has)")


def _open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _idle(pids: list[int]) -> dict[int, Idle]:
    """Each worker once its connections are closed (open files unchanged for 1 s)."""
    seen: list[dict[int, int]] = []

    def settled() -> bool:
        seen.append({pid: _open_files(pid) for pid in pids})
        return len(seen) > 1 and seen[-1] == seen[-2]

    # Best effort, as before: after 15 s the reading is taken anyway (the soak judges the
    # trend over many readings; one taken while a socket closes must not fail it).
    with contextlib.suppress(WaitTimeout):
        wait_until(settled, "open files settle", timeout_s=15, interval_s=1.0)
    now = seen[-1]
    return {pid: Idle(read_process_memory(pid).rss_mb, _pss_anon_mb(pid), now[pid],
                      _threads(pid)) for pid in pids}


def _theil_sen(points: list[tuple[float, float]]) -> float:
    """Change of y from the first point to the last along the points' robust trend
    (Theil-Sen: the median of the slopes between every pair of points)."""
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in combinations(points, 2) if x2 > x1]
    return median(slopes) * (points[-1][0] - points[0][0])


def _trend_mb(samples: list[dict], field: str) -> float:
    """Change of ``field`` (MB) over the samples' time along its robust trend."""
    return _theil_sen([(row["timestamp"], row[field]) for row in samples])


def _drift_mb(checkpoints: list[Idle], field: str) -> float:
    """Change of ``field`` (MB) over the idle readings (one per round) along their trend."""
    return _theil_sen([(i, getattr(idle, field)) for i, idle in enumerate(checkpoints)])


def _rate(outcomes: list[Outcome]) -> float:
    """Requests per second the server answered over ``outcomes`` (a saturating burst)."""
    span_s = max(o.ended_at for o in outcomes) - min(o.started_at for o in outcomes)
    return len(outcomes) / max(span_s, 1e-3)


def _window_s(n: int, rate: float) -> float:
    """Seconds allowed for ``n`` requests at ``rate``: three times the expected time (the
    burst's rate is the server's best; steady load shares the box with the sampler), and
    at least 300 s."""
    return max(300.0, 3.0 * n / rate + 60.0)


def _saturate(url: str, headers: dict[str, str], n: int) -> list[Outcome]:
    """``n`` requests at once: each worker's request-thread pool grows to its full size."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: post_once(url, _body(i), headers), range(n)))


class TreeSampler:
    """Samples master and workers every SAMPLE_S into memory.csv rows (while on); worker
    rows also get pss_anon_mb."""

    def __init__(self, master: int, workers: list[int]) -> None:
        self.pids = [(master, "master"), *((pid, "worker") for pid in workers)]
        self.rows: list[dict] = []
        self.on = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            if self.on.is_set():
                self._sample()

    def _sample(self) -> None:
        now = time.time()
        rows = []
        for pid, role in self.pids:
            m = read_process_memory(pid)
            rows.append({"timestamp": now, "pid": pid, "role": role, "rss_mb": m.rss_mb,
                         "uss_mb": m.uss_mb, "pss_mb": m.pss_mb, "shared_mb": m.shared_mb,
                         "sys_available_mb": m.sys_available_mb,
                         "pss_anon_mb": _pss_anon_mb(pid) if role == "worker" else None})
        total = {k: sum(r[k] for r in rows) for k in ("rss_mb", "uss_mb", "pss_mb", "shared_mb")}
        rows.append({"timestamp": now, "pid": 0, "role": "total", **total,
                     "sys_available_mb": rows[0]["sys_available_mb"]})
        self.rows.extend(rows)


def _run_folder(folder: Path, rows: list[dict], started: float) -> Path:
    folder.mkdir()
    started_at = datetime.fromtimestamp(started, UTC).isoformat()
    (folder / "run.json").write_text(json.dumps({"started_at": started_at, "workers": 2}))
    with open(folder / "memory.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, MEMORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _with_leak(rows: list[dict], from_ts: float, mb_per_min: float) -> list[dict]:
    """``rows`` with each worker growing by ``mb_per_min`` after ``from_ts`` (totals too)."""
    leaked = []
    for row in rows:
        grow = mb_per_min * max(0.0, row["timestamp"] - from_ts) / 60
        workers = 2 if row["role"] == "total" else row["role"] == "worker"
        leaked.append({**row, **{k: row[k] + workers * grow
                                 for k in ("rss_mb", "uss_mb", "pss_mb")}})
    return leaked


def _leak_rule(folder: Path, warmup_s: float) -> tuple[bool, float]:
    """Whether the analysis's memory_growth rule fired on this run, and the slope it saw."""
    findings = build_findings(load_run(folder), load_config({"warmup_s": warmup_s}))
    fired = any(r.rule == "memory_growth" for r in findings.recommendations)
    return fired, findings.memory.slope_mb_per_min


@pytest.fixture(scope="module")
def gpt2_model() -> Path:
    return synthetic.build("gpt2", MODELS_DIR)


@pytest.mark.slow
@pytest.mark.soak  # `make soak` runs it; `make test` (CI) leaves it out
def test_soak_2000_requests_without_growth(gpt2_model, tmp_path, api_headers) -> None:
    env = server_env(tmp_path, MODEL="synthetic:gpt2", MAX_BATCH_SIZE="16",
                     GUNICORN_THREADS=str(THREADS), GUNICORN_MAX_REQUESTS="0",
                     GUNICORN_ACCESSLOG="")
    url = "/generate-text"
    outcomes: list[Outcome] = []

    def load(server: GunicornServer, first: int, n: int) -> None:
        # Sized from this machine's measured rate, not a fast CPU's: the same requests take
        # 3-5x longer on a slow or busy 2-core box, and the count is what the soak proves.
        window_s = _window_s(n, rate)
        with SteadyLoad(server.url + url, api_headers, lambda i: _body(first + i), CLIENTS, n,
                        max_s=window_s, keep_alive=True) as steady:
            steady.wait_for(n)  # the load itself ends after window_s
        outcomes.extend(steady.stop())

    with GunicornServer(tmp_path, env, workers=2) as server:
        workers = server.worker_pids()
        boot = _idle(workers)
        with TreeSampler(int(server.pidfile.read_text()), workers) as sampler:
            started = time.time()
            sampler.on.set()
            outcomes.extend(_saturate(server.url + url, api_headers, 2 * CLIENTS))
            rate = _rate(outcomes)
            print(f"\nmeasured {rate:.1f} requests/s: windows of "
                  f"{_window_s(WARMUP_REQUESTS, rate):.0f} s for the warm-up")
            load(server, len(outcomes), WARMUP_REQUESTS - len(outcomes))
            sampler.on.clear()
            checkpoints = [_idle(workers)]
            soak_started = time.time()
            for _ in range(SOAK_ROUNDS):
                sampler.on.set()
                load(server, len(outcomes), SOAK_REQUESTS // SOAK_ROUNDS)
                sampler.on.clear()
                soak_ended = time.time()
                checkpoints.append(_idle(workers))
            soaked_s = soak_ended - soak_started
            warm, end = checkpoints[0], checkpoints[-1]
        assert server.worker_pids() == workers  # no restart hid anything
        rows = list(sampler.rows)

    # The analysis's leak rule on the soak's samples, and on the same samples plus a leak.
    warmup_s = soak_started + RAMP_S - started
    fired, slope = _leak_rule(_run_folder(tmp_path / "soak-run", rows, started), warmup_s)
    leaked = _with_leak(rows, soak_started, LEAK_MB_PER_MIN)
    leak_run = _run_folder(tmp_path / "leak-run", leaked, started)
    fired_leaking, slope_leaking = _leak_rule(leak_run, warmup_s)
    first, last = soak_started + RAMP_S, soak_ended - RAMP_S
    soak_rows = {pid: [r for r in rows if r["pid"] == pid and first < r["timestamp"] < last]
                 for pid in workers}
    print(f"\n{len(outcomes)} requests; soak {soaked_s:.0f} s, {len(soak_rows[workers[0]])} "
          f"samples per worker; total PSS slope after warm-up {slope:.2f} MB/min, with the "
          f"added leak {slope_leaking:.2f} MB/min; leak rule on the soak itself: "
          f"{'fired' if fired else 'silent'}")
    for pid in workers:
        idle = [checkpoint[pid] for checkpoint in checkpoints]
        print(f"worker {pid}: idle drift RSS {_drift_mb(idle, 'rss_mb'):+.2f} MB, anonymous PSS "
              f"{_drift_mb(idle, 'pss_anon_mb'):+.2f} MB (idle RSS "
              f"{', '.join(f'{i.rss_mb:.1f}' for i in idle)}); under load: RSS trend "
              f"{_trend_mb(soak_rows[pid], 'rss_mb'):+.2f} MB, anonymous PSS "
              f"{_trend_mb(soak_rows[pid], 'pss_anon_mb'):+.2f} MB; boot {boot[pid]}, "
              f"end {end[pid]}")

    assert len(outcomes) == WARMUP_REQUESTS + SOAK_REQUESTS
    assert Counter(o.status for o in outcomes) == {200: len(outcomes)}
    assert {o.worker_pid for o in outcomes} == set(workers)
    for pid in workers:
        samples = soak_rows[pid]
        assert len(samples) >= 60, "too few samples to see a trend"
        idle = [checkpoint[pid] for checkpoint in checkpoints]
        # Sockets closed again; no thread beyond the request pool ever started.
        assert max(i.open_files for i in idle) <= warm[pid].open_files, idle
        assert max(i.threads for i in idle) <= boot[pid].threads + THREADS, idle

    # The workers' mean idle drift stays under 1% of a worker's memory (its idle RSS, ~850
    # MB), for RSS and for anonymous PSS. A leak grows in every worker (each serves half the
    # requests); with per-request KV buffers one worker's idle readings wander +-15 MB either
    # way (seen on the AMD EPYC box under taskset -c 0: +14.5 and -9.9 MB in one run), so
    # one worker alone cannot be held to 1%. A leak of 8 MB per 1,200 requests (7 KB a
    # request) still moves the mean by ~8 MB.
    idles = {pid: [checkpoint[pid] for checkpoint in checkpoints] for pid in workers}
    one_percent_mb = 0.01 * median(i.rss_mb for idle in idles.values() for i in idle)
    for field in ("rss_mb", "pss_anon_mb"):
        mean_drift = sum(_drift_mb(idle, field) for idle in idles.values()) / len(idles)
        assert abs(mean_drift) < one_percent_mb, (field, mean_drift, idles)

    assert fired_leaking, f"leak rule silent on a leak: {slope_leaking:.2f} MB/min"
    # And silent on the healthy soak: it fits each 10 s window's lowest total PSS and fires
    # only when that slope exceeds its threshold by more than three standard errors
    # (batch activations move total PSS by tens of MB from one sample to the next).
    assert not fired, f"leak rule fired on a healthy soak: {slope:.2f} MB/min"
