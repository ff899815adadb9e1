"""Measure this host's matmul throughput and memory read bandwidth; compute the decode limit.

    python -m bench.roofline                          # synthetic:gpt2-large, all cores
    python -m bench.roofline --model synthetic:tiny --out roofline.json

One decode step of a batch of ``b`` sequences reads every weight once and does about
``2 x params`` FLOPs per sequence, so the tokens/s it can reach is bounded by both the memory
system and the arithmetic units (the roofline). Measurements use torch with ``--threads``
(default: every core this process may run on) and keep the best of repeated timings: a limit
is a ceiling, and the best run is the one least disturbed by other work on the box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Bytes a decode step reads per parameter, by the server's DTYPE. int8 (server.quantize):
# the linear layers' weights are int8; the embedding stays float32 but a step reads only
# the rows of its tokens, and the LM head is its own int8 copy.
BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


@dataclass(frozen=True)
class Roofline:
    """What the host can do (measured) and the model it is applied to."""

    model: str
    params: int
    threads: int
    read_bandwidth_gb_s: float
    matmul_gflop_s: dict[str, float]  # per dtype name
    matmul_size: int
    buffer_mb: int
    measured_at: str
    cpu: str
    # Read bandwidth as single-thread workers see it: one thread alone, and each of
    # ``threads`` one-thread processes reading at the same time (empty: not measured).
    one_thread_bandwidth_gb_s: float = 0.0
    process_bandwidth_gb_s: tuple[float, ...] = ()

    def weight_bytes(self, dtype: str) -> int:
        """Bytes of weights the model holds (and each decode step reads) in ``dtype``."""
        return self.params * BYTES_PER_PARAM[dtype]

    def limit_tokens_per_s(self, batch: float, dtype: str) -> float:
        """Decode limit at mean batch size ``batch`` in ``dtype`` (see ``decode_limit``)."""
        return decode_limit(batch, self.read_bandwidth_gb_s * 1e9, self.weight_bytes(dtype),
                            self.matmul_gflop_s[dtype] * 1e9, self.params)


def decode_limit(batch: float, bandwidth_bytes_s: float, weight_bytes: float,
                 compute_flop_s: float, params: float) -> float:
    """Most output tokens/s a decode of ``batch`` sequences can reach on this host.

    Formula: limit = min(batch x bandwidth / weight_bytes, compute / (2 x params)) tokens/s.
    Each step reads all weights once for ``batch`` tokens (memory bound at small batches) and
    costs 2 FLOPs per parameter per token (compute bound at large ones). KV-cache reads and
    attention FLOPs are left out: at 64 + 64 tokens of context they are a few percent.
    """
    return min(batch * bandwidth_bytes_s / weight_bytes, compute_flop_s / (2.0 * params))


def _best_seconds(fn: Callable[[], object], seconds: float, min_reps: int = 3) -> float:
    """Shortest time of ``fn()`` over repeated calls for about ``seconds`` (>= min_reps)."""
    fn()  # warm-up: page faults, oneDNN kernel selection
    best, reps, ends_at = float("inf"), 0, time.monotonic() + seconds
    while reps < min_reps or time.monotonic() < ends_at:  # not a wait: a timed measurement
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        reps += 1
    return best


def matmul_gflop_s(dtype: torch.dtype, size: int, seconds: float) -> float:
    """GFLOP/s of a ``size`` x ``size`` by ``size`` x ``size`` matmul in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    best = _best_seconds(lambda: torch.matmul(a, b, out=out), seconds)
    return 2.0 * size**3 / best / 1e9


def int8_matmul_gflop_s(size: int, seconds: float) -> float:
    """GFLOP/s of torch's dynamic int8 Linear (server.quantize's layers) on a ``size`` x
    ``size`` float32 input and ``size`` x ``size`` weights, activation quantization included."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    layer = DynamicInt8Linear(size, size)
    x = torch.randn(size, size)
    best = _best_seconds(lambda: layer(x), seconds)
    return 2.0 * size**3 / best / 1e9


def read_bandwidth_gb_s(buffer_mb: int, seconds: float) -> float:
    """GB/s of summing a ``buffer_mb`` MiB float32 tensor (a streaming read)."""
    data = torch.ones(buffer_mb * 2**20 // 4, dtype=torch.float32)
    best = _best_seconds(data.sum, seconds)
    return data.numel() * data.element_size() / best / 1e9


def _reader(buffer_mb: int, seconds: float, barrier, results) -> None:
    # One single-thread process of concurrent_read_bandwidth_gb_s: warm up, wait for the
    # others, then stream reads for ``seconds`` and report the median rate.
    torch.set_num_threads(1)
    data = torch.ones(buffer_mb * 2**20 // 4, dtype=torch.float32)
    data.sum()
    barrier.wait()
    times, ends_at = [], time.monotonic() + seconds
    while time.monotonic() < ends_at:  # not a wait: a timed measurement
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    results.put(data.numel() * 4 / sorted(times)[len(times) // 2] / 1e9)


def concurrent_read_bandwidth_gb_s(processes: int, buffer_mb: int,
                                   seconds: float) -> tuple[float, ...]:
    """GB/s each of ``processes`` one-thread processes reads while all read at once: what
    that many one-thread Gunicorn workers share. Median rates, since a best-of would pick
    moments when the others were not reading."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
    barrier, results = context.Barrier(processes), context.Queue()
    readers = [context.Process(target=_reader, args=(buffer_mb, seconds, barrier, results))
               for _ in range(processes)]
    for reader in readers:
        reader.start()
    rates = tuple(sorted(results.get(timeout=120 + seconds) for _ in readers))
    for reader in readers:
        reader.join()
    return rates


