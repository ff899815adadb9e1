"""Choose the precision and kernel path by timing this CPU, not by reading its flags.

CPUs of the same kind differ by several times: an Intel core with AMX runs bf16 matmuls
~2.6x faster than fp32, an AVX2-only EPYC emulates bf16 at ~1 GB/s, and there torch's MKL
fp32 GEMM with 4-16 rows (a decode step's batch) is 2-3x slower than oneDNN's or fbgemm's.
So ``choose`` times one decode step of the served model at batch 1 and at the maximum batch
for each allowed candidate and keeps the fastest at the maximum batch (throughput under
load), batch 1 breaking ties; two finalists within RUNOFF_MARGIN are timed again with their
steps alternating, and the faster there serves (unless it holds MEMORY_PREMIUM more weight
memory and did not win by as much):

    float32          nn.Linear -> torch's BLAS (MKL)
    float32+onednn   the same fp32 weights through oneDNN's matmul (no copy)
    float16          linear weights stored in fp16, computed in fp32 (fbgemm's fp16 GEMM)
    float16+native   the same fp16 weights, unpacked [outputs, inputs], computed in fp32 by the
                     project's own AVX2 + FMA + F16C kernel (server.engine.native_f16); a tied
                     LM head reads the fp16 embedding table itself (one copy, not two); where
                     the CPU has those features and the library is built
    bfloat16         weights and activations in bf16, each linear weight reordered once
                     into oneDNN's blocked layout (PackedBF16Linear); a step of fewer rows
                     is padded to ``min_rows`` when that measures faster (``MIN_ROWS``)
    bfloat16+native  the same bf16 model computed by the project's own AVX-512 BF16 kernel
                     (server.engine.native_gemm), where the CPU has it and a C compiler built it
    int8             dynamic int8 Linear (fbgemm); changes the text, so only with ALLOW_INT8
    int8+native      int8 weights (per-channel scales) computed by the project's own kernel,
                     AVX-512 VNNI or AVX2 + FMA by CPU (server.engine.native_int8); like int8,
                     only with ALLOW_INT8 (or DTYPE=int8 / int8+native)

It runs before the Gunicorn master forks its workers, with torch pinned to ONE thread (a
multi-threaded op there would leave forked workers hanging), so the table is per-thread speed;
workers then use their own threads. The timing itself runs in a child forked for it
(``choose``): every candidate's weights and what timing them allocated end with that child,
and the master builds only the winner.
"""

from __future__ import annotations

import copy
import functools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from server.engine import native_f16, native_gemm, native_int8
from server.engine.decoding import GenerationRequest
from server.engine.forked import run_forked
from server.engine.quantize import quantize_float16, replace_modules, to_bfloat16, weight_bytes
from server.engine.step import StepEngine

log = logging.getLogger(__name__)

FLOAT32, ONEDNN, FLOAT16, BFLOAT16, INT8 = (
    "float32", "float32+onednn", "float16", "bfloat16", "int8")
BF16_NATIVE = "bfloat16+native"
F16_NATIVE = "float16+native"
INT8_NATIVE = "int8+native"
# A candidate whose batch-1 step is this many times the best so far is not timed at the
# maximum batch (emulated bf16 on gpt2-large would spend ~15 s there for nothing).
HOPELESS = 3.0
PROMPT_TOKENS = 4  # the timed rows' prompts: prefill is not what is being chosen
REPS = 3
# Finalists this close at the maximum batch are timed again, their steps alternating
# (``_runoff``): this VM's read rate moves between ~31 and ~47 GB/s from one stretch of seconds
# to the next (results/profile/README.md), and timed one after the other a candidate could
# land in a slow stretch: bfloat16 (oneDNN) was served over bfloat16+native for Llama-3.2-1B
# at 166.3 against 168.3 ms, where the same table a run earlier read 168.9 against 130.1
# (results/reference/mix-llama-3.2-1b-v2-zen4, run.json ``server.kernels``).
RUNOFF_MARGIN = 0.15
RUNOFF_REPS = 8
# Of two finalists, one holding this much more weight memory than the other serves only if it
# also won the runoff by this much: the same tied Llama-3.2-1B table served bfloat16 (oneDNN),
# whose packed LM head is a second copy of the 525 MB embedding, at 166.3 against 168.3 ms,
# and that run's server held 1.20x llama.cpp's RSS where the native path's held 1.00x
# (results/reference/mix-llama-3.2-1b-v2-zen4).
MEMORY_PREMIUM = 0.05
# The row count a packed bf16 step with fewer rows is padded to, if its batch-1 step then
# measures faster. oneDNN's prepacked bf16 kernel is slower at 1 row than at 4: on the
# AMD EPYC Zen 4 (AVX-512 BF16) gpt2-large's 144 linear layers took 71 / 60 ms at 1 / 4 rows
# on 2 threads (python -m bench gemm --rows 1,4 --threads 2 --reps 9), so a padded
# lone request's step reads the same weights sooner.
MIN_ROWS = 4


