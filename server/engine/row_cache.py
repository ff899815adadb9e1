"""Per-request KV caches packed into one forward pass, and the attention that reads them.

Continuous batching without padding: every step runs ONE forward over a packed sequence
(batch 1) that holds, one after another, the new tokens of each row in the step (one token
per decoding row, a chunk of prompt tokens per prefilling row). Each row keeps its own key
and value buffers per layer, sized for its own prompt plus its own ``max_new_tokens``: no
row carries another row's length, and nothing is padded. Positions come from each row's
own count (``position_ids``), so a row computes what it would alone.

How it plugs into a Hugging Face model without forking its code:

- ``PackedStep`` is passed as the model's ``cache``: the attention layer calls
  ``cache.update(keys, values, layer_idx)`` with the packed step's new keys and values; the
  step writes each row's slice into that row's buffers.
- ``packed_attention`` is registered with transformers' ``AttentionInterface`` and selected
  with ``model.config._attn_implementation``; it attends each row's queries to that row's
  buffers only (causal inside a prefill chunk) and concatenates the outputs in packed order.
  transformers builds no mask for an attention it does not know, so none is computed. That
  is the ``model(...)`` path, for models from_pretrained loaded; the lean forwards and the C
  layers (every preset: server.engine.checkpoint) call ``packed_attention`` and the step
  directly, and nothing is registered.

``KV_DTYPE=model`` stores keys and values as the model computes them; ``float16`` stores
them in float16 when the model computes in float32 (halving the cache, 368 -> 184 KB a
token on gpt2-large, as llama.cpp's default f16 cache does), widened to the query's dtype
when read (``_widened``); a model that already computes in 16 bits stores what it computes.
The default, ``auto``, is float16 unless the weights are served in float32
(``resolve_kv_dtype``). ``int8`` (opt-in) stores keys and values as int8 with one float32
scale per (layer, k|v, kv head, position) (server.engine.kv_int8: symmetric, max|x| / 127),
quantised when written (``_write``) and widened to the compute dtype, times its scale, when
torch's attention reads them (``_widened``): 97,920 B a position on gpt2-large.

A bf16, float16 or int8 cache's decoding rows (one new token each) are attended by the
project's C kernel where a variant of it runs on this CPU (``NativeDecode``:
``native/attention_bf16.c`` with AVX-512 BF16 over bf16 caches, ``native/attention_avx2.c``
with AVX2 + FMA + F16C over any of the three, server.engine.native_ops picks): one call per
layer writes their new keys and values (an int8 cache's quantised to the bytes ``_write``
writes) and reads each cache once, in place; prefill chunks and every other cache go through
torch's ``scaled_dot_product_attention``. Whether the kernel applies, and the dtype torch's
attention computes in, are decided once per model by server.engine.code_path; the step
engine passes them to each ``PackedStep``.
"""

from __future__ import annotations

import math
import mmap
import threading
from dataclasses import dataclass, field

import torch
from torch.nn import functional

from server.engine import kv_int8, native_ops

ATTENTION_NAME = "gll_packed"
KV_DTYPES = ("float16", "int8", "model")  # what a cache stores; KV_DTYPE=auto resolves to one


def resolve_kv_dtype(kv_dtype: str, precision: str) -> str:
    """KV_DTYPE as served: ``auto`` is float16 when the weights are served below float32
    (float16, bfloat16, int8: the precision class already is 16 bits or less, as llama.cpp
    pairs an f16 model with an f16 cache) and ``model`` (full width) for float32 weights,
    so ``DTYPE=float32`` stays float32 throughout; any other value is kept."""
    if kv_dtype != "auto":
        return kv_dtype
    return "model" if precision == "float32" else "float16"


