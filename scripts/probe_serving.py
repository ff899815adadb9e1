"""Start Gunicorn on a model, then print startup time, per-process memory and 1-vs-N timings.

    python scripts/probe_serving.py --model synthetic:gpt2-large --workers 2 --concurrency 8

Loopback only. Generation is greedy with IGNORE_EOS so every request makes exactly
--tokens new tokens. Memory is read from /proc/<pid>/smaps_rollup (RSS, USS, PSS).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from harness.gunicorn_process import GunicornServer
from server.memory import read_process_memory

REPO = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[int]:
    """PIDs of ``pid``'s child processes (a Gunicorn master's workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


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


def ready_json(server: GunicornServer) -> str:
    """The facts /ready reports: precision, kernel table, threads."""
    return json.dumps({k: server.ready.get(k) for k in
                       ("dtype", "torch_threads", "max_batch_size", "kernels")})


def _timed_batch(url: str, n: int, tokens: int, stagger_s: float = 0.0,
                 ) -> tuple[float, list[dict]]:
    """Wall seconds from the first send to the last answer of ``n`` requests sent
    ``stagger_s`` apart (a request arriving while others generate must not wait for them)."""
    body = {"prompt": "The history of the printing press begins", "max_new_tokens": tokens}

    def post(i: int) -> dict:
        time.sleep(i * stagger_s)
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
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stagger-ms", type=float, default=0.0,
                        help="send the concurrent requests this many ms apart")
    parser.add_argument("--threads", type=int, default=0, help="TORCH_THREADS (0: cores/workers)")
    parser.add_argument("--extra", default="", help="extra gunicorn args, e.g. '--threads 8'")
    parser.add_argument("--no-preload", action="store_true",
                        help="each worker loads its own copy (to measure what preload saves)")
    args = parser.parse_args()
    env = {"MODEL": args.model, "DTYPE": args.dtype, "IGNORE_EOS": "1",
           "API_KEYS": os.environ.get("API_KEYS", "probe-key"), "REQUEST_LOG": "",
           "GUNICORN_ACCESSLOG": "", "GUNICORN_PRELOAD": "0" if args.no_preload else "1",
           "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "", "TORCH_THREADS": str(args.threads),
           "ALLOW_INT8": os.environ.get("ALLOW_INT8", "0")}
    os.environ["API_KEYS"] = env["API_KEYS"]
    workdir = Path(tempfile.mkdtemp(prefix=f"probe-{os.getpid()}-"))
    started = time.monotonic()
    with GunicornServer(workdir, env, args.workers, tuple(args.extra.split())) as server:
        url, master = server.url, server.master_pid()
        ready_s = time.monotonic() - started
        print(f"model {args.model}, {args.workers} workers: all ready {ready_s:.1f} s after "
              f"start (log: {server.log_path})")
        print("\nafter warm-up:")
        _memory_table(master)
        _read_cost(children(master)[0])
        one_s, _ = _timed_batch(url, 1, args.tokens)
        many_s, results = _timed_batch(url, args.concurrency, args.tokens,
                                       args.stagger_ms / 1000.0)
        tokens_one, tokens_many = args.tokens / one_s, args.concurrency * args.tokens / many_s
        print(f"\n1 request of {args.tokens} tokens: {one_s:.2f} s ({tokens_one:.1f} tok/s)")
        print(f"{args.concurrency} concurrent: {many_s:.2f} s wall ({tokens_many:.1f} tok/s), "
              f"batch sizes {sorted(r['batch'] for r in results)}, "
              f"workers {sorted({r['pid'] for r in results})}")
        print(f"{args.concurrency} sent {args.stagger_ms:g} ms apart took {many_s / one_s:.2f}x "
              f"the time of one ({ready_json(server)})")
        print(f"throughput ratio {args.concurrency} vs 1: {tokens_many / tokens_one:.2f}x; "
              f"served in sequence it would take {args.concurrency * one_s:.2f} s")
        print("\nafter load:")
        _memory_table(master)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
