"""The native decode attention (server/engine/native/attention_bf16.c via
server.engine.row_cache): it
computes what torch's attention over the widened cache does, writes the new key and value
itself, gives a row the same output alone or beside other rows, leaves prefill chunks to
torch, and falls back to torch when it declines a layer's tensors; grouped-query caches
(fewer kv heads than query heads, as Llama and Qwen have) the same way.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from server.engine import native_gemm
from server.engine.decoding import GenerationRequest
from server.engine.row_cache import NativeDecode, PackedStep, RowCache, Segment, packed_attention
from server.engine.step import StepEngine

needs_native = pytest.mark.skipif(not native_gemm.available(),
                                  reason=f"not run here: {native_gemm.unavailable()}")

HEADS, DIM, LAYERS = 4, 32, 2


def _caches(held: list[int], dtype: torch.dtype = torch.bfloat16,
            kv_heads: int = HEADS) -> list[RowCache]:
    """Rows whose caches hold ``held`` positions of random keys/values, room to spare."""
    caches = []
    for n in held:
        cache = RowCache(n + 8, "model", LAYERS)
        cache.ensure(0, torch.empty(1, kv_heads, 1, DIM, dtype=dtype))
        cache.store.copy_(torch.randn(cache.store.shape).to(dtype))
        cache.length = n
        caches.append(cache)
    return caches


def _qkv(tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys, values [1, heads, tokens, dim] as views of one packed projection, the
    way GPT-2's attention splits its c_attn output."""
    qkv = torch.randn(1, tokens, 3 * HEADS * DIM).to(torch.bfloat16)
    q, k, v = qkv.split(HEADS * DIM, dim=2)
    return tuple(t.view(1, tokens, HEADS, DIM).transpose(1, 2) for t in (q, k, v))


