"""``python -m bench step paths``: one decode step through each forward path, interleaved in one
process, for a model on the native kernels (GPT-2 or a Llama-family decoder, on
``bfloat16+native`` or ``float16+native``; GPT-2 on ``int8``).

    python -m bench step paths --model synthetic:gpt2-large --rows 1,8 --context 200
    python -m bench step paths --model synthetic:qwen2.5-1.5b --dtype float16+native --rows 1,8
    python -m bench step paths --model synthetic:gpt2-large --dtype int8 --rows 1,8

Per row count (rows decoding after a ``--context``-token prompt each, caches in the dtype the
server's ``KV_DTYPE=auto`` keeps), the median ms of:

- ``torch layers``: the family's lean forward (server.engine.gpt2_forward or llama_forward:
  the model's submodules in its order);
- ``C layers``: the step engine's C layers (server.engine.native_gpt2, native_llama or
  native_llama_bf16: every layer in one C call);
- ``GEMMs only``: the same native linear layers called on random rows, nothing else (a fused
  projection once, not its parts): what the weights' reading costs, the floor under the two
  above;
- ``attention only``: the native decode attention of every layer over these rows' caches.

The variants alternate within each repetition, so the box's drift (±20% from process to
process on the Zen 4 VM) hits them alike (bench.timing.interleaved). The numbers in
docs/results.md come from this mode.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from bench.micro.step_engine import decoding_rows, load_engine
from bench.options import add_model_options
from bench.timing import interleaved, ms
from server.engine import code_path, gpt2_forward, llama_forward, native_ops
from server.engine.native_f16 import NativeF16Linear
from server.engine.native_gemm import NativeBF16Linear
from server.engine.native_gpt2 import NativeGPT2
from server.engine.native_int8 import NativeInt8Linear
from server.engine.native_llama_bf16 import NativeLlamaBF16
from server.engine.row_cache import PackedStep, Segment
from server.engine.step import Row, StepEngine


def _decoding(engine: StepEngine, rows: int, context: int) -> list[Row]:
    made = decoding_rows(engine, rows, context, max_new_tokens=64)
    engine.step(made)  # every row has a token to feed
    return made


def variants(engine: StepEngine, rows: list[Row]) -> dict[str, Callable[[], object]]:
    """One callable per path, each one decode step's forward over ``rows`` (their caches
    are rewritten at the same position each time: nothing advances)."""
    model = engine.model
    n = len(rows)

    def step() -> tuple[torch.Tensor, torch.Tensor, PackedStep, torch.Tensor]:
        packed = PackedStep([Segment(row.cache, i, 1) for i, row in enumerate(rows)])
        return (torch.tensor([row.tokens[-1] for row in rows]),
                torch.tensor([row.cache.length for row in rows]), packed, torch.arange(n))

    linears = _gemms(model)
    dtype = torch.bfloat16 if any(isinstance(m, NativeBF16Linear) for m in linears) \
        else torch.float32
    inputs = {m.in_features: torch.randn(n, m.in_features).to(dtype) for m in linears}
    lean = gpt2_forward if gpt2_forward.supports(model) else llama_forward
    # No ``model(...)`` variant (transformers' forward, the engine's path before the lean
    # forwards, timed here until the GPT-2 and Llama-family folders were read into trees
    # without it: server.engine.checkpoint).
    found = {"torch layers": lambda: lean.forward(model, *step())}
    if linears:
        found["GEMMs only"] = lambda: [m(inputs[m.in_features]) for m in linears]
    if engine.path.layers == code_path.NATIVE_LAYERS:
        found["C layers"] = lambda: engine._native.forward(*step())
        found["attention only"] = _attention(engine, rows)
    return found


def _gemms(model: nn.Module) -> list[nn.Module]:
    """The model's native linear layers, each weight once: a fused projection's parts read
    views of its stacked weight (plain attributes, not Parameters) and are left out."""
    return [m for m in model.modules() if isinstance(m, NativeBF16Linear | NativeInt8Linear)
            or (isinstance(m, NativeF16Linear) and isinstance(m.weight, nn.Parameter))]


def _attention(engine: StepEngine, rows: list[Row]) -> Callable[[], None]:
    """Every layer's decode attention alone (server.engine.native_ops.attend_decode) on random
    queries, keys and values of the model's heads, in the dtype its C layers attend in (bf16
    for the bf16 layers, float32 on the fp16 GEMM)."""
    config = engine.model.config
    if llama_forward.supports(engine.model):
        heads, kv_heads, dim = llama_forward.shape(config)
    else:
        heads = kv_heads = config.n_head
        dim = config.n_embd // heads
    dtype = torch.bfloat16 if isinstance(engine._native, NativeGPT2 | NativeLlamaBF16) \
        else torch.float32
    n = len(rows)
    q = torch.randn(1, heads, n, dim).to(dtype)
    k, v = (torch.randn(1, kv_heads, n, dim).to(dtype) for _ in range(2))
    scale = dim ** -0.5

    def run() -> None:
        packed = PackedStep([Segment(row.cache, i, 1) for i, row in enumerate(rows)])
        for layer in range(engine.layers):
            native_ops.attend_decode(q, k, v, packed.native.caches, layer, scale)
    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This mode's options."""
    add_model_options(parser, dtype="bfloat16+native", threads=2)
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--context", type=int, default=200, help="prompt tokens per row")
    parser.add_argument("--reps", type=int, default=15)


def run(args: argparse.Namespace) -> int:
    """Print one line per row count: median ms per path."""
    loaded, engine = load_engine(args, prefill_chunk=None)
    print(f"{args.model} served as {loaded.kernels.chosen}, {args.threads} thread(s), "
          f"{args.context}-token prompts; median ms of one decode step, interleaved")
    with torch.inference_mode():
        for count in (int(r) for r in args.rows.split(",")):
            times = interleaved(variants(engine, _decoding(engine, count, args.context)),
                                args.reps)
            print(f"{count:>3} rows: " + ", ".join(
                f"{name} {ms(t):.2f}" for name, t in times.items()), flush=True)
    return 0
