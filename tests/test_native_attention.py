"""The native decode attention (server/engine/native/attention_bf16.c with AVX-512 BF16,
attention_avx2.c with AVX2 + FMA + F16C, via server.engine.row_cache): it computes what
torch's attention over the widened cache does, writes the new key and value itself, gives a
row the same output alone or beside other rows, leaves prefill chunks to torch, and falls back
to torch when it declines a layer's tensors; grouped-query caches (fewer kv heads than query
heads, as Llama and Qwen have) the same way. Each runs for the dtypes the server hands it:
bf16 queries over bf16 caches (a bfloat16 model), fp32 queries over fp16 caches (a float16
or int8 model, KV_DTYPE=auto), and either over int8 caches (KV_DTYPE=int8, whose new keys and
values the kernel quantises to the bytes torch writes); the step engine's greedy tokens are
torch's with the kernel on, for GPT-2 and a grouped-query Llama.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from server.engine import kv_int8, native_ops
from server.engine.decoding import GenerationRequest
from server.engine.model import resolve_source
from server.engine.quantize import conv1d_to_linear, quantize_float16
from server.engine.row_cache import NativeDecode, PackedStep, RowCache, Segment, packed_attention
from server.engine.step import StepEngine
from tests.conftest import MODELS_DIR

needs_native = pytest.mark.skipif(not native_ops.attention_variants(),
                                  reason=f"not run here: {native_ops.attention_unavailable()}")

HEADS, DIM, LAYERS = 4, 32, 2
BF16, F16, F32, I8 = torch.bfloat16, torch.float16, torch.float32, torch.int8
# (query, cache) dtypes as the server hands them: a bfloat16 model's, a float16 model's, and
# either with KV_DTYPE=int8.
SERVED = [pytest.param(BF16, BF16, id="bf16-bf16"), pytest.param(F32, F16, id="fp32-fp16"),
          pytest.param(F32, I8, id="fp32-int8"), pytest.param(BF16, I8, id="bf16-int8")]


def _runs(query: torch.dtype, cache: torch.dtype) -> None:
    """Skip unless a variant of the kernel here takes ``query`` over ``cache``."""
    if native_ops.attention_variant(query, cache) is None:
        pytest.skip(f"no decode attention here for {query} over {cache}: "
                    f"{native_ops.attention_unavailable()}")


def _caches(held: list[int], dtype: torch.dtype = torch.bfloat16,
            kv_heads: int = HEADS) -> list[RowCache]:
    """Rows whose caches hold ``held`` positions of random keys/values, room to spare."""
    caches = []
    for n in held:
        if dtype == I8:  # KV_DTYPE=int8: quantised keys and values, and their scales
            cache = RowCache(n + 8, "int8", LAYERS)
            cache.ensure(0, torch.empty(1, kv_heads, 1, DIM))
            q, scale = kv_int8.quantize(torch.randn(cache.store.shape))
            cache.store.copy_(q)
            cache.scales.copy_(scale)
        else:
            cache = RowCache(n + 8, "model", LAYERS)
            cache.ensure(0, torch.empty(1, kv_heads, 1, DIM, dtype=dtype))
            cache.store.copy_(torch.randn(cache.store.shape).to(dtype))
        cache.length = n
        caches.append(cache)
    return caches


def _qkv(tokens: int, dtype: torch.dtype = BF16) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
    """Queries, keys, values [1, heads, tokens, dim] as views of one packed projection, the
    way GPT-2's attention splits its c_attn output."""
    qkv = torch.randn(1, tokens, 3 * HEADS * DIM).to(dtype)
    q, k, v = qkv.split(HEADS * DIM, dim=2)
    return tuple(t.view(1, tokens, HEADS, DIM).transpose(1, 2) for t in (q, k, v))


def _gqa(tokens: int, kv_heads: int,
         dtype: torch.dtype = BF16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries [1, heads, tokens, dim] and keys, values [1, kv_heads, tokens, dim] the way
    transformers' Llama attention passes them: q and k rotated (new tensors), v a view."""
    q = torch.randn(1, HEADS, tokens, DIM).to(dtype)
    k = torch.randn(1, kv_heads, tokens, DIM).to(dtype)
    v = torch.randn(1, tokens, kv_heads * DIM).to(dtype)
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
    ``advance`` is not called here), an int8 cache's scales after them."""
    held = cache.store[layer, :, :, :, :cache.length + 1].flatten().tolist()
    if cache.scales is not None:
        held += cache.scales[layer, :, :, :, :cache.length + 1].flatten().tolist()
    return held


def _same(query: torch.dtype, got: torch.Tensor, want: torch.Tensor) -> None:
    """The kernel's outputs against torch's: fp32 sums in another order (fp32 outputs: a few
    ulps), each output rounded once to bf16 (bf16 outputs: within its rounding)."""
    assert got.dtype == want.dtype == query
    tolerance = 1e-5 if query == F32 else 1e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)