@dataclass
class KernelTiming:
    """One candidate's decode-step time (ms, one thread) at batch 1 and at ``max_batch``."""

    precision: str
    batch_1_ms: float
    batch_max_ms: float | None  # None: not timed there (hopeless at batch 1)
    max_batch: int
    min_rows: int = 1  # steps of fewer rows are padded to this many (measured, bfloat16)
    weight_mb: float = 0.0  # the weights this candidate holds (quantize.weight_bytes)


@dataclass
class KernelChoice:
    """What was measured and what is served."""

    chosen: str
    allow_int8: bool
    requested: str  # the DTYPE setting: auto or a fixed precision
    table: list[KernelTiming] = field(default_factory=list)
    measure_s: float = 0.0
    # The two finalists' interleaved medians at the maximum batch, ms, when they were close.
    runoff: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The JSON form (/ready, run.json ``server.kernels``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> KernelChoice:
        """The choice ``as_dict`` gave."""
        return cls(**{**data, "table": [KernelTiming(**t) for t in data["table"]]})

    def row_growth(self) -> float:
        """What one more row adds to the served kernel's decode step, as a share of a
        one-row step (linear between the batch-1 and batch-max timings; 0 if untimed)."""
        timing = next((t for t in self.table if t.precision == self.chosen), None)
        if timing is None or not timing.batch_max_ms or timing.max_batch <= 1:
            return 0.0
        ratio = timing.batch_max_ms / timing.batch_1_ms
        return max(0.0, ratio - 1.0) / (timing.max_batch - 1)

    def summary(self) -> str:
        """One line for the startup log."""
        rows = ", ".join(f"{t.precision} {t.batch_1_ms:.1f}/"
                         f"{'-' if t.batch_max_ms is None else f'{t.batch_max_ms:.1f}'} ms"
                         + (f" (steps padded to {t.min_rows} rows)" if t.min_rows > 1 else "")
                         for t in self.table)
        runoff = "; interleaved runoff " + ", ".join(
            f"{name} {ms:.1f}" for name, ms in self.runoff.items()) + " ms" if self.runoff else ""
        return (f"kernel choice ({self.requested}): {self.chosen}; decode step at batch 1/"
                f"{self.table[0].max_batch if self.table else '?'} on one thread: {rows}"
                f"{runoff} (measured in {self.measure_s:.1f} s)")


class OneDNNLinear(nn.Module):
    """``nn.Linear`` computed by oneDNN's matmul, sharing the original's weight and bias."""

    linear_kernel = "onednn_fp32"  # its name in server.engine.code_path

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T + bias, any leading dims."""
        return onednn_linear(x, self.weight, self.bias)


class PackedBF16Linear(nn.Module):
    """``nn.Linear`` in bf16 whose weight oneDNN reordered once, at load, into its blocked
    layout, so no step pays for the reorder.

    The plain bf16 matmul reorders the whole weight on every call: on the AMD EPYC Zen 4
    (AVX-512 BF16, 2 threads) the linear layers of gpt2-large's 36 blocks took 84 / 99 / 501
    ms at 1 / 8 / 128 rows that way, 55 / 66 / 447 ms prepacked, against fbgemm fp16's
    48 / 77 / 938 (python -m bench gemm --rows 1,8,128 --threads 2). The packed copy
    replaces the weight: same bytes.
    """

    min_rows = 1  # rows a step is padded to at least: set_min_rows, from the kernel choice
    linear_kernel = "onednn_packed_bf16"  # its name in server.engine.code_path

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T + bias in bf16, any leading dims."""
        return onednn_linear(x, self.packed, self.bias, self.min_rows)

    def weight_bytes(self) -> int:
        """Bytes the packed weight and the bias hold."""
        bias = 0 if self.bias is None else self.bias.numel() * 2
        return self.in_features * self.out_features * 2 + bias


def pack_bfloat16(model: nn.Module) -> nn.Module:
    """``model`` in bf16 with every ``nn.Linear`` as a PackedBF16Linear.

    The LM head too, though it is tied to the token embedding (which keeps its bf16 copy
    for the lookup): the plain bf16 head cost 8.2 of gpt2's 25 ms one-row decode step on
    one thread; its packed copy costs the vocabulary x width in bf16 once more (gpt2-large:
    129 MB, shared by the preloaded workers).
    """
    model = to_bfloat16(model)
    replace_modules(model, nn.Linear, PackedBF16Linear)
    return model


def set_min_rows(model: nn.Module, rows: int) -> int:
    """Pad every PackedBF16Linear step of ``model`` to at least ``rows`` rows; return how
    many layers were set."""
    layers = [m for m in model.modules() if isinstance(m, PackedBF16Linear)]
    for layer in layers:
        layer.min_rows = rows
    return len(layers)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  min_rows: int = 1) -> torch.Tensor:
    """x @ weight.T + bias through oneDNN's matmul (``weight`` plain or prepacked), any
    leading dims, the rows padded to a bucket (``bucket_rows``) of at least ``min_rows``."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    padded = bucket_rows(max(rows, min_rows))
    if padded != rows:
        flat = torch.cat([flat, flat.new_zeros(padded - rows, flat.shape[1])])
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    return out[:rows].reshape(*x.shape[:-1], out.shape[-1])


def bucket_rows(rows: int) -> int:
    """Rows padded to one of a few sizes (1, 2, 4, 8, 16, then multiples of 32).

    oneDNN compiles and caches one kernel per matrix shape; a packed step's row count
    changes with every step (decode rows plus prefill tokens), so unpadded shapes kept adding
    cache entries for hundreds of requests: the soak's workers grew ~85 MB. Padding costs
    little at small row counts, where a step reads every weight whatever the rows.
    """
    if rows <= 16:
        return 1 << max(0, rows - 1).bit_length()
    return -(-rows // 32) * 32


def swap_linears(model: nn.Module, to_onednn: bool) -> int:
    """Turn every nn.Linear into OneDNNLinear (or back), in place; return how many."""
    source, make = (nn.Linear, OneDNNLinear) if to_onednn else (OneDNNLinear, _plain_linear)
    return replace_modules(model, source, make)


def _plain_linear(module: OneDNNLinear) -> nn.Linear:
    linear = nn.Linear(module.in_features, module.out_features, device="meta")
    linear.weight, linear.bias = module.weight, module.bias
    return linear


def onednn_available() -> bool:
    """True where torch was built with oneDNN (x86 and aarch64 wheels)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                            "_linear_pointwise")


