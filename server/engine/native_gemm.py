"""A bf16 GEMM of the project's own for CPUs with AVX-512 BF16 (``native/gemm_bf16.c``).

Why: oneDNN's prepacked bf16 kernel (server.engine.kernels.PackedBF16Linear) reads a one-row
decode step's weights at ~20 GB/s where this box streams ~30 (``python -m bench roofline``),
and costs about as much at 8 rows as at 1 only because both are slow. The C kernel packs
each weight once into blocks of 16 outputs x 2 inputs, the layout ``vdpbf16ps`` multiplies
with a broadcast pair of activations, and keeps up to 8 rows x 8 blocks of accumulators in
registers: on the AMD EPYC Zen 4 (2 threads) gpt2-large's linear layers took 39 / 43 / 460
ms at 1 / 8 / 128 rows against oneDNN's prepacked 63 / 63 / 463
(``python -m bench gemm --rows 1,8,128 --threads 2``).
Each output is summed in the same order whatever the rows, so a row's result is the same
alone or in any batch, bit for bit.

It is one more kernel candidate (``bfloat16+native``, server.engine.kernels), timed at startup
like the others and served only where it measures fastest. Available when the CPU has
AVX-512 BF16 and a C compiler (``CC``, default ``cc``) builds the source: once per source
and flags, into ``GLL_NATIVE_DIR`` (default ``~/.cache/gpt-load-lab/native``); loaded
with ctypes, whose calls release the GIL. Elsewhere the candidate is simply absent, and an
explicit ``DTYPE=bfloat16+native`` stops startup with a ConfigError naming the missing CPU
features and the CPU (``require``).

Loading never crashes startup (``load``): the cache folder is created 0700 and used only if
it belongs to this user and no one else may write to it (else the library is built in a
private temporary folder); the library's SHA-256, recorded beside it at build time
(``<name>.so.sha256``), is checked before ``ctypes.CDLL``; a library that does not match
or does not load is rebuilt once, and if building fails the candidate is dropped with a
logged warning. Loading runs none of the library's code, and the compiler's AVX-512 target
flags only change the code of the kernels, so the library builds and loads on any x86-64
(the tests check loading on CPUs without AVX-512, where no kernel is ever called).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from server.config import ConfigError
from server.engine.hardware import cpu_facts, cpu_flags
from server.engine.quantize import replace_modules

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native") / "gemm_bf16.c"
# Built into the same library: the decode attention over bf16 caches (server.engine.row_cache)
# and GPT-2's layers around the GEMMs (server.engine.native_gpt2).
SOURCES = (SOURCE, SOURCE.with_name("attention_bf16.c"), SOURCE.with_name("gpt2_bf16.c"))
HEADER = SOURCE.with_name("simd_bf16.h")  # included by the last two
NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
CFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma",
          "-fopenmp", "-shared", "-fPIC")
BLOCK = 16  # outputs per packed block (one vector of fp32 lanes)


def build_dir() -> Path:
    """Where the shared library is built (``GLL_NATIVE_DIR``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt-load-lab"
    return Path(os.environ.get("GLL_NATIVE_DIR") or default / "native")


def build(directory: Path | None = None, rebuild: bool = False) -> Path:
    """Compile the sources unless this source and these flags are built and verified
    already (or ``rebuild``); the library's path, its digest recorded beside it."""
    compiler = os.environ.get("CC", "cc")
    code = b"".join(source.read_bytes() for source in (*SOURCES, HEADER))
    key = hashlib.sha256(code + " ".join((compiler, *CFLAGS)).encode())
    target = (directory or build_dir()) / f"gemm_bf16-{key.hexdigest()[:16]}.so"
    if target.exists() and not rebuild:
        problem = _unverified(target)
        if problem is None:
            return target
        log.warning("native bf16 kernels: %s %s: rebuilding", target, problem)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        subprocess.run([compiler, *CFLAGS, *map(str, SOURCES), "-o", str(built)], check=True,
                       capture_output=True, text=True, timeout=300)
        digest = Path(scratch) / _digest_path(target).name
        digest.write_text(f"{_sha256(built)}  {target.name}\n")
        # Each replace is atomic: a concurrent loader finds whole files (at worst a library
        # that does not match the digest yet, which it rebuilds).
        os.replace(digest, _digest_path(target))
        os.replace(built, target)
    return target


def load(directory: Path | None = None) -> ctypes.CDLL | None:
    """The library built in ``directory`` (default ``build_dir()``), verified against its
    recorded digest and loaded; rebuilt once if it fails to verify or load; None (logged:
    the other kernel paths serve) if building or the rebuild fails.

    A directory that is not this user's alone (another owner, or group/world-writable) is
    not used: the library is built in a private temporary folder instead, removed once
    loaded. Runs none of the library's code, so it is safe on any x86-64 CPU.
    """
    directory = directory or build_dir()
    scratch = None if _private(directory) else Path(
        tempfile.mkdtemp(prefix="gpt-load-lab-native-"))
    if scratch is not None:
        log.warning("native bf16 kernels: building in the private folder %s instead", scratch)
    try:
        for rebuild in (False, True):
            try:
                path = build(scratch or directory, rebuild)
            except (OSError, subprocess.SubprocessError) as exc:
                detail = getattr(exc, "stderr", "") or exc
                log.warning("native bf16 kernels: could not build %s: %s; not used (the "
                            "other kernel paths serve)", SOURCE, str(detail)[-500:])
                return None
            try:
                return _load(path)
            except (OSError, AttributeError, NativeLoadError) as exc:
                log.warning("native bf16 kernels: could not load %s: %s; %s", path, exc,
                            "not used (the other kernel paths serve)" if rebuild
                            else "rebuilding once")
        return None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)  # a loaded library stays mapped


