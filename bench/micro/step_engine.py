"""What the ``python -m bench step`` modes share: the model loaded as the server loads it, a
step engine on it, and rows brought to decoding."""

from __future__ import annotations

import argparse

import torch

from server.engine.decoding import GenerationRequest
from server.engine.model import LoadedModel, load_model
from server.engine.step import Row, StepEngine


def load_engine(args: argparse.Namespace, prefill_chunk: int | None = None,
                ) -> tuple[LoadedModel, StepEngine]:
    """The model chosen as the server's master chooses it (kernel choice on one thread),
    then ``args.threads`` torch threads and a step engine generating fixed lengths, its caches
    in the dtype the server's default ``KV_DTYPE=auto`` keeps (float16 for a float16 model)."""
    torch.set_num_threads(1)
    loaded = load_model(args.model, args.dtype, args.models_dir)
    torch.set_num_threads(args.threads)
    options = {"prefill_chunk": prefill_chunk} if prefill_chunk else {}
    return loaded, StepEngine(loaded.model, loaded.eos_id, ignore_eos=True, kv_dtype="auto",
                              **options)


def decoding_rows(engine: StepEngine, n: int, context: int, max_new_tokens: int = 200,
                  ) -> list[Row]:
    """``n`` rows whose ``context``-token prompts are read: the next step decodes them all."""
    rows = [engine.new_row(GenerationRequest(list(range(100 + i, 100 + i + context)),
                                             max_new_tokens)) for i in range(n)]
    while any(row.prompt_left for row in rows):
        engine.step(rows)
    return rows
