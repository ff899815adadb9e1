"""``python -m bench step layouts`` and ``step compile``: one single-token decode step of the
model forward alone (no engine, no server) after a 64-token prefill, median ms (bench.timing).

    python -m bench step layouts --model models/synthetic-gpt2-large --threads 1
    python -m bench step compile --dtype int8 --threads 1

layouts: bf16 as transformers loads it (Conv1D), bf16 with Conv1D as nn.Linear, and int8
(server/engine/quantize.py), each at batch 1, 8 and 16, median of 10 steps after 2. The
numbers in server/engine/quantize.py's docstring and docs/results.md come from this mode.

compile: the model as the server loads it (server.engine.model.load_model) at batch 1 and 5:
eager, then ``torch.compile(model, dynamic=True)`` (first pass includes compiling; the KV
cache grows every step, so shapes change), then compiled again; the median of 12 steps after
4 and the slowest of all 16.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from bench.options import add_model_options
from bench.timing import repeat
from server.engine.model import load_model
from server.engine.quantize import conv1d_to_linear, quantize_int8

LAYOUTS = ("bf16-conv1d", "bf16-linear", "int8")
LAYOUT_BATCHES = (1, 8, 16)
COMPILE_BATCHES = (1, 5)


@torch.inference_mode()
def decode_step_times(model: torch.nn.Module, forward: Callable, batch: int, steps: int,
                      cache_name: str, prompt_tokens: int = 64) -> list[float]:
    """Seconds of ``steps`` single-token decode steps through ``forward`` at ``batch`` after a
    ``prompt_tokens`` prefill; the cache (output field and keyword ``cache_name``) grows each
    step, as it would in a request."""
    out = model(input_ids=torch.randint(0, 50000, (batch, prompt_tokens)), use_cache=True,
                logits_to_keep=1)
    state = [getattr(out, cache_name), out.logits[:, -1].argmax(-1, keepdim=True)]

    def step() -> None:
        out = forward(input_ids=state[1], use_cache=True, logits_to_keep=1,
                      **{cache_name: state[0]})
        state[:] = [getattr(out, cache_name), out.logits[:, -1].argmax(-1, keepdim=True)]

    return repeat(step, steps)


def layout(path: str, name: str) -> torch.nn.Module:
    """The model at ``path`` in layout ``name`` (bf16-conv1d, bf16-linear, int8)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if name == "int8" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    if name != "bf16-conv1d":
        conv1d_to_linear(model)
    return quantize_int8(model) if name == "int8" else model


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """``layouts``' options: a transformers checkpoint folder, torch threads."""
    parser.add_argument("--model", default="models/synthetic-gpt2-large",
                        help="a transformers checkpoint folder")
    parser.add_argument("--threads", type=int, default=1)


def run_layouts(args: argparse.Namespace) -> int:
    """Print ms per step and tokens/s per layout and batch size."""
    torch.set_num_threads(args.threads)
    for name in LAYOUTS:
        model = layout(args.model, name)
        for batch in LAYOUT_BATCHES:
            ms = statistics.median(
                decode_step_times(model, model, batch, 12, "past_key_values")[2:]) * 1000
            print(f"{name:12s} threads={args.threads} batch={batch:2d}: {ms:7.1f} ms/step "
                  f"{batch * 1000 / ms:6.1f} tok/s", flush=True)
    return 0


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """``compile``'s options."""
    add_model_options(parser, dtype="int8", threads=1)


def _compile_row(name: str, model: torch.nn.Module, forward: Callable) -> None:
    started = time.monotonic()
    cells = []
    for batch in COMPILE_BATCHES:
        times = decode_step_times(model, forward, batch, 16, "cache")
        cells.append(f"batch {batch}: {statistics.median(times[4:]) * 1000:6.1f} ms "
                     f"(slowest {max(times) * 1000:8.1f})")
    print(f"{name:16} {'  '.join(cells)}   [{time.monotonic() - started:.0f} s]", flush=True)


def run_compile(args: argparse.Namespace) -> int:
    """Print eager vs compiled decode step times."""
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.dtype, args.models_dir).model
    print(f"{args.model} {args.dtype}, {args.threads} torch thread(s), torch {torch.__version__}")
    _compile_row("eager", model, model)
    compiled = torch.compile(model, dynamic=True)
    _compile_row("compiled, 1st", model, compiled)
    _compile_row("compiled, again", model, compiled)
    return 0
