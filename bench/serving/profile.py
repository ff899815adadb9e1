"""Where a Gunicorn worker's time goes under steady load, measured side by side in one run.

    python -m bench profile --model synthetic:gpt2-large --dtype int8 \
        --workers 2 --users 10 --warmup-s 90 --measure-s 120 --py-spy 60

1. Serves the model with real Gunicorn (harness) and drives a closed loop of ``--users``
   Locust users (locustfiles/_bench.py's BenchUser, through harness.locust_process: no
   think time; prompts of exactly ``--prompt-tokens`` tokens; exactly ``--tokens`` new
   tokens each, greedy), like the bench rows; the Locust run folder is kept.
2. Over the measured window, reads the server's own step metrics from ``/metrics``
   (``gpt_forward_seconds``, ``gpt_step_seconds``, ``gpt_step_rows``, by phase) and splits
   each worker's wall time into: prefill forward, decode forward, the rest of each step
   (sampling, callbacks, KV-cache bookkeeping), and time outside any step (gathering a
   batch, waiting for requests).
3. With ``--py-spy S``, samples one worker for S seconds of the window with py-spy
   (``--native``: torch's C++ frames too) and prints the hottest functions.
4. After the server stops, times the same steps through the step engine on the served
   code path in a quiet process (same dtype, one worker's torch threads, rows = the mean
   seen under load, context = the prompt plus half the answer), so the report shows what
   load itself costs a step, and the closed loop's time per decode step (worker time over
   decode steps: what a stream waits per token) against that probe step: issue 31's step
   gap.

Loopback only. py-spy must be installed for ``--py-spy`` (bench/serving/pyspy.py).
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.micro.step_engine import decoding_rows
from bench.options import add_model_options
from bench.prompts import write_prompts
from bench.serving.pyspy import hottest, py_spy
from bench.timing import repeat
from harness.gunicorn_process import GunicornServer
from harness.locust_process import LocustProcess, locust_env, suite_command
from harness.waiting import wait_until
from locustfiles.inputs import DATA_DIR
from server.config import DEFAULTS
from server.engine import code_path
from server.engine.decoding import GenerationRequest
from server.engine.hardware import describe, host_fingerprint
from server.engine.model import load_model
from server.engine.step import Row, StepEngine


@dataclass
class Window:
    """Sums of the step metrics over the measured window (one delta per series)."""

    forward_s: dict[str, float]
    step_s: dict[str, float]
    steps: dict[str, float]
    rows: dict[str, float]
    tokens: float

    def mean_rows(self, phase: str) -> float:
        """Sequences per step of ``phase``."""
        return self.rows[phase] / max(self.steps[phase], 1)

    def forward_ms(self, phase: str) -> float:
        """Mean model forward per step of ``phase``, ms."""
        return 1000 * self.forward_s[phase] / max(self.steps[phase], 1)


def scrape(server: GunicornServer) -> dict[tuple[str, str], float]:
    """{(sample name, phase label or ""): value} of the step and token series (read with
    the server's operator key: /metrics is an operator surface)."""
    text = requests.get(f"{server.url}/metrics", timeout=10,
                        headers=server.operator_headers).text
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("gpt_forward_seconds", "gpt_step_", "gpt_generated")):
                key = (sample.name, sample.labels.get("phase", ""))
                if "le" not in sample.labels:
                    values[key] = values.get(key, 0.0) + sample.value
    return values


def served_kernel(server: GunicornServer) -> str:
    """The precision the server's master chose (gpt_kernel_chosen == 1), "?" if unpublished."""
    text = requests.get(f"{server.url}/metrics", timeout=10,
                        headers=server.operator_headers).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gpt_kernel_chosen" and sample.value == 1:
                return sample.labels["precision"]
    return "?"


def window(before: dict, after: dict) -> Window:
    """The deltas between two scrapes."""
    def delta(name: str, phase: str) -> float:
        one = after.get((name, phase), 0.0) - before.get((name, phase), 0.0)
        if phase == "prefill":  # continuous batching reads prompts in "mixed" steps too
            one += after.get((name, "mixed"), 0.0) - before.get((name, "mixed"), 0.0)
        return one

    phases = ("prefill", "decode")
    return Window(
        forward_s={p: delta("gpt_forward_seconds_sum", p) for p in phases},
        step_s={p: delta("gpt_step_seconds_sum", p) for p in phases},
        steps={p: delta("gpt_step_seconds_count", p) for p in phases},
        rows={p: delta("gpt_step_rows_total", p) for p in phases},
        tokens=delta("gpt_generated_tokens_total", ""))


def server_settings(args: argparse.Namespace) -> dict[str, str]:
    """The ``--server-env`` settings, by name."""
    return dict(item.split("=", 1) for item in args.server_env)


