"""server.engine.native_gemm's loading, on any x86-64 (issue 29, part 6): a corrupt library in the
native cache is rebuilt (or, if the rebuild fails too, dropped with a logged fallback), never
a crash; a cache folder others could write to is not used; an explicit
``DTYPE=bfloat16+native`` on a CPU without AVX-512 BF16 stops startup naming the feature.

The library is really compiled and loaded here, through the same ``load`` the server calls;
none of its functions is called, so no AVX-512 instruction runs on a CPU without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from server.config import ConfigError
from server.engine import native_gemm
from server.engine.hardware import cpu_facts
from server.engine.model import load_model
from tests.conftest import MODELS_DIR, server_env

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="no C compiler")
ELF = b"\x7fELF"


def _digest(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _corrupt(library: Path, how: str) -> None:
    """Spoil the built library; with ``digest`` the recorded digest is made to match it."""
    if how.startswith("truncated"):
        library.write_bytes(library.read_bytes()[:4096])
    else:
        library.write_bytes(b"not a shared object\n" * 100)
    if how.endswith("digest"):
        _digest(library).write_text(f"{native_gemm._sha256(library)}  {library.name}\n")


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.parametrize(("how", "says"), [
    ("garbage", "does not match its recorded digest: rebuilding"),
    ("garbage with a matching digest", "rebuilding once"),
    # Caught by the digest only: dlopen of a truncated ELF touches pages past the end of
    # the file and dies of SIGBUS, which no try can catch.
    ("truncated", "does not match its recorded digest: rebuilding"),
])
def test_a_corrupt_library_in_the_cache_is_rebuilt(tmp_path: Path, caplog, how, says) -> None:
    cache = tmp_path / "native"
    built = native_gemm.build(cache)  # built, not loaded: a load would be cached by path
    assert built.read_bytes().startswith(ELF) and native_gemm._unverified(built) is None
    _corrupt(built, how)
    with caplog.at_level(logging.WARNING, logger=native_gemm.__name__):
        lib = native_gemm.load(cache)
    assert lib is not None and lib.gemm_bf16 is not None  # loaded, functions declared
    assert says in _warnings(caplog) and str(built) in _warnings(caplog)
    assert built.read_bytes().startswith(ELF) and native_gemm._unverified(built) is None


def test_a_failed_rebuild_falls_back_with_a_log_line(tmp_path: Path, caplog,
                                                     monkeypatch) -> None:
    """The compiler breaks between the first build and the rebuild (same CC, same name)."""
    compiler = tmp_path / "cc"
    compiler.write_text(f"#!/bin/sh\nexec {shutil.which(os.environ.get('CC', 'cc'))} \"$@\"\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    cache = tmp_path / "native"
    built = native_gemm.build(cache)
    _corrupt(built, "garbage with a matching digest")
    compiler.write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    with caplog.at_level(logging.WARNING, logger=native_gemm.__name__):
        assert native_gemm.load(cache) is None
    said = _warnings(caplog)
    assert "could not load" in said and "rebuilding once" in said
    assert "could not build" in said and "cc: broken" in said
    assert "not used (the other kernel paths serve)" in said


def test_the_cache_folder_is_created_private(tmp_path: Path) -> None:
    cache = tmp_path / "new" / "native"
    assert native_gemm.load(cache) is not None
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert [p.suffix for p in sorted(cache.iterdir())] == [".so", ".sha256"]


def _others_can_write(folder: Path) -> str:
    folder.chmod(0o777)
    return "is writable by others (mode 777): not used"


def _another_owner(folder: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    os.chown(folder, 65534, 65534)
    return "belongs to uid 65534"


@pytest.mark.parametrize("spoil", [_others_can_write, _another_owner],
                         ids=["writable-by-others", "another-owner"])
def test_a_cache_folder_not_ours_alone_is_not_used(tmp_path: Path, caplog, spoil) -> None:
    cache = tmp_path / "shared"
    cache.mkdir()
    says = spoil(cache)
    with caplog.at_level(logging.WARNING, logger=native_gemm.__name__):
        lib = native_gemm.load(cache)
    assert lib is not None  # built and loaded in a private temporary folder instead
    assert says in _warnings(caplog) and list(cache.iterdir()) == []
    private = Path(lib._name).parent
    assert private != cache and not private.exists()  # removed once loaded


def test_explicit_native_names_the_missing_cpu_feature(tiny_model: Path, monkeypatch) -> None:
    monkeypatch.setattr(native_gemm, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw"})
    with pytest.raises(ConfigError, match="avx512vl, avx512_bf16") as raised:
        load_model("synthetic:tiny", "bfloat16+native", MODELS_DIR)
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