class NativeLoadError(RuntimeError):
    """A built library does not match the digest recorded when it was built."""


def _load(path: Path) -> ctypes.CDLL:
    """``path`` loaded with ctypes once its digest matches; its functions declared."""
    problem = _unverified(path)
    if problem is not None:
        raise NativeLoadError(problem)
    lib = ctypes.CDLL(str(path))
    lib.pack_vnni.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.gemm_bf16.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
    lib.attend_decode_bf16.argtypes = (
        [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 4
        + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int])
    lib.attend_decode_bf16.restype = ctypes.c_int
    lib.gpt2_attn_in.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.gpt2_attn_out.argtypes = lib.gpt2_attn_in.argtypes
    lib.gpt2_decode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_int] + [ctypes.c_void_p] * 4
    lib.gpt2_decode.restype = ctypes.c_int
    return lib


def missing_flags() -> list[str]:
    """The CPU features the native kernels need that this CPU lacks."""
    flags = cpu_flags()
    return [flag for flag in NEEDED_FLAGS if flag not in flags]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (logged) where this CPU or this machine cannot run them."""
    missing = missing_flags()
    if missing:
        log.info("native bf16 GEMM: not on this CPU (no %s)", ", ".join(missing))
        return None
    torch.get_num_threads()  # torch (and its libgomp) loaded first: the kernel shares it
    return load()


def require() -> None:
    """Raise ConfigError (naming the missing CPU features and this CPU) unless the native
    kernels run here: for an explicit ``DTYPE=bfloat16+native``."""
    missing = missing_flags()
    if missing:
        raise ConfigError(
            f"DTYPE=bfloat16+native needs the CPU feature(s) {', '.join(missing)}, which this "
            f"CPU ({cpu_facts()['cpu_model']}) lacks; use DTYPE=bfloat16 or auto")
    if library() is None:
        raise ConfigError("DTYPE=bfloat16+native: the native kernels could not be built or "
                          "loaded (see the warning above); use DTYPE=bfloat16 or auto")


def available() -> bool:
    """True where the native kernel runs here."""
    return library() is not None


class NativeBF16Linear(nn.Module):
    """``nn.Linear`` in bf16 computed by the native kernel, its weight packed once.

    Outputs are padded to a multiple of 16 inside (zero weights), sliced off on return.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        lib = library()
        if lib is None or linear.in_features % 2:
            raise ValueError("the native kernel needs AVX-512 BF16 and an even input width")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.padded = -(-self.out_features // BLOCK) * BLOCK
        weight = _pad_rows(linear.weight.detach().to(torch.bfloat16), self.padded)
        self.packed = torch.empty_like(weight)
        lib.pack_vnni(weight.data_ptr(), self.packed.data_ptr(), self.padded, self.in_features)
        self.bias = None if linear.bias is None else _pad_rows(
            linear.bias.detach().to(torch.bfloat16), self.padded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T + bias in bf16, any leading dims."""
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch.empty(flat.shape[0], self.padded, dtype=torch.bfloat16)
        library().gemm_bf16(flat.data_ptr(), self.packed.data_ptr(),
                            None if self.bias is None else self.bias.data_ptr(),
                            out.data_ptr(), flat.shape[0], self.padded, self.in_features,
                            torch.get_num_threads())
        if self.padded != self.out_features:
            out = out[:, :self.out_features]
        return out.reshape(*x.shape[:-1], self.out_features)

    def weight_bytes(self) -> int:
        """Bytes the packed weight and the bias hold (padding included)."""
        bias = 0 if self.bias is None else self.bias.numel() * 2
        return self.packed.numel() * 2 + bias


def pack_native(model: nn.Module) -> nn.Module:
    """``model`` in bf16 with every ``nn.Linear`` as a NativeBF16Linear (the LM head too:
    its own packed copy, as server.engine.kernels.pack_bfloat16 makes). A layer of odd input width,
    which the kernel's input pairs cannot take, stays a plain bf16 ``nn.Linear``."""
    model = model.to(torch.bfloat16)
    replace_modules(model, nn.Linear,
                    lambda layer: layer if layer.in_features % 2 else NativeBF16Linear(layer))
    return model


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    pad = tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])
    return torch.cat([tensor, pad]).contiguous()


def _private(directory: Path) -> bool:
    """Whether ``directory`` (created 0700 if missing) is this user's and writable by no
    one else; logs why not."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as exc:
        log.warning("native bf16 kernels: cannot use %s: %s", directory, exc)
        return False
    if info.st_uid != os.geteuid():
        log.warning("native bf16 kernels: %s belongs to uid %d, not this server's %d: not "
                    "used", directory, info.st_uid, os.geteuid())
        return False
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("native bf16 kernels: %s is writable by others (mode %o): not used",
                    directory, stat.S_IMODE(info.st_mode))
        return False
    return True


def _digest_path(library_path: Path) -> Path:
    return library_path.with_name(library_path.name + ".sha256")


def _unverified(library_path: Path) -> str | None:
    """Why ``library_path`` does not match the digest recorded at build time (None: it does)."""
    try:
        recorded = _digest_path(library_path).read_text().split()[0]
    except (OSError, IndexError):
        return "has no recorded digest"
    return None if recorded == _sha256(library_path) else "does not match its recorded digest"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
