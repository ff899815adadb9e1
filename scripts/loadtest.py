"""The main job: serve a model with Gunicorn, load it with headless Locust, write a run folder.

    python scripts/loadtest.py                       # synthetic:gpt2-large, 10 users, 300 s
    python scripts/loadtest.py --model synthetic:tiny --users 10 --duration 20 --label smoke
    python scripts/loadtest.py --shape steps --stages 1:120,10:120,25:120,50:120,100:120
    python scripts/loadtest.py --shape search --search-slo-p95-ms 5000 --search-max 64
    python scripts/loadtest.py --arrival poisson --rate 0.5 --users 20 --processes 2

Steps: build the synthetic model if missing; create results/<UTC timestamp>-<label>/; start
Gunicorn on 127.0.0.1 (pidfile, request log and log in the run folder, a fresh random API
key and operator key: Locust reads /ready's details and /metrics with the latter); wait until
every worker answers /ready; run headless Locust with --csv, --html and the
suite's hooks (which write run.json: the client's and the server's facts); stop the server
(SIGTERM, wait, SIGKILL); add to run.json what only this script knows (the server's command
line, the git commit, its SLO options); then run ``python -m analysis`` on the folder when
the analysis package is present. Loopback only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.gunicorn_process import GunicornServer
from harness.locust_process import LocustProcess, locust_env, suite_command
from harness.provenance import git_commit
from harness.run_folder import new_run_dir, update_record
from locustfiles.arrival_schedule import PROCESSES
from locustfiles.run_options import SHAPES
from locustfiles.search_options import (
    add_script_search_options,
    plan_from_options,
    search_arguments,
)
from locustfiles.stages import DEFAULT_STAGES, parse_stages
from locustfiles.user_mix import MIX_CHOICES
from server.config import DEFAULTS

REPO = Path(__file__).resolve().parent.parent
# Server settings shown in run.json's server_command (never the API or operator keys).
COMMAND_ENV = ("MODEL", "MODELS_DIR", "DTYPE", "TORCH_THREADS", "MAX_BATCH_SIZE",
               "PREFILL_CHUNK", "KV_DTYPE", "KV_TOKENS", "KV_CACHE_MB", "PREFIX_CACHE_ROWS",
               "ALLOW_INT8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: the mission's 10 users on the default model)."""
    p = argparse.ArgumentParser(prog="python scripts/loadtest.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("MODEL", "synthetic:gpt2-large"),
                   help="synthetic:<preset>, a local HF folder or a hub id")
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--dtype", default=os.environ.get("DTYPE", "auto"),
                   help="auto, float32, float16, bfloat16 or int8 (server/engine/quantize.py)")
    p.add_argument("--kv-dtype", default=os.environ.get("KV_DTYPE", DEFAULTS["KV_DTYPE"]),
                   help="KV cache storage: auto (float16 unless the weights are float32), "
                        "model (as computed), float16 or int8")
    p.add_argument("--kv-tokens", type=int, default=os.environ.get("KV_TOKENS") or None,
                   help="KV positions a worker's running rows may reserve (0: no limit; "
                        "unset: --kv-cache-mb in the model's positions)")
    p.add_argument("--kv-cache-mb", type=float,
                   default=os.environ.get("KV_CACHE_MB", DEFAULTS["KV_CACHE_MB"]),
                   help="MiB of KV cache a worker's running rows may reserve, unless "
                        "--kv-tokens is set")
    p.add_argument("--prefix-cache-rows", type=int,
                   default=int(os.environ.get("PREFIX_CACHE_ROWS",
                                              DEFAULTS["PREFIX_CACHE_ROWS"])),
                   help="finished rows' KV caches a worker keeps for prompts that start "
                        "the same way (0: none)")
    p.add_argument("--workers", type=int, default=1, help="Gunicorn workers")
    p.add_argument("--torch-threads", type=int, default=0, help="per worker; 0 = cores/workers")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--prefill-chunk", type=int, default=128,
                   help="prompt tokens fed per step (chunked prefill)")
    p.add_argument("--allow-int8", action="store_true",
                   help="let DTYPE=auto choose int8 when it measures fastest (changes text)")
    p.add_argument("--users", type=int, default=10, help="concurrent Locust users")
    p.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    p.add_argument("--duration", type=float, default=300.0,
                   help="seconds of load (a 3 GB model on 2 cores needs minutes to settle)")
    p.add_argument("--shape", choices=SHAPES, default="none",
                   help="none (--users for --duration), steps (--stages) or search (the "
                        "highest load within the --search-* limits; stops by itself)")
    p.add_argument("--stages", default=DEFAULT_STAGES,
                   help="for --shape steps: USERS:SECONDS,...")
    add_script_search_options(p)
    p.add_argument("--processes", type=int, default=0,
                   help="Locust worker processes (0 = one process, no master/worker)")
    p.add_argument("--arrival", choices=["closed", *PROCESSES], default="closed",
                   help="closed: --users think and resend (default); constant, poisson or "
                        "gamma: requests at --rate on one schedule, --users as the pool")
    p.add_argument("--rate", type=float, default=1.0, help="open-loop requests per second")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma: squared CV of the gaps (1 = Poisson, above 1 burstier)")
    p.add_argument("--arrival-seed", type=int, default=0, help="open-loop schedule seed")
    p.add_argument("--label", default="loadtest")
    p.add_argument("--mix", choices=MIX_CHOICES,
                   default=os.environ.get("LOCUST_MIX", "tasks"),
                   help="user classes: the task routes (JSON), streamed task and /v1 routes, "
                        "the /v1 routes, or all (locustfiles/user_mix.py)")
    p.add_argument("--locustfile", default="locustfiles",
                   help="Locust's -f: the suite (default) or locustfiles/_bench.py, the "
                        "fixed-length benchmark user that `make bench` runs")
    p.add_argument("--user-classes", nargs="+", default=[], metavar="CLASS",
                   help="Locust user classes to run, by name (e.g. BenchUser)")
    p.add_argument("--run-dir", type=Path, help="default: results/<UTC timestamp>-<label>/")
    p.add_argument("--slo-p95-ms", type=float, help="p95 latency target, recorded in run.json")
    p.add_argument("--slo-error-rate", type=float, help="error-rate target (0..1)")
    p.add_argument("--ready-timeout", type=float, default=900.0,
                   help="most seconds to wait for every worker's /ready while the server "
                        "is still making progress (harness.waiting)")
    p.add_argument("--stop-timeout", type=float, default=180.0,
                   help="seconds users get to finish in-flight requests at the end")
    p.add_argument("--no-analysis", action="store_true", help="skip python -m analysis")
    p.add_argument("--ui", action="store_true",
                   help="open Locust's web UI on 127.0.0.1:8089 instead of running headless; "
                        "stop with Ctrl+C (the server is stopped and run.json written after)")
    args = p.parse_args(argv)
    args.stage_table = parse_stages(args.stages) if args.shape == "steps" else None
    if args.shape == "search":
        try:
            plan_from_options(args)  # a bad --search-* value stops here, before the server
        except ValueError as error:
            p.error(str(error))
    return args


