"""The machine a run ran on and the kernel path its server chose, from run.json.

run.json's ``host`` block (server/hardware.py) names the CPU, its ISA flags, torch's CPU
capability and BLAS; its ``server.kernels`` block is what the server measured at startup:
one decode-step time per candidate precision at batch 1 and at its largest batch, and the
precision it chose. Two runs on different CPUs differ for reasons no setting shows; these
facts say why. Pure: settings in, dataclasses and strings out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.document import num

# Flattened run.json keys that describe the hardware and the kernel path (analysis.compare
# lists them first among the settings that differ).
HARDWARE_KEYS = ("host.cpu_model", "host.cpu_vendor", "host.cpu_id", "host.isa",
                 "host.torch_cpu_capability",
                 "host.blas", "host.cores", "host.ram_gb", "server.kernels.chosen",
                 "server.kernels.allow_int8", "server.kernels.table")


@dataclass(frozen=True)
class KernelTiming:
    """One row of the server's startup kernel table: decode-step ms of one precision."""

    precision: str
    batch_1_ms: float | None
    batch_max_ms: float | None
    max_batch: int | None


@dataclass(frozen=True)
class Hardware:
    """The host's CPU facts and the server's kernel choice (None/empty where not recorded)."""

    cpu_model: str | None
    cpu_vendor: str | None
    isa: tuple[str, ...]
    torch_cpu_capability: str | None
    blas: str | None
    chosen: str | None
    allow_int8: bool | None
    served: str | None  # the precision the run's server reported serving (run.json dtype)
    kernels: tuple[KernelTiming, ...]
    cpu_id: str | None = None  # x86 "family F model M" (runs from before 2026-12-07: None)

    def timing(self, precision: str | None) -> KernelTiming | None:
        """The kernel table row of ``precision``, if measured."""
        return next((k for k in self.kernels if k.precision == precision), None)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def kernel_table(rows: Any) -> tuple[KernelTiming, ...]:
    """The kernel table of run.json's ``server.kernels.table`` (bad rows skipped)."""
    if not isinstance(rows, Sequence) or isinstance(rows, str):
        return ()
    table = []
    for row in rows:
        if isinstance(row, Mapping) and row.get("precision"):
            max_batch = row.get("max_batch")
            table.append(KernelTiming(str(row["precision"]), _float(row.get("batch_1_ms")),
                                      _float(row.get("batch_max_ms")),
                                      int(max_batch) if _float(max_batch) else None))
    return tuple(table)


def hardware(settings: Mapping[str, Any]) -> Hardware | None:
    """The hardware facts of run.json ``settings`` (nested); None when it records none."""
    host = settings.get("host") or {}
    kernels = (settings.get("server") or {}).get("kernels") or {}
    if not host.get("cpu_model") and not kernels:
        return None
    isa = host.get("isa") or []
    return Hardware(
        cpu_model=host.get("cpu_model"),
        cpu_vendor=host.get("cpu_vendor"),
        isa=tuple(str(flag) for flag in isa) if isinstance(isa, list | tuple) else (),
        torch_cpu_capability=host.get("torch_cpu_capability") or None,
        blas=host.get("blas") or None,
        chosen=kernels.get("chosen"),
        allow_int8=kernels.get("allow_int8"),
        served=settings.get("dtype"),
        kernels=kernel_table(kernels.get("table")),
        cpu_id=host.get("cpu_id") or None,
    )


def header_line(hw: Hardware | None) -> str:
    """One line naming the CPU and the precision chosen, for the top of a report."""
    if hw is None:
        return "Host CPU not recorded (run.json has no `host.cpu_model`)."
    parts = [f"Host CPU: **{hw.cpu_model or 'unknown'}**"
             + (f" ({hw.cpu_id})" if hw.cpu_id else "")]
    facts = [f"ISA {' '.join(hw.isa) or 'none of avx2/avx512/amx'}"]
    if hw.torch_cpu_capability:
        facts.append(f"torch kernels {hw.torch_cpu_capability}")
    if hw.blas:
        facts.append(f"BLAS {hw.blas}")
    parts.append(f" ({'; '.join(facts)})")
    if hw.chosen:
        parts.append(f"; precision chosen at startup: **{hw.chosen}**")
    return "".join(parts) + "."


def readable_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened settings with the ISA list as words and the kernel table as one line."""
    shown = dict(flat)
    if isinstance(shown.get("host.isa"), list):
        shown["host.isa"] = " ".join(map(str, shown["host.isa"])) or "none"
    if "server.kernels.table" in shown:
        shown["server.kernels.table"] = "; ".join(
            f"{k.precision} {num(k.batch_1_ms, 0)} / {num(k.batch_max_ms, 0)} ms "
            f"(batch 1 / {num(k.max_batch)})"
            for k in kernel_table(shown["server.kernels.table"])) or "none"
    return shown


def hardware_differs(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """HARDWARE_KEYS whose values are not the same in every run's (flattened) settings."""
    return [key for key in HARDWARE_KEYS
            if len({repr(s.get(key)) for s in settings}) > 1]


def hardware_note(runs: Sequence[Any]) -> str:
    """A paragraph naming the hardware facts that differ between ``runs`` (objects with a
    ``label`` and flattened ``settings``, e.g. Findings), or "" when none do."""
    keys = hardware_differs([r.settings for r in runs])
    if not keys:
        return ""
    cpus = "; ".join(f"{r.label}: {r.settings.get('host.cpu_model') or 'not recorded'}"
                     for r in runs)
    return (f"**Hardware differs** ({', '.join(f'`{k}`' for k in keys)}): speed differences "
            f"can come from the machine and its kernel path, not only from the settings. "
            f"CPU per run: {cpus}.\n\n")