@functools.cache
def packing_available() -> bool:
    """True where oneDNN can prepack a bf16 linear weight (PackedBF16Linear) on this CPU.

    Asked of oneDNN itself, once: its bf16 reorder needs AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT, and on an AVX2-only CPU (AMD Zen 3) it raises, which crashed startup
    with DTYPE=auto; there the bf16 candidate is plain torch bf16 instead. A 16 x 16 weight
    on the caller's thread count (one in the Gunicorn master: nothing is started that a
    fork could break).
    """
    if not (onednn_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16))
    except RuntimeError as error:
        log.info("oneDNN cannot pack bf16 weights on this CPU (%s): bf16 runs as plain torch",
                 str(error).split(":")[-1].strip())
        return False
    return True


def candidates(requested: str, allow_int8: bool) -> list[str]:
    """Precisions to time for DTYPE=``requested``: auto times every allowed one."""
    fp32 = [FLOAT32, ONEDNN] if onednn_available() else [FLOAT32]
    bf16 = [BFLOAT16, BF16_NATIVE] if native_gemm.available() else [BFLOAT16]
    int8 = [INT8, INT8_NATIVE] if native_int8.available() else [INT8]
    fp16 = [FLOAT16, F16_NATIVE] if native_f16.available() else [FLOAT16]
    if requested == "auto":
        return fp32 + fp16 + bf16 + (int8 if allow_int8 else [])
    if requested == FLOAT32:
        return fp32
    if requested == FLOAT16:
        return fp16
    if requested == BFLOAT16:
        return bf16
    if requested == INT8:
        return int8
    return [requested]


