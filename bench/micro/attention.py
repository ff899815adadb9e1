"""What one row's decode attention costs: torch's CPU scaled_dot_product_attention for one
query (a decode step) over 70 / 300 / 900 cached positions, gpt2-large's 20 heads of 64,
beside the project's C decode attention (server.engine.native_ops.attend_decode) on the same
cache, each variant this CPU runs.

    python -m bench attention --threads 2

Rows per cache length:
- torch: the bf16 cache as is (a bf16 model's own attention), and each 16-bit cache widened to
  float32 first (what server.engine.row_cache does: bf16 for a bfloat16 model, float16 for a
  float16 or int8 model under KV_DTYPE=auto; the widening copy is timed with it), and an int8
  cache (KV_DTYPE=int8) dequantised into float32 the same way (server.engine.kv_int8);
- C: per variant here (``--variant``; default every one: avx512_bf16, avx2) and per (query,
  cache) dtype pair it takes of those the server hands it (bf16 over bf16, float32 over
  float16, float32 over int8), on the same cache; it also writes the new key and value (int8:
  quantised), as in a step. The ratio is torch's widened time over the kernel's for the same
  cache dtype (> 1: the kernel is faster).

Prints microseconds per call, medians of --reps calls interleaved (bench.timing, after 5
untimed calls of each). Run it on a quiet machine: on a shared box the figures mean little.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.nn import functional

from bench.timing import interleaved, ms
from server.engine import kv_int8, native_ops

HEADS, HEAD_DIM = 20, 64
POSITIONS = (70, 300, 900)
# (query, cache) dtypes as the server pairs them: a bfloat16 model's, a float16 model's, and
# a float16 model's with KV_DTYPE=int8.
PAIRS = ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16),
         (torch.float32, torch.int8))


def _name(query: torch.dtype, cache: torch.dtype) -> str:
    return f"{str(query)[6:]} over {str(cache)[6:]}"


def calls(positions: int, variants: list[str]) -> dict[str, Callable[[], object]]:
    """Each path's call for one query over ``positions`` cached ones (plus the new one)."""
    held = positions - 1  # the kernel writes the new token at this length: positions in all
    q = {dtype: torch.randn(1, HEADS, 1, HEAD_DIM).to(dtype) for dtype in (torch.bfloat16,
                                                                         torch.float32)}
    stores = {dtype: torch.randn(1, 2, 1, HEADS, positions, HEAD_DIM).to(dtype)
              for dtype in (torch.bfloat16, torch.float16)}
    stores[torch.int8], scales = kv_int8.quantize(torch.randn(1, 2, 1, HEADS, positions,
                                                              HEAD_DIM))
    wide_k, wide_v = (torch.empty(1, HEADS, positions, HEAD_DIM) for _ in range(2))

    def widened(cache: torch.dtype) -> Callable[[], object]:
        def run() -> torch.Tensor:
            if cache == torch.int8:  # row_cache._widened's dequantisation
                kv_int8.dequantize_into(wide_k, stores[cache][0, 0], scales[0, 0])
                kv_int8.dequantize_into(wide_v, stores[cache][0, 1], scales[0, 1])
            else:
                wide_k.copy_(stores[cache][0, 0])
                wide_v.copy_(stores[cache][0, 1])
            return functional.scaled_dot_product_attention(q[torch.float32], wide_k, wide_v)
        return run

    bf16 = stores[torch.bfloat16][0]
    paths: dict[str, Callable[[], object]] = {
        "torch bf16": lambda: functional.scaled_dot_product_attention(
            q[torch.bfloat16], bf16[0], bf16[1]),
        "torch bfloat16 widened": widened(torch.bfloat16),
        "torch float16 widened": widened(torch.float16),
        "torch int8 widened": widened(torch.int8),
    }
    for variant in variants:
        for query, cache in PAIRS:
            if (query, cache) not in native_ops.ATTENTION_DTYPES[variant]:
                continue
            caches = native_ops.DecodeCaches(
                [stores[cache]], [held], [0], scales=[scales] if cache == torch.int8 else None)
            k = v = q[query]  # a new key and value of the query's dtype, kv heads = heads

            def run(variant=variant, query=query, caches=caches, k=k, v=v) -> torch.Tensor:
                return native_ops.attend_decode(q[query], k, v, caches, 0, HEAD_DIM ** -0.5,
                                                variant)
            paths[f"C {variant} {_name(query, cache)}"] = run
    return paths


def main(argv: list[str] | None = None) -> int:
    """Print one line per path and cache length, the kernel's beside torch's widened."""
    parser = argparse.ArgumentParser(prog="python -m bench attention",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--variant", action="append", choices=list(native_ops.ATTENTION_VARIANTS),
                        help="a C decode attention variant to time (repeatable; default: every "
                             "one this CPU runs)")
    args = parser.parse_args(argv)
    here = native_ops.attention_variants()
    variants = args.variant or list(here)
    absent = [v for v in variants if v not in here]
    if absent:
        parser.error(f"--variant {', '.join(absent)}: does not run here "
                     f"({native_ops.attention_unavailable() or 'this CPU lacks its features'})")
    torch.set_num_threads(args.threads)
    print(f"us per row-attention call, one query, {HEADS} heads of {HEAD_DIM}, "
          f"{args.threads} thread(s), torch {torch.__version__}, C variants: "
          f"{', '.join(variants) or 'none run here'}")
    with torch.inference_mode():
        for positions in POSITIONS:
            times = {name: ms(t) * 1000 for name, t in
                     interleaved(calls(positions, variants), args.reps, warmup=5).items()}
            print(f"{positions:>4} positions:", flush=True)
            for name, us in times.items():
                cache = name.rsplit(" ", 1)[-1]  # a C path's cache dtype: "... over int8"
                ratio = (f"  (torch widened / C: {times[f'torch {cache} widened'] / us:.2f}x)"
                         if name.startswith("C ") else "")
                print(f"  {name:<34} {us:>9,.1f} us{ratio}", flush=True)
    return 0
