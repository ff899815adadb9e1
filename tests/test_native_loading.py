"""server.engine.native_ops's library, on any x86-64: it is built when the package is
installed (setup.py) and loads here, none of its kernels run; the entry points' own checks are
plain C and run on any CPU; a missing or stale build is reported, and an explicit
``DTYPE=bfloat16+native`` that cannot run here stops startup naming the missing CPU feature or
the missing build.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from pathlib import Path

import pytest
import torch

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from server.config import ConfigError
from server.engine import native_gemm, native_ops
from server.engine.hardware import cpu_facts
from server.engine.model import load_model
from tests.conftest import MODELS_DIR, server_env

x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                         reason="the native kernels are x86-64 only (setup.py skips them)")
ALL_FLAGS = {"avx2", *native_ops.NEEDED_FLAGS}


@pytest.fixture
def fresh_library():
    """library() recomputed for the test, and again after it."""
    native_ops.library.cache_clear()
    yield
    native_ops.library.cache_clear()


@x86
def test_the_library_is_built_at_install_and_loads_on_any_x86_64() -> None:
    """`pip install -e .` (make venv, .ci/run) built it from these very sources."""
    path = native_ops.library_path()
    assert path is not None, "not built: run `make native` (or `pip install -e .`)"
    assert path.parent == native_ops.NATIVE.parent and path.read_bytes().startswith(b"\x7fELF")
    lib = native_ops.load()  # runs no kernel: safe without AVX-512
    assert lib.gll_source_digest().decode() == native_ops.source_digest()


@x86
def test_the_entry_points_check_their_sizes_in_plain_c() -> None:
    """The C's own last line of checks (no AVX-512 instruction before it): bad sizes return
    GLL_BAD_SHAPE (-1) on any CPU, and pack_vnni (plain C) packs here."""
    lib = native_ops.load()
    w = torch.arange(32 * 6, dtype=torch.int16).view(32, 6)
    out = torch.empty_like(w)
    assert lib.pack_vnni(w.data_ptr(), out.data_ptr(), 24, 6) == -1  # outputs % 16
    assert lib.pack_vnni(w.data_ptr(), out.data_ptr(), 32, 5) == -1  # odd inputs
    assert lib.pack_vnni(w.data_ptr(), out.data_ptr(), 32, 6) == 0
    expected = w.view(2, 16, 3, 2).permute(0, 2, 1, 3).flatten()
    assert torch.equal(out.flatten(), expected)
    assert lib.gemm_bf16(w.data_ptr(), out.data_ptr(), None, out.data_ptr(), 1, 20, 6, 1) == -1
    caps, lens = (ctypes.c_int64 * 1)(4), (ctypes.c_int64 * 1)(4)  # full: no room
    stores, tokens = (ctypes.c_void_p * 1)(out.data_ptr()), (ctypes.c_int64 * 1)(0)
    ptr = w.data_ptr()
    qkv = ctypes.byref(native_ops.QKV(ptr, ptr, ptr, 48, 16, 48, 16, 48, 16))

    def attend(heads: int, kv_heads: int, dim: int) -> int:
        return lib.attend_decode_bf16(qkv, stores, caps, lens, tokens, 1, 0, heads, kv_heads,
                                      dim, 0.25, ptr, 16, 1)

    assert attend(1, 1, 16) == -1  # full: lens == caps
    lens[0] = 3
    assert attend(1, 1, 24) == -1  # dim % 16
    assert attend(3, 2, 16) == -1  # query heads not a multiple of the kv heads
    assert attend(2, 0, 16) == -1  # no kv heads

    def attend_avx2(qkv_dtype: int, cache_dtype: int, dim: int = 16) -> int:
        return lib.attend_decode_avx2(qkv, qkv_dtype, stores, cache_dtype, None, caps, lens,
                                      tokens, 1, 0, 1, 1, dim, 0.25, ptr, 16, 1)

    codes = native_ops.DTYPE_CODES
    assert attend_avx2(codes[torch.float16], codes[torch.float16]) == -1  # fp16 queries
    assert attend_avx2(codes[torch.float32], codes[torch.float32]) == -1  # fp32 caches
    assert attend_avx2(codes[torch.float32], 9) == -1  # no such dtype
    assert attend_avx2(codes[torch.float32], codes[torch.float16], dim=24) == -1  # dim % 16
    assert attend_avx2(codes[torch.float32], codes[torch.int8]) == -1  # int8: no scales
    assert lib.gpt2_decode(None, 1, None, ptr, 1, stores, caps, lens, tokens) == -1


@x86
def test_a_stale_build_is_reported_not_run(monkeypatch) -> None:
    monkeypatch.setattr(native_ops, "source_digest", lambda: "0" * 64)
    with pytest.raises(native_ops.NativeError, match="rebuild: `make native`"):
        native_ops.load()


def test_a_missing_build_is_logged_and_the_candidate_absent(monkeypatch, caplog,
                                                            fresh_library) -> None:
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: ALL_FLAGS)
    monkeypatch.setattr(native_ops, "library_path", lambda: None)
    with caplog.at_level(logging.WARNING, logger=native_ops.__name__):
        assert native_gemm.library() is None and not native_gemm.available()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "the native kernels are not built" in said and "make native" in said


def test_explicit_native_names_the_missing_build(tiny_model: Path, monkeypatch,
                                                 fresh_library) -> None:
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: ALL_FLAGS)
    monkeypatch.setattr(native_ops, "library_path", lambda: None)
    with pytest.raises(ConfigError, match=r"DTYPE=bfloat16\+native: the native kernels are not "
                                          r"built .*make native"):
        load_model("synthetic:tiny", "bfloat16+native", MODELS_DIR)


def test_explicit_native_names_the_missing_cpu_feature(tiny_model: Path, monkeypatch) -> None:
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw"})
    native_ops.library.cache_clear()
    try:
        with pytest.raises(ConfigError, match="avx512vl, avx512_bf16") as raised:
            load_model("synthetic:tiny", "bfloat16+native", MODELS_DIR)
    finally:
        native_ops.library.cache_clear()
    assert cpu_facts()["cpu_model"] in str(raised.value)


@pytest.mark.skipif(not native_gemm.missing_flags(), reason="this CPU has AVX-512 BF16")
def test_gunicorn_refuses_explicit_native_on_this_cpu(tiny_model: Path, tmp_path: Path) -> None:
    server = GunicornServer(tmp_path, server_env(tmp_path, DTYPE="bfloat16+native"), workers=1)
    server.start()
    try:
        wait_until(lambda: not server.alive(), "gunicorn exits on DTYPE=bfloat16+native",
                   timeout_s=300, detail=server.log_text)
    finally:
        code = server.stop()
    assert code != 0
    log = server.log_text()
    assert "DTYPE=bfloat16+native needs the CPU feature(s)" in log
    assert "avx512_bf16" in log and f"CPU ({cpu_facts()['cpu_model']}) lacks" in log