def storage_dtype(computed: torch.dtype, kv_dtype: str) -> torch.dtype:
    """The dtype a cache keeps for keys/values ``computed`` in this dtype (``KV_DTYPES``;
    int8 whatever the model computes in, with float32 scales beside, server.engine.kv_int8)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"KV dtype {kv_dtype!r}: expected one of {', '.join(KV_DTYPES)}")
    if kv_dtype == "int8":
        return torch.int8
    if kv_dtype == "float16" and computed == torch.float32:
        return torch.float16
    return computed


@dataclass
class RowCache:
    """One request's keys and values for every layer: [1, kv_heads, capacity, head_dim].

    Every layer's buffers are views of one anonymous memory mapping (``anonymous_tensor``;
    all layers shaped as the first, as in GPT-2): resident memory is the tokens written, and
    ``release`` (or the cache's end) unmaps it at once. Per-layer tensors from the heap were
    kept by the allocator after their row ended (the probe's 8-row batch with a float16
    cache grew USS by 468-485 MB for 347 MB of KV; one mapping per row and a reused
    widening buffer: 403-412 MB), so a worker's RSS charged requests for caches of rows
    long gone.

    An int8 cache (``kv_dtype="int8"``) keeps its scales in a second mapping of its own,
    ``scales`` [layers, 2, 1, kv_h, capacity] float32 (``key_scales``/``value_scales`` per
    layer), unmapped the same way. Laid out by position within each (layer, k|v, head) plane
    as the C kernel reads them; a plane of a short row (capacity x 4 B) is under a page, so
    this mapping is resident after the first tokens, at most 4 / head_dim of the store's size
    (6% on gpt2-large), while the store still grows with the tokens written.
    """

    capacity: int
    kv_dtype: str = "model"  # storage policy (storage_dtype)
    layers: int = 1  # the model's layer count
    length: int = 0  # positions written so far (= the next token's position)
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    store: torch.Tensor | None = None  # [layers, 2, 1, kv_h, capacity, d]: keys and values
    scales: torch.Tensor | None = None  # int8 store only: [layers, 2, 1, kv_h, capacity]
    key_scales: list[torch.Tensor] = field(default_factory=list)
    value_scales: list[torch.Tensor] = field(default_factory=list)

    def ensure(self, layer: int, like: torch.Tensor) -> None:
        """Allocate every layer's buffers on the first use, shaped after ``like`` [1, h, n, d].

        Uninitialised memory: pages are touched only as tokens are written, so resident
        memory grows with the tokens this row actually has, not with its capacity.
        """
        if self.keys:
            return
        self._allocate(like.shape[1], like.shape[3], storage_dtype(like.dtype, self.kv_dtype))

    def _allocate(self, heads: int, head_dim: int, dtype: torch.dtype) -> None:
        shape = (self.layers, 2, 1, heads, self.capacity, head_dim)
        self.store = anonymous_tensor(shape, dtype)
        self.keys = [self.store[i, 0] for i in range(self.layers)]
        self.values = [self.store[i, 1] for i in range(self.layers)]
        if dtype == torch.int8:
            self.scales = anonymous_tensor(shape[:-1], torch.float32)
            self.key_scales = [self.scales[i, 0] for i in range(self.layers)]
            self.value_scales = [self.scales[i, 1] for i in range(self.layers)]

    def copy_prefix(self, source: RowCache, count: int) -> None:
        """Start this (empty) cache with ``source``'s first ``count`` positions, every layer
        (server.engine.prefix_cache: keys and values of a prefix depend on that prefix only),
        an int8 cache's scales with them."""
        if source.store is None or self.length or count > min(source.length, self.capacity):
            raise ValueError(f"cannot copy {count} positions into this cache")
        _, _, _, heads, _, head_dim = source.store.shape
        self._allocate(heads, head_dim, source.store.dtype)
        self.store[:, :, :, :, :count] = source.store[:, :, :, :, :count]
        if source.scales is not None:
            self.scales[..., :count] = source.scales[..., :count]
        self.length = count

    def release(self) -> None:
        """Free the buffers now (the row is done); a mapping is unmapped at once."""
        self.keys, self.values, self.store = [], [], None
        self.key_scales, self.value_scales, self.scales = [], [], None

    def nbytes(self) -> int:
        """Bytes of the positions written so far, over all layers (an int8 cache's scales
        included)."""
        per_position = sum(k.shape[1] * k.shape[3] * k.element_size() for k in self.keys)
        per_position += sum(s.shape[1] * s.element_size() for s in self.key_scales)
        return 2 * per_position * self.length


@dataclass(frozen=True)
class Segment:
    """A row's place in the packed step: its cache and its ``count`` new tokens at
    ``start`` in the packed sequence."""

    cache: RowCache
    start: int
    count: int


class PackedStep:
    """The ``cache`` object of one packed forward: routes each row's new keys and values to
    its RowCache (``update``), and tells the attention which rows are where.

    ``native`` and ``attention_dtype`` come from the step engine's code path
    (server.engine.code_path): whether the C kernel may attend the decoding rows, and the
    dtype torch's attention computes in (None: ``attention_dtype`` of the query's).
    """

    def __init__(self, segments: list[Segment], native: bool = True,
                 attention_dtype: torch.dtype | None = None) -> None:
        self.segments = segments
        self.attention_dtype = attention_dtype
        # Each prefill chunk's causal mask, offset by what its row already holds: built once
        # per step here, not once per layer in the attention.
        self.masks = [_chunk_mask(seg.count, seg.cache.length) for seg in segments]
        # Decoding rows the C kernel attends, or None.
        self.native = NativeDecode.plan(segments) if native else None

    def _skipped(self, index: int) -> bool:
        return self.native is not None and index in self.native.indexes

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's new keys/values ([1, h, packed, d]) into its buffers."""
        for index, seg in enumerate(self.segments):
            if not self._skipped(index):  # the native attention writes its rows' itself
                _write(seg, key_states, value_states, layer_idx)
        return key_states, value_states

    def write_native(self, key_states: torch.Tensor, value_states: torch.Tensor,
                     layer_idx: int) -> None:
        """Write the native rows' keys/values as ``update`` does the others' (used when the
        native kernel declines a layer's tensors)."""
        for index in self.native.indexes if self.native is not None else ():
            _write(self.segments[index], key_states, value_states, layer_idx)

    def advance(self) -> None:
        """After the forward: each row's cache now holds its new tokens."""
        for seg in self.segments:
            seg.cache.length += seg.count


def _write(seg: Segment, key_states: torch.Tensor, value_states: torch.Tensor,
           layer: int) -> None:
    """Copy one row's new keys/values ([1, h, packed, d] at seg.start) into its cache (an
    int8 cache: quantised, server.engine.kv_int8, as the C kernel writes them)."""
    cache = seg.cache
    cache.ensure(layer, key_states)
    end = cache.length + seg.count
    new = slice(seg.start, seg.start + seg.count)
    if cache.scales is None:
        cache.keys[layer][:, :, cache.length:end] = key_states[:, :, new]
        cache.values[layer][:, :, cache.length:end] = value_states[:, :, new]
        return
    for states, stored, scales in ((key_states, cache.keys, cache.key_scales),
                                   (value_states, cache.values, cache.value_scales)):
        q, scale = kv_int8.quantize(states[:, :, new])
        stored[layer][:, :, cache.length:end] = q
        scales[layer][:, :, cache.length:end] = scale


def anonymous_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in a private anonymous mapping of its own: the kernel maps a
    page when it is first written and unmaps the whole when the tensor is freed, whatever
    the allocator's thresholds (glibc serves blocks under its adaptive mmap threshold, up to
    32 MB, from a heap it keeps)."""
    count = math.prod(shape)
    size = max(1, count * torch.empty(0, dtype=dtype).element_size())
    return torch.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=count).view(shape)


def _chunk_mask(count: int, held: int) -> torch.Tensor | None:
    """Causal mask of ``count`` new tokens after ``held`` cached ones (None for one token)."""
    if count == 1:
        return None
    return torch.arange(held + count).unsqueeze(0) <= torch.arange(count).unsqueeze(1) + held


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: object):
    """Attention of each row's queries over its own cache only; [1, packed, heads, dim].

    The step arrives as the ``packed_step`` keyword, which the model passes through."""
    step = kwargs.get("packed_step")
    if not isinstance(step, PackedStep):
        raise RuntimeError("packed attention needs the model called with packed_step=")
    layer = module.layer_idx
    if step.native is not None:
        if step.native.attend(query, key, value, layer, scaling):
            out = step.native.out  # [1, packed, heads, dim]: the native rows are written
            for index, (seg, mask) in enumerate(zip(step.segments, step.masks, strict=True)):
                if index not in step.native.indexes:
                    out[:, seg.start:seg.start + seg.count] = _segment_attention(
                        query, seg, mask, layer, scaling, step.attention_dtype).transpose(1, 2)
            return out, None
        step.write_native(key, value, layer)  # declined: torch attends these rows too
    outputs = [_segment_attention(query, seg, mask, layer, scaling, step.attention_dtype)
               for seg, mask in zip(step.segments, step.masks, strict=True)]
    return torch.cat(outputs, dim=2).transpose(1, 2).to(query.dtype), None


def _segment_attention(query: torch.Tensor, seg: Segment, mask: torch.Tensor | None,
                       layer: int, scaling: float | None,
                       compute: torch.dtype | None) -> torch.Tensor:
    """One row's queries over its cache (written already), [1, heads, count, dim], computed
    in ``compute`` (None: ``attention_dtype`` of the query's)."""
    compute = compute or attention_dtype(query.dtype)
    total = seg.cache.length + seg.count
    q = query[:, :, seg.start:seg.start + seg.count].to(compute)
    cache = seg.cache
    k = _widened(cache.keys[layer], total, compute, "keys",
                 cache.key_scales[layer] if cache.key_scales else None)
    v = _widened(cache.values[layer], total, compute, "values",
                 cache.value_scales[layer] if cache.value_scales else None)
    return functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scaling, enable_gqa=k.shape[1] != q.shape[1])


