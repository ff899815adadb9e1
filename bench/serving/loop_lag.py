"""Locust's event-loop lag with and without the server-memory sampler, side by side in one run.

    python -m bench loop-lag --model synthetic:gpt2-large --users 5 --duration 300

Serves the model once (scripts/loadtest.py's server, its options and defaults), then runs two
headless Locust processes against it at the same time, each with ``--users`` users: one
samples the server's memory every ``--sample-s`` seconds (memory.csv, the default 1 s), the
other does not sample at all (both started through harness.locust_process). Both see the
same server and the same CPU contention; only the sampling differs. Each writes its run
folder (loadgen.csv: the 100 ms timer's lateness and Locust's CPU) under ``--out``; the
command prints loop lag p50/p99/max and CPU per run and writes loop_lag.json with the host
fingerprint. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import secrets
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from analysis.loadgen import load_window, loadgen_summary
from analysis.readers import read_loadgen, read_requests
from harness.locust_process import LocustProcess, locust_env
from harness.run_folder import new_run_dir
from scripts import loadtest
from server.engine.hardware import describe, fingerprint_subprocess


def run_both(args: argparse.Namespace, out: Path, sample_s: float) -> dict[str, Path]:
    """Serve once; run the sampling and the non-sampling Locust at the same time."""
    api_key, operator_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    env = locust_env(api_key, operator_key)
    runs = {"sampler-on": out / "sampler-on", "sampler-off": out / "sampler-off"}
    server = loadtest.start_server(args, out, api_key, operator_key)
    try:
        with ExitStack() as stack:
            procs = []
            for name, run_dir in runs.items():
                run_dir.mkdir(parents=True, exist_ok=True)
                every = sample_s if name == "sampler-on" else 0.0
                cmd = [*loadtest.locust_command(args, run_dir, server), "--memory-sample-s",
                       f"{every:g}"]
                procs.append(stack.enter_context(
                    LocustProcess(cmd, env, log_path=run_dir / "locust.log")))
            codes = [proc.wait() for proc in procs]
    finally:
        server.stop(timeout_s=90)
    print(f"== locust exit codes {codes}", flush=True)
    return runs


def summarise(run_dir: Path) -> dict:
    """Loop lag and CPU of one run folder over its load window (analysis.loadgen)."""
    requests = read_requests(run_dir / "requests.csv")
    ticks = read_loadgen(run_dir / "loadgen.csv", float(requests["timestamp"].min()))
    summary = loadgen_summary(ticks, load_window(requests))
    return {"requests": len(requests), **(asdict(summary) if summary else {})}


def main(argv: list[str] | None = None) -> int:
    """Run both, print the comparison, write loop_lag.json; return 0."""
    p = argparse.ArgumentParser(prog="python -m bench loop-lag", description=__doc__,
                                add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="default: results/<UTC timestamp>-loop-lag/")
    p.add_argument("--sample-s", type=float, default=1.0, help="memory sampling interval")
    own, rest = p.parse_known_args(argv)
    args = loadtest.parse_args([*rest, "--no-analysis"])  # loadtest's -h lists the rest
    loadtest.build_model(args)
    out = own.out or new_run_dir("loop-lag")
    out.mkdir(parents=True, exist_ok=True)
    host = fingerprint_subprocess()
    print(f"== host: {describe(host)}", flush=True)
    runs = run_both(args, out, own.sample_s)
    results = {name: summarise(run_dir) for name, run_dir in runs.items()}
    print(f"{args.model}, {args.workers} workers, {args.users} users per Locust, "
          f"{args.duration:g} s; memory sampled every {own.sample_s:g} s in sampler-on")
    print(f"{'run':12} {'requests':>8} {'lag p50 ms':>10} {'lag p99 ms':>10} {'lag max ms':>10} "
          f"{'Locust CPU (% of a core)':>25}")
    nan = float("nan")
    for name, r in results.items():
        print(f"{name:12} {r['requests']:8d} {r.get('lag_p50_ms', nan):10.2f} "
              f"{r.get('lag_p99_ms', nan):10.2f} {r.get('lag_max_ms', nan):10.1f} "
              f"{100 * r.get('cpu_cores', nan):24.1f}%")
    (out / "loop_lag.json").write_text(json.dumps(
        {"host": host, "model": args.model, "workers": args.workers, "users": args.users,
         "duration_s": args.duration, "sample_s": own.sample_s, "runs": results},
        indent=2) + "\n")
    print(f"== wrote {out / 'loop_lag.json'}")
    return 0