def server_env(args: argparse.Namespace, workdir: Path, api_key: str) -> dict[str, str]:
    """Gunicorn's environment: greedy fixed-length generations, no limits."""
    (workdir / "metrics").mkdir(exist_ok=True)
    return {"MODEL": args.model, "DTYPE": args.dtype, "IGNORE_EOS": "1",
            "API_KEYS": api_key, "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "", "REQUEST_LOG": "",
            "GUNICORN_ACCESSLOG": "", "TORCH_THREADS": str(args.threads),
            "MAX_BATCH_SIZE": str(args.batch), "REQUEST_TIMEOUT_S": "600",
            "MODELS_DIR": args.models_dir, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            **server_settings(args)}


def closed_loop(args: argparse.Namespace, server: GunicornServer, api_key: str,
                run_dir: Path) -> LocustProcess:
    """Headless Locust: ``--users`` BenchUsers, no think time, fixed-length prompts and
    answers, until stopped (the -t is a safety cap)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    prompts = run_dir / "prompts.jsonl"
    write_prompts(args.model, args.models_dir, DATA_DIR / "prompts.jsonl", prompts,
                  args.prompt_tokens, count=args.users)
    cap_s = args.warmup_s + args.measure_s + max(args.py_spy, 0) + 600
    command = suite_command("locustfiles/_bench.py", server.url, run_dir, "profile", [
        "--headless", "-u", str(args.users), "-r", str(args.users), "-t", f"{cap_s:g}s",
        "--server-pidfile", str(server.pidfile),
        "--memory-sample-s", f"{args.client_memory_sample_s:g}", "BenchUser"])
    env = locust_env(api_key, server.operator_key, LOCUST_BENCH_PROMPTS=str(prompts),
                     LOCUST_BENCH_TOKENS=str(args.tokens))
    return LocustProcess(command, env, log_path=run_dir / "locust.log")


def client_errors(run_dir: Path) -> int:
    """Failed requests Locust recorded (requests cut off by the end of the run are not)."""
    path = run_dir / "requests.csv"
    if not path.exists():
        return 0
    import pandas as pd

    return int((pd.read_csv(path)["success"] == 0).sum())


@torch.inference_mode()
def quiet_step_ms(args: argparse.Namespace, prefill_rows: int, decode_rows: int,
                  context: int) -> tuple[float, float, str]:
    """(best of 3 steps reading ``prefill_rows`` prompts in the server's PREFILL_CHUNK (the
    first chunk: a step under load reads no more), median of 24 decode steps at
    ``decode_rows`` rows of ``context`` positions) in ms, through the step engine on the code
    path the server serves (server.engine.code_path with the served KV_DTYPE: --server-env's
    or the default), alone in this process on one worker's torch threads: the probe the
    served step is held against; and the kernel path this process chose (it times the
    candidates as the server's master does, so the two may differ on a noisy box: the report
    names both)."""
    torch.set_num_threads(1)  # the kernel choice is timed on one thread, as in the master
    loaded = load_model(args.model, args.dtype, args.models_dir)
    torch.set_num_threads(args.threads)
    settings = server_settings(args)  # the served KV_DTYPE decides the cache and attention
    path = code_path.decide(loaded.model, settings.get("KV_DTYPE", DEFAULTS["KV_DTYPE"]),
                            loaded.kernels.chosen)
    engine = StepEngine(loaded.model, loaded.eos_id, ignore_eos=True,
                        prefill_chunk=int(settings.get(
                            "PREFILL_CHUNK", DEFAULTS["PREFILL_CHUNK"])), path=path)
    prefill = repeat(lambda: engine.step(_rows(engine, prefill_rows, args.prompt_tokens, 1)),
                     3, warmup=1)
    rows = decoding_rows(engine, decode_rows, context, max_new_tokens=64)
    decode = repeat(lambda: engine.step(rows), 24, warmup=2)
    return min(prefill) * 1000, sorted(decode)[len(decode) // 2] * 1000, loaded.kernels.chosen


def _rows(engine: StepEngine, n: int, prompt_tokens: int, new_tokens: int) -> list[Row]:
    """``n`` fresh rows with distinct ``prompt_tokens``-token prompts."""
    return [engine.new_row(GenerationRequest(list(range(100 + i, 100 + i + prompt_tokens)),
                                             new_tokens)) for i in range(n)]


def report(args: argparse.Namespace, w: Window, seconds: float) -> None:
    """Print where the workers' wall time went over the window."""
    wall = args.workers * seconds
    prefill_f, decode_f = w.forward_s["prefill"], w.forward_s["decode"]
    overhead = sum(w.step_s.values()) - prefill_f - decode_f
    outside = wall - sum(w.step_s.values())
    print(f"\nwindow {seconds:.0f} s x {args.workers} workers = {wall:.0f} worker-seconds; "
          f"{w.tokens:.0f} tokens returned ({w.tokens / seconds:.1f} tok/s)")
    for name, value in (("prefill forward", prefill_f), ("decode forward", decode_f),
                        ("rest of steps (sampling, callbacks, KV bookkeeping)", overhead),
                        ("outside steps (gathering, waiting, other threads)", outside)):
        print(f"  {100 * value / wall:5.1f}%  {value:7.1f} s  {name}")
    print(f"prefill: {w.steps['prefill']:.0f} steps, {w.mean_rows('prefill'):.2f} prompts each, "
          f"{w.forward_ms('prefill'):.0f} ms forward per step")
    print(f"decode:  {w.steps['decode']:.0f} steps, {w.mean_rows('decode'):.2f} rows each, "
          f"{w.forward_ms('decode'):.1f} ms forward and "
          f"{1000 * w.step_s['decode'] / max(w.steps['decode'], 1):.1f} ms whole per step")
    print(f"closed loop: {served_step_ms(w, wall):.1f} ms of worker time per decode step "
          "(the window / decode steps: what a stream waits per token, prefill included)")


