"""What one row's attention costs by dtype: torch's CPU scaled_dot_product_attention for one
query (a decode step) over 70 / 300 / 900 cached positions, gpt2-large's 20 heads of 64.

    .venv/bin/python scripts/probe_attention.py --threads 2

Rows: bf16 as is (a bf16 model's own attention), and the cache widened to float32 first
(what server.engine.row_cache.attention_dtype does for a bf16 model; the widening copy is timed
with it). Prints microseconds per call, median of --reps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional

HEADS, HEAD_DIM = 20, 64


def _median_us(fn, reps: int) -> float:
    for _ in range(5):
        fn()  # first-call allocations
    times = []
    for _ in range(reps):
        started = time.perf_counter()  # not a wait: a measurement
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    """Print one line per cache length: bf16 attention against widened float32."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"us per row-attention call, one query, {HEADS} heads of {HEAD_DIM}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    with torch.inference_mode():
        for positions in (70, 300, 900):
            q = torch.randn(1, HEADS, 1, HEAD_DIM, dtype=torch.bfloat16)
            k, v = (torch.randn(1, HEADS, positions, HEAD_DIM, dtype=torch.bfloat16)
                    for _ in range(2))
            wide_k, wide_v = (torch.empty(1, HEADS, positions, HEAD_DIM) for _ in range(2))

            def widened(q=q, k=k, v=v, wide_k=wide_k, wide_v=wide_v) -> torch.Tensor:
                wide_k.copy_(k)
                wide_v.copy_(v)
                return functional.scaled_dot_product_attention(q.float(), wide_k, wide_v)

            bf16 = _median_us(lambda q=q, k=k, v=v:
                              functional.scaled_dot_product_attention(q, k, v), args.reps)
            print(f"{positions:>4} positions: bf16 {bf16:,.0f} us, widened to float32 "
                  f"{_median_us(widened, args.reps):,.0f} us", flush=True)


if __name__ == "__main__":
    main()