def time_step_ms(model: nn.Module, eos_id: int, batch: int, reps: int = REPS) -> float:
    """Median ms of one decode step of ``batch`` rows (short prompts, greedy)."""
    step = _decoding_step(model, eos_id, batch, reps)
    return statistics.median(step() for _ in range(reps))


def _decoding_step(model: nn.Module, eos_id: int, batch: int,
                   reps: int) -> Callable[[], float]:
    """A timer of one decode step of ``batch`` rows (short prompts, prefilled, one step run
    untimed for first-call allocations), good for ``reps`` calls: each returns its ms."""
    engine = StepEngine(model, eos_id, ignore_eos=True, prefill_chunk=batch * PROMPT_TOKENS)
    prompt = [(eos_id + 1 + i) % 50_000 for i in range(PROMPT_TOKENS)]
    rows = [engine.new_row(GenerationRequest(prompt, reps + 2)) for _ in range(batch)]
    while any(r.prompt_left for r in rows):
        engine.step(rows)
    engine.step(rows)

    def step() -> float:
        started = time.perf_counter()
        engine.step(rows)
        return (time.perf_counter() - started) * 1000.0
    return step


def _runoff(first: nn.Module, second: nn.Module, eos_id: int, batch: int,
            reps: int = RUNOFF_REPS) -> tuple[float, float]:
    """Median ms of a decode step of ``batch`` rows for two candidates, their steps
    alternating (the order flipped every repetition), so a slow stretch of the machine hits
    both alike."""
    steps = (_decoding_step(first, eos_id, batch, reps),
             _decoding_step(second, eos_id, batch, reps))
    times: tuple[list[float], list[float]] = ([], [])
    for rep in range(reps):
        for side in ((0, 1) if rep % 2 == 0 else (1, 0)):
            times[side].append(steps[side]())
    return statistics.median(times[0]), statistics.median(times[1])


def choose(model: nn.Module, eos_id: int, requested: str, allow_int8: bool, max_batch: int,
           quantize: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, KernelChoice]:
    """Time each candidate built from the float32 ``model`` in a forked child (``measure``;
    what timing allocates ends with the child, server.engine.forked), then build the one
    chosen here, with the row padding it was timed with; return it, ready."""
    choice = KernelChoice.from_dict(run_forked(
        lambda: measure(model, eos_id, requested, allow_int8, max_batch, quantize).as_dict()))
    served = _build(model, choice.chosen, quantize)
    set_min_rows(served, next(t.min_rows for t in choice.table if t.precision == choice.chosen))
    log.info(choice.summary())
    return served, choice


def measure(model: nn.Module, eos_id: int, requested: str, allow_int8: bool, max_batch: int,
            quantize: Callable[[nn.Module], nn.Module]) -> KernelChoice:
    """The kernel table: each candidate built from the float32 ``model`` and timed on one
    thread, and the one to serve (``_finalists``). Leaves ``model`` as it was, but not the
    process: run it where its leftovers do not matter (``choose`` runs it in a child)."""
    torch.set_num_threads(1)  # the table is per-thread speed (module docstring)
    started = time.monotonic()
    choice = KernelChoice(requested, allow_int8, requested)
    variants: dict[str, nn.Module] = {}
    for name in candidates(requested, allow_int8):
        variant = _build(model, name, quantize)
        best = min((t.batch_1_ms for t in choice.table), default=float("inf"))
        one, min_rows = _time_one_row(variant, eos_id)
        many = None if one > HOPELESS * best else time_step_ms(variant, eos_id, max_batch)
        choice.table.append(KernelTiming(name, round(one, 2), None if many is None
                                         else round(many, 2), max_batch, min_rows,
                                         round(weight_bytes(variant) / 2**20, 1)))
        if name == ONEDNN:
            swap_linears(model, to_onednn=False)  # the same tensors: build it again if chosen
        else:
            variants[name] = variant
    timed = [t for t in choice.table if t.batch_max_ms is not None]
    choice.chosen = _finalists(choice, timed, variants, eos_id, max_batch)
    variants.clear()
    choice.measure_s = round(time.monotonic() - started, 2)
    return choice


