"""Rules on the kernel path the server measured at startup (see analysis.rules)."""

from __future__ import annotations

from analysis.formatting import num
from analysis.hardware import Hardware, KernelTiming
from analysis.records import INFO, WARNING, Findings, Recommendation


def _measured(hw: Hardware) -> list[KernelTiming]:
    return [k for k in hw.kernels if k.batch_max_ms and k.batch_max_ms > 0]


# The DTYPE setting that serves a precision of the kernel table (server/kernels.py): oneDNN
# fp32 has no DTYPE of its own, auto picks it when it measures fastest.
DTYPE_FOR = {"float32+onednn": "auto", "bfloat16+native": "bfloat16+native (or auto)",
             "int8": "int8 (or DTYPE=auto with ALLOW_INT8=1)"}
# ISA flags that give a CPU native bf16 matmuls; without them int8 is the fast low precision.
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def _steps(fast: KernelTiming, slow: KernelTiming) -> str:
    return f"{num(fast.batch_max_ms, 0)} vs {num(slow.batch_max_ms, 0)} ms per decode step"


def kernel_path(f: Findings) -> Recommendation | None:
    """Served precision's step >= kernel_speedup_min x the fastest -> warning, set DTYPE.

    The steps compared are the server's startup kernel table's, at each precision's largest
    batch. When the fastest is served but the table's spread is that large: info.
    """
    hw = f.hardware
    rows = _measured(hw) if hw is not None else []
    if len(rows) < 2:
        return None
    fastest = min(rows, key=lambda k: k.batch_max_ms)
    slowest = max(rows, key=lambda k: k.batch_max_ms)
    # The chosen path is what the engine serves; run.json's dtype names only its dtype
    # ("float32" for float32+onednn), so it is the fallback for tables without a choice.
    served = hw.timing(hw.chosen) or hw.timing(hw.served)
    cpu = f"{hw.cpu_model or 'this CPU'}, torch kernels {hw.torch_cpu_capability or 'n/a'}"
    limit = f.config.kernel_speedup_min
    if served is not None and served.batch_max_ms / fastest.batch_max_ms >= limit:
        ratio = served.batch_max_ms / fastest.batch_max_ms
        return Recommendation("kernel_path", WARNING, (
            f"{fastest.precision} decodes {num(ratio, 1)}x faster than {served.precision} on "
            f"this CPU ({cpu}) at batch {num(fastest.max_batch)} "
            f"({_steps(fastest, served)}), yet the server served {served.precision}: set "
            f"DTYPE={DTYPE_FOR.get(fastest.precision, fastest.precision)}. The startup kernel "
            "table (run.json `server.kernels`, "
            "the report's \"Hardware and kernel path\") has every candidate."))
    ratio = slowest.batch_max_ms / fastest.batch_max_ms
    if ratio < limit:
        return None
    return Recommendation("kernel_path", INFO, (
        f"The kernel path matters on this CPU ({cpu}): {fastest.precision} decodes "
        f"{num(ratio, 1)}x faster than {slowest.precision} at batch {num(fastest.max_batch)} "
        f"({_steps(fastest, slowest)}); the server served "
        f"{served.precision if served else hw.served or 'n/a'}. Runs on another CPU can "
        "choose differently: compare `host` and `server.kernels` before comparing speed."))


def int8_not_measured(f: Findings) -> Recommendation | None:
    """No native bf16, int8 not allowed, a float32 path served -> info: try ALLOW_INT8=1.

    Only when the kernel table shows the server measured without int8 (allow_int8 false)
    and the host's ISA list is known and lacks avx512_bf16 / amx_bf16.
    """
    hw = f.hardware
    if (hw is None or not hw.kernels or hw.allow_int8 is not False or not hw.isa
            or any(flag in hw.isa for flag in NATIVE_BF16)
            or not str(hw.chosen or "").startswith("float32")
            or hw.timing("int8") is not None):
        return None
    chosen = hw.timing(hw.chosen)
    step = f" ({num(chosen.batch_max_ms, 0)} ms per decode step at batch " \
           f"{num(chosen.max_batch)})" if chosen and chosen.batch_max_ms else ""
    return Recommendation("int8_not_measured", INFO, (
        f"This CPU ({hw.cpu_model or 'n/a'}; ISA {' '.join(hw.isa)}) has no native bf16, so "
        f"the server serves {hw.chosen}{step}, and int8 was not measured: ALLOW_INT8 is off. "
        "On such CPUs int8 decodes several times faster than float32 (server/config.py); if "
        "int8's text is acceptable for your model, set ALLOW_INT8=1 and DTYPE=auto measures it."))


RULES = [kernel_path, int8_not_measured]