def served_step_ms(w: Window, worker_seconds: float) -> float:
    """Worker wall time per decode step over the window (every step a stream's token
    waited for: its decode, the prompts read between, and the time outside steps)."""
    return 1000 * worker_seconds / max(w.steps["decode"], 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, dtype="auto", threads=1, threads_help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="MAX_BATCH_SIZE")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--warmup-s", type=float, default=90)
    parser.add_argument("--measure-s", type=float, default=120)
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting on top of the profile's (repeatable), e.g. "
                             "MEMORY_SAMPLE_S=0 or PREFIX_CACHE_ROWS=0")
    parser.add_argument("--client-memory-sample-s", type=float, default=1.0, metavar="S",
                        help="Locust's server-memory sampling interval (0: none); it runs "
                             "on the same cores as the server")
    parser.add_argument("--py-spy", type=int, default=0, metavar="S",
                        help="sample one worker with py-spy for S seconds of the window")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the profile and print its report."""
    args = parse_args(argv)
    print(f"host: {describe(host_fingerprint())}", flush=True)
    print("host facts: " + json.dumps(host_fingerprint()), flush=True)
    api_key = secrets.token_urlsafe(32)
    workdir = Path(tempfile.mkdtemp(prefix="profile-serving-"))
    with GunicornServer(workdir, server_env(args, workdir, api_key), args.workers) as server:
        with closed_loop(args, server, api_key, workdir / "locust") as load:
            first = scrape(server)  # the window starts once Locust's users are generating
            wait_until(lambda: scrape(server) != first, "Locust's first tokens",
                       interval_s=0.5, alive=lambda: load.proc.poll() is None)
            time.sleep(args.warmup_s)
            spy_out = workdir / "py-spy.txt"
            spy = py_spy(server.worker_pids()[0], args.py_spy, spy_out) if args.py_spy else None
            before, started = scrape(server), time.monotonic()
            time.sleep(args.measure_s)
            after, seconds = scrape(server), time.monotonic() - started
            kernel = served_kernel(server)
        if spy is not None:
            spy.wait()
    print(f"{args.model} {args.dtype} (served {kernel}): {args.workers} workers x "
          f"{args.threads} torch threads, "
          f"batches <= {args.batch}, {args.users} users, {args.prompt_tokens}-token prompts, "
          f"{args.tokens} new tokens; client errors {client_errors(workdir / 'locust')}")
    w = window(before, after)
    report(args, w, seconds)
    if spy is not None and spy_out.exists():
        print(f"\npy-spy, one worker, {args.py_spy} s:\n{hottest(spy_out)}")
    # The quiet process runs the batch sizes seen under load, rounded.
    prefill_rows, decode_rows = (max(1, round(w.mean_rows(p))) for p in ("prefill", "decode"))
    context = args.prompt_tokens + args.tokens // 2  # a stream's mean context while decoding
    prefill_ms, decode_ms, chosen = quiet_step_ms(args, prefill_rows, decode_rows, context)
    load_prefill, load_decode = w.forward_ms("prefill"), w.forward_ms("decode")
    loop = served_step_ms(w, args.workers * seconds)
    print(f"\nquiet process, step engine ({chosen}), {args.threads} torch thread(s): a step "
          f"reading {prefill_rows} prompts' first chunk {prefill_ms:.0f} ms "
          f"(under load {load_prefill:.0f} ms, "
          f"{load_prefill / prefill_ms:.2f}x); decode step at {decode_rows} rows, context "
          f"{context}: {decode_ms:.1f} ms (under load {load_decode:.1f} ms forward, "
          f"{load_decode / decode_ms:.2f}x; closed loop {loop:.1f} ms, "
          f"{loop / decode_ms:.2f}x)")
    print(f"server folder: {workdir}")
    return 0
