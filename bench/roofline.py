"""Measure this host's matmul throughput and memory read bandwidth; compute the decode limit.

    python -m bench roofline                          # synthetic:gpt2-large, all cores
    python -m bench roofline --model synthetic:tiny --out roofline.json

One decode step of a batch of ``b`` sequences reads every weight once and does about
``2 x params`` FLOPs per sequence, so the tokens/s it can reach is bounded by both the memory
system and the arithmetic units (the roofline). Measurements use torch with ``--threads``
(default: every core this process may run on) and keep the best of repeated timings: a limit
is a ceiling, and the best run is the one least disturbed by other work on the box. The memory
read bandwidth is the exception: it is the median over several buffer sizes of the median
rate at each (see ``buffer_sizes_mb``), since one size can read much faster than the others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.timing import repeat_for
from server.engine.hardware import cpu_facts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Bytes a decode step reads per parameter, by the server's DTYPE. int8 (server.engine.quantize):
# the linear layers' weights are int8; the embedding is stored in float16 but a step reads only
# the rows of its tokens, and the LM head is its own int8 copy.
BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
# Bandwidth buffers, MiB: far above the last-level cache, small enough that the largest
# (and the concurrent readers' buffers together) stay well under 8 GB of memory.
MIN_BUFFER_MB, MAX_BUFFER_MB, MAX_CONCURRENT_MB = 256, 4096, 6144


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
    # Median read rate per buffer size, MiB -> GB/s; read_bandwidth_gb_s is their median
    # (empty: saved before this field, when read_bandwidth_gb_s was the best at buffer_mb).
    bandwidth_by_buffer_mb: dict[int, float] = field(default_factory=dict)

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
    return min(repeat_for(fn, seconds, min_reps))


def matmul_gflop_s(dtype: torch.dtype, size: int, seconds: float) -> float:
    """GFLOP/s of a ``size`` x ``size`` by ``size`` x ``size`` matmul in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    best = _best_seconds(lambda: torch.matmul(a, b, out=out), seconds)
    return 2.0 * size**3 / best / 1e9


