"""Start Gunicorn on a model, then print startup time, per-process memory and 1-vs-N timings.

    python -m bench burst --model synthetic:gpt2-large --workers 2 --concurrency 8
    python -m bench burst --model synthetic:gpt2 --tokens 48 --stagger-ms 50

Loopback only. Generation is greedy with IGNORE_EOS so every request makes exactly
--tokens new tokens. Memory is read from /proc/<pid>/smaps_rollup (RSS, USS, PSS). The
requests are Locust's (harness.locust_process; locustfiles/_bench.py's BenchUser with
``LOCUST_BENCH_REQUESTS=1``): one user alone, then --concurrency users sending --stagger-ms
apart, each sending one request; the times come from each run's requests.csv (first send
to last answer). The llama.cpp side of the old probe (``--llama``) is not here:
``python -m bench reference`` compares against llama-server under the same Locust suite.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from bench.options import add_model_options
from bench.timing import repeat
from harness.gunicorn_process import GunicornServer
from harness.locust_process import LocustProcess, locust_env, suite_command
from server.engine.memory import read_process_memory

PROMPT = "The history of the printing press begins"


def _memory_table(server: GunicornServer) -> None:
    rows = [("master", server.master_pid())] + [("worker", pid) for pid in server.worker_pids()]
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
    rollup_ms = sum(repeat(lambda: read_process_memory(pid), reads)) * 1000 / reads
    full_ms = sum(repeat(lambda: psutil.Process(pid).memory_full_info(), reads)) * 1000 / reads
    print(f"one PSS read of worker {pid}: smaps_rollup {rollup_ms:.2f} ms, "
          f"psutil memory_full_info {full_ms:.2f} ms")


def ready_json(server: GunicornServer) -> str:
    """The facts /ready reports: precision, kernel table, threads."""
    return json.dumps({k: server.ready.get(k) for k in
                       ("dtype", "torch_threads", "max_batch_size", "kernels")})


def burst(server: GunicornServer, api_key: str, folder: Path, users: int, tokens: int,
          stagger_ms: float) -> tuple[float, pd.DataFrame]:
    """Send one request from each of ``users`` Locust users, ``stagger_ms`` apart;
    (seconds from the first send to the last answer, the requests.csv rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}: {PROMPT}"}) + "\n"
                               for i in range(users)))
    command = suite_command("locustfiles/_bench.py", server.url, folder, folder.name, [
        "--headless", "-u", str(users), "-r", str(users), "-t", "3600s",
        "--server-pidfile", str(server.pidfile), "BenchUser"])
    env = locust_env(api_key, server.operator_key, LOCUST_BENCH_PROMPTS=str(prompts),
                     LOCUST_BENCH_TOKENS=str(tokens), LOCUST_BENCH_REQUESTS="1",
                     LOCUST_BENCH_STAGGER_MS=f"{stagger_ms:g}")
    with LocustProcess(command, env, log_path=folder / "locust.log") as locust:
        code = locust.wait()
    rows = pd.read_csv(folder / "requests.csv")
    if code or len(rows) != users or not rows["success"].all():
        raise SystemExit(f"burst of {users} failed (Locust exit {code}, {len(rows)} rows); "
                         f"see {folder / 'locust.log'}")
    ends = rows["timestamp"] + rows["response_time_ms"] / 1000.0
    return float(ends.max() - rows["timestamp"].min()), rows


def _print_timings(args: argparse.Namespace, one_s: float, many_s: float, detail: str,
                   facts: str, latencies_s: pd.Series) -> None:
    """The 1-vs-N lines: one request, the burst, their ratio, the throughput ratio; with a
    stagger, the slowest request's own latency and the ratio the stagger alone imposes
    (the last request is sent (n-1) x stagger after the first, then takes at least one
    request's time)."""
    tokens_one, tokens_many = args.tokens / one_s, args.concurrency * args.tokens / many_s
    print(f"\n1 request of {args.tokens} tokens: {one_s:.2f} s ({tokens_one:.1f} tok/s)")
    print(f"{args.concurrency} concurrent: {many_s:.2f} s wall ({tokens_many:.1f} tok/s), "
          f"{detail}")
    print(f"{args.concurrency} sent {args.stagger_ms:g} ms apart took {many_s / one_s:.2f}x "
          f"the time of one ({facts})")
    print(f"throughput ratio {args.concurrency} vs 1: {tokens_many / tokens_one:.2f}x; "
          f"served in sequence it would take {args.concurrency * one_s:.2f} s")
    if args.stagger_ms > 0:
        slowest = float(latencies_s.max())
        floor = ((args.concurrency - 1) * args.stagger_ms / 1000.0 + one_s) / one_s
        print(f"slowest request's own latency {slowest:.2f} s = {slowest / one_s:.2f}x one "
              f"alone; the stagger alone puts the burst at >= {floor:.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench burst", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, dtype="auto", threads=0,
                      threads_help="TORCH_THREADS (0: cores/workers)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stagger-ms", type=float, default=0.0,
                        help="spawn the concurrent users this many ms apart")
    parser.add_argument("--extra", default="", help="extra gunicorn args, e.g. '--threads 8'")
    parser.add_argument("--no-preload", action="store_true",
                        help="each worker loads its own copy (to measure what preload saves)")
    parser.add_argument("--out", type=Path, help="server log and Locust runs (default: a "
                        "temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start Gunicorn on the model; print readiness, memory and the 1-vs-N timings."""
    args = parse_args(argv)
    api_key = secrets.token_urlsafe(32)
    env = {"MODEL": args.model, "MODELS_DIR": args.models_dir, "DTYPE": args.dtype,
           "IGNORE_EOS": "1", "API_KEYS": api_key, "REQUEST_LOG": "",
           "GUNICORN_ACCESSLOG": "", "GUNICORN_PRELOAD": "0" if args.no_preload else "1",
           "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "", "TORCH_THREADS": str(args.threads),
           "ALLOW_INT8": os.environ.get("ALLOW_INT8", "0")}
    workdir = args.out or Path(tempfile.mkdtemp(prefix=f"burst-{os.getpid()}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with GunicornServer(workdir, env, args.workers, tuple(args.extra.split())) as server:
        print(f"model {args.model}, {args.workers} workers: all ready "
              f"{time.monotonic() - started:.1f} s after start (log: {server.log_path})")
        print("\nafter warm-up:")
        _memory_table(server)
        _read_cost(server.worker_pids()[0])
        one_s, _ = burst(server, api_key, workdir / "one", 1, args.tokens, 0.0)
        many_s, rows = burst(server, api_key, workdir / "burst", args.concurrency,
                             args.tokens, args.stagger_ms)
        detail = (f"batch sizes {sorted(rows['batch_size'].astype(int))}, "
                  f"workers {sorted(set(rows['worker_pid'].astype(str)))}")
        _print_timings(args, one_s, many_s, detail, ready_json(server),
                       rows["response_time_ms"] / 1000.0)
        print("\nafter load:")
        _memory_table(server)
    print(f"runs: {workdir}")
    return 0
