"""server.engine.hardware: the host fingerprint from /proc/cpuinfo and torch's build facts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO
from harness.script_run import run_script
from server.engine.hardware import (
    blas_name,
    cpu_facts,
    describe,
    fingerprint_subprocess,
    host_fingerprint,
)

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 \
amx_tile amx_int8 avx_vnni

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: something else entirely
"""
EPYC_ZEN3 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma f16c bmi2
"""


@pytest.mark.parametrize(("text", "model", "vendor", "cpu_id", "isa"), [
    (SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8488C", "GenuineIntel", "",
     ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
      "amx_tile", "fma", "f16c"]),
    (EPYC_ZEN3, "AMD EPYC 7B13", "AuthenticAMD", "family 25 model 1", ["avx2", "fma", "f16c"]),
])
def test_cpu_facts_from_cpuinfo(text, model, vendor, cpu_id, isa) -> None:
    assert cpu_facts(text) == {"cpu_model": model, "cpu_vendor": vendor, "cpu_id": cpu_id,
                               "isa": isa}


def test_the_header_line_names_the_cpu_family_and_model() -> None:
    line = describe({**cpu_facts(EPYC_ZEN3), "cores": 2, "ram_gb": 23.5})
    assert line.startswith("AMD EPYC 7B13 (AuthenticAMD, family 25 model 1), 2 cores")


@pytest.mark.parametrize(("config", "blas"), [
    ("  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605\n"
     "  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl", "MKL 2024.2"),
    ("  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release", "OpenBLAS"),
    ("  - Build settings: BUILD_TYPE=Release", ""),
])
def test_blas_name_from_torch_config(config, blas) -> None:
    assert blas_name(config) == blas


def test_this_host_matches_proc_cpuinfo() -> None:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name"))

    facts = host_fingerprint()

    assert facts["cpu_model"] == model and facts["cores"] >= 1 and facts["ram_gb"] > 0
    assert facts["torch_cpu_capability"]  # e.g. AVX2, AVX512
    assert facts["blas"]
    facts["isa"].append("mutated")
    assert "mutated" not in host_fingerprint()["isa"]  # callers get their own copy


def test_fingerprint_starts_no_torch_threads() -> None:
    """Safe in a Gunicorn master before fork: no op runs, so no OpenMP pool is made."""
    # Compared with the threads right after ``import torch`` (which may start one of its
    # own on some machines), not with a fixed count.
    code = ("import os, json, torch\nfrom server.engine.hardware import host_fingerprint\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "facts = host_fingerprint()\n"
            "print(json.dumps([before, len(os.listdir('/proc/self/task')), facts]))")
    run = run_script([sys.executable, "-c", code], cwd=REPO)  # followed: imports torch
    assert run.returncode == 0, run.stderr[-3000:]
    before, after, facts = json.loads(run.stdout)

    assert after == before and facts["torch_cpu_capability"]


def test_subprocess_fingerprint_equals_the_in_process_one() -> None:
    assert fingerprint_subprocess() == host_fingerprint()
