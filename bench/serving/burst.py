"""Start Gunicorn on a model, then print startup time, per-process memory and 1-vs-N timings.

    python scripts/probe_serving.py --model synthetic:gpt2-large --workers 2 --concurrency 8
    python scripts/probe_serving.py --model synthetic:gpt2 --llama f16 --stagger-ms 50

Loopback only. Generation is greedy with IGNORE_EOS so every request makes exactly
--tokens new tokens. Memory is read from /proc/<pid>/smaps_rollup (RSS, USS, PSS).
With --llama QUANT the same 1-vs-N timings are taken from llama.cpp's llama-server (the
yardstick of issue 13) on the preset's GGUF at QUANT (bench/llama_reference.py says where
it lives): --parallel = --concurrency, threads = the CPUs this process may use, POST
/completion with n_predict, ignore_eos and temperature 0; each answer's tokens_predicted
is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from bench.llama_reference import (
    QUANTS,
    LlamaSettings,
    check_built,
    gguf_path,
    llama_dir,
    server_binary,
    server_command,
)
from harness.gunicorn_process import GunicornServer
from harness.llama_server import LlamaServer
from harness.processes import free_port
from server.engine.memory import read_process_memory

REPO = Path(__file__).resolve().parent.parent
PROMPT = "The history of the printing press begins"

# One request: (index, tokens) -> facts about its answer (batch size, worker, timings).
Post = Callable[[int, int], dict]


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


def _post_ours(url: str, api_key: str) -> Post:
    """Send request ``i`` to our server's /generate-text; its batch size, worker, timings."""
    def post(i: int, tokens: int) -> dict:
        r = requests.post(f"{url}/generate-text",
                          json={"prompt": f"{i}: {PROMPT}", "max_new_tokens": tokens},
                          headers={"Authorization": f"Bearer {api_key}"}, timeout=600)
        r.raise_for_status()
        return {"batch": int(r.headers["X-Batch-Size"]), "pid": r.headers["X-Worker-PID"],
                **r.json()["timings_ms"]}
    return post


def _post_llama(url: str, api_key: str) -> Post:
    """Send request ``i`` to llama-server's POST /completion (greedy, EOS ignored, no prompt
    cache); raise unless it predicted exactly ``tokens`` tokens."""
    def post(i: int, tokens: int) -> dict:
        body = {"prompt": f"{i}: {PROMPT}", "n_predict": tokens, "ignore_eos": True,
                "temperature": 0, "cache_prompt": False}
        r = requests.post(f"{url}/completion", json=body,
                          headers={"Authorization": f"Bearer {api_key}"}, timeout=600)
        r.raise_for_status()
        answer = r.json()
        if answer.get("tokens_predicted") != tokens:
            raise RuntimeError(f"llama-server predicted {answer.get('tokens_predicted')} "
                               f"tokens, not {tokens}: {json.dumps(answer)[:400]}")
        return {"slot": answer.get("id_slot"), **answer.get("timings", {})}
    return post


def _timed_batch(post: Post, n: int, tokens: int, stagger_s: float = 0.0,
                 ) -> tuple[float, list[dict]]:
    """Wall seconds from the first send to the last answer of ``n`` requests sent
    ``stagger_s`` apart (a request arriving while others generate must not wait for them)."""
    def send(i: int) -> dict:
        time.sleep(i * stagger_s)
        sent = time.monotonic()
        answer = post(i, tokens)
        return {**answer, "latency_s": time.monotonic() - sent}  # its own send to answer

    start = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(send, range(n)))
    return time.monotonic() - start, results


def _timings(args: argparse.Namespace, post: Post) -> tuple[float, float, list[dict]]:
    """(one request's s, the concurrent burst's s, the burst's answers)."""
    one_s, _ = _timed_batch(post, 1, args.tokens)
    many_s, results = _timed_batch(post, args.concurrency, args.tokens,
                                   args.stagger_ms / 1000.0)
    return one_s, many_s, results


