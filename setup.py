"""Builds the native bf16 kernels (server/engine/native/*.c) when the package is installed.

pyproject.toml holds the project's metadata; this file only adds the one C extension, which
setuptools compiles on `pip install .` and `pip install -e .` (PEP 660: the editable install
builds it in place, beside the sources, as server/engine/_native_bf16.<abi>.so; gitignored).
Python loads it with ctypes by its path (server.engine.native_ops), never imports it.

The kernels carry their own target attributes (native/simd_bf16.h, GLL_AVX512), so the build
needs no -m flags and succeeds on any x86-64 with a C compiler (CC, default: the one Python was
built with); -Wall -Wextra -Werror keeps it warning-free. After editing the C of an editable
install, rebuild with `make native` (the library records its sources' digest, and a stale
build is reported and not used). Other architectures install without it (the kernels are
x86-64 only, and the other kernel paths serve).
"""

import hashlib
import platform
from pathlib import Path

from setuptools import Extension, setup

NATIVE = Path("server/engine/native")


def source_digest() -> str:
    """SHA-256 of native/*.c and *.h in name order: the same as native_ops.source_digest."""
    digest = hashlib.sha256()
    for path in sorted([*NATIVE.glob("*.c"), *NATIVE.glob("*.h")], key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


KERNELS = Extension(
    "server.engine._native_bf16",
    sources=[str(path) for path in sorted(NATIVE.glob("*.c"))],
    depends=[str(path) for path in NATIVE.glob("*.h")],
    define_macros=[("GLL_SOURCE_DIGEST", f'"{source_digest()}"')],
    # -fno-wrapv: Python's own CFLAGS carry -fwrapv, which lets signed loop counters wrap, so
    # GCC cannot strength-reduce the tiles' index arithmetic: the fp16 GEMM's 4 x 3 tile ran
    # at 5.5 GB/s with it against 8.6 without, 8 rows on one thread (bench gemm-f16
    # --against). The kernels are checked free of signed overflow under UBSan (tests/native).
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-Werror", "-fopenmp", "-fno-wrapv"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[KERNELS] if platform.machine() in ("x86_64", "AMD64") else [])
