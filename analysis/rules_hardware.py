"""Rules on the kernel path the server measured at startup (see analysis.rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from analysis.formatting import num
from analysis.hardware import Hardware, KernelTiming
from analysis.rules import INFO, WARNING, Recommendation

if TYPE_CHECKING:
    from analysis.findings import Findings


def _measured(hw: Hardware) -> list[KernelTiming]:
    return [k for k in hw.kernels if k.batch_max_ms and k.batch_max_ms > 0]


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
    served = hw.timing(hw.served) or hw.timing(hw.chosen)
    cpu = f"{hw.cpu_model or 'this CPU'}, torch kernels {hw.torch_cpu_capability or 'n/a'}"
    limit = f.config.kernel_speedup_min
    if served is not None and served.batch_max_ms / fastest.batch_max_ms >= limit:
        ratio = served.batch_max_ms / fastest.batch_max_ms
        return Recommendation("kernel_path", WARNING, (
            f"{fastest.precision} decodes {num(ratio, 1)}x faster than {served.precision} on "
            f"this CPU ({cpu}) at batch {num(fastest.max_batch)} "
            f"({_steps(fastest, served)}), yet the server served {served.precision}: set "
            f"DTYPE={fastest.precision}. The startup kernel table (run.json `server.kernels`, "
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


RULES = [kernel_path]
