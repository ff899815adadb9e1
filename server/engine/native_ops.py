"""The project's native bf16 kernels (``native/*.c``) as checked operations.

The library is compiled when the package is installed (``setup.py``: ``pip install -e .`` in
``make venv`` and .ci/run; ``make native`` rebuilds it after the C changes) into
``server/engine/_native_bf16.<abi>.so``, beside these sources, and loaded here with ctypes by
its path (ctypes calls release the GIL). Nothing is compiled at run time. Its AVX-512
functions carry their own target attributes, so it builds and loads on any x86-64; a kernel is
called only where the CPU has every feature in ``NEEDED_FLAGS`` (``library`` is None
elsewhere, and an explicit ``DTYPE=bfloat16+native`` stops startup naming what is missing:
``require``).

The int8 GEMM (``native/gemm_int8.c``) and the decode attention have their own CPU-feature
variants (``INT8_VARIANTS``, ``ATTENTION_VARIANTS``: name -> features, preferred first; one
rule picks among them, ``_runs_here``): ``int8_variant`` says which int8 GEMM runs here
(AVX-512 VNNI, else AVX2 + FMA), ``attention_variant`` which decode attention takes a pair of
query and cache dtypes here (AVX-512 BF16 over bf16 caches, else AVX2 + FMA + F16C over fp16,
bf16 or int8 caches, ``native/attention_avx2.c``; ``ATTENTION_DTYPES`` says which variant
reads which, so an int8 cache is never handed to the AVX-512 one); their operations load
the library on any x86-64 that has that variant's features. The fp16-weight GEMM
(``native/gemm_f16.c``, AVX2 + FMA + F16C) is bound and checked in its own module,
server.engine.native_f16, on the same library.

Every operation checks what the C cannot: dtypes, device (CPU), contiguity or strides,
shapes against each other, and the cache geometry (layers, kv heads and the query heads they
serve, head dim, each row's capacity and length), raising ValueError before the library is
even looked up (so the checks work, and are tested, on CPUs without AVX-512). The C entry
points check their sizes once more in plain C and return a code; a code other than 0 raises
NativeError here. Pointers need no alignment beyond the element's (2 bytes for bf16, which
every tensor has): the kernels use unaligned loads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from server.config import ConfigError
from server.engine.hardware import cpu_facts, cpu_flags

log = logging.getLogger(__name__)

NATIVE = Path(__file__).with_name("native")
MODULE = "server.engine._native_bf16"  # what setup.py builds
NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
BLOCK = 16  # outputs per packed weight block (one vector of fp32 lanes)
MAX_HEAD_DIM = 256  # the attention keeps a query in 16 vectors
_INT_MAX = 2**31 - 1
# The int8 GEMM's variants, preferred first: name -> the CPU features it needs. A variant
# packs its weights in its own layout (gemm_int8.c's pack_int8 ``layout``).
INT8_VARIANTS = {"avx512_vnni": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
                 "avx2": ("avx2", "fma")}
_INT8_LAYOUTS = {"avx2": 0, "avx512_vnni": 1}
# The decode attention's variants, preferred first: name -> the CPU features it needs, and the
# (query, cache) dtype pairs it takes (the new keys and values are the query's dtype, and so is
# the output). AVX-512 BF16: attention_bf16.c; AVX2: attention_avx2.c (Zen 3, Haswell on).
# int8 caches (KV_DTYPE=int8, with their scales: server.engine.kv_int8): the AVX2 one only.
ATTENTION_VARIANTS = {"avx512_bf16": NEEDED_FLAGS, "avx2": ("avx2", "fma", "f16c")}
ATTENTION_DTYPES = {
    "avx512_bf16": frozenset({(torch.bfloat16, torch.bfloat16)}),
    "avx2": frozenset(itertools.product((torch.float32, torch.bfloat16),
                                        (torch.float16, torch.bfloat16, torch.int8)))}
# kernels.h gll_dtype
DTYPE_CODES = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2, torch.int8: 3}
CACHE_DTYPES = (torch.bfloat16, torch.float16, torch.int8)  # what a variant reads (DecodeCaches)
QUERY_DTYPES = (torch.bfloat16, torch.float32)  # ... and attends with (attention_declines)
VNNI_MAX_INPUTS = 65536  # int32 sums of u8 x s8 products stay exact up to this K
_CODES = {-1: "a size outside what the kernel takes (nothing written)",
          -2: "a scratch allocation failed"}


class NativeError(RuntimeError):
    """A kernel returned an error code, or the library cannot be used."""


class Declined(ValueError):
    """Tensors of a layout the kernel does not take (``attention_declines``): the caller
    attends them in torch instead."""


# -- the library ---------------------------------------------------------------------------


def missing_flags() -> list[str]:
    """The CPU features the native kernels need that this CPU lacks."""
    return _lacks(NEEDED_FLAGS)


def _lacks(needs: Sequence[str]) -> list[str]:
    """The CPU features of ``needs`` that this CPU lacks."""
    flags = cpu_flags()
    return [flag for flag in needs if flag not in flags]


def _runs_here(variants: Mapping[str, Sequence[str]]) -> list[str]:
    """The names of ``variants`` (name -> CPU features, preferred first) this CPU has every
    feature of, in their order: how the int8 GEMM and the decode attention pick a variant."""
    return [name for name, needs in variants.items() if not _lacks(needs)]


def library_path() -> Path | None:
    """The built library (found like an extension module, never imported), or None."""
    spec = importlib.util.find_spec(MODULE)
    return Path(spec.origin) if spec is not None and spec.origin else None


def source_digest() -> str:
    """SHA-256 of native/*.c and *.h in name order (setup.py builds it into the library)."""
    digest = hashlib.sha256()
    for path in sorted([*NATIVE.glob("*.c"), *NATIVE.glob("*.h")], key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def load() -> ctypes.CDLL:
    """The installed library, loaded and its functions declared, on any x86-64 (runs none of
    its kernels); NativeError saying what to do if it is not built, does not load, or was built
    from other sources than those beside it (an editable install whose C changed)."""
    path = library_path()
    if path is None:
        raise NativeError(f"the native kernels are not built ({MODULE}: `pip install -e .` or "
                          "`make native` builds them; needs a C compiler)")
    try:
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except (OSError, AttributeError) as exc:
        raise NativeError(f"the native kernels at {path} do not load: {exc}") from exc
    built = lib.gll_source_digest().decode()
    if built != source_digest():
        raise NativeError(f"the native kernels at {path} were built from other sources than "
                          f"those in {NATIVE} (rebuild: `make native`)")
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.gll_source_digest.argtypes, lib.gll_source_digest.restype = [], ctypes.c_char_p
    lib.pack_vnni.argtypes = [ptr, ptr, i32, i32]
    lib.gemm_bf16.argtypes = [ptr] * 4 + [i32] * 4
    lib.attend_decode_bf16.argtypes = [ptr] * 5 + [i32] * 5 + [ctypes.c_float, ptr, i64, i32]
    lib.attend_decode_avx2.argtypes = ([ptr, i32, ptr, i32] + [ptr] * 4 + [i32] * 5
                                       + [ctypes.c_float, ptr, i64, i32])
    lib.gpt2_attn_in.argtypes = [ptr, ptr, ptr, i32]
    lib.gpt2_attn_out.argtypes = [ptr, ptr, ptr, i32]
    lib.gpt2_decode.argtypes = [ptr, i32, ptr, ptr, i32] + [ptr] * 4
    lib.llama_bf16_attn_in.argtypes = [ptr, ptr, ptr, i32]
    lib.llama_bf16_attn_out.argtypes = [ptr, ptr, ptr, i32]
    lib.llama_bf16_decode.argtypes = [ptr, i32, ptr, ptr, i32] + [ptr] * 4
    lib.pack_int8.argtypes = [ptr, ptr, i32, i32, i32]
    lib.gemm_int8_fma.argtypes = [ptr] * 5 + [i32] * 4
    lib.gemm_int8_vnni.argtypes = [ptr] * 6 + [i32] * 4
    for name in ("pack_vnni", "gemm_bf16", "attend_decode_bf16", "attend_decode_avx2",
                 "gpt2_attn_in", "gpt2_attn_out", "gpt2_decode", "llama_bf16_attn_in",
                 "llama_bf16_attn_out", "llama_bf16_decode", "pack_int8", "gemm_int8_fma",
                 "gemm_int8_vnni"):
        getattr(lib, name).restype = i32


_problem: str | None = None  # why library() is None (set by it)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (logged) where this CPU or this install cannot run them."""
    global _problem
    missing = missing_flags()
    if missing:
        _problem = (f"needs the CPU feature(s) {', '.join(missing)}, which this CPU "
                    f"({cpu_facts()['cpu_model']}) lacks")
        log.info("native bf16 kernels not used: %s", _problem)
        return None
    torch.get_num_threads()  # torch (and its libgomp) loaded first: the kernels share it
    try:
        lib = load()
    except NativeError as exc:
        _problem = str(exc)
        log.warning("native bf16 kernels not used (the other kernel paths serve): %s", _problem)
        return None
    _problem = None
    return lib


def unavailable() -> str | None:
    """Why the native kernels do not run here (None: they do); for errors and skip reasons."""
    library()
    return _problem


def available() -> bool:
    """True where the native kernels run here."""
    return library() is not None


def require() -> None:
    """Raise ConfigError (naming the missing CPU features and this CPU, or the missing build)
    unless the native kernels run here: for an explicit ``DTYPE=bfloat16+native``."""
    problem = unavailable()
    if problem is not None:
        said = problem if problem.startswith("needs") else f": {problem}"
        raise ConfigError(f"DTYPE=bfloat16+native{' ' * said.startswith('needs')}{said}; use "
                          "DTYPE=bfloat16 or auto")


def int8_variant() -> str | None:
    """The int8 GEMM variant this CPU runs (an ``INT8_VARIANTS`` key, preferred first), or
    None where it has neither's features."""
    return next(iter(_runs_here(INT8_VARIANTS)), None)


def int8_missing(variant: str) -> list[str]:
    """The CPU features ``variant`` of the int8 GEMM needs that this CPU lacks."""
    return _lacks(INT8_VARIANTS[variant])


@functools.cache
def _loaded_anywhere() -> tuple[ctypes.CDLL | None, str | None]:
    """(the library, None) loaded whatever this CPU runs of it, else (None, why): for the
    variants that need no AVX-512 BF16 (each checks its own features before a call)."""
    torch.get_num_threads()  # torch's libgomp first, as library() does
    try:
        return load(), None
    except NativeError as exc:
        return None, str(exc)


def _variants_loaded(variants: Mapping[str, Sequence[str]]) -> tuple[ctypes.CDLL | None,
                                                                     str | None]:
    """(the library, None) where some of ``variants`` runs here, else (None, why)."""
    if not _runs_here(variants):
        wants = " or ".join(", ".join(needs) for needs in variants.values())
        return None, f"needs {wants}, which this CPU ({cpu_facts()['cpu_model']}) lacks"
    return _loaded_anywhere()


@functools.cache
def _int8_loaded() -> tuple[ctypes.CDLL | None, str | None]:
    """(the library, None) where some int8 variant runs here, else (None, why)."""
    return _variants_loaded(INT8_VARIANTS)


def int8_unavailable() -> str | None:
    """Why no native int8 GEMM runs here (None: ``int8_variant`` does)."""
    return _int8_loaded()[1]


def _int8_lib(variant: str) -> ctypes.CDLL:
    return _variant_lib(f"native int8 {variant}", INT8_VARIANTS[variant])


def _variant_lib(what: str, needs: Sequence[str]) -> ctypes.CDLL:
    """The library, to call the variant ``what`` needing ``needs``; NativeError naming the
    missing features, or why the library does not load."""
    missing = _lacks(needs)
    if missing:
        raise NativeError(f"{what}: needs {', '.join(missing)}, which this CPU "
                          f"({cpu_facts()['cpu_model']}) lacks")
    lib, problem = _loaded_anywhere()
    if lib is None:
        raise NativeError(f"{what}: {problem}")
    return lib


@functools.cache
def attention_variants() -> tuple[str, ...]:
    """The decode attention's variants that run here (``ATTENTION_VARIANTS`` keys, preferred
    first): this CPU has their features and the library loads. Asked once (every step's
    plan asks it: cpuinfo is not read again)."""
    lib, _ = _variants_loaded(ATTENTION_VARIANTS)
    return tuple(_runs_here(ATTENTION_VARIANTS)) if lib is not None else ()


def attention_caches() -> frozenset[torch.dtype]:
    """The cache dtypes some decode attention variant that runs here reads."""
    return frozenset(cache for name in attention_variants()
                     for _, cache in ATTENTION_DTYPES[name])


def attention_unavailable() -> str | None:
    """Why no decode attention variant runs here (None: one does)."""
    return _variants_loaded(ATTENTION_VARIANTS)[1]


def attention_takers(query: torch.dtype, cache: torch.dtype) -> list[str]:
    """The decode attention's variants (on any CPU, preferred first) that take ``query``
    queries (and new keys, values) over ``cache`` caches."""
    return [name for name, pairs in ATTENTION_DTYPES.items() if (query, cache) in pairs]


def attention_variant(query: torch.dtype, cache: torch.dtype,
                      variants: Sequence[str] | None = None) -> str | None:
    """The first of ``variants`` (default: ``attention_variants()``, those that run here)
    that takes ``query`` queries over ``cache`` caches, or None."""
    here = attention_variants() if variants is None else variants
    return next((name for name in attention_takers(query, cache) if name in here), None)


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise NativeError(f"native bf16 kernels: {unavailable()}")
    return lib


def _call(name: str, *args: object, lib: ctypes.CDLL | None = None) -> None:
    code = getattr(lib or _lib(), name)(*args)
    if code != 0:
        raise NativeError(f"native {name} failed ({code}): {_CODES.get(code, 'unknown code')}")


# -- checks --------------------------------------------------------------------------------


def _bf16(name: str, tensor: object, shape: tuple[int, ...] | None = None,
          contiguous: bool = True) -> torch.Tensor:
    """``tensor`` if it is a CPU bf16 tensor (of ``shape``, contiguous), else ValueError."""
    return _tensor(name, tensor, torch.bfloat16, shape, contiguous)


def _tensor(name: str, tensor: object, dtype: torch.dtype,
            shape: tuple[int, ...] | None = None, contiguous: bool = True) -> torch.Tensor:
    """``tensor`` if it is a CPU tensor of ``dtype`` (of ``shape``, contiguous, its data at a
    multiple of its element size: the kernels' unaligned loads need no more), else
    ValueError."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{name}: on {tensor.device}, the native kernels take CPU tensors")
    if tensor.dtype != dtype:
        raise ValueError(f"{name}: dtype {tensor.dtype}, this kernel takes {dtype}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if contiguous and not tensor.is_contiguous():
        raise ValueError(f"{name}: not contiguous (strides {tensor.stride()})")
    if tensor.data_ptr() % tensor.element_size():
        raise ValueError(f"{name}: data at {tensor.data_ptr():#x}, not aligned to its "
                         f"{tensor.element_size()}-byte elements")
    return tensor


def _size(name: str, value: int, multiple: int = 1, most: int = _INT_MAX) -> int:
    if not 0 < value <= most or value % multiple:
        rule = f"a positive multiple of {multiple}" if multiple > 1 else "positive"
        raise ValueError(f"{name} = {value}: must be {rule} and at most {most}")
    return value


def _threads() -> int:
    return max(1, torch.get_num_threads())


# -- GEMM ----------------------------------------------------------------------------------


def _weight(name: str, weight: torch.Tensor) -> tuple[int, int]:
    """(outputs, inputs) of a GEMM weight: bf16, contiguous, 2-D, outputs in whole blocks of
    16, inputs even (the packed layout's pairs); raises ValueError naming ``name``."""
    _bf16(name, weight)
    if weight.dim() != 2:
        raise ValueError(f"{name}: {weight.dim()}-D, expected [outputs, inputs]")
    outputs, inputs = weight.shape
    _size(f"{name} outputs", outputs, BLOCK)
    _size(f"{name} inputs", inputs, 2)
    return outputs, inputs


def pack_vnni(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [N, K] (bf16, contiguous; N % 16 == 0, K even) packed into the GEMM's layout
    [N/16][K/2][16][2], returned with the shape [N, K]."""
    rows, cols = _weight("weight", weight)
    packed = torch.empty_like(weight)
    _call("pack_vnni", weight.data_ptr(), packed.data_ptr(), rows, cols)
    return packed


def gemm(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ weight.T + bias in bf16 (summed in fp32): ``packed`` [N, K] from
    ``pack_vnni``, ``bias`` [N] or None; [M, N]."""
    outputs, inputs = _weight("packed weight", packed)
    _bf16("x", x)
    if x.dim() != 2 or x.shape[1] != inputs:
        raise ValueError(f"x: shape {tuple(x.shape)}, expected [rows, {inputs}]")
    if bias is not None:
        _bf16("bias", bias, (outputs,))
    out = torch.empty(x.shape[0], outputs, dtype=torch.bfloat16)
    if x.shape[0] == 0:
        return out
    _size("rows", x.shape[0])
    _call("gemm_bf16", x.data_ptr(), packed.data_ptr(),
          None if bias is None else bias.data_ptr(), out.data_ptr(), x.shape[0], outputs, inputs,
          _threads())
    return out


# -- int8 GEMM ------------------------------------------------------------------------------


def _variant(variant: str) -> str:
    if variant not in INT8_VARIANTS:
        raise ValueError(f"int8 variant {variant!r}: use one of {', '.join(INT8_VARIANTS)}")
    return variant


def int8_padded_inputs(inputs: int, variant: str) -> int:
    """The packed weight's width for ``inputs`` (VNNI reads 4 at a time: rounded up to 4)."""
    return -(-inputs // 4) * 4 if _variant(variant) == "avx512_vnni" else inputs


def pack_int8(q: torch.Tensor, variant: str) -> torch.Tensor:
    """``q`` [N, K] (int8, contiguous; N % 16 == 0) packed into ``variant``'s layout:
    [N/16][K][16] (avx2) or [N/16][Kq/4][16][4] zero padded (avx512_vnni), returned with the
    shape [N, Kq] (``int8_padded_inputs``)."""
    _tensor("int8 weight", q, torch.int8)
    if q.dim() != 2:
        raise ValueError(f"int8 weight: {q.dim()}-D, expected [outputs, inputs]")
    rows, cols = q.shape
    _size("int8 weight outputs", rows, BLOCK)
    _size("int8 weight inputs", cols)
    packed = torch.empty(rows, int8_padded_inputs(cols, variant), dtype=torch.int8)
    # Plain C (no SIMD): it runs wherever the library loads, whichever variant it packs for.
    lib, problem = _int8_loaded()
    if lib is None:
        raise NativeError(f"native int8 GEMM: {problem}")
    _call("pack_int8", q.data_ptr(), packed.data_ptr(), rows, cols, _INT8_LAYOUTS[variant],
          lib=lib)
    return packed


def gemm_int8(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
              colsum: torch.Tensor | None, bias: torch.Tensor | None,
              variant: str) -> torch.Tensor:
    """x [M, K] (float32) @ (scales[:, None] * q).T + bias in float32: ``packed`` [N, Kq] from
    ``pack_int8(q, variant)``, ``scales`` [N] float32, ``colsum`` [N] int32 = q.sum(1)
    (avx512_vnni only; None for avx2), ``bias`` [N] float32 or None; [M, N]."""
    _variant(variant)
    _tensor("packed int8 weight", packed, torch.int8)
    if packed.dim() != 2:
        raise ValueError(f"packed int8 weight: {packed.dim()}-D, expected [outputs, inputs]")
    outputs = _size("packed int8 weight outputs", packed.shape[0], BLOCK)
    _tensor("x", x, torch.float32)
    if x.dim() != 2:
        raise ValueError(f"x: {x.dim()}-D, expected [rows, inputs]")
    inputs = _size("inputs", x.shape[1], most=VNNI_MAX_INPUTS if variant == "avx512_vnni"
                   else _INT_MAX)
    if int8_padded_inputs(inputs, variant) != packed.shape[1]:
        raise ValueError(f"x: shape {tuple(x.shape)}, expected [rows, inputs] with the inputs "
                         f"{variant} packs as {packed.shape[1]}")
    _tensor("scales", scales, torch.float32, (outputs,))
    if variant == "avx512_vnni":
        _tensor("colsum", colsum, torch.int32, (outputs,))
    elif colsum is not None:
        raise ValueError("colsum: the avx2 variant takes none (it sums the weights in float)")
    if bias is not None:
        _tensor("bias", bias, torch.float32, (outputs,))
    out = torch.empty(x.shape[0], outputs, dtype=torch.float32)
    if x.shape[0] == 0:
        return out
    rows = _size("rows", x.shape[0])
    lib = _int8_lib(variant)
    bias_ptr = None if bias is None else bias.data_ptr()
    if variant == "avx512_vnni":
        _call("gemm_int8_vnni", x.data_ptr(), packed.data_ptr(), scales.data_ptr(),
              colsum.data_ptr(), bias_ptr, out.data_ptr(), rows, outputs, inputs, _threads(),
              lib=lib)
    else:
        _call("gemm_int8_fma", x.data_ptr(), packed.data_ptr(), scales.data_ptr(), bias_ptr,
              out.data_ptr(), rows, outputs, inputs, _threads(), lib=lib)
    return out


# -- decode attention over bf16, fp16 and int8 caches -------------------------------------


class DecodeCaches:
    """The caches of the rows one step decodes in C, checked once for the step (every layer's
    call reuses them): each a row store [layers, 2, 1, kv_heads, capacity, dim]
    (server.engine.row_cache.RowCache.store; keys then values of each layer), all of one
    dtype (bf16, fp16 or int8: ``dtype``), layer count, kv heads and head dim; an int8
    store's ``scales[r]`` (RowCache.scales) [layers, 2, 1, kv_heads, capacity] float32,
    contiguous (None for 16-bit stores); ``lens[r]``
    positions held, and ``new`` tokens to come, so ``0 <= lens[r]`` and
    ``lens[r] + new <= capacity``; ``tokens[r]`` the row's (distinct) index in the step's
    packed tokens. Holds the stores, so their memory lives while the C may write it.

    ``kv_heads`` is what the caches hold: GPT-2's equal its query heads, a grouped-query
    (Llama, Qwen) model's are fewer, each serving ``heads // kv_heads`` queries
    (``attend_decode``)."""

    def __init__(self, stores: Sequence[torch.Tensor], lens: Sequence[int],
                 tokens: Sequence[int], new: int = 1,
                 scales: Sequence[torch.Tensor | None] | None = None) -> None:
        if not stores or not len(stores) == len(lens) == len(tokens):
            raise ValueError(f"cache geometry: {len(stores)} stores, {len(lens)} lengths, "
                             f"{len(tokens)} token indexes (one of each per row, at least one)")
        if new != 1:
            raise ValueError("cache geometry: the decode kernel writes one new token per row")
        first = stores[0]
        if not isinstance(first, torch.Tensor) or first.dim() != 6:
            raise ValueError("cache geometry: a store is [layers, 2, 1, kv_heads, capacity, "
                             "dim]")
        self.layers, _, _, self.kv_heads, _, self.dim = first.shape
        self.dtype = first.dtype
        if self.dtype not in CACHE_DTYPES:
            raise ValueError(f"row 0's cache store: dtype {self.dtype}, the decode attention "
                             f"reads {', '.join(map(str, CACHE_DTYPES[:-1]))} or "
                             f"{CACHE_DTYPES[-1]} caches")
        for r, (store, held) in enumerate(zip(stores, lens, strict=True)):
            _tensor(f"row {r}'s cache store", store, self.dtype)
            if store.dim() != 6:
                raise ValueError(f"cache geometry: row {r}'s store is {store.dim()}-D")
            layers, pair, one, kv_heads, capacity, dim = store.shape
            if pair != 2 or one != 1 or (layers, kv_heads, dim) != (self.layers, self.kv_heads,
                                                                     self.dim):
                raise ValueError(
                    f"cache geometry: row {r}'s store is {tuple(store.shape)}, expected "
                    f"({self.layers}, 2, 1, {self.kv_heads}, capacity, {self.dim}): "
                    "[layers, 2, 1, kv_heads, capacity, dim]")
            if held < 0 or held + new > capacity:
                raise ValueError(f"cache geometry: row {r} holds {held} of {capacity} positions"
                                 f" and {new} more do not fit (need 0 <= length < capacity)")
        if min(tokens) < 0 or len(set(tokens)) != len(tokens):
            raise ValueError(f"cache geometry: token indexes {list(tokens)} must be distinct "
                             "and non-negative")
        _size("cache layers", self.layers)
        _size("cache kv heads", self.kv_heads)
        _size("head dim", self.dim, BLOCK, MAX_HEAD_DIM)
        self.scales = _scale_stores(stores, scales, self.dtype)
        self.stores = tuple(stores)
        self.rows = len(stores)
        self.last_token = max(tokens)
        rows = self.rows
        self.arrays = ((ctypes.c_void_p * rows)(*(s.data_ptr() for s in stores)),
                       (ctypes.c_int64 * rows)(*(s.shape[4] for s in stores)),
                       (ctypes.c_int64 * rows)(*lens), (ctypes.c_int64 * rows)(*tokens))
        # attend_decode_avx2's scales: one pointer per row (int8 caches), else NULL.
        self.scale_array = None if self.scales is None else \
            (ctypes.c_void_p * rows)(*(s.data_ptr() for s in self.scales))


def _scale_stores(stores: Sequence[torch.Tensor], scales: Sequence[torch.Tensor | None] | None,
                  dtype: torch.dtype) -> tuple[torch.Tensor, ...] | None:
    """The int8 stores' scale tensors, checked (each [layers, 2, 1, kv_heads, capacity] of its
    store, float32, contiguous); None for 16-bit stores, which take none. ValueError else."""
    if dtype != torch.int8:
        if scales is not None and any(s is not None for s in scales):
            raise ValueError(f"cache scales: {dtype} caches take none (int8 caches only)")
        return None
    if scales is None or len(scales) != len(stores):
        raise ValueError("cache scales: an int8 cache needs its scales, one per row")
    for r, (store, scale) in enumerate(zip(stores, scales, strict=True)):
        _tensor(f"row {r}'s cache scales", scale, torch.float32, tuple(store.shape[:5]))
    return tuple(scales)


class QKV(ctypes.Structure):
    """attention_bf16.c's ``decode_qkv``: the new queries, keys and values, each with its own
    (token, head) strides in elements."""

    _fields_ = [("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
                *((name, ctypes.c_int64) for name in ("q_token", "q_head", "k_token", "k_head",
                                                      "v_token", "v_head"))]


def attention_declines(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> str | None:
    """Why the kernel does not take these queries [1, heads, tokens, dim] and keys/values
    [1, kv_heads, tokens, dim] (the caller then attends in torch), or None: CPU views of one
    dtype of ``QUERY_DTYPES`` (bf16, float32), each with unit stride in dim (any token and
    head strides: GPT-2's packed c_attn views, or a Llama step's rotated q and k beside its
    viewed v), dim a multiple of 16 up to 256. Whether the heads fit the caches is geometry,
    and whether a variant here takes these queries over the caches' dtype is the variant's
    (both checked by ``attend_decode``)."""
    tensors = (query, key, value)
    if (query.dtype not in QUERY_DTYPES or any(t.dtype != query.dtype for t in tensors)
            or any(t.device.type != "cpu" for t in tensors)):
        return (f"{[str(t.dtype) for t in tensors]} on {query.device.type}: not CPU tensors "
                f"of one dtype of {', '.join(map(str, QUERY_DTYPES))}")
    if (query.dim() != 4 or query.shape[0] != 1 or key.shape != value.shape
            or key.shape[0:1] + key.shape[2:] != query.shape[0:1] + query.shape[2:]):
        return f"shapes {[tuple(t.shape) for t in tensors]}"
    if any(t.stride(3) != 1 for t in tensors):
        return f"strides {[t.stride() for t in tensors]}"
    dim = query.shape[3]
    if dim % BLOCK or dim > MAX_HEAD_DIM:
        return f"head dim {dim}"
    return None


def attend_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  caches: DecodeCaches, layer: int, scale: float,
                  variant: str | None = None) -> torch.Tensor:
    """One layer's attention for the decoding rows of ``caches``: writes each row's new key
    and value (``key``/``value`` [1, kv_heads, tokens, dim] at its token) at its length in its
    store (in the store's dtype), attends its queries (``query`` [1, heads, tokens, dim];
    query head h reads kv head ``h // (heads // kv_heads)``, as transformers' ``repeat_kv``)
    over its cache, and returns [1, tokens, heads, dim] in the query's dtype (the positions of
    other tokens are left unwritten).

    ``variant``: an ``ATTENTION_VARIANTS`` key, or None for the first that runs here and takes
    the query's dtype over the caches' (``attention_variant``). Declined when no variant
    takes that pair at all; NativeError when none that does runs here.

    No RoPE here: the caller rotates ``query`` and ``key`` by their positions first, so the
    caches hold rotated keys (native/attention_bf16.c says why)."""
    problem = attention_declines(query, key, value)
    if problem is not None:
        raise Declined(f"attend_decode: the kernel does not take these tensors ({problem})")
    _, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    if (kv_heads, dim) != (caches.kv_heads, caches.dim):
        raise ValueError(f"cache geometry: the caches hold {caches.kv_heads} kv heads of "
                         f"{caches.dim}, the keys and values {kv_heads} of {dim}")
    if heads % kv_heads:
        raise ValueError(f"query heads = {heads}: must be a multiple of the caches' "
                         f"{kv_heads} kv heads (each kv head serves a whole group of queries)")
    if not 0 <= layer < caches.layers:
        raise ValueError(f"cache geometry: layer {layer} of caches holding {caches.layers}")
    if caches.last_token >= tokens:
        raise ValueError(f"cache geometry: token index {caches.last_token} of {tokens} tokens")
    if not math.isfinite(scale):
        raise ValueError(f"attend_decode: scale {scale}")
    variant = _attention_variant(query.dtype, caches.dtype, variant)
    out = torch.empty(1, tokens, heads, dim, dtype=query.dtype)
    qkv = QKV(query.data_ptr(), key.data_ptr(), value.data_ptr(), query.stride(2),
              query.stride(1), key.stride(2), key.stride(1), value.stride(2), value.stride(1))
    stores, caps, lens, indexes = caches.arrays
    sizes = (caches.rows, layer, heads, kv_heads, dim, scale, out.data_ptr(), heads * dim,
             _threads())
    if variant == "avx512_bf16":
        _call("attend_decode_bf16", ctypes.byref(qkv), *caches.arrays, *sizes)
    else:
        _call("attend_decode_avx2", ctypes.byref(qkv), DTYPE_CODES[query.dtype], stores,
              DTYPE_CODES[caches.dtype], caches.scale_array, caps, lens, indexes, *sizes,
              lib=_attention_lib(variant))
    return out


def _attention_lib(variant: str) -> ctypes.CDLL:
    """The library for ``variant``: from the cached ``attention_variants`` where it runs (a
    layer's call must not read /proc/cpuinfo), else NativeError naming what is missing."""
    lib = _loaded_anywhere()[0] if variant in attention_variants() else None
    return lib or _variant_lib(f"native decode attention {variant}", ATTENTION_VARIANTS[variant])


def _attention_variant(query: torch.dtype, cache: torch.dtype, variant: str | None) -> str:
    """``variant`` checked to take ``query`` over ``cache`` (ValueError naming what it takes),
    or the first here that does (Declined: no variant takes the pair; NativeError: none that
    does runs here)."""
    if variant is not None:
        if variant not in ATTENTION_VARIANTS:
            raise ValueError(f"attention variant {variant!r}: use one of "
                             f"{', '.join(ATTENTION_VARIANTS)}")
        if (query, cache) not in ATTENTION_DTYPES[variant]:
            takes = ", ".join(f"{q} over {c}" for q, c in sorted(ATTENTION_DTYPES[variant],
                                                                  key=str))
            raise ValueError(f"attention variant {variant}: takes {takes}, not {query} "
                             f"queries over {cache} caches")
        return variant
    takers = attention_takers(query, cache)
    if not takers:
        raise Declined(f"attend_decode: no variant takes {query} queries over {cache} caches")
    chosen = attention_variant(query, cache)
    if chosen is None:
        if any(not _lacks(ATTENTION_VARIANTS[name]) for name in takers):
            why = attention_unavailable()  # the CPU has the features: the library is missing
        else:
            wants = " or ".join(", ".join(ATTENTION_VARIANTS[name]) for name in takers)
            why = f"needs {wants}, which this CPU ({cpu_facts()['cpu_model']}) lacks"
        raise NativeError(f"native decode attention of {query} queries over {cache} caches: "
                          f"{why}")
    return chosen


# -- GPT-2's layers ------------------------------------------------------------------------

_WEIGHTS = ("ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b",
            "ln2_w", "ln2_b", "fc_w", "fc_b", "out_w", "out_b")


class Block(ctypes.Structure):
    """gpt2_bf16.c's ``gpt2_block``: one layer's weights (built by ``gpt2_block``)."""

    _fields_ = [(name, ctypes.c_void_p) for name in _WEIGHTS]


class Step(ctypes.Structure):
    """gpt2_bf16.c's ``gpt2_step``: sizes, and the step's scratch buffers."""

    _fields_ = [("width", ctypes.c_int), ("hidden", ctypes.c_int), ("heads", ctypes.c_int),
                ("threads", ctypes.c_int), ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                ("x", ctypes.c_void_p), ("qkv", ctypes.c_void_p), ("att", ctypes.c_void_p),
                ("inner", ctypes.c_void_p), ("y", ctypes.c_void_p)]


def gpt2_block(width: int, hidden: int, tensors: Sequence[torch.Tensor | None]) -> Block:
    """One layer's weights, in ``_WEIGHTS`` order, checked against the sizes: norms [width]
    (weight and bias required), linears packed [outputs, inputs] with biases [outputs] or
    None. The caller keeps the tensors alive (the model's own parameters)."""
    _size("width", width, BLOCK)
    _size("hidden", hidden, BLOCK)
    shapes = {"ln1_w": (width,), "ln1_b": (width,), "attn_w": (3 * width, width),
              "attn_b": (3 * width,), "proj_w": (width, width), "proj_b": (width,),
              "ln2_w": (width,), "ln2_b": (width,), "fc_w": (hidden, width),
              "fc_b": (hidden,), "out_w": (width, hidden), "out_b": (width,)}
    if len(tensors) != len(_WEIGHTS):
        raise ValueError(f"gpt2_block: {len(tensors)} tensors, expected {len(_WEIGHTS)}")
    for name, tensor in zip(_WEIGHTS, tensors, strict=True):
        if tensor is None and name.endswith("_b") and not name.startswith("ln"):
            continue
        _bf16(name, tensor, shapes[name])
    return Block(*(None if t is None else t.data_ptr() for t in tensors))


class GPT2Scratch:
    """The sizes and scratch buffers of one step of ``tokens`` rows (gpt2_bf16.c's
    ``gpt2_step``): ``buffers`` x, qkv, att, inner, y of [tokens, n] bf16."""

    def __init__(self, width: int, hidden: int, heads: int, eps: float, scale: float,
                 tokens: int) -> None:
        _size("width", width, BLOCK)
        _size("hidden", hidden, BLOCK)
        _size("heads", heads)
        if width % heads:
            raise ValueError(f"width {width} is not a whole number of {heads} heads")
        _size("head dim", width // heads, BLOCK, MAX_HEAD_DIM)
        _size("tokens", tokens)
        self.width, self.hidden, self.heads, self.tokens = width, hidden, heads, tokens
        widths = {"x": width, "qkv": 3 * width, "att": width, "inner": hidden, "y": width}
        self.buffers = {name: torch.empty(tokens, n, dtype=torch.bfloat16)
                        for name, n in widths.items()}
        self.step = Step(width, hidden, heads, _threads(), eps, scale,
                         *(self.buffers[name].data_ptr() for name in widths))

    def _hidden(self, hidden: torch.Tensor) -> None:
        _bf16("hidden states", hidden, (self.tokens, self.width))


def gpt2_attn_in(block: Block, scratch: GPT2Scratch, hidden: torch.Tensor) -> None:
    """scratch x = ln_1(hidden), qkv = x W_attn + b (one layer, every token)."""
    scratch._hidden(hidden)
    _call("gpt2_attn_in", ctypes.byref(block), ctypes.byref(scratch.step), hidden.data_ptr(),
          scratch.tokens)


def gpt2_attn_out(block: Block, scratch: GPT2Scratch, hidden: torch.Tensor) -> None:
    """hidden += att W_proj + b; hidden += mlp(ln_2(hidden)), from scratch att."""
    scratch._hidden(hidden)
    _call("gpt2_attn_out", ctypes.byref(block), ctypes.byref(scratch.step), hidden.data_ptr(),
          scratch.tokens)


def gpt2_decode(blocks: ctypes.Array, scratch: GPT2Scratch, hidden: torch.Tensor,
                caches: DecodeCaches) -> None:
    """Every layer of a step in which each row decodes one token (token r is a row of
    ``caches``), ``hidden`` [tokens, width] updated in place."""
    scratch._hidden(hidden)
    if caches.rows != scratch.tokens or caches.last_token >= scratch.tokens:
        raise ValueError(f"cache geometry: {caches.rows} cached rows (last token "
                         f"{caches.last_token}) for a step of {scratch.tokens} tokens")
    if (caches.kv_heads, caches.dim) != (scratch.heads, scratch.width // scratch.heads):
        raise ValueError(f"cache geometry: the caches hold {caches.kv_heads} kv heads of "
                         f"{caches.dim}, GPT-2 (one kv head per query head) {scratch.heads} of "
                         f"{scratch.width // scratch.heads}")
    if not 0 < len(blocks) <= caches.layers:
        raise ValueError(f"cache geometry: {len(blocks)} layers, caches of {caches.layers}")
    if caches.dtype != torch.bfloat16:
        raise ValueError(f"cache dtype {caches.dtype}: GPT-2's C layers keep bf16 caches")
    _call("gpt2_decode", blocks, len(blocks), ctypes.byref(scratch.step), hidden.data_ptr(),
          scratch.tokens, *caches.arrays)
