"""Time one decode step of a model in each weight layout, side by side in one run.

    python scripts/probe_decode_step.py --model models/synthetic-gpt2-large --threads 1

Rows: bf16 as transformers loads it (Conv1D), bf16 with Conv1D as nn.Linear, and int8
(server/engine/quantize.py). Each: a 64-token prefill, then the median of 10 single-token steps
at batch 1, 8 and 16 (model forward only, no server). The numbers in server/engine/quantize.py's
docstring and docs/results.md come from this script.
"""

from __future__ import annotations

import argparse
import time

import torch

from server.engine.quantize import conv1d_to_linear, quantize_int8


def step_ms(model: torch.nn.Module, batch: int) -> float:
    """Median time of one single-token decode step after a 64-token prefill, ms."""
    ids = torch.randint(0, 50000, (batch, 64))
    times = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(12):
            started = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            times.append(time.perf_counter() - started)
            cache = out.past_key_values
    return sorted(times[2:])[len(times[2:]) // 2] * 1000


def variant(path: str, name: str) -> torch.nn.Module:
    """The model at ``path`` in layout ``name`` (bf16-conv1d, bf16-linear, int8)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if name == "int8" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    if name != "bf16-conv1d":
        conv1d_to_linear(model)
    return quantize_int8(model) if name == "int8" else model


def main() -> int:
    """Print ms per step and tokens/s per layout and batch size."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/synthetic-gpt2-large")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("bf16-conv1d", "bf16-linear", "int8"):
        model = variant(args.model, name)
        for batch in (1, 8, 16):
            ms = step_ms(model, batch)
            print(f"{name:12s} threads={args.threads} batch={batch:2d}: {ms:7.1f} ms/step "
                  f"{batch * 1000 / ms:6.1f} tok/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