def build_model(args: argparse.Namespace) -> None:
    """Build a synthetic preset once (the server would too, but this shows progress)."""
    if not args.model.startswith("synthetic:"):
        return
    preset = args.model.removeprefix("synthetic:")
    print(f"== model {args.model}: building if missing (minutes the first time)", flush=True)
    subprocess.run([sys.executable, "-m", "server.engine.synthetic", "build", preset,
                    "--models-dir", args.models_dir], cwd=REPO, check=True)


def start_server(args: argparse.Namespace, run_dir: Path, api_key: str,
                 operator_key: str) -> GunicornServer:
    """Gunicorn serving the model on loopback, its pidfile, log and request log in the run
    folder; returns once every worker answered /ready (harness.gunicorn_process)."""
    env = {"MODEL": args.model, "MODELS_DIR": args.models_dir,
           "DTYPE": args.dtype, "TORCH_THREADS": str(args.torch_threads),
           "MAX_BATCH_SIZE": str(args.max_batch_size),
           "PREFILL_CHUNK": str(args.prefill_chunk), "KV_DTYPE": args.kv_dtype,
           "KV_CACHE_MB": f"{args.kv_cache_mb:g}",
           "PREFIX_CACHE_ROWS": str(args.prefix_cache_rows),
           "ALLOW_INT8": str(int(args.allow_int8)),
           "REQUEST_LOG": str(run_dir / "server_requests.jsonl"),
           "API_KEYS": api_key, "OPERATOR_KEYS": operator_key}
    if args.kv_tokens is not None:  # unset: the server derives it from KV_CACHE_MB
        env["KV_TOKENS"] = str(args.kv_tokens)
    server = GunicornServer(run_dir, env, args.workers, cap_s=args.ready_timeout)
    server.start()
    print(f"== server pid {server.proc.pid} on {server.url}; log {server.log_path}", flush=True)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    print(f"== all {args.workers} workers ready in {server.ready_s:.0f} s ({server.ready})",
          flush=True)
    return server


