"""What one step of the step engine costs on this CPU: decode at 1, 4 and 8 rows, a 128-token
prompt chunk beside 7 decoding rows, and that chunk alone (median ms, model in process).

    taskset -c 1 python scripts/probe_step_costs.py --model synthetic:gpt2-large --threads 1

The prefill figures in docs/results.md and docs/recommendations.md come from this script.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from server.engine.decoding import GenerationRequest
from server.engine.model import load_model
from server.engine.step import Row, StepEngine

CHUNK = 128


def _median_ms(step: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def _decoding_rows(engine: StepEngine, n: int, prompt: int = 60) -> list[Row]:
    rows = [engine.new_row(GenerationRequest(list(range(100 + i, 100 + i + prompt)), 200))
            for i in range(n)]
    while any(row.prompt_left for row in rows):
        engine.step(rows)
    return rows


def main() -> int:
    """Load the model as the server would and print each step's median time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="synthetic:gpt2-large")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the server's master: the kernel choice runs on one thread
    loaded = load_model(args.model, args.dtype, args.models_dir)
    torch.set_num_threads(args.threads)
    print(loaded.kernels.summary())
    engine = StepEngine(loaded.model, loaded.eos_id, ignore_eos=True, prefill_chunk=CHUNK)
    for n in (1, 4, 8):
        rows = _decoding_rows(engine, n)
        print(f"decode, {n} rows: {_median_ms(lambda r=rows: engine.step(r), 5):.0f} ms")
    rows = _decoding_rows(engine, 7)

    def chunk_step(beside: list[Row]) -> None:
        new = engine.new_row(GenerationRequest(list(range(500, 500 + CHUNK)), 5))
        engine.step([*beside, new])

    mixed_ms = _median_ms(lambda: chunk_step(rows), 3)
    alone_ms = _median_ms(lambda: chunk_step([]), 3)
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"7 decoding rows + a {CHUNK}-token prompt chunk: {mixed_ms:.0f} ms")
    print(f"a {CHUNK}-token prompt chunk alone: {alone_ms:.0f} ms "
          f"({alone_ms / CHUNK:.1f} ms a token, ~{2 * params * CHUNK / alone_ms / 1e6:.0f} "
          f"GFLOP/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