@needs_native
@pytest.mark.parametrize(("query", "cache"), SERVED)
def test_decode_attention_matches_torch_and_writes_the_new_key_and_value(
        query: torch.dtype, cache: torch.dtype) -> None:
    _runs(query, cache)
    torch.manual_seed(0)
    caches = _caches([0, 5, 37], cache)
    qkv = _qkv(3, query)
    reference = _clone(caches)
    got = _attend(caches, [1, 1, 1], qkv, 1, native=True)
    want = _attend(reference, [1, 1, 1], qkv, 1, native=False)
    _same(query, got, want)
    for mine, theirs in zip(caches, reference, strict=True):
        assert _held(mine, 1) == _held(theirs, 1)  # the same key and value written


@needs_native
@pytest.mark.parametrize(("query", "cache"), SERVED)
def test_a_rows_attention_is_the_same_alone_and_beside_other_rows(
        query: torch.dtype, cache: torch.dtype) -> None:
    _runs(query, cache)
    torch.manual_seed(1)
    caches = _caches([9, 120, 3], cache)
    qkv = _qkv(3, query)
    together = _attend(_clone(caches), [1, 1, 1], qkv, 0, native=True)
    q, k, v = (t[:, :, 1:2] for t in qkv)
    alone = _attend(_clone(caches[1:2]), [1], (q, k, v), 0, native=True)
    assert torch.equal(alone[0, 0], together[0, 1])


@needs_native
@pytest.mark.parametrize(("query", "cache"), SERVED)
def test_a_prefill_chunk_beside_decoding_rows_is_left_to_torch(
        query: torch.dtype, cache: torch.dtype) -> None:
    _runs(query, cache)
    torch.manual_seed(2)
    caches = _caches([12, 4], cache)
    qkv = _qkv(1 + 6, query)
    mixed = _attend(_clone(caches), [1, 6], qkv, 1, native=True)
    plain = _attend(_clone(caches), [1, 6], qkv, 1, native=False)
    assert torch.equal(mixed[0, 1:], plain[0, 1:])  # the chunk: torch's own result
    _same(query, mixed[0, :1], plain[0, :1])


@needs_native
@pytest.mark.parametrize(("query", "cache"), SERVED)
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_decoding_matches_torch_alone_and_beside_a_prefill_chunk(
        kv_heads: int, query: torch.dtype, cache: torch.dtype) -> None:
    """Caches of fewer kv heads than the queries' (4 queries per kv head, or 2): the kernel
    attends the decoding rows as torch's enable_gqa attention does, writes their new key and
    value, and leaves the chunk to torch."""
    _runs(query, cache)
    torch.manual_seed(10 + kv_heads)
    caches = _caches([0, 33, 5, 12], cache, kv_heads=kv_heads)
    qkv = _gqa(3 + 6, kv_heads, query)
    counts = [1, 1, 1, 6]
    reference = _clone(caches)
    step = _step(_clone(caches), counts, [0, 1, 2, 3], native=True)
    assert step.native is not None and step.native.indexes == {0, 1, 2}
    got = _attend(caches, counts, qkv, 1, native=True)
    want = _attend(reference, counts, qkv, 1, native=False)
    assert torch.equal(got[0, 3:], want[0, 3:])  # the chunk: torch's own result
    _same(query, got, want)
    for mine, theirs in zip(caches, reference, strict=True):
        assert _held(mine, 1) == _held(theirs, 1)
    alone = _attend(_clone(caches[1:2]), [1], tuple(t[:, :, 1:2] for t in qkv), 1,
                    native=True)
    assert torch.equal(alone[0, 0], got[0, 1])


@needs_native
@pytest.mark.parametrize(("query", "cache"), SERVED)
def test_a_declined_layer_is_attended_by_torch_with_the_cache_written(
        query: torch.dtype, cache: torch.dtype) -> None:
    """Keys whose head dim is not contiguous (every other element of a wider buffer): the
    kernel declines, the rows' keys and values are still written and torch attends them."""
    _runs(query, cache)
    torch.manual_seed(3)
    caches = _caches([7, 30], cache)
    q, k, v = _qkv(2, query)
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


@pytest.mark.parametrize("dtype", [F32, F16, BF16, I8])
def test_a_cache_is_planned_for_the_kernel_only_where_a_variant_here_reads_it(
        dtype: torch.dtype) -> None:
    """float32 caches never (no variant reads them); fp16 and int8 with the AVX2 variant (e.g.
    Zen 3); bf16 with either."""
    caches = _caches([4], dtype)
    planned = PackedStep([Segment(caches[0], 0, 1)]).native is not None
    assert planned == (dtype in native_ops.attention_caches())
    assert dtype != F32 or not planned
    if "avx2" in native_ops.attention_variants():
        assert planned == (dtype != F32)


def test_a_row_without_a_cache_yet_is_never_planned_for_the_kernel() -> None:
    """A one-token prompt's first step: its buffers are allocated by update, in torch."""
    empty = RowCache(4, "model", LAYERS)
    assert PackedStep([Segment(empty, 0, 1)]).native is None