def model_params(model: str, models_dir: str) -> int:
    """Parameter count of ``model`` (tied weights once), built on the meta device: no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from server.model import resolve_source

    config = AutoConfig.from_pretrained(resolve_source(model, models_dir))
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in meta.parameters())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure(model: str, models_dir: str, threads: int, size: int, buffer_mb: int,
            seconds: float) -> Roofline:
    """Measure the host with ``threads`` torch threads and apply it to ``model``."""
    torch.set_num_threads(1)
    one_thread = read_bandwidth_gb_s(buffer_mb, seconds)
    processes = concurrent_read_bandwidth_gb_s(threads, buffer_mb, seconds)
    torch.set_num_threads(threads)
    return Roofline(
        model=model,
        params=model_params(model, models_dir),
        threads=threads,
        read_bandwidth_gb_s=read_bandwidth_gb_s(buffer_mb, seconds),
        matmul_gflop_s={**{name: matmul_gflop_s(dtype, size, seconds)
                           for name, dtype in DTYPES.items()},
                        "int8": int8_matmul_gflop_s(size, seconds)},
        matmul_size=size,
        buffer_mb=buffer_mb,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        cpu=_cpu_name(),
        one_thread_bandwidth_gb_s=one_thread,
        process_bandwidth_gb_s=processes,
    )


def load(path: Path) -> Roofline:
    """Read a roofline.json written by ``save``."""
    fields = json.loads(Path(path).read_text())
    fields["process_bandwidth_gb_s"] = tuple(fields.get("process_bandwidth_gb_s", ()))
    return Roofline(**fields)


def save(roofline: Roofline, path: Path) -> None:
    """Write ``roofline`` as JSON."""
    Path(path).write_text(json.dumps(asdict(roofline), indent=2) + "\n")


def _per_worker_lines(r: Roofline) -> list[str]:
    if not r.process_bandwidth_gb_s:
        return []
    each = ", ".join(f"{rate:.1f}" for rate in r.process_bandwidth_gb_s)
    return [f"- read bandwidth of one thread alone: {r.one_thread_bandwidth_gb_s:.1f} GB/s; "
            f"{len(r.process_bandwidth_gb_s)} one-thread processes reading at once: {each} "
            f"GB/s ({sum(r.process_bandwidth_gb_s):.1f} in total, the share one-thread "
            "workers get; median rates)"]


def render(roofline: Roofline, batches: tuple[int, ...] = (1, 2, 4, 8, 10, 16, 32)) -> str:
    """The measurements and the decode limit per dtype and batch size, as Markdown."""
    r = roofline
    lines = [
        f"Host: {r.cpu}, {r.threads} torch threads. Model: {r.model}, {r.params / 1e6:,.1f} M "
        "parameters.",
        "",
        f"- memory read bandwidth: {r.read_bandwidth_gb_s:.1f} GB/s "
        f"(sum of a {r.buffer_mb} MiB float32 tensor)",
        *_per_worker_lines(r),
        *(f"- matmul {name}: {gflops:.1f} GFLOP/s ({r.matmul_size}x{r.matmul_size} squares)"
          for name, gflops in r.matmul_gflop_s.items()),
        "",
        "Decode limit, tokens/s = min(batch x bandwidth / weight bytes, "
        "compute / (2 x params)):",
        "",
        "| batch | " + " | ".join(r.matmul_gflop_s) + " |",
        "| --: | " + " | ".join("--:" for _ in r.matmul_gflop_s) + " |",
    ]
    for b in batches:
        cells = " | ".join(f"{r.limit_tokens_per_s(b, name):.1f}" for name in r.matmul_gflop_s)
        lines.append(f"| {b} | {cells} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("MODEL", "synthetic:gpt2-large"))
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads (default: every core available)")
    p.add_argument("--size", type=int, default=2048, help="matmul side length")
    p.add_argument("--buffer-mb", type=int, default=1024,
                   help="bandwidth buffer, MiB (far above the last-level cache)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    p.add_argument("--out", type=Path, help="write roofline.json here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the limits, optionally save them."""
    args = parse_args(argv)
    roofline = measure(args.model, args.models_dir, args.threads, args.size, args.buffer_mb,
                       args.seconds)
    print(render(roofline), end="", flush=True)
    if args.out:
        save(roofline, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
