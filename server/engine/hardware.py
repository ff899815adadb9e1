"""What machine this is: the facts that decide how fast a CPU model serves.

Two hosts with the same core count can differ 5-10x in decode speed: one has native bf16
(AVX512-BF16, AMX) and the other only AVX2, and torch's kernels follow the ISA. A run
folder, a bench table or a profile that records these facts can be compared and explained.

    python -m server.engine.hardware          # this host's fingerprint as JSON

``host_fingerprint()`` is cheap and safe in a Gunicorn master before fork: it reads /proc,
and asks torch only for compile-time and cpuinfo facts (no tensor op, so no OpenMP pool is
started). It imports torch only if asked to (``with_torch=True``, the default); processes
that should not carry torch (the run script, Locust) call ``fingerprint_subprocess()``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from server.engine.procfs import cpuinfo_text

# CPU flags that decide the kernel path of a transformer on CPU: AVX2/FMA are the baseline
# for fast fp32; AVX-512 widens it; *_bf16 / amx_* make bf16 native; *_vnni / amx_int8
# speed up int8 dot products; f16c converts halves.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
             "amx_int8", "amx_tile", "fma", "f16c")

# BLAS_INFO in torch's build settings -> the library's usual name.
_BLAS_NAMES = {"mkl": "MKL", "open": "OpenBLAS", "openblas": "OpenBLAS", "blis": "BLIS",
               "accelerate": "Accelerate", "flexi": "FlexiBLAS", "eigen": "Eigen",
               "armpl": "ArmPL"}


def _cpuinfo(text: str | None = None) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (``text`` given: parse that instead).

    The project's one cpuinfo parser: bench and the run records ask ``cpu_facts`` and
    ``cpu_flags``, never the file."""
    if text is None:
        text = cpuinfo_text()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # one processor is enough: every core of a host is the same model
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo_text: str | None = None) -> frozenset[str]:
    """Every flag /proc/cpuinfo lists for this CPU (x86 ``flags``, Arm ``Features``), or
    for ``cpuinfo_text``."""
    if cpuinfo_text is None:
        return _host_flags()
    return frozenset(_flags(_cpuinfo(cpuinfo_text)))


@functools.cache
def _host_flags() -> frozenset[str]:
    # Read once: the flags do not change while the process runs, and reading /proc/cpuinfo
    # took ~94 us on the AMD EPYC Zen 3, which the native int8 GEMM paid on every linear
    # layer's call (it checks its variant's features before each call).
    return frozenset(_flags(_cpuinfo(None)))


def _flags(info: dict[str, str]) -> set[str]:
    return set(info.get("flags", info.get("Features", "")).split())


def cpu_facts(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """cpu_model, cpu_vendor, cpu_id and isa (the ISA_FLAGS this CPU has) from /proc/cpuinfo.

    ``cpu_id`` is x86's "family F model M" ("" elsewhere): a cloud VM's model name is often
    just "AMD EPYC", the same for a Zen 2 (family 23), a Zen 3 (25, model 1) and a Zen 4 (25,
    model 17), whose kernels and speeds differ."""
    info = _cpuinfo(cpuinfo_text)
    flags = _flags(info)
    family, model = info.get("cpu family", ""), info.get("model", "")
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": info.get("vendor_id") or info.get("CPU implementer", ""),
        "cpu_id": f"family {family} model {model}" if family and model else "",
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def blas_name(config_text: str) -> str:
    """The BLAS torch was built with, from ``torch.__config__.show()`` ("MKL 2024.2")."""
    found = re.search(r"BLAS_INFO=([A-Za-z0-9_]+)", config_text)
    if not found:
        return ""
    name = _BLAS_NAMES.get(found[1].lower(), found[1])
    version = re.search(r"Math Kernel Library Version ([\d.]+)", config_text)
    return f"{name} {version[1]}" if name == "MKL" and version else name


def torch_facts() -> dict[str, str]:
    """torch_cpu_capability and blas, as this torch build reports them ("" without torch)."""
    try:
        import torch  # deferred: 1-5 s and ~100 MB; callers without torch skip it
    except ImportError:
        return {"torch_cpu_capability": "", "blas": ""}
    # Both calls read build settings and cpuinfo; neither runs an op (no thread pool).
    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": blas_name(torch.__config__.show())}


def host_fingerprint(with_torch: bool = True) -> dict[str, Any]:
    """cores, ram_gb, cpu_model, cpu_vendor, cpu_id, isa, and (``with_torch``) torch_cpu_capability
    and blas of this host (a fresh copy each call: the facts are read once per process).

    ``cores`` is the CPUs this process may run on (its affinity), which is what a load test
    gets; ``ram_gb`` is the machine's total memory.
    """
    facts = _fingerprint(with_torch)
    return {**facts, "isa": list(facts["isa"])}


@functools.cache
def _fingerprint(with_torch: bool) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        **cpu_facts(),
    }
    if with_torch:
        facts.update(torch_facts())
    return facts


def describe(facts: dict[str, Any]) -> str:
    """One line for a printed or Markdown header: CPU, cores, RAM, ISA, torch path, BLAS."""
    vendor = ", ".join(part for part in (facts.get("cpu_vendor") or "?", facts.get("cpu_id"))
                       if part)
    return (f"{facts.get('cpu_model') or 'unknown CPU'} ({vendor}), "
            f"{facts.get('cores')} cores, {facts.get('ram_gb')} GB RAM, ISA "
            f"{' '.join(facts.get('isa') or []) or 'none of the listed'}, torch kernels "
            f"{facts.get('torch_cpu_capability') or '?'}, BLAS {facts.get('blas') or '?'}")


def fingerprint_subprocess(timeout_s: float = 120.0) -> dict[str, Any]:
    """``host_fingerprint()`` computed in a child Python, so torch stays out of this process
    (once per process; a fresh copy each call).

    Falls back to the torch-free facts (torch fields "") if the child fails.
    """
    facts = _fingerprint_subprocess(timeout_s)
    return {**facts, "isa": list(facts["isa"])}


@functools.cache
def _fingerprint_subprocess(timeout_s: float) -> dict[str, Any]:
    try:
        out = subprocess.run([sys.executable, "-m", "server.engine.hardware"], capture_output=True,
                             text=True, timeout=timeout_s, check=True,
                             cwd=Path(__file__).resolve().parents[2])
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return {**host_fingerprint(with_torch=False), "torch_cpu_capability": "", "blas": ""}


if __name__ == "__main__":
    print(json.dumps(host_fingerprint()))