def _tiny_llama(dtype: torch.dtype = BF16) -> torch.nn.Module:
    """A seeded Llama of grouped-query attention in ``dtype``: 6 query heads over 2 kv heads
    of 32, 2 layers (transformers' own model; RoPE applied to q and k before the attention).

    Seed and weight scale chosen so that at every greedy step of ``_greedy``'s prompts the
    best logit leads the next by >= 1.7% (several bf16 steps): the kernel's and torch's
    attention round differently, and a near-tie would flip on that, not on a bug."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(9)
    config = LlamaConfig(vocab_size=96, hidden_size=192, intermediate_size=320,
                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                         max_position_embeddings=128, initializer_range=0.2,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(dtype).eval()


def _tiny_gpt2(precision: str) -> torch.nn.Module:
    """synthetic:tiny as the server serves it at ``precision``: float16 (fbgemm's fp16
    linears, computed in float32) or bfloat16."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return quantize_float16(model) if precision == "float16" else model.to(BF16)


def _greedy(model: torch.nn.Module, prompts: list[list[int]], native: bool,
            kv_dtype: str = "model") -> list[list[int]]:
    """Each prompt's 10 greedy tokens: alone, then the last prompt joining the others after 4
    steps (the step engine's decode, caches as ``kv_dtype`` says)."""
    NativeDecode.ENABLED = native
    try:
        engine = StepEngine(model, 0, ignore_eos=True, prefill_chunk=8, kv_dtype=kv_dtype)
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


@pytest.fixture
def kernel_calls(monkeypatch) -> list[tuple[bool, str | None]]:
    """Each NativeDecode.attend of the test: (attended in the kernel, the variant that ran)."""
    calls: list[tuple[bool, str | None]] = []
    attend, choose = NativeDecode.attend, native_ops._attention_variant
    chosen: list[str] = []

    def choosing(*args):
        chosen.append(choose(*args))
        return chosen[-1]

    def counted(self, *args):
        chosen.clear()
        calls.append((attend(self, *args), chosen[-1] if chosen else None))
        return calls[-1][0]

    monkeypatch.setattr(native_ops, "_attention_variant", choosing)
    monkeypatch.setattr(NativeDecode, "attend", counted)
    return calls


def _all_in_the_kernel(calls: list[tuple[bool, str | None]], query: torch.dtype,
                       cache: torch.dtype) -> None:
    """Every decoding layer attended by the variant chosen here for these dtypes (the AVX2
    one on an AVX2-only CPU), none declined."""
    assert calls and {call for call in calls} == {
        (True, native_ops.attention_variant(query, cache))}


@needs_native
@pytest.mark.parametrize(("dtype", "kv_dtype", "cache"), [
    pytest.param(BF16, "model", BF16, id="bf16"),
    pytest.param(F32, "float16", F16, id="fp32-fp16-cache"),
    pytest.param(F32, "int8", I8, id="fp32-int8-cache")])
def test_a_grouped_query_llama_decodes_the_same_greedy_tokens_with_the_kernel(
        kernel_calls, dtype: torch.dtype, kv_dtype: str, cache: torch.dtype) -> None:
    """transformers' Llama, 3 queries per kv head, through the step engine: the kernel attends
    its decoding rows (counted) and the greedy tokens are torch's, alone and batched; a bf16
    model over bf16 caches, and a float32 one over float16 caches (KV_DTYPE=float16) or int8
    caches (KV_DTYPE=int8)."""
    _runs(dtype, cache)
    model = _tiny_llama(dtype)
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 9)]
    with_kernel = _greedy(model, prompts, True, kv_dtype)
    _all_in_the_kernel(kernel_calls, dtype, cache)
    assert with_kernel == _greedy(model, prompts, False, kv_dtype)


@needs_native
@pytest.mark.parametrize(("precision", "query", "cache"), [
    pytest.param("float16", F32, F16, id="float16"),
    pytest.param("bfloat16", BF16, BF16, id="bfloat16")])
def test_gpt2_decodes_the_same_greedy_tokens_with_the_kernel(
        tiny_model, kernel_calls, precision: str, query: torch.dtype,
        cache: torch.dtype) -> None:
    """synthetic:tiny served as DTYPE=float16 (fp16 linears computed in float32, float16
    caches under KV_DTYPE=auto) or bfloat16 (bf16 caches), through the step engine and its
    lean GPT-2 forward: the code path offers the kernel, it attends every decoding layer and
    the greedy tokens are torch's, alone and with a row joining mid-generation."""
    _runs(query, cache)
    model = _tiny_gpt2(precision)
    engine = StepEngine(model, 0, kv_dtype="auto")
    assert (engine.path.attention, engine.path.cache_dtype) == ("native_decode", str(cache)[6:])
    # Prompts whose every greedy step's best logit leads the next by >= 0.031 (4 bf16 steps
    # at tiny's logits of ~1; bf16 model, torch's attention): a kernel that rounds otherwise
    # than torch does not flip a near-tie, a wrong one does.
    prompts = [list(range(start, start + n)) for start, n in ((779, 3), (819, 17), (859, 9))]
    with_kernel = _greedy(model, prompts, True, engine.path.kv_dtype)
    _all_in_the_kernel(kernel_calls, query, cache)
    assert with_kernel == _greedy(model, prompts, False, engine.path.kv_dtype)
