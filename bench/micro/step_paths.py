"""``python -m bench step paths``: one decode step of a bf16 GPT-2 through each forward path,
interleaved in one process.

    python -m bench step paths --model synthetic:gpt2-large --rows 1,8 --context 200

Per row count (rows decoding after a ``--context``-token prompt each), the median ms of:

- ``transformers``: ``model(...)`` over the packed step (the engine's path before
  server.engine.gpt2_forward);
- ``torch layers``: server.engine.gpt2_forward (the model's submodules in GPT-2's order);
- ``C layers``: server.engine.native_gpt2 (every layer in one C call), with
  ``DTYPE=bfloat16+native``;
- ``GEMMs only``: the same native linear layers called on random rows, nothing else: what the
  weights' reading costs, the floor under the three above;
- ``attention only``: the native decode attention of every layer over these rows' caches.

The variants alternate within each repetition, so the box's drift (±20% from process to
process on the Zen 4 VM) hits them alike (bench.timing.interleaved). The numbers in
docs/results.md come from this mode.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from bench.micro.step_engine import decoding_rows, load_engine
from bench.options import add_model_options
from bench.timing import interleaved, ms
from server.engine import gpt2_forward, native_ops
from server.engine.native_gemm import NativeBF16Linear
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

    def transformers() -> object:
        ids, positions, packed, due = step()
        return model(input_ids=ids[None], position_ids=positions[None], cache=packed,
                     use_cache=True, packed_step=packed, logits_to_keep=due).logits

    linears = [m for m in model.modules() if isinstance(m, NativeBF16Linear)]
    inputs = {m.in_features: torch.randn(n, m.in_features).to(torch.bfloat16) for m in linears}
    found = {
        "transformers": transformers,
        "torch layers": lambda: gpt2_forward.forward(model, *step()),
    }
    if linears:
        found["GEMMs only"] = lambda: [m(inputs[m.in_features]) for m in linears]
    if engine._native is not None:
        found["C layers"] = lambda: engine._native.forward(*step())
        found["attention only"] = _attention(engine, rows)
    return found


def _attention(engine: StepEngine, rows: list[Row]) -> Callable[[], None]:
    """Every layer's decode attention alone (server.engine.native_ops.attend_decode), on the
    packed q/k/v layout of GPT-2's c_attn output."""
    native = engine._native
    width, heads = native.width, native.heads
    qkv = torch.randn(len(rows), 3 * width).to(torch.bfloat16)
    q, k, v = (qkv[:, i * width:(i + 1) * width].view(len(rows), heads, width // heads)
               .transpose(0, 1).unsqueeze(0) for i in range(3))

    def run() -> None:
        packed = PackedStep([Segment(row.cache, i, 1) for i, row in enumerate(rows)])
        for layer in range(engine.layers):
            native_ops.attend_decode(q, k, v, packed.native.caches, layer, native.scale)
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
