"""Where a Gunicorn worker's time goes under steady load, measured side by side in one run.

    python scripts/profile_serving.py --model synthetic:gpt2-large --dtype int8 \
        --workers 2 --users 10 --warmup-s 90 --measure-s 120 --py-spy 60

1. Serves the model with real Gunicorn and drives a closed loop of ``--users`` clients
   (no think time; prompts of exactly ``--prompt-tokens`` tokens; exactly ``--tokens`` new
   tokens each, greedy), like the bench rows.
2. Over the measured window, reads the server's own step metrics from ``/metrics``
   (``gpt_forward_seconds``, ``gpt_step_seconds``, ``gpt_step_rows``, by phase) and splits
   each worker's wall time into: prefill forward, decode forward, the rest of each step
   (sampling, callbacks, KV-cache bookkeeping), and time outside any step (gathering a
   batch, waiting for requests).
3. With ``--py-spy S``, samples one worker for S seconds of the window with py-spy
   (``--native``: torch's C++ frames too) and prints the hottest functions.
4. After the server stops, times the same steps on a quiet process (same dtype, one worker's
   torch threads, batch = the mean batch seen under load), so the table shows what load
   itself costs a step.

Loopback only. py-spy must be installed (``pip install py-spy``; it is not a dependency).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.prompts import fixed_length_prompts
from harness.gunicorn_process import GunicornServer
from server.engine.hardware import describe, host_fingerprint
from server.engine.model import load_model

REPO = Path(__file__).resolve().parent.parent

PROMPTS = REPO / "locustfiles" / "data" / "prompts.jsonl"
KEY = "profile-key-0123456789"


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


class ClosedLoop:
    """``users`` threads, each posting one generation after another until stopped."""

    def __init__(self, url: str, prompts: list[str], tokens: int, users: int) -> None:
        self.url, self.prompts, self.tokens = url, prompts, tokens
        self.stop = threading.Event()
        self.errors = 0
        self._errors_lock = threading.Lock()  # += from several threads is not atomic
        self.threads = [threading.Thread(target=self._user, args=(i,), daemon=True)
                        for i in range(users)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _user(self, index: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        n = 0
        while not self.stop.is_set():
            prompt = self.prompts[(index + n) % len(self.prompts)]
            n += 1
            try:
                r = session.post(f"{self.url}/generate-text", timeout=600,
                                 json={"prompt": prompt, "max_new_tokens": self.tokens})
                failed = r.status_code != 200
            except requests.RequestException:
                failed = not self.stop.is_set()  # cut off by the end of the run: no error
            with self._errors_lock:
                self.errors += failed


def server_env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """Gunicorn's environment: greedy fixed-length generations, no limits."""
    (workdir / "metrics").mkdir(exist_ok=True)
    return {"MODEL": args.model, "DTYPE": args.dtype, "IGNORE_EOS": "1",
            "API_KEYS": KEY, "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "", "REQUEST_LOG": "",
            "GUNICORN_ACCESSLOG": "", "TORCH_THREADS": str(args.threads),
            "MAX_BATCH_SIZE": str(args.batch), "REQUEST_TIMEOUT_S": "600",
            "MODELS_DIR": args.models_dir, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics")}


def py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen | None:
    """Start sampling ``pid`` with py-spy (collapsed stacks to ``out``), or say why not."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("py-spy not installed: no sampled profile (pip install py-spy)")
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(seconds),
                             "--rate", "50", "--native", "--format", "raw", "--threads",
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _frame_name(frame: str) -> str:
    # "function (file.py:line)" -> "function (file.py)"; native frames have no line.
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


# Leaf frames of the generation thread, by what they are (first match wins).
_KINDS = (
    ("matmul kernels (MKL, fbgemm, oneDNN)", ("gemv", "gemm", "fbgemm", "mkl_blas", "dnnl")),
    ("JIT-compiled kernels (no symbol; oneDNN/fbgemm code)", ("(?)",)),
    ("elementwise loops (GELU, add, norms, softmax, copies)",
     ("function_ref", "vectorized_loop", "Sleef", "vml", "copy", "softmax", "layer_norm")),
    ("Python code", (".py)",)),
    ("lock waits (GIL, queues)", ("pthread_cond", "PyThread_acquire", "futex")),
)


def _kind(leaf: str) -> str:
    for kind, marks in _KINDS:
        if any(mark in leaf for mark in marks):
            return kind
    return "other native code (interpreter, dispatch, libc)"


def hottest(raw: Path, top: int = 12) -> str:
    """py-spy's collapsed stacks: samples by thread, then the generation thread's own time
    by kind of code and by function. py-spy --native counts a thread blocked in a lock wait
    as active, so request threads waiting for their batch show up; they use no CPU."""
    by_thread: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        by_thread[frames[0]] += n
        if "generation" in frames[0] and len(frames) > 1:
            leaf = _frame_name(frames[-1])
            own[leaf] += n
            kinds[_kind(leaf)] += n
    total, generation = sum(by_thread.values()), sum(own.values())
    if not generation:
        return "py-spy recorded no samples of the generation thread"
    lines = [f"{total} samples (50/s); by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_thread.most_common(5)]
    lines.append(f"generation thread ({generation} samples), by kind of code:")
    lines += [f"  {100 * n / generation:5.1f}%  {kind}" for kind, n in kinds.most_common()]
    lines.append("generation thread, hottest functions:")
    lines += [f"  {100 * n / generation:5.1f}%  {name[:110]}" for name, n in own.most_common(top)]
    return "\n".join(lines)


@torch.inference_mode()
def quiet_step_ms(args: argparse.Namespace, prefill_rows: int,
                  decode_rows: int) -> tuple[float, float]:
    """(best of 3 prefills of ``prefill_rows`` prompts, median decode step at
    ``decode_rows``) in ms: the model alone in this process on one worker's torch threads."""
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.dtype, args.models_dir)
    model = loaded.model
    ids = torch.randint(0, 50000, (max(prefill_rows, decode_rows), args.prompt_tokens))
    model(input_ids=ids[:prefill_rows], use_cache=True, logits_to_keep=1)  # warm-up
    prefill_times = []
    for _ in range(3):
        started = time.perf_counter()
        model(input_ids=ids[:prefill_rows], use_cache=True, logits_to_keep=1)
        prefill_times.append(time.perf_counter() - started)
    prefill_ms = min(prefill_times) * 1000
    out = model(input_ids=ids[:decode_rows], use_cache=True, logits_to_keep=1)
    cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for _ in range(min(args.tokens, 24)):  # context grows as it would in a request
        started = time.perf_counter()
        out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        times.append(time.perf_counter() - started)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    return prefill_ms, sorted(times)[len(times) // 2] * 1000


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:gpt2-large")
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--batch", type=int, default=8, help="MAX_BATCH_SIZE")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--warmup-s", type=float, default=90)
    parser.add_argument("--measure-s", type=float, default=120)
    parser.add_argument("--py-spy", type=int, default=0, metavar="S",
                        help="sample one worker with py-spy for S seconds of the window")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the profile and print its report."""
    args = parse_args(argv)
    print(f"host: {describe(host_fingerprint())}", flush=True)
    print("host facts: " + json.dumps(host_fingerprint()), flush=True)
    from transformers import AutoTokenizer

    from server.engine.model import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(args.model, args.models_dir))
    texts = [json.loads(line)["prompt"] for line in PROMPTS.open() if line.strip()]
    prompts = fixed_length_prompts(tokenizer, texts, args.prompt_tokens, args.users)
    workdir = Path(tempfile.mkdtemp(prefix="profile-serving-"))
    with GunicornServer(workdir, server_env(args, workdir), args.workers) as server:
        load = ClosedLoop(server.url, prompts, args.tokens, args.users)
        load.start()
        time.sleep(args.warmup_s)
        spy_out = workdir / "py-spy.txt"
        spy = py_spy(server.worker_pids()[0], args.py_spy, spy_out) if args.py_spy else None
        before, started = scrape(server), time.monotonic()
        time.sleep(args.measure_s)
        after, seconds = scrape(server), time.monotonic() - started
        load.stop.set()
        if spy is not None:
            spy.wait()
    print(f"{args.model} {args.dtype}: {args.workers} workers x {args.threads} torch threads, "
          f"batches <= {args.batch}, {args.users} users, {args.prompt_tokens}-token prompts, "
          f"{args.tokens} new tokens; client errors {load.errors}")
    w = window(before, after)
    report(args, w, seconds)
    if spy is not None and spy_out.exists():
        print(f"\npy-spy, one worker, {args.py_spy} s:\n{hottest(spy_out)}")
    # The quiet process runs the batch sizes seen under load, rounded.
    prefill_rows, decode_rows = (max(1, round(w.mean_rows(p))) for p in ("prefill", "decode"))
    prefill_ms, decode_ms = quiet_step_ms(args, prefill_rows, decode_rows)
    load_prefill, load_decode = w.forward_ms("prefill"), w.forward_ms("decode")
    print(f"\nquiet process, {args.threads} torch thread(s): prefill of {prefill_rows} prompts "
          f"{prefill_ms:.0f} ms (under load {load_prefill:.0f} ms, "
          f"{load_prefill / prefill_ms:.2f}x); decode step at batch {decode_rows} "
          f"{decode_ms:.1f} ms (under load {load_decode:.1f} ms, {load_decode / decode_ms:.2f}x)")
    print(f"server folder: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
