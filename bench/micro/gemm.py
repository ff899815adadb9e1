"""Time the GEMM paths a decode step could take, on one thread, at a decode step's row counts.

    taskset -c 0 python -m bench gemm                     # gpt2-large shapes
    taskset -c 0 python -m bench gemm --rows 1,8 --reps 9
    python -m bench gemm --rows 1,8,128 --threads 2

The four projections of one gpt2-large block (c_attn 1280->3840, attn c_proj 1280->1280,
c_fc 1280->5120, mlp c_proj 5120->1280), random float32 weights, timed through:

    mkl       torch's nn.functional.linear (MKL on x86 wheels)
    onednn    torch.ops.mkldnn._linear_pointwise on the same weights (server.engine.kernels)
    openblas  numpy.matmul on the same weights (numpy's OpenBLAS), one thread
    float16   torch's dynamic fp16 Linear (fbgemm; server.engine.quantize.quantize_float16)
    int8      torch's dynamic int8 Linear (fbgemm; server.engine.quantize.quantize_int8)
    bf16      bf16 weights and inputs through nn.functional.linear (oneDNN reorders the
              weight on every call)
    bf16-packed  the same, weights reordered once (server.engine.kernels.PackedBF16Linear)
    bf16-native  bf16 weights packed once for the project's AVX-512 BF16 kernel
              (server.engine.native_gemm.NativeBF16Linear; only where that kernel runs)
    int8-native  int8 weights, per-channel scales, the project's int8 kernel (AVX-512 VNNI
              or AVX2 + FMA; server.engine.native_int8.NativeInt8Linear; where one runs)
    float16-native  fp16 weights [outputs, inputs], the project's AVX2 + FMA + F16C kernel
              (server.engine.native_f16.NativeF16Linear; where it runs; shape by shape
              from DRAM: ``python -m bench gemm-f16``)

Paths are interleaved and each keeps its best of two rounds of medians, so a busy machine
slows them alike. Prints ms for all 36 blocks (one decode step's linear layers, LM head
left out). The kernel choice (server.engine.kernels) times whole steps of the served model; this
probe says which GEMM paths are worth offering it. OpenBLAS's thread count must be fixed
before numpy loads it: this module sets OPENBLAS_NUM_THREADS=1 on import, before numpy
(``python -m bench`` imports nothing heavy before it).
"""

from __future__ import annotations

import argparse
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy is imported (one thread, like torch's)

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bench.timing import median_ms
from server.engine import native_f16, native_gemm, native_int8
from server.engine.kernels import PackedBF16Linear, packing_available
from server.engine.quantize import quantize_float16, quantize_int8

SHAPES = [(1280, 3840), (1280, 1280), (1280, 5120), (5120, 1280)]  # (in, out)
BLOCKS = 36


def paths(rows: int) -> dict[str, Callable[[], object]]:
    """One callable per GEMM path, each running the four projections on ``rows`` rows."""
    linears = nn.Sequential(*[nn.Linear(n_in, n_out) for n_in, n_out in SHAPES])
    half = quantize_float16(copy.deepcopy(linears))  # the same weights, packed
    int8 = quantize_int8(copy.deepcopy(linears))
    inputs = [torch.randn(rows, n_in) for n_in, _ in SHAPES]
    weights_t = [layer.weight.detach().numpy().T for layer in linears]
    arrays = [x.numpy() for x in inputs]
    packed = [PackedBF16Linear(layer) for layer in linears] if packing_available() else []
    native = ([native_gemm.NativeBF16Linear(layer) for layer in linears]
              if native_gemm.available() else [])
    int8_native = ([native_int8.NativeInt8Linear(layer) for layer in linears]
                   if native_int8.available() else [])
    f16_native = ([native_f16.NativeF16Linear(layer) for layer in linears]
                  if native_f16.available() else [])
    bf16_in = [x.to(torch.bfloat16) for x in inputs]
    bf16_w = [(m.weight.detach().to(torch.bfloat16), m.bias.detach().to(torch.bfloat16))
              for m in linears]
    return {
        "mkl": lambda: [nn.functional.linear(x, m.weight, m.bias)
                        for x, m in zip(inputs, linears, strict=True)],
        "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(x, m.weight, m.bias, "none", [], "")
                           for x, m in zip(inputs, linears, strict=True)],
        "openblas": lambda: [np.matmul(a, w) for a, w in zip(arrays, weights_t, strict=True)],
        "float16": lambda: [m(x) for x, m in zip(inputs, half, strict=True)],
        "int8": lambda: [m(x) for x, m in zip(inputs, int8, strict=True)],
        "bf16": lambda: [nn.functional.linear(x, w, b)
                         for x, (w, b) in zip(bf16_in, bf16_w, strict=True)],
        **({"bf16-packed": lambda: [m(x) for x, m in zip(bf16_in, packed, strict=True)]}
           if packed else {}),
        **({"bf16-native": lambda: [m(x) for x, m in zip(bf16_in, native, strict=True)]}
           if native else {}),
        **({"int8-native": lambda: [m(x) for x, m in zip(inputs, int8_native, strict=True)]}
           if int8_native else {}),
        **({"float16-native": lambda: [m(x) for x, m in zip(inputs, f16_native, strict=True)]}
           if f16_native else {}),
    }


def main(argv: list[str] | None = None) -> int:
    """Print one line per row count: ms per decode step's linear layers, per path."""
    parser = argparse.ArgumentParser(prog="python -m bench gemm",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,4,8,16", help="row counts, comma-separated")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (OpenBLAS stays on one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"ms for the linear layers of {BLOCKS} gpt2-large blocks, {args.threads} torch "
          f"thread(s) "
          f"(torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()})")
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            timed = paths(rows)
            best: dict[str, float] = {}
            for _ in range(2):
                for name, fn in timed.items():
                    ms = median_ms(fn, args.reps, warmup=1) * BLOCKS  # 1st: allocations
                    best[name] = min(best.get(name, ms), ms)
            print(f"{rows:>3} rows: " + ", ".join(f"{k} {v:,.0f}" for k, v in best.items()),
                  flush=True)
    return 0
