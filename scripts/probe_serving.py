"""Start Gunicorn on a model, then print startup time, per-process memory and 1-vs-N timings.

    python scripts/probe_serving.py --model synthetic:gpt2-large --workers 2 --concurrency 8

Loopback only. Generation is greedy with IGNORE_EOS so every request makes exactly
--tokens new tokens. Memory is read from /proc/<pid>/smaps_rollup (RSS, USS, PSS).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from server.memory import read_process_memory

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """PIDs of ``pid``'s child processes (a Gunicorn master's workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_all_ready(url: str, workers: int, proc, timeout_s: float) -> None:
    """Poll /ready until ``workers`` distinct worker pids said yes; exit if the server died."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("server died or did not get ready; see its log")
        try:
            response = requests.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                seen.add(response.headers["X-Worker-PID"])
        except (requests.ConnectionError, requests.Timeout):
            pass  # not accepting yet, or busy loading (without preload)
        time.sleep(0.05)


def _memory_table(master: int) -> None:
    rows = [("master", master)] + [("worker", pid) for pid in children(master)]
    print(f"{'role':8} {'pid':>7} {'RSS MB':>9} {'USS MB':>9} {'PSS MB':>9} {'shared MB':>10}")
    total = {"rss": 0.0, "uss": 0.0, "pss": 0.0}
    for role, pid in rows:
        m = read_process_memory(pid)
        total["rss"] += m.rss_mb
        total["uss"] += m.uss_mb
        total["pss"] += m.pss_mb
        print(f"{role:8} {pid:>7} {m.rss_mb:9.0f} {m.uss_mb:9.0f} {m.pss_mb:9.0f} "
              f"{m.shared_mb:10.0f}")
    print(f"{'sum':8} {'':>7} {total['rss']:9.0f} {total['uss']:9.0f} {total['pss']:9.0f}"
          "   (sum of PSS = real footprint; sum of RSS double-counts shared weights)")


def _read_cost(pid: int, reads: int = 20) -> None:
    """Time one smaps_rollup read (what the sampler does) against psutil's full smaps walk."""
    start = time.perf_counter()
    for _ in range(reads):
        read_process_memory(pid)
    rollup_ms = (time.perf_counter() - start) * 1000 / reads
    start = time.perf_counter()
    for _ in range(reads):
        psutil.Process(pid).memory_full_info()
    full_ms = (time.perf_counter() - start) * 1000 / reads
    print(f"one PSS read of worker {pid}: smaps_rollup {rollup_ms:.2f} ms, "
          f"psutil memory_full_info {full_ms:.2f} ms")


def _timed_batch(url: str, n: int, tokens: int) -> tuple[float, list[dict]]:
    body = {"prompt": "The history of the printing press begins", "max_new_tokens": tokens}

    def post(i: int) -> dict:
        r = requests.post(f"{url}/generate-text", json={**body, "prompt": f"{i}: {body['prompt']}"},
                          headers={"Authorization": f"Bearer {os.environ['API_KEYS']}"},
                          timeout=600)
        r.raise_for_status()
        return {"batch": int(r.headers["X-Batch-Size"]), "pid": r.headers["X-Worker-PID"],
                **r.json()["timings_ms"]}

    start = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(post, range(n)))
    return time.monotonic() - start, results


def main() -> int:
    """Run the probe and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="synthetic:gpt2-large")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--extra", default="", help="extra gunicorn args, e.g. '--threads 8'")
    parser.add_argument("--no-preload", action="store_true",
                        help="each worker loads its own copy (to measure what preload saves)")
    args = parser.parse_args()
    port, pidfile = free_port(), Path(f"/tmp/probe-{os.getpid()}.pid")
    env = {**os.environ, "MODEL": args.model, "DTYPE": args.dtype, "IGNORE_EOS": "1",
           "API_KEYS": os.environ.get("API_KEYS", "probe-key"), "REQUEST_LOG": "",
           "GUNICORN_ACCESSLOG": "", "GUNICORN_PRELOAD": "0" if args.no_preload else "1",
           "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": ""}
    os.environ["API_KEYS"] = env["API_KEYS"]
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--workers",
           str(args.workers), "--bind", f"127.0.0.1:{port}", "--pid", str(pidfile),
           *args.extra.split()]
    log = open(f"/tmp/probe-{os.getpid()}.log", "w")  # noqa: SIM115 (lives as long as the server)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while not pidfile.exists():
            if proc.poll() is not None:
                raise SystemExit(f"gunicorn exited {proc.returncode}; see {log.name}")
            time.sleep(0.05)
        master = int(pidfile.read_text())
        wait_all_ready(url, args.workers, proc, timeout_s=600)
        ready_s = time.monotonic() - started
        print(f"model {args.model}, {args.workers} workers: all ready {ready_s:.1f} s after "
              f"start (log: {log.name})")
        print("\nafter warm-up:")
        _memory_table(master)
        _read_cost(children(master)[0])
        one_s, _ = _timed_batch(url, 1, args.tokens)
        many_s, results = _timed_batch(url, args.concurrency, args.tokens)
        tokens_one, tokens_many = args.tokens / one_s, args.concurrency * args.tokens / many_s
        print(f"\n1 request of {args.tokens} tokens: {one_s:.2f} s ({tokens_one:.1f} tok/s)")
        print(f"{args.concurrency} concurrent: {many_s:.2f} s wall ({tokens_many:.1f} tok/s), "
              f"batch sizes {sorted(r['batch'] for r in results)}, "
              f"workers {sorted({r['pid'] for r in results})}")
        print(f"throughput ratio {args.concurrency} vs 1: {tokens_many / tokens_one:.2f}x; "
              f"served in sequence it would take {args.concurrency * one_s:.2f} s")
        print("\nafter load:")
        _memory_table(master)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
