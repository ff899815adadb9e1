"""``python -m bench step costs``: what one step of the step engine costs on this CPU:
decode at 1, 4 and 8 rows, a 128-token prompt chunk beside 7 decoding rows, and that chunk
alone (median ms, model in process; bench.timing).

    taskset -c 1 python -m bench step costs --model synthetic:gpt2-large --threads 1

The prefill figures in docs/results.md and docs/recommendations.md come from this mode.
"""

from __future__ import annotations

import argparse

from bench.micro.step_engine import decoding_rows, load_engine
from bench.options import add_model_options
from bench.timing import median_ms
from server.engine.decoding import GenerationRequest
from server.engine.step import Row

CHUNK = 128
DECODE_ROWS = (1, 4, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This mode's options."""
    add_model_options(parser, dtype="auto", threads=1)


def run(args: argparse.Namespace) -> int:
    """Load the model as the server would and print each step's median time."""
    loaded, engine = load_engine(args, prefill_chunk=CHUNK)
    print(loaded.kernels.summary())
    for n in DECODE_ROWS:
        rows = decoding_rows(engine, n, context=60)
        print(f"decode, {n} rows: {median_ms(lambda r=rows: engine.step(r), 5):.0f} ms")
    rows = decoding_rows(engine, 7, context=60)

    def chunk_step(beside: list[Row]) -> None:
        new = engine.new_row(GenerationRequest(list(range(500, 500 + CHUNK)), 5))
        engine.step([*beside, new])

    mixed_ms = median_ms(lambda: chunk_step(rows), 3)
    alone_ms = median_ms(lambda: chunk_step([]), 3)
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"7 decoding rows + a {CHUNK}-token prompt chunk: {mixed_ms:.0f} ms")
    print(f"a {CHUNK}-token prompt chunk alone: {alone_ms:.0f} ms "
          f"({alone_ms / CHUNK:.1f} ms a token, ~{2 * params * CHUNK / alone_ms / 1e6:.0f} "
          f"GFLOP/s)")
    return 0