def _print_timings(args: argparse.Namespace, one_s: float, many_s: float, detail: str,
                   facts: str, results: list[dict]) -> None:
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
        slowest = max(r["latency_s"] for r in results)
        floor = ((args.concurrency - 1) * args.stagger_ms / 1000.0 + one_s) / one_s
        print(f"slowest request's own latency {slowest:.2f} s = {slowest / one_s:.2f}x one "
              f"alone; the stagger alone puts the burst at >= {floor:.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--llama", metavar="QUANT", choices=QUANTS,
                        help="time llama.cpp's llama-server on the preset's GGUF at QUANT "
                             f"({', '.join(QUANTS)}) instead of our server")
    parser.add_argument("--llama-dir", type=Path, default=llama_dir(),
                        help="the llama.cpp build and GGUFs ($LLAMA_DIR, default "
                             "/work/cache/llama)")
    return parser.parse_args(argv)


def llama_preset(model: str) -> str:
    """The synthetic preset of ``model`` (synthetic:gpt2 -> gpt2): the GGUFs' name."""
    kind, _, preset = model.partition(":")
    if kind != "synthetic" or not preset:
        raise SystemExit(f"--llama needs a synthetic:<preset> model, not {model!r}")
    return preset


def llama_command(args: argparse.Namespace, preset: str) -> tuple[list[str], LlamaSettings]:
    """llama-server's command for the probe and its settings: --parallel = --concurrency,
    threads = our CPUs; exits with how-to-build when the binary or the GGUF is absent."""
    binary = server_binary(args.llama_dir)
    gguf = gguf_path(args.llama_dir, preset, args.llama)
    check_built([binary, gguf], preset, args.llama_dir)
    settings = LlamaSettings(threads=len(os.sched_getaffinity(0)), parallel=args.concurrency,
                             ctx_size=1024 * args.concurrency)
    return server_command(binary, gguf, free_port(), f"synthetic-{preset}-{args.llama}",
                          settings), settings


def run_llama(args: argparse.Namespace) -> int:
    """Start llama-server on the GGUF, warm it with one request, print the 1-vs-N timings."""
    command, settings = llama_command(args, llama_preset(args.model))
    api_key = secrets.token_urlsafe(32)
    run_dir = Path(tempfile.mkdtemp(prefix=f"probe-llama-{os.getpid()}-"))
    started = time.monotonic()
    with LlamaServer(command, run_dir, api_key) as server:
        print(f"llama-server {args.model} {args.llama}: ready {time.monotonic() - started:.1f} s "
              f"after start (log: {server.log_path})\ncommand: {' '.join(command)}")
        post = _post_llama(server.url, api_key)
        post(0, args.tokens)  # warm-up, untimed (our server warms up before it says ready)
        one_s, many_s, results = _timings(args, post)
        slots = sorted(r["slot"] for r in results)
        facts = json.dumps({"server": "llama.cpp", "quant": args.llama,
                            "threads": settings.threads, "parallel": settings.parallel})
        _print_timings(args, one_s, many_s, f"slots {slots}", facts, results)
        print(f"\nllama-server RSS after load: "
              f"{read_process_memory(server.proc.pid).rss_mb:.0f} MB")
    return 0


def run_ours(args: argparse.Namespace) -> int:
    """Start Gunicorn on the model; print readiness, memory and the 1-vs-N timings."""
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
        one_s, many_s, results = _timings(args, _post_ours(url, env["API_KEYS"]))
        detail = (f"batch sizes {sorted(r['batch'] for r in results)}, "
                  f"workers {sorted({r['pid'] for r in results})}")
        _print_timings(args, one_s, many_s, detail, ready_json(server), results)
        print("\nafter load:")
        _memory_table(master)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the probe (our server, or llama-server with --llama) and print its report."""
    args = parse_args(argv)
    return run_llama(args) if args.llama else run_ours(args)


if __name__ == "__main__":
    raise SystemExit(main())