def _gqa(tokens: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries [1, heads, tokens, dim] and keys, values [1, kv_heads, tokens, dim] the way
    transformers' Llama attention passes them: q and k rotated (new tensors), v a view."""
    q = torch.randn(1, HEADS, tokens, DIM).to(torch.bfloat16)
    k = torch.randn(1, kv_heads, tokens, DIM).to(torch.bfloat16)
    v = torch.randn(1, tokens, kv_heads * DIM).to(torch.bfloat16)
    return q, k, v.view(1, tokens, kv_heads, DIM).transpose(1, 2)


def _attend(caches: list[RowCache], counts: list[int], qkv: tuple, layer: int,
            native: bool) -> torch.Tensor:
    """One layer of a packed step over ``caches`` (each feeding ``counts`` tokens)."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    step = _step(caches, counts, starts, native)
    q, k, v = qkv
    step.update(k, v, layer)
    out, _ = packed_attention(SimpleNamespace(layer_idx=layer), q, k, v, None,
                              packed_step=step)
    return out


def _step(caches, counts, starts, native: bool) -> PackedStep:
    NativeDecode.ENABLED = native
    try:
        return PackedStep([Segment(c, s, n) for c, s, n in zip(caches, starts, counts,
                                                                 strict=True)])
    finally:
        NativeDecode.ENABLED = True


def _clone(caches: list[RowCache]) -> list[RowCache]:
    copies = []
    for cache in caches:
        copy = RowCache(cache.capacity, "model", LAYERS)
        copy.copy_prefix(cache, cache.length)
        copies.append(copy)
    return copies


def _held(cache: RowCache, layer: int) -> list[float]:
    """A layer's keys and values up to and including the new position (the step's
    ``advance`` is not called here)."""
    return cache.store[layer, :, :, :, :cache.length + 1].flatten().tolist()


@needs_native
def test_decode_attention_matches_torch_and_writes_the_new_key_and_value() -> None:
    torch.manual_seed(0)
    caches = _caches([0, 5, 37])
    qkv = _qkv(3)
    reference = _clone(caches)
    got = _attend(caches, [1, 1, 1], qkv, 1, native=True)
    want = _attend(reference, [1, 1, 1], qkv, 1, native=False)
    # fp32 sums in another order, each output rounded once to bf16: within bf16's rounding.
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    for mine, theirs in zip(caches, reference, strict=True):
        assert _held(mine, 1) == _held(theirs, 1)  # the same key and value written


@needs_native
def test_a_rows_attention_is_the_same_alone_and_beside_other_rows() -> None:
    torch.manual_seed(1)
    caches = _caches([9, 120, 3])
    qkv = _qkv(3)
    together = _attend(_clone(caches), [1, 1, 1], qkv, 0, native=True)
    q, k, v = (t[:, :, 1:2] for t in qkv)
    alone = _attend(_clone(caches[1:2]), [1], (q, k, v), 0, native=True)
    assert torch.equal(alone[0, 0], together[0, 1])


@needs_native
def test_a_prefill_chunk_beside_decoding_rows_is_left_to_torch() -> None:
    torch.manual_seed(2)
    caches = _caches([12, 4])
    qkv = _qkv(1 + 6)
    mixed = _attend(_clone(caches), [1, 6], qkv, 1, native=True)
    plain = _attend(_clone(caches), [1, 6], qkv, 1, native=False)
    assert torch.equal(mixed[0, 1:], plain[0, 1:])  # the chunk: torch's own result
    torch.testing.assert_close(mixed[0, :1].float(), plain[0, :1].float(), rtol=1e-2,
                               atol=1e-2)


@needs_native
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_decoding_matches_torch_alone_and_beside_a_prefill_chunk(
        kv_heads: int) -> None:
    """Caches of fewer kv heads than the queries' (4 queries per kv head, or 2): the kernel
    attends the decoding rows as torch's enable_gqa attention does, writes their new key and
    value, and leaves the chunk to torch."""
    torch.manual_seed(10 + kv_heads)
    caches = _caches([0, 33, 5, 12], kv_heads=kv_heads)
    qkv = _gqa(3 + 6, kv_heads)
    counts = [1, 1, 1, 6]
    reference = _clone(caches)
    step = _step(_clone(caches), counts, [0, 1, 2, 3], native=True)
    assert step.native is not None and step.native.indexes == {0, 1, 2}
    got = _attend(caches, counts, qkv, 1, native=True)
    want = _attend(reference, counts, qkv, 1, native=False)
    assert torch.equal(got[0, 3:], want[0, 3:])  # the chunk: torch's own result
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    for mine, theirs in zip(caches, reference, strict=True):
        assert _held(mine, 1) == _held(theirs, 1)
    alone = _attend(_clone(caches[1:2]), [1], tuple(t[:, :, 1:2] for t in qkv), 1,
                    native=True)
    assert torch.equal(alone[0, 0], got[0, 1])


@needs_native
def test_a_declined_layer_is_attended_by_torch_with_the_cache_written() -> None:
    """Keys whose head dim is not contiguous (every other element of a wider buffer): the
    kernel declines, the rows' keys and values are still written and torch attends them."""
    torch.manual_seed(3)
    caches = _caches([7, 30])
    q, k, v = _qkv(2)
    strided = torch.empty(*k.shape[:3], 2 * DIM, dtype=k.dtype)[..., ::2]
    strided.copy_(k)
    qkv = (q, strided, v)
    step = _step(caches, [1, 1], [0, 1], native=True)
    assert step.native is not None and not step.native.attend(*qkv, 0, None)
    reference = _clone(caches)
    got = _attend(caches, [1, 1], qkv, 0, native=True)
    want = _attend(reference, [1, 1], qkv, 0, native=False)
    assert torch.equal(got, want)
    for mine, theirs in zip(caches, reference, strict=True):
        assert _held(mine, 0) == _held(theirs, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_caches_not_in_bf16_are_never_planned_for_the_kernel(dtype: torch.dtype) -> None:
    caches = _caches([4], dtype)
    assert PackedStep([Segment(caches[0], 0, 1)]).native is None


def test_a_row_without_a_cache_yet_is_never_planned_for_the_kernel() -> None:
    """A one-token prompt's first step: its buffers are allocated by update, in torch."""
    empty = RowCache(4, "model", LAYERS)
    assert PackedStep([Segment(empty, 0, 1)]).native is None


def _tiny_llama() -> torch.nn.Module:
    """A seeded bf16 Llama of grouped-query attention: 6 query heads over 2 kv heads of 32,
    2 layers (transformers' own model; RoPE applied to q and k before the attention).

    Seed and weight scale chosen so that at every greedy step of ``_greedy``'s prompts the
    best logit leads the next by >= 1.7% (several bf16 steps): the kernel's and torch's
    attention round differently, and a near-tie would flip on that, not on a bug."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(9)
    config = LlamaConfig(vocab_size=96, hidden_size=192, intermediate_size=320,
                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                         max_position_embeddings=128, initializer_range=0.2,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def _greedy(model: torch.nn.Module, prompts: list[list[int]], native: bool) -> list[list[int]]:
    """Each prompt's 10 greedy tokens: alone, then the last prompt joining the others after 4
    steps (the step engine's decode through model(...), caches in bf16)."""
    NativeDecode.ENABLED = native
    try:
        engine = StepEngine(model, 0, ignore_eos=True, prefill_chunk=8, kv_dtype="model")
        requests_ = [GenerationRequest(prompt, 10) for prompt in prompts]
        tokens = []
        for request in requests_:
            row = engine.new_row(request)
            while row.finish_reason is None:
                engine.step([row])
            tokens.append(row.tokens)
        rows = [engine.new_row(r) for r in requests_[:-1]]
        for _ in range(4):
            engine.step(rows)
        rows.append(engine.new_row(requests_[-1]))
        while any(r.finish_reason is None for r in rows):
            engine.step(rows)
        return [*tokens, *(row.tokens for row in rows)]
    finally:
        NativeDecode.ENABLED = True


@needs_native
def test_a_grouped_query_llama_decodes_the_same_greedy_tokens_with_the_kernel(
        monkeypatch) -> None:
    """transformers' Llama, 3 queries per kv head, through the step engine: the kernel attends
    its decoding rows (counted) and the greedy tokens are torch's, alone and batched."""
    attended = []
    attend = NativeDecode.attend

    def counted(self, *args):
        attended.append(attend(self, *args))
        return attended[-1]

    monkeypatch.setattr(NativeDecode, "attend", counted)
    model = _tiny_llama()
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 9)]
    with_kernel = _greedy(model, prompts, native=True)
    assert attended and all(attended)  # every decoding layer in the kernel, none declined
    assert with_kernel == _greedy(model, prompts, native=False)