def _finalists(choice: KernelChoice, timed: list[KernelTiming], variants: dict[str, nn.Module],
               eos_id: int, max_batch: int) -> str:
    """The fastest at the maximum batch (batch 1 breaking ties); when the runner-up is within
    RUNOFF_MARGIN of it and both are kept built (float32+onednn shares float32's tensors and
    is not), the faster of the two timed again interleaved (recorded in ``choice.runoff``)."""
    ranked = sorted(timed, key=lambda t: (t.batch_max_ms, t.batch_1_ms))
    if len(ranked) < 2 or ranked[1].batch_max_ms > ranked[0].batch_max_ms * (1 + RUNOFF_MARGIN):
        return ranked[0].precision
    first, second = ranked[0].precision, ranked[1].precision
    if first not in variants or second not in variants:
        return first
    ms = _runoff(variants[first], variants[second], eos_id, max_batch)
    choice.runoff = {first: round(ms[0], 2), second: round(ms[1], 2)}
    return runoff_winner((first, second), ms, (ranked[0].weight_mb, ranked[1].weight_mb))


def runoff_winner(names: tuple[str, str], ms: tuple[float, float],
                  sizes: tuple[float, float]) -> str:
    """The faster of two finalists in the runoff, unless it holds MEMORY_PREMIUM more weight
    memory (``sizes``, any unit) than the other and is not MEMORY_PREMIUM faster: then the
    smaller serves."""
    fast, slow = (0, 1) if ms[0] <= ms[1] else (1, 0)
    heavier = sizes[fast] > sizes[slow] * (1 + MEMORY_PREMIUM)
    if heavier and ms[fast] * (1 + MEMORY_PREMIUM) > ms[slow]:
        return names[slow]
    return names[fast]


def _time_one_row(variant: nn.Module, eos_id: int) -> tuple[float, int]:
    """(batch-1 step ms, rows it is padded to): a packed bf16 model is timed unpadded and
    padded to MIN_ROWS, and keeps the faster (set on its layers); others as they are."""
    one = time_step_ms(variant, eos_id, 1)
    if not set_min_rows(variant, MIN_ROWS):
        return one, 1
    padded = time_step_ms(variant, eos_id, 1)
    if padded < one:
        return padded, MIN_ROWS
    set_min_rows(variant, 1)
    return one, 1


def _build(model: nn.Module, name: str, quantize: Callable[[nn.Module], nn.Module]) -> nn.Module:
    if name == FLOAT32:
        return model
    if name == ONEDNN:
        swap_linears(model, to_onednn=True)
        return model
    if name == FLOAT16:
        return quantize_float16(copy.deepcopy(model))
    if name == F16_NATIVE:
        return native_f16.quantize_native_float16(copy.deepcopy(model))
    if name == BFLOAT16:
        bf16 = copy.deepcopy(model)
        return pack_bfloat16(bf16) if packing_available() else to_bfloat16(bf16)
    if name == BF16_NATIVE:
        return native_gemm.pack_native(copy.deepcopy(model))
    if name == INT8:
        return quantize(copy.deepcopy(model))
    if name == INT8_NATIVE:
        return native_int8.quantize_native_int8(copy.deepcopy(model))
    names = [FLOAT32, ONEDNN, FLOAT16, F16_NATIVE, BFLOAT16, BF16_NATIVE, INT8, INT8_NATIVE]
    raise ValueError(f"unknown precision {name!r}; use one of {', '.join(names)}")