class NativeDecode:
    """The decoding rows of one packed step whose attention runs in the native kernel: rows
    with one new token and a cache already allocated in a dtype some variant running here
    reads (``native_ops.attention_caches``: bf16 with AVX-512 BF16, ``attention_bf16.c``;
    bf16, float16 or int8 (with its scales) with AVX2 + FMA + F16C, ``attention_avx2.c``).
    The query's dtype picks the variant per layer (``native_ops.attend_decode``); a pair none
    takes is declined, and torch attends it.

    Why: torch widened each row's whole 16-bit cache to float32 per layer and ran its
    attention over the copy; the kernel reads the cache once, where it lies, writes the new
    key and value itself, and attends every (row, kv head) pair in one OpenMP loop per layer.

    Grouped-query models (Llama, Qwen: fewer kv heads than query heads) go the same way: the
    caches hold kv heads, the queries may have any multiple of them, and each kv head is read
    once for its group of queries. Their keys arrive rotated (RoPE applied to q and k before
    the attention, by transformers or the lean forward), so the caches hold rotated keys.
    ``ENABLED`` turns it off for the tests that compare it with torch's attention.
    """

    ENABLED = True

    def __init__(self, segments: list[Segment], indexes: list[int]) -> None:
        self.indexes = frozenset(indexes)
        chosen = [segments[i] for i in indexes]
        # Checked once per step (server.engine.native_ops): every store's geometry, and each
        # row's length below its capacity; a bad one raises here, before any C runs.
        self.caches = native_ops.DecodeCaches([s.cache.store for s in chosen],
                                              [s.cache.length for s in chosen],
                                              [s.start for s in chosen],
                                              scales=[s.cache.scales for s in chosen])
        self.packed = sum(seg.count for seg in segments)
        self.out = torch.empty(0)

    @classmethod
    def plan(cls, segments: list[Segment]) -> NativeDecode | None:
        """The native part of a step over ``segments``, or None (no row qualifies)."""
        if not cls.ENABLED:
            return None
        readable = native_ops.attention_caches()  # empty where no variant runs here
        indexes = [i for i, seg in enumerate(segments) if seg.count == 1
                   and seg.cache.store is not None and seg.cache.store.dtype in readable]
        return cls(segments, indexes) if indexes else None

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               layer: int, scaling: float | None) -> bool:
        """Write the native rows' keys/values and attention output (into ``out``) for
        ``layer``; False when these tensors are outside what the kernel takes."""
        if query.shape[2:3] != (self.packed,):
            return False
        scale = query.shape[3] ** -0.5 if scaling is None else scaling
        try:
            self.out = native_ops.attend_decode(query, key, value, self.caches, layer, scale)
        except native_ops.Declined:
            return False
        return True


