"""What the server's memory sampler costs a worker: generation throughput with it on and off,
side by side in one run.

    python -m bench sampler-cost --model synthetic:gpt2-large --threads 1 --batch 8

One process loads the model as a worker does (server.engine.model.load_model, which also times and
picks the kernel path; one worker's torch threads) and generates fixed-length batches
(greedy, IGNORE_EOS) step by step with server.engine.step.StepEngine on this thread, the way a
worker's generation thread does, in windows of ``--window-s`` seconds under three
conditions, rotated every round so drift and neighbours hit each alike:

* ``off``: no sampler thread;
* ``on``: server.engine.memory.WorkerMemorySampler at the defaults (statm every MEMORY_SAMPLE_S, the
  costly smaps_rollup only within its CPU budget);
* ``every-sample``: smaps_rollup on every sample, the sampler as it was before issue 14.

It prints tokens/s per condition (median of the rounds) and its ratio to ``off``, and the
sampler thread's own CPU and smaps read time, which is the cost measured directly (a <1%
throughput difference is within the noise of a shared box; the thread's CPU share is not).
``--json PATH`` also writes the numbers with the host fingerprint. Loopback only; no server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from server.engine.decoding import GenerationRequest
from server.engine.hardware import host_fingerprint
from server.engine.memory import DEFAULT_FULL_BUDGET, WorkerMemorySampler
from server.engine.model import load_model
from server.engine.step import StepEngine

# Condition -> the sampler's smaps budget (None: no sampler).
CONDITIONS = {"off": None, "on": DEFAULT_FULL_BUDGET, "every-sample": math.inf}


@dataclass
class Window:
    """One measured window of one condition."""

    condition: str
    seconds: float
    tokens: int
    sampler_cpu_s: float = 0.0
    samples: int = 0
    full_reads: int = 0
    full_read_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of the window."""
        return self.tokens / self.seconds


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU seconds of one thread of this process (psutil's per-thread times)."""
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    raise LookupError(f"no thread {native_id} in this process")


def generate(engine: StepEngine, requests: list[GenerationRequest]) -> int:
    """Run ``requests`` as one batch to the end, a step at a time; return tokens generated."""
    rows = [engine.new_row(request) for request in requests]
    while running := [row for row in rows if row.finish_reason is None]:
        engine.step(running)
    return sum(len(row.tokens) for row in rows)


def run_window(engine: StepEngine, requests: list[GenerationRequest], condition: str,
               window_s: float, interval_s: float) -> Window:
    """Generate batches for ``window_s`` seconds with the sampler of ``condition``."""
    budget = CONDITIONS[condition]
    sampler = None
    if budget is not None:
        sampler = WorkerMemorySampler(interval_s, full_budget=budget)
        # The sample taken at construction happens once per worker, not once per window.
        counted = (sampler.samples_taken, sampler.full_reads, sampler.full_read_s)
        sampler.start()
    tokens, started = 0, time.perf_counter()
    while time.perf_counter() - started < window_s:  # not a wait: a measured window
        tokens += generate(engine, requests)
    seconds = time.perf_counter() - started
    window = Window(condition, seconds, tokens)
    if sampler is not None:
        window.sampler_cpu_s = thread_cpu_s(sampler.native_id)
        sampler.stop()
        window.samples = sampler.samples_taken - counted[0]
        window.full_reads = sampler.full_reads - counted[1]
        window.full_read_s = sampler.full_read_s - counted[2]
    return window


def summary(windows: list[Window]) -> dict[str, dict[str, float]]:
    """Per condition: median tokens/s, its ratio to off, sampler CPU share and reads."""
    out: dict[str, dict[str, float]] = {}
    for condition in CONDITIONS:
        mine = [w for w in windows if w.condition == condition]
        seconds = sum(w.seconds for w in mine)
        reads = sum(w.full_reads for w in mine)
        out[condition] = {
            "tokens_per_s": statistics.median(w.tokens_per_s for w in mine),
            "sampler_cpu_share": sum(w.sampler_cpu_s for w in mine) / seconds,
            "smaps_read_share": sum(w.full_read_s for w in mine) / seconds,
            "samples_per_s": sum(w.samples for w in mine) / seconds,
            "full_reads_per_s": reads / seconds,
            "ms_per_full_read": 1000 * sum(w.full_read_s for w in mine) / reads if reads else 0.0,
        }
    base = out["off"]["tokens_per_s"]
    for row in out.values():
        row["throughput_vs_off"] = row["tokens_per_s"] / base
    off = [w.tokens_per_s for w in windows if w.condition == "off"]
    out["off"]["noise"] = (max(off) - min(off)) / base  # spread of the off windows
    return out


def render(args: argparse.Namespace, rows: dict[str, dict[str, float]], rss_mb: float) -> str:
    """The result table and the verdict, as text."""
    lines = [f"{args.model} ({args.dtype}), {args.threads} torch thread(s), batch {args.batch}, "
             f"{args.prompt_tokens}+{args.tokens} tokens, RSS {rss_mb:.0f} MB; "
             f"{args.rounds} rounds x {args.window_s:g} s per condition, sampling every "
             f"{args.interval_s:g} s",
             f"{'condition':13} {'tokens/s':>9} {'vs off':>7} {'sampler CPU':>12} "
             f"{'smaps time':>11} {'full reads/s':>13} {'ms/read':>8}"]
    for name, r in rows.items():
        lines.append(f"{name:13} {r['tokens_per_s']:9.2f} {r['throughput_vs_off']:7.3f} "
                     f"{100 * r['sampler_cpu_share']:11.2f}% {100 * r['smaps_read_share']:10.2f}% "
                     f"{r['full_reads_per_s']:13.2f} {r['ms_per_full_read']:8.1f}")
    on = rows["on"]
    lines.append(f"sampler at the defaults: throughput on / off = {on['throughput_vs_off']:.3f} "
                 f"(the off windows alone spread {100 * rows['off']['noise']:.1f}%); its thread "
                 f"used {100 * on['sampler_cpu_share']:.2f}% of a core and spent "
                 f"{100 * on['smaps_read_share']:.2f}% of the time in smaps_rollup "
                 "(target: < 1% of the worker)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench sampler-cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthetic:gpt2-large")
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--dtype", default="auto", help="DTYPE: auto, float32, float16, bfloat16, int8")
    p.add_argument("--allow-int8", action="store_true", help="ALLOW_INT8 (auto may pick int8)")
    p.add_argument("--prefill-chunk", type=int, default=128, help="PREFILL_CHUNK")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one worker's)")
    p.add_argument("--batch", type=int, default=8, help="requests per generated batch")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--window-s", type=float, default=30.0)
    p.add_argument("--interval-s", type=float, default=0.5, help="MEMORY_SAMPLE_S")
    p.add_argument("--json", type=Path, help="also write the numbers and the host here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and print; return 0."""
    args = parse_args(argv)
    host = host_fingerprint()
    print("host: " + json.dumps(host), flush=True)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.dtype, args.models_dir, args.allow_int8, args.batch)
    args.dtype = loaded.precision
    engine = StepEngine(loaded.model, loaded.eos_id, ignore_eos=True,
                        prefill_chunk=args.prefill_chunk)
    ids = list(range(1000, 1000 + args.prompt_tokens))
    requests = [GenerationRequest(ids, max_new_tokens=args.tokens) for _ in range(args.batch)]
    generate(engine, requests)  # warm-up: allocator and kernels settle
    names = list(CONDITIONS)
    windows = []
    for r in range(args.rounds):
        for condition in names[r % 3:] + names[:r % 3]:  # rotate the order every round
            windows.append(run_window(engine, requests, condition, args.window_s,
                                      args.interval_s))
            w = windows[-1]
            print(f"round {r + 1} {condition:13} {w.tokens_per_s:8.2f} tokens/s", flush=True)
    rows = summary(windows)
    rss_mb = WorkerMemorySampler(1.0).latest.rss_mb
    print(render(args, rows, rss_mb))
    if args.json:
        args.json.write_text(json.dumps({
            "host": host, "model": args.model, "dtype": args.dtype, "threads": args.threads,
            "batch": args.batch, "interval_s": args.interval_s, "rss_mb": rss_mb,
            "summary": rows, "windows": [asdict(w) for w in windows]}, indent=2) + "\n")
    return 0
