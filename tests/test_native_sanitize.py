"""The native kernels' C tests (tests/native/test_kernels.c) under AddressSanitizer + UBSan:
compiled on every machine (the same -Wall -Wextra -Werror as the install-time build), their
plain-C argument checks run on any x86-64, the AVX2 variants (the int8 GEMM's, the decode
attention's) where the CPU has their features, and the AVX-512 kernels against references at
odd shapes where it has AVX-512 BF16 (else skipped, naming the missing features).
`make native-sanitize` runs the same program.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from server.engine import native_f16, native_ops

HERE = Path(__file__).with_name("native")

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                       reason="the native kernels are x86-64 only"),
    pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None or not shutil.which("make"),
                       reason="no C compiler or make (.ci/run installs gcc)"),
]


@pytest.fixture(scope="module")
def c_tests(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """tests/native/test_kernels.c built with the sanitizers and run once for this module."""
    out = tmp_path_factory.mktemp("native")
    build = subprocess.run(["make", "-s", "-C", str(HERE), "build", f"OUT={out}"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return subprocess.run([str(out / "test_kernels")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1",
                                            "UBSAN_OPTIONS": "print_stacktrace=1"})


def test_the_plain_c_checks_and_the_avx2_kernels_pass_under_asan_and_ubsan(
        c_tests: subprocess.CompletedProcess) -> None:
    """What runs on any x86-64 (the entry points' checks), and the AVX2 variants where this
    CPU has their features (the int8 GEMM's, the decode attention's over 16-bit and int8
    caches, the fp16 GEMM's)."""
    said = c_tests.stdout + c_tests.stderr
    assert c_tests.returncode in (0, 77), said
    assert "checks: ok" in c_tests.stdout, said
    if native_ops.int8_variant() is not None:
        assert "int8 fma kernels: ok" in c_tests.stdout, said
    if "avx2" in native_ops.attention_variants():
        assert "attention avx2: ok" in c_tests.stdout, said
        assert "attention avx2 int8: ok" in c_tests.stdout, said  # KV_DTYPE=int8's caches
    if native_f16.available():
        assert "f16 gemm: ok" in c_tests.stdout, said
        assert "llama layers: ok" in c_tests.stdout, said  # llama_f16.c, on the fp16 GEMM
        assert "gpt2 f16 layers: ok" in c_tests.stdout, said  # gpt2_f16.c, likewise
        assert "gpt2 int8 layers: ok" in c_tests.stdout, said  # its int8 entry points


def test_the_avx512_kernels_pass_their_c_tests_under_asan_and_ubsan(
        c_tests: subprocess.CompletedProcess) -> None:
    said = c_tests.stdout + c_tests.stderr
    if c_tests.returncode == 77:
        pytest.skip(c_tests.stdout.strip().splitlines()[-1])  # "SKIP kernels: this CPU lacks"
    assert c_tests.returncode == 0 and "kernels: ok" in c_tests.stdout, said
