"""Time the two fp16-weight GEMMs shape by shape, weights read from DRAM, side by side.

    python -m bench gemm-f16                          # 1, 4, 8 rows, 2 threads
    python -m bench gemm-f16 --rows 1 --threads 1
    python -m bench gemm-f16 --against 10e91ca        # this tree's kernel against a commit's
    python -m bench gemm-f16 --huge-pages             # the kernel on 4 KB against 2 MB pages

(The last two: bench/micro/gemm_f16_ab.py.)

gpt2-large's decode shapes (c_attn 1280->3840, c_fc 1280->5120, mlp c_proj 5120->1280 and the
LM head 1280->50257), each through:

    fbgemm   torch's dynamic fp16 Linear (server.engine.quantize.quantize_float16: DTYPE=float16)
    native   the project's kernel on the unpacked [outputs, inputs] fp16 weight
             (server.engine.native_f16.NativeF16Linear: DTYPE=float16+native; where it runs)

Each shape gets enough distinct copies of its weight (at least ``--mbytes`` MB, beyond the
L3) that every call reads its weight from DRAM, as a decode step does; the paths alternate
within each repetition (bench.timing.interleaved) so a busy box slows them alike. Prints ms
per call and the weight bytes read per second (GB/s) of each path, and fbgemm / native.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch
from torch import nn

from bench.micro import gemm_f16_ab
from bench.timing import interleaved, ms
from server.engine import native_f16
from server.engine.quantize import quantize_float16

SHAPES = [(1280, 3840), (1280, 5120), (5120, 1280), (1280, 50257)]  # (in, out)


def _copies(n_in: int, n_out: int, mbytes: int) -> int:
    return max(2, -(-mbytes * 2**20 // (n_in * n_out * 2)))


def layers(n_in: int, n_out: int, mbytes: int) -> dict[str, list[nn.Module]]:
    """Enough copies of one ``n_in -> n_out`` layer, per path (the same weights in each)."""
    linears = nn.Sequential(*[nn.Linear(n_in, n_out) for _ in range(_copies(n_in, n_out,
                                                                              mbytes))])
    native = ([native_f16.NativeF16Linear(m) for m in linears] if native_f16.available()
              else [])
    return {"fbgemm": list(quantize_float16(linears)), **({"native": native} if native else {})}


def calls(built: dict[str, list[nn.Module]], rows: int) -> dict[str, Callable[[], object]]:
    """One callable per path, each running every copy on the same ``rows`` random rows."""
    x = torch.randn(rows, built["fbgemm"][0].in_features)
    return {name: functools.partial(lambda mods: [m(x) for m in mods], mods)
            for name, mods in built.items()}


def main(argv: list[str] | None = None) -> int:
    """Print one line per shape and row count: ms and GB/s per path."""
    parser = argparse.ArgumentParser(prog="python -m bench gemm-f16",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,4,8", help="row counts, comma-separated")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mbytes", type=int, default=96, help="fp16 weight MB per shape")
    parser.add_argument("--against", metavar="REV",
                        help="time this tree's gemm_f16.c against REV's instead")
    parser.add_argument("--huge-pages", action="store_true",
                        help="time the native kernel on 4 KB against 2 MB pages instead")
    parser.add_argument("--shapes", choices=sorted(gemm_f16_ab.SHAPES), default="qwen2.5-1.5b",
                        help="layer shapes of --against and --huge-pages")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.against:
        return gemm_f16_ab.against(args.against, args.shapes, args.rows, args.reps,
                                   args.threads)
    if args.huge_pages:
        return gemm_f16_ab.huge_pages(args.shapes, args.rows, args.reps)
    print(f"fp16-weight GEMMs, weights from DRAM, {args.threads} thread(s) (torch "
          f"{torch.__version__}; native: {native_f16.unavailable() or 'runs'})")
    with torch.inference_mode():
        for n_in, n_out in SHAPES:
            built = layers(n_in, n_out, args.mbytes)
            copies = len(built["fbgemm"])
            for rows in (int(r) for r in args.rows.split(",")):
                times = interleaved(calls(built, rows), args.reps, warmup=1)
                each = {name: ms(t) / copies for name, t in times.items()}
                gbps = {name: n_in * n_out * 2 / (v / 1000) / 1e9 for name, v in each.items()}
                line = ", ".join(f"{name} {v:.3f} ms {gbps[name]:.1f} GB/s"
                                 for name, v in each.items())
                ratio = (f", fbgemm/native {each['fbgemm'] / each['native']:.2f}"
                         if "native" in each else "")
                print(f"{n_in}->{n_out} {rows:>2} rows: {line}{ratio}", flush=True)
    return 0