def int8_matmul_gflop_s(size: int, seconds: float) -> float:
    """GFLOP/s of torch's dynamic int8 Linear (server.engine.quantize's layers) on a ``size`` x
    ``size`` float32 input and ``size`` x ``size`` weights, activation quantization included."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    layer = DynamicInt8Linear(size, size)
    x = torch.randn(size, size)
    best = _best_seconds(lambda: layer(x), seconds)
    return 2.0 * size**3 / best / 1e9


def read_bandwidth_gb_s(buffer_mb: int, seconds: float, median: bool = False) -> float:
    """GB/s of summing a ``buffer_mb`` MiB float32 tensor (a streaming read): the best rate,
    or with ``median`` the median one."""
    data = torch.ones(buffer_mb * 2**20 // 4, dtype=torch.float32)
    times = repeat_for(data.sum, seconds)
    took = statistics.median(times) if median else min(times)
    return data.numel() * data.element_size() / took / 1e9


def buffer_sizes_mb(params: int, buffer_mb: int | None = None) -> tuple[int, ...]:
    """Buffer sizes, MiB, to measure the read bandwidth at: ``buffer_mb`` alone if given, else
    256 MiB, the model's weights in bf16 (2 x params bytes) and twice that, each kept within
    [MIN_BUFFER_MB, MAX_BUFFER_MB].

    Why several sizes: the rate depends on the buffer size in a way the weights' size does not
    follow. On the 2-core AMD EPYC (Zen 4) box, torch .sum() on 2 threads, best / median GB/s:
    256 MiB 31.4 / 30.5, 1024 MiB 53.3 / 47.8, 1356 MiB 32.7 / 31.6, 2048 MiB 33.0 / 32.5 (a
    plain AVX-512 C reader agreed: 27, 46, 30, 31). Which size is the lucky one changes from
    process to process (another run: 256 / 1476 / 2952 MiB read 27.2 / 29.5 / 45.5 GB/s),
    so the former single 1 GiB buffer could overstate the streaming read of gpt2-large's
    ~1.5 GB of weights by ~1.5x, and with it every memory-bound decode limit. The median of
    per-size medians is robust to one lucky size."""
    if buffer_mb is not None:
        return (buffer_mb,)
    weights_mb = round(params * BYTES_PER_PARAM["bfloat16"] / 2**20)
    return tuple(sorted({min(max(size, MIN_BUFFER_MB), MAX_BUFFER_MB)
                         for size in (MIN_BUFFER_MB, weights_mb, 2 * weights_mb)}))


def bandwidth_by_buffer_mb(sizes_mb: tuple[int, ...], seconds: float) -> dict[int, float]:
    """Median read rate, GB/s, at each buffer size in ``sizes_mb`` (one buffer at a time)."""
    return {size: read_bandwidth_gb_s(size, seconds, median=True) for size in sizes_mb}


def _reader(buffer_mb: int, seconds: float, barrier, results) -> None:
    # One single-thread process of concurrent_read_bandwidth_gb_s: warm up, wait for the
    # others, then stream reads for ``seconds`` and report the median rate.
    torch.set_num_threads(1)
    data = torch.ones(buffer_mb * 2**20 // 4, dtype=torch.float32)
    data.sum()
    barrier.wait()
    times = repeat_for(data.sum, seconds, min_reps=1, warmup=0)
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

    from server.engine.model import resolve_source

    config = AutoConfig.from_pretrained(resolve_source(model, models_dir))
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in meta.parameters())


def _cpu_name() -> str:
    return cpu_facts()["cpu_model"]


def measure(model: str, models_dir: str, threads: int, size: int, buffer_mb: int | None,
            seconds: float) -> Roofline:
    """Measure the host with ``threads`` torch threads and apply it to ``model``.

    ``buffer_mb``: the one bandwidth buffer size, MiB; None: several (``buffer_sizes_mb``),
    and the single-thread reads use the weights-sized one (per process at most
    MAX_CONCURRENT_MB / threads, so the concurrent readers' buffers fit in memory)."""
    params = model_params(model, models_dir)
    sizes = buffer_sizes_mb(params, buffer_mb)
    single_mb = sizes[len(sizes) // 2]  # the weights' size when it is within the bounds
    per_process_mb = single_mb if buffer_mb is not None else min(
        single_mb, max(MIN_BUFFER_MB, MAX_CONCURRENT_MB // max(threads, 1)))
    torch.set_num_threads(1)
    one_thread = read_bandwidth_gb_s(single_mb, seconds)
    processes = concurrent_read_bandwidth_gb_s(threads, per_process_mb, seconds)
    torch.set_num_threads(threads)
    by_size = bandwidth_by_buffer_mb(sizes, seconds)
    return Roofline(
        model=model,
        params=params,
        threads=threads,
        read_bandwidth_gb_s=statistics.median(by_size.values()),
        matmul_gflop_s={**{name: matmul_gflop_s(dtype, size, seconds)
                           for name, dtype in DTYPES.items()},
                        "int8": int8_matmul_gflop_s(size, seconds)},
        matmul_size=size,
        buffer_mb=single_mb,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        cpu=_cpu_name(),
        one_thread_bandwidth_gb_s=one_thread,
        process_bandwidth_gb_s=processes,
        bandwidth_by_buffer_mb=by_size,
    )


def load(path: Path) -> Roofline:
    """Read a roofline.json written by ``save``."""
    fields = json.loads(Path(path).read_text())
    fields["process_bandwidth_gb_s"] = tuple(fields.get("process_bandwidth_gb_s", ()))
    fields["bandwidth_by_buffer_mb"] = {  # JSON object keys are strings
        int(mb): rate for mb, rate in fields.get("bandwidth_by_buffer_mb", {}).items()}
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


def _bandwidth_line(r: Roofline) -> str:
    by_size = r.bandwidth_by_buffer_mb
    if not by_size:  # saved before the per-size measurement
        return (f"- memory read bandwidth: {r.read_bandwidth_gb_s:.1f} GB/s "
                f"(sum of a {r.buffer_mb} MiB float32 tensor)")
    sizes = " / ".join(str(mb) for mb in by_size)
    rates = " / ".join(f"{rate:.1f}" for rate in by_size.values())
    what = (f"median of float32 sums of {sizes} MiB: {rates} GB/s" if len(by_size) > 1
            else f"median rate summing a {sizes} MiB float32 tensor")
    return f"- memory read bandwidth: {r.read_bandwidth_gb_s:.1f} GB/s ({what})"


def render(roofline: Roofline, batches: tuple[int, ...] = (1, 2, 4, 8, 10, 16, 32)) -> str:
    """The measurements and the decode limit per dtype and batch size, as Markdown."""
    r = roofline
    lines = [
        f"Host: {r.cpu}, {r.threads} torch threads. Model: {r.model}, {r.params / 1e6:,.1f} M "
        "parameters.",
        "",
        _bandwidth_line(r),
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
    p = argparse.ArgumentParser(prog="python -m bench roofline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("MODEL", "synthetic:gpt2-large"))
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads (default: every core available)")
    p.add_argument("--size", type=int, default=2048, help="matmul side length")
    p.add_argument("--buffer-mb", type=int, default=None,
                   help="measure the read bandwidth at this one buffer size, MiB (far above "
                        "the last-level cache). Default: the median over 256 MiB, the "
                        "model's bf16 weights and twice that (each within 256..4096 MiB); "
                        "the single-thread reads use the weights-sized buffer")
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
