"""How much a worker's private memory grows serving one mixed 8-row batch, per DTYPE.

    python -m bench memory --model synthetic:gpt2-large --dtype float16 --threads 2
    python -m bench memory ... --kv-dtype float16   # the 16-bit cache, to compare

In-process (no server): loads the model as the master does, runs 8 rows with prompts of
30-838 tokens (the default mix's routes) and 24 new tokens each through ``StepEngine`` with
128-token prefill chunks, and prints USS before, at peak and after ``malloc_trim``, the KV
cache's bytes at peak and the median decode step (what the cache's precision costs in time;
bench.timing).
Most of the growth is KV cache: 36 layers x 2 x 1,280 x 4 bytes = 368 KB a token on
gpt2-large with the default full-width cache (184 KB with ``--kv-dtype float16``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics

import torch

from bench.timing import timed

PROMPTS = (30, 100, 300, 60, 120, 838, 50, 200)


def uss_mb() -> int:
    """This process's USS in MB."""
    from server.engine.memory import read_process_memory

    return round(read_process_memory().uss_mb)


def main(argv: list[str] | None = None) -> int:
    """Run the batch and print the USS figures."""
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:gpt2-large")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--kv-dtype", default="auto",
                        help="KV_DTYPE: auto | model | float16 | int8")
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from server.engine.decoding import GenerationRequest
    from server.engine.memory import pin_mmap_threshold, release_free_heap
    from server.engine.model import load_model
    from server.engine.row_cache import resolve_kv_dtype
    from server.engine.step import StepEngine

    loaded = load_model(args.model, args.dtype, args.models_dir, allow_int8=args.dtype == "int8")
    kv_dtype = resolve_kv_dtype(args.kv_dtype, loaded.precision)
    engine = StepEngine(loaded.model, int(loaded.tokenizer.eos_token_id), ignore_eos=True,
                        prefill_chunk=128, kv_dtype=kv_dtype)
    pin_mmap_threshold()  # as a worker does (server.web.service)
    release_free_heap()
    base = peak = uss_mb()
    rng = random.Random(0)
    rows = [engine.new_row(GenerationRequest([rng.randrange(1000, 40000) for _ in range(n)],
                                             args.new_tokens)) for n in PROMPTS]
    kv_mb, decode_ms = 0.0, []
    while any(row.finish_reason is None for row in rows):  # not a wait: a measured batch
        report, seconds = timed(lambda: engine.step([r for r in rows if r.finish_reason is None]))
        if report.phase == "decode":
            decode_ms.append(seconds * 1000.0)
        kv_mb = max(kv_mb, sum(row.cache.nbytes() for row in rows) / 1e6)
        peak = max(peak, uss_mb())
    release_free_heap()
    print(f"{args.model} served as {loaded.kernels.chosen}, {args.threads} thread(s), KV "
          f"{kv_dtype}: USS {base} MB before, {peak} at peak (+{peak - base}; KV cache "
          f"{kv_mb:.0f} MB), {uss_mb()} after malloc_trim; decode step median "
          f"{statistics.median(decode_ms) if decode_ms else float('nan'):.0f} ms over "
          f"{len(decode_ms)}")
    return 0
