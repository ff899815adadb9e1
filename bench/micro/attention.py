"""What one row's attention costs by dtype: torch's CPU scaled_dot_product_attention for one
query (a decode step) over 70 / 300 / 900 cached positions, gpt2-large's 20 heads of 64.

    python -m bench attention --threads 2

Rows: bf16 as is (a bf16 model's own attention), and the cache widened to float32 first
(what server.engine.row_cache.attention_dtype does for a bf16 model; the widening copy is timed
with it). Prints microseconds per call, median of --reps (bench.timing, after 5 untimed calls).
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional

from bench.timing import median_ms

HEADS, HEAD_DIM = 20, 64
POSITIONS = (70, 300, 900)


def row_attention_us(positions: int, reps: int) -> tuple[float, float]:
    """(bf16, widened to float32) median µs of one query's attention over ``positions``."""
    q = torch.randn(1, HEADS, 1, HEAD_DIM, dtype=torch.bfloat16)
    k, v = (torch.randn(1, HEADS, positions, HEAD_DIM, dtype=torch.bfloat16) for _ in range(2))
    wide_k, wide_v = (torch.empty(1, HEADS, positions, HEAD_DIM) for _ in range(2))

    def widened() -> torch.Tensor:
        wide_k.copy_(k)
        wide_v.copy_(v)
        return functional.scaled_dot_product_attention(q.float(), wide_k, wide_v)

    bf16 = median_ms(lambda: functional.scaled_dot_product_attention(q, k, v), reps, warmup=5)
    return bf16 * 1000, median_ms(widened, reps, warmup=5) * 1000


def main(argv: list[str] | None = None) -> int:
    """Print one line per cache length: bf16 attention against widened float32."""
    parser = argparse.ArgumentParser(prog="python -m bench attention",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"us per row-attention call, one query, {HEADS} heads of {HEAD_DIM}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    with torch.inference_mode():
        for positions in POSITIONS:
            bf16, widened = row_attention_us(positions, args.reps)
            print(f"{positions:>4} positions: bf16 {bf16:,.0f} us, widened to float32 "
                  f"{widened:,.0f} us", flush=True)
    return 0
