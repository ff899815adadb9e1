"""Compare ways to generate N concurrent requests on one CPU process, side by side in one run.

    python scripts/bench_decoding.py --model models/synthetic-gpt2-large --dtype bfloat16

Rows: one request after another (what the naive servers do), our step engine with every
request in the running set (server.engine.step: packed rows, per-row KV caches, no padding),
transformers' ``generate`` on the left-padded batch, and transformers' continuous batching
(``generate_batch``, paged cache). Every row generates exactly --tokens new tokens
per request from the same prompts; output tokens/s and the ratio to the sequential row.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from server.engine.decoding import GenerationRequest
from server.engine.step import StepEngine, generate_alone


def _prompts(n: int, length: int) -> list[list[int]]:
    return [[(97 * i + 13 * j) % 50000 for j in range(length)] for i in range(n)]


def _engine(model, eos: int) -> StepEngine:
    # The engine installs its packed attention; transformers' own rows get theirs back.
    attention = model.config._attn_implementation
    engine = StepEngine(model, eos, ignore_eos=True, prefill_chunk=128)
    engine.restore = lambda: setattr(model.config, "_attn_implementation", attention)
    return engine


def _sequential(model, prompts, tokens, eos):
    engine = _engine(model, eos)
    for ids in prompts:
        generate_alone(engine, GenerationRequest(ids, tokens))
    engine.restore()


def _ours(model, prompts, tokens, eos):
    engine = _engine(model, eos)
    rows = [engine.new_row(GenerationRequest(ids, tokens)) for ids in prompts]
    while any(row.finish_reason is None for row in rows):
        engine.step([row for row in rows if row.finish_reason is None])
    engine.restore()


def _hf_generate(model, prompts, tokens, eos):
    width = max(map(len, prompts))
    ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens,
                       min_new_tokens=tokens, do_sample=False, pad_token_id=eos)


def _hf_continuous(model, prompts, tokens, eos):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos)
    with torch.inference_mode():
        model.generate_batch(prompts, generation_config=config, progress_bar=False)


def _time(fn: Callable, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> int:
    """Load the model once and time each way of generating the same work."""
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/synthetic-gpt2-large")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model.eval()
    eos = int(model.config.eos_token_id)
    prompts = _prompts(args.requests, args.prompt_tokens)
    _ours(model, prompts[:1], 2, eos)  # warm-up
    rows = [("sequential (naive)", _sequential), ("ours: step engine", _ours),
            ("transformers generate", _hf_generate),
            ("transformers continuous batching", _hf_continuous)]
    total = args.requests * args.tokens
    print(f"{args.requests} requests x {args.prompt_tokens} prompt tokens -> {args.tokens} new "
          f"tokens each, {args.dtype}, {args.threads} threads")
    base = None
    for name, fn in rows:
        try:
            seconds = _time(fn, model, prompts, args.tokens, eos)
        except Exception as error:  # a row that cannot run here says why and the rest go on
            print(f"{name:34} failed: {type(error).__name__}: {str(error)[:120]}")
            continue
        base = base or seconds
        print(f"{name:34} {seconds:7.2f} s  {total / seconds:7.1f} tok/s  x{base / seconds:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
