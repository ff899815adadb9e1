"""The native kernels' C tests (tests/native/test_kernels.c) under AddressSanitizer + UBSan:
compiled on every machine (the same -Wall -Wextra -Werror as the install-time build), their
plain-C argument checks run on any x86-64, and the kernels run against references at odd
shapes where the CPU has AVX-512 BF16 (else skipped, naming the missing features); the
decode attention's AVX2 variant where it has AVX2, FMA and F16C (asserted here, before a skip).
`make native-sanitize` runs the same program.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from server.engine import native_ops

HERE = Path(__file__).with_name("native")

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                       reason="the native kernels are x86-64 only"),
    pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None or not shutil.which("make"),
                       reason="no C compiler or make (.ci/run installs gcc)"),
]


def test_the_kernels_pass_their_c_tests_under_asan_and_ubsan(tmp_path: Path) -> None:
    build = subprocess.run(["make", "-s", "-C", str(HERE), "build", f"OUT={tmp_path}"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(tmp_path / "test_kernels")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1",
                                           "UBSAN_OPTIONS": "print_stacktrace=1"})
    said = run.stdout + run.stderr
    assert "checks: ok" in run.stdout, said  # the plain-C checks ran here, under the sanitizers
    if "avx2" in native_ops.attention_variants():  # AVX2 + FMA + F16C: the AVX2 attention ran
        assert "attention avx2: ok" in run.stdout, said
    if run.returncode == 77:
        pytest.skip(run.stdout.strip().splitlines()[-1])  # "SKIP kernels: this CPU lacks ..."
    assert run.returncode == 0 and "kernels: ok" in run.stdout, said
