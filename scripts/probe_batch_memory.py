"""How much a worker's private memory grows serving one mixed 8-row batch, per DTYPE.

    python scripts/probe_batch_memory.py --model synthetic:gpt2-large --dtype float16 --threads 2

In-process (no server): loads the model as the master does, runs 8 rows with prompts of
30-838 tokens (the default mix's routes) and 24 new tokens each through ``StepEngine`` with
128-token prefill chunks, and prints USS before, at peak and after ``malloc_trim``. Most of
the growth is KV cache: 36 layers x 2 x 1,280 x 4 bytes = 368 KB a token on gpt2-large.
"""

from __future__ import annotations

import argparse
import os
import random

import torch

PROMPTS = (30, 100, 300, 60, 120, 838, 50, 200)


def uss_mb() -> int:
    """This process's USS in MB."""
    from server.memory import read_process_memory

    return round(read_process_memory().uss_mb)


def main() -> int:
    """Run the batch and print the USS figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="synthetic:gpt2-large")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from server.decoding import GenerationRequest
    from server.engine import StepEngine
    from server.memory import release_free_heap
    from server.model import load_model

    loaded = load_model(args.model, args.dtype, args.models_dir, allow_int8=args.dtype == "int8")
    engine = StepEngine(loaded.model, int(loaded.tokenizer.eos_token_id), ignore_eos=True,
                        prefill_chunk=128)
    release_free_heap()
    base = peak = uss_mb()
    rng = random.Random(0)
    rows = [engine.new_row(GenerationRequest([rng.randrange(1000, 40000) for _ in range(n)],
                                             args.new_tokens)) for n in PROMPTS]
    while any(row.finish_reason is None for row in rows):
        engine.step([row for row in rows if row.finish_reason is None])
        peak = max(peak, uss_mb())
    release_free_heap()
    print(f"{args.model} served as {loaded.kernels.chosen}, {args.threads} thread(s): USS "
          f"{base} MB before, {peak} at peak (+{peak - base}), {uss_mb()} after malloc_trim")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
