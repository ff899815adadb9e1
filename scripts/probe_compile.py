"""Does torch.compile speed up a decode step? Eager vs compiled, side by side in one run.

    python scripts/probe_compile.py --dtype int8 --threads 1

Loads the model as the server does (server.engine.model.load_model), then times single-token decode
steps after a 64-token prefill at batch 1 and 5: eager, then ``torch.compile(model,
dynamic=True)`` (first pass includes compiling; the KV cache grows every step, so shapes
change), then compiled again. Prints the median step and the slowest one, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from server.engine.model import load_model

BATCHES = (1, 5)


@torch.inference_mode()
def step_ms(model: torch.nn.Module, forward, batch: int, steps: int = 16) -> tuple[float, float]:
    """(median, slowest) ms of ``steps`` decode steps through ``forward`` at ``batch``."""
    ids = torch.randint(0, 50000, (batch, 64))
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        out = forward(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        times.append(time.perf_counter() - started)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    return statistics.median(times[4:]) * 1000, max(times) * 1000


def _row(name: str, model: torch.nn.Module, forward) -> None:
    started = time.monotonic()
    cells = "  ".join(f"batch {b}: {median:6.1f} ms (slowest {slowest:8.1f})"
                      for b in BATCHES for median, slowest in [step_ms(model, forward, b)])
    print(f"{name:16} {cells}   [{time.monotonic() - started:.0f} s]", flush=True)


def main() -> int:
    """Print eager vs compiled decode step times."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:gpt2-large")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--dtype", default="int8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.dtype, args.models_dir).model
    print(f"{args.model} {args.dtype}, {args.threads} torch thread(s), torch {torch.__version__}")
    _row("eager", model, model)
    compiled = torch.compile(model, dynamic=True)
    _row("compiled, 1st", model, compiled)
    _row("compiled, again", model, compiled)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