def locust_command(args: argparse.Namespace, run_dir: Path, server: GunicornServer) -> list[str]:
    """Headless Locust with the run folder's outputs and the suite's options."""
    mode = ["--web-host", "127.0.0.1"] if args.ui else ["--headless"]
    options = [*mode, "--server-pidfile", str(server.pidfile),
               "--stop-timeout", f"{args.stop_timeout:g}", "-r", f"{args.spawn_rate:g}",
               "--mix", args.mix]
    if args.shape == "steps":
        options += ["--shape", "steps", "--stages", args.stages]
    elif args.shape == "search":
        options += ["--shape", "search", *search_arguments(args)]
    else:
        options += ["-u", str(args.users)]
        options += [] if args.ui else ["-t", f"{args.duration:g}s"]
    if args.processes:
        options += ["--processes", str(args.processes)]
    if args.arrival != "closed":  # open-loop (locustfiles/arrivals.py)
        options += ["--arrival", args.arrival, "--rate", f"{args.rate:g}",
                    "--burstiness", f"{args.burstiness:g}", "--arrival-seed",
                    str(args.arrival_seed)]
    # Locust's positional user class names last.
    return suite_command(args.locustfile, server.url, run_dir, args.label,
                         [*options, *args.user_classes])


def server_command(server: GunicornServer) -> str:
    """The server's command line with the settings it got from the environment."""
    env = [f"{k}={server.env[k]}" for k in COMMAND_ENV if k in server.env]
    return shlex.join([*env, *server.args])


def wrapper_facts(args: argparse.Namespace, server: GunicornServer) -> dict[str, Any]:
    """What only this script knows, for run.json (the Locust suite wrote the rest)."""
    facts: dict[str, Any] = {
        "label": args.label, "server_command": server_command(server),
        "git_commit": git_commit(), "workers": args.workers,
    }
    if args.slo_p95_ms is not None or args.slo_error_rate is not None:
        facts["slo"] = {"p95_ms": args.slo_p95_ms, "error_rate": args.slo_error_rate}
    return facts


def main(argv: list[str] | None = None) -> int:
    """Run the whole job; return Locust's exit code (1 = some requests failed)."""
    args = parse_args(argv)
    build_model(args)
    run_dir = args.run_dir or new_run_dir(args.label)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"== run folder {run_dir}", flush=True)
    api_key, operator_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    server = start_server(args, run_dir, api_key, operator_key)
    try:
        command = locust_command(args, run_dir, server)
        print("== locust: " + " ".join(command), flush=True)
        with LocustProcess(command, locust_env(api_key, operator_key)) as locust:
            code = locust.wait()
    finally:
        server.stop(timeout_s=90)
    update_record(run_dir, **wrapper_facts(args, server))
    if not args.no_analysis and importlib.util.find_spec("analysis") is not None:
        subprocess.run([sys.executable, "-m", "analysis", str(run_dir)], cwd=REPO, check=False)
    print(f"== done: {run_dir} (locust exit code {code})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