def attention_dtype(computed: torch.dtype) -> torch.dtype:
    """The dtype a row's attention runs in for a model computing in ``computed``: float32
    for bf16 models. torch's CPU attention in bf16 cost 168 / 343 / 998 us for one query
    over 70 / 300 / 900 positions (20 heads of 64), widened to float32 53 / 89 / 225 us
    (AMD EPYC Zen 4, 2 threads, python -m bench attention): a bf16 decode step of
    gpt2-large had spent 32 of its 125 ms in attention."""
    return torch.float32 if computed == torch.bfloat16 else computed


_scratch = threading.local()


def _widened(stored: torch.Tensor, total: int, dtype: torch.dtype, slot: str,
             scales: torch.Tensor | None = None) -> torch.Tensor:
    """``stored[:, :, :total]`` in ``dtype``: the view itself when it already is, else a copy
    into this thread's reusable ``slot`` buffer (one for keys, one for values); an int8 cache
    (``scales`` [1, h, capacity] given) dequantised into it (server.engine.kv_int8).

    Why a reused buffer: ``.to(dtype)`` allocated a fresh tensor per row and layer (up to
    4.5 MB, 576 of them per 8-row step of gpt2-large), and a float16-cache decode step took
    169-191 ms against 155 ms full width; widened into one buffer reused across rows and
    layers (it stays in cache), 131-136 against 120-148 ms (AMD EPYC Zen 4, 2 threads,
    python -m bench memory). Safe to reuse: the attention has consumed the previous
    row's copy before the next row is widened into it.
    """
    view = stored[:, :, :total]
    if view.dtype == dtype and scales is None:
        return view
    buffer = getattr(_scratch, slot, None)
    if (buffer is None or buffer.dtype != dtype or buffer.shape[1] != stored.shape[1]
            or buffer.shape[3] != stored.shape[3] or buffer.shape[2] < total):
        size = (1, stored.shape[1], max(total, stored.shape[2]), stored.shape[3])
        buffer = torch.empty(size, dtype=dtype)
        setattr(_scratch, slot, buffer)
    widened = buffer[:, :, :total]
    if scales is not None:
        return kv_int8.dequantize_into(widened, view, scales[:, :, :total])
    widened.copy_(view)
    return widened


def register() -> None:
    """Make ``ATTENTION_NAME`` available to every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention)
