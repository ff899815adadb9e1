"""server.engine.native_ops: every operation checks its tensors and the cache geometry before
any C runs (these tests run on any CPU: the library is never reached), and, where the CPU has
AVX-512 BF16, each kernel computes torch's float math on bf16 operands at odd shapes (rows 1,
3, 7; widths not a multiple of 32; 3 heads; grouped-query caches of 1, 2, 3 kv heads serving
groups of 2, 4, 6 queries), within bf16 rounding.

The decode attention's AVX2 variant (attention_avx2.c: AVX2 + FMA + F16C, e.g. AMD Zen 3, and
every AVX-512 CPU too) is called by name and checked the same way over fp16 and bf16 caches
with fp32 and bf16 queries: kv heads 1-3, groups 1-6, head dims 16-256, lengths 0, 1, odd and
across its 32-position tiles; the new key and value rounded into the cache's dtype as torch's
copy rounds them, and nothing else of the store touched.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from server.engine import native_ops
from server.engine.native_ops import DecodeCaches, GPT2Scratch

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
runs_here = pytest.mark.skipif(not native_ops.available(),
                               reason=f"native kernels do not run here: {native_ops.unavailable()}")
avx2_here = pytest.mark.skipif("avx2" not in native_ops.attention_variants(),
                               reason=f"the AVX2 decode attention does not run here: "
                                      f"{native_ops.attention_unavailable()}")
# (query, cache) dtypes: fp32 over fp16 (a float16 or int8 model, KV_DTYPE=auto), bf16 over
# bf16 (a bfloat16 model) are what the server hands it; the other two pairs it takes as well.
PAIRS = [(F32, F16), (BF16, BF16), (F32, BF16), (BF16, F16)]
PAIR_IDS = ["fp32-fp16", "bf16-bf16", "fp32-bf16", "bf16-fp16"]


@pytest.fixture
def no_library(monkeypatch):
    """Fail the test if an operation reaches the library: its checks must come first."""
    def reached() -> None:
        raise AssertionError("the library was reached before the checks failed")
    monkeypatch.setattr(native_ops, "_lib", reached)
    monkeypatch.setattr(native_ops, "_variant_lib", reached)
    monkeypatch.setattr(native_ops, "_attention_lib", reached)


def _store(layers: int = 2, heads: int = 3, capacity: int = 9, dim: int = 16,
           dtype: torch.dtype = BF16) -> torch.Tensor:
    """A row cache's store, as server.engine.row_cache.RowCache allocates it (``heads``: the
    kv heads it holds)."""
    return torch.randn(layers, 2, 1, heads, capacity, dim).to(dtype)


def _qkv(tokens: int, heads: int = 3, dim: int = 16) -> tuple[torch.Tensor, ...]:
    """q, k, v [1, heads, tokens, dim] as views of one packed projection (GPT-2's c_attn)."""
    qkv = torch.randn(1, tokens, 3 * heads * dim).to(BF16)
    return tuple(t.view(1, tokens, heads, dim).transpose(1, 2)
                 for t in qkv.split(heads * dim, dim=2))


def _gqa(tokens: int, heads: int, kv_heads: int, dim: int,
         dtype: torch.dtype = BF16) -> tuple[torch.Tensor, ...]:
    """q [1, heads, tokens, dim] and k, v [1, kv_heads, tokens, dim] as a Llama-family layer
    hands them to the attention: q and k rotated (RoPE makes new contiguous tensors), v a
    view of its projection."""
    q = torch.randn(1, heads, tokens, dim).to(dtype)
    k = torch.randn(1, kv_heads, tokens, dim).to(dtype)
    v = torch.randn(1, tokens, kv_heads * dim).to(dtype).view(1, tokens, kv_heads, dim)
    return q, k, v.transpose(1, 2)


# -- checks: raise before the library (any CPU) -------------------------------------------


@pytest.mark.parametrize(("stores", "lens", "says"), [
    ([_store(capacity=9)], [9], "holds 9 of 9 positions"),      # lens == caps: no room
    ([_store(capacity=9)], [12], "holds 12 of 9 positions"),    # past the end
    ([_store(capacity=9)], [-1], "holds -1 of 9"),
    ([_store(), _store(heads=4)], [0, 0], r"expected \(2, 2, 1, 3, capacity, 16\)"),
    ([_store(), _store(layers=1)], [0, 0], "expected"),
    ([_store(), _store(dim=32)], [0, 0], "expected"),
    ([_store(dtype=F32)], [0], "row 0's cache store: dtype torch.float32, the decode attention "
                               "reads torch.bfloat16, torch.float16 or torch.int8 caches"),
    ([_store(), _store(dtype=F16)], [0, 0], "row 1's cache store: dtype torch.float16, this "
                                            "kernel takes torch.bfloat16"),
    ([_store()[:, :, :, :, :4]], [0], "not contiguous"),
    ([torch.zeros(2, 2, 3, 9, 16, dtype=BF16)], [0], "store is"),
    ([_store(dim=24)], [0], "head dim = 24"),
    ([_store(dim=272)], [0], "head dim = 272"),
], ids=["full", "past-end", "negative", "heads", "layers", "dim", "dtype", "mixed-dtypes",
        "strided", "5-d", "dim-24", "dim-272"])
def test_an_out_of_bounds_cache_geometry_raises(no_library, stores, lens, says) -> None:
    with pytest.raises(ValueError, match=says):
        DecodeCaches(stores, lens, list(range(len(stores))))


def test_token_indexes_must_be_distinct_and_one_per_row(no_library) -> None:
    with pytest.raises(ValueError, match="distinct"):
        DecodeCaches([_store(), _store()], [1, 2], [0, 0])
    with pytest.raises(ValueError, match="one of each per row"):
        DecodeCaches([_store(), _store()], [1], [0, 1])


@pytest.mark.parametrize(("change", "says"), [
    ({"layer": 2}, "layer 2 of caches holding 2"),
    ({"layer": -1}, "layer -1"),
    ({"heads": 4}, "the caches hold 3 kv heads of 16, the keys and values 4 of 16"),
    ({"dim": 32}, "the keys and values 3 of 32"),
    ({"tokens": 2}, "token index 2 of 2 tokens"),
    ({"dtype": F16}, "does not take these tensors.*not CPU tensors of one dtype of "
                     "torch.bfloat16, torch.float32"),
    ({"value_dtype": F32}, r"\['torch.bfloat16', 'torch.bfloat16', 'torch.float32'\]"),
    ({"scale": float("nan")}, "scale nan"),
    ({"variant": "sse"}, "attention variant 'sse': use one of avx512_bf16, avx2"),
    ({"variant": "avx512_bf16", "dtype": F32},
     "attention variant avx512_bf16: takes torch.bfloat16 over torch.bfloat16, not "
     r"torch.float32 queries over torch.(bfloat|float)16 caches"),
])
@pytest.mark.parametrize("cache", [BF16, F16])
def test_attention_checks_its_tensors_against_the_caches(no_library, change, says,
                                                         cache: torch.dtype) -> None:
    caches = DecodeCaches([_store(dtype=cache) for _ in range(3)], [0, 4, 8], [0, 1, 2])
    q, k, v = _qkv(change.get("tokens", 3), change.get("heads", 3), change.get("dim", 16))
    if "dtype" in change:
        q, k, v = (t.to(change["dtype"]) for t in (q, k, v))
    if "value_dtype" in change:
        v = v.to(change["value_dtype"])
    with pytest.raises(ValueError, match=says):
        native_ops.attend_decode(q, k, v, caches, change.get("layer", 0),
                                 change.get("scale", 0.25), change.get("variant"))


@pytest.mark.parametrize(("heads", "kv_heads", "says"), [
    (5, 3, "query heads = 5: must be a multiple of the caches' 3 kv heads"),
    (4, 2, "the caches hold 3 kv heads of 16, the keys and values 2 of 16"),
    (6, 6, "the caches hold 3 kv heads of 16, the keys and values 6 of 16"),
], ids=["not-a-multiple", "fewer-kv-heads", "more-kv-heads"])
def test_grouped_query_heads_must_fit_the_caches(no_library, heads, kv_heads, says) -> None:
    caches = DecodeCaches([_store(), _store()], [0, 4], [0, 1])  # 3 kv heads
    with pytest.raises(ValueError, match=says):
        native_ops.attend_decode(*_gqa(2, heads, kv_heads, 16), caches, 0, 0.25)


def test_attention_declines_what_the_kernel_does_not_take() -> None:
    q, k, v = _qkv(3)
    assert native_ops.attention_declines(q, k, v) is None
    assert native_ops.attention_declines(q.contiguous(), k, v) is None  # each its own strides
    assert native_ops.attention_declines(*_gqa(3, 6, 2, 16)) is None  # grouped-query
    assert "strides" in native_ops.attention_declines(q, k, torch.randn(1, 3, 3, 32)
                                                       .to(BF16)[..., ::2])
    assert "shapes" in native_ops.attention_declines(q, k[:, :2], v)
    assert "shapes" in native_ops.attention_declines(q, k[:, :, :2], v[:, :, :2])
    assert "head dim 24" in native_ops.attention_declines(*_qkv(3, dim=24))


@pytest.mark.parametrize(("call", "says"), [
    (lambda: native_ops.pack_vnni(torch.zeros(24, 8, dtype=BF16)), "outputs = 24"),
    (lambda: native_ops.pack_vnni(torch.zeros(16, 7, dtype=BF16)), "inputs = 7"),
    (lambda: native_ops.pack_vnni(torch.zeros(16, 8)), "dtype torch.float32"),
    (lambda: native_ops.gemm(torch.zeros(3, 10, dtype=BF16), torch.zeros(16, 8, dtype=BF16),
                             None), r"x: shape \(3, 10\), expected \[rows, 8\]"),
    (lambda: native_ops.gemm(torch.zeros(8, 3, dtype=BF16).T, torch.zeros(16, 8, dtype=BF16),
                             None), "x: not contiguous"),
    (lambda: native_ops.gemm(torch.zeros(3, 8, dtype=BF16), torch.zeros(16, 8, dtype=BF16),
                             torch.zeros(15, dtype=BF16)), r"bias: shape \(15,\)"),
    (lambda: native_ops.gemm(torch.zeros(3, 8, dtype=BF16), torch.zeros(20, 8, dtype=BF16),
                             None), "outputs = 20"),
], ids=["outputs", "inputs", "dtype", "widths", "strided", "bias", "unpacked"])
def test_gemm_checks_dtype_shape_and_contiguity(no_library, call, says) -> None:
    with pytest.raises(ValueError, match=says):
        call()


def _gpt2_weights(width: int, hidden: int) -> list[torch.Tensor]:
    shapes = [(width,), (width,), (3 * width, width), (3 * width,), (width, width), (width,),
              (width,), (width,), (hidden, width), (hidden,), (width, hidden), (width,)]
    return [(torch.randn(*shape) * (0.2 if len(shape) == 2 else 1)).to(BF16)
            for shape in shapes]


def test_gpt2_operations_check_weights_scratch_and_geometry(no_library) -> None:
    weights = _gpt2_weights(48, 80)
    with pytest.raises(ValueError, match=r"fc_w: shape \(80, 48\), expected \(96, 48\)"):
        native_ops.gpt2_block(48, 96, weights)
    with pytest.raises(ValueError, match="ln1_b: expected a tensor"):
        native_ops.gpt2_block(48, 80, [weights[0], None, *weights[2:]])
    with pytest.raises(ValueError, match="not a whole number of 5 heads"):
        GPT2Scratch(48, 80, 5, 1e-5, 0.25, 3)
    with pytest.raises(ValueError, match="head dim = 8"):
        GPT2Scratch(48, 80, 6, 1e-5, 0.25, 3)
    block = native_ops.gpt2_block(48, 80, weights)
    scratch = GPT2Scratch(48, 80, 3, 1e-5, 0.25, 3)
    with pytest.raises(ValueError, match=r"hidden states: shape \(2, 48\)"):
        native_ops.gpt2_attn_in(block, scratch, torch.zeros(2, 48, dtype=BF16))
    blocks = (native_ops.Block * 2)(block, block)
    hidden = torch.zeros(3, 48, dtype=BF16)
    for caches, says in [
        (DecodeCaches([_store(), _store()], [0, 0], [0, 1]), "2 cached rows"),
        (DecodeCaches([_store(heads=4)] * 3, [0, 0, 0], [0, 1, 2]), "the caches hold 4 kv heads"),
        (DecodeCaches([_store(layers=1)] * 3, [0, 0, 0], [0, 1, 2]), "2 layers, caches of 1"),
        (DecodeCaches([_store(dtype=F16)] * 3, [0, 0, 0], [0, 1, 2]),
         "cache dtype torch.float16: GPT-2's C layers keep bf16 caches"),
    ]:
        with pytest.raises(ValueError, match=says):
            native_ops.gpt2_decode(blocks, scratch, hidden, caches)


def test_without_the_library_an_operation_names_why(monkeypatch) -> None:
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: {"avx2", "avx512f"})
    native_ops.library.cache_clear()
    try:
        with pytest.raises(native_ops.NativeError, match="avx512bw, avx512vl, avx512_bf16"):
            native_ops.gemm(torch.zeros(3, 8, dtype=BF16), torch.zeros(16, 8, dtype=BF16), None)
    finally:
        native_ops.library.cache_clear()


def test_the_attention_variant_is_the_first_that_runs_here_and_takes_the_dtypes(
        monkeypatch) -> None:
    """AVX-512 BF16 first for bf16 over bf16, AVX2 for the pairs only it takes; on a CPU with
    neither, a call names the features and no variant is offered."""
    everything = ("avx512_bf16", "avx2")
    assert native_ops.attention_variant(BF16, BF16, everything) == "avx512_bf16"
    assert native_ops.attention_variant(F32, F16, everything) == "avx2"
    assert native_ops.attention_variant(BF16, BF16, ("avx2",)) == "avx2"
    assert native_ops.attention_variant(F16, F16, everything) is None  # no variant takes it
    assert native_ops.attention_takers(F32, F32) == []
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: {"avx2", "fma"})  # no f16c
    native_ops.attention_variants.cache_clear()
    try:
        assert native_ops.attention_variants() == () and not native_ops.attention_caches()
        assert "avx2, fma, f16c" in native_ops.attention_unavailable()
        caches = DecodeCaches([_store(dtype=F16)], [3], [0])
        with pytest.raises(native_ops.NativeError, match="float16 caches: needs avx2, fma, f16c"):
            native_ops.attend_decode(*_gqa(1, 3, 3, 16, F32), caches, 0, 0.25)
        with pytest.raises(native_ops.NativeError, match="avx2: needs f16c"):
            native_ops.attend_decode(*_gqa(1, 3, 3, 16, F32), caches, 0, 0.25, "avx2")
    finally:
        native_ops.attention_variants.cache_clear()


# -- the kernels against torch (where the CPU has AVX-512 BF16) ----------------------------


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within bf16 rounding of the result (and of the fp32 sums' order)."""
    torch.testing.assert_close(actual.float(), expected.float(), rtol=1.6e-2, atol=2e-2)


@runs_here
@pytest.mark.parametrize("rows", [1, 3, 7, 9])
@pytest.mark.parametrize(("inputs", "outputs"), [(2, 16), (34, 48), (98, 80), (66, 144)])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_is_the_bf16_product(rows: int, inputs: int, outputs: int, bias: bool) -> None:
    torch.manual_seed(rows * 1000 + inputs + outputs)
    x = torch.randn(rows, inputs).to(BF16)
    weight = (torch.randn(outputs, inputs) / inputs ** 0.5).to(BF16)
    b = torch.randn(outputs).to(BF16) if bias else None
    out = native_ops.gemm(x, native_ops.pack_vnni(weight), b)
    expected = x.float() @ weight.float().T + (0 if b is None else b.float())
    assert out.shape == (rows, outputs) and out.dtype == BF16
    _close(out, expected)


@runs_here
@pytest.mark.parametrize("dim", [16, 48, 80])
def test_decode_attention_is_torchs_over_the_cache_with_the_new_token(dim: int) -> None:
    torch.manual_seed(dim)
    heads, layers, lens, caps = 3, 2, [0, 5, 20], [1, 9, 21]  # row 2 fills its last slot
    stores = [_store(layers, heads, cap, dim) for cap in caps]
    before = [s.clone() for s in stores]
    q, k, v = _qkv(4, heads, dim)  # token 3 is a prompt token: left unwritten
    caches = DecodeCaches(stores, lens, [2, 0, 1])
    out = native_ops.attend_decode(q, k, v, caches, 1, dim ** -0.5)
    for store, old, held, token in zip(stores, before, lens, [2, 0, 1], strict=True):
        expected_store = old.clone()
        expected_store[1, 0, 0, :, held] = k[0, :, token]
        expected_store[1, 1, 0, :, held] = v[0, :, token]
        assert torch.equal(store, expected_store)  # the new key/value, and nothing else
        keys = store[1, 0, :, :, :held + 1].float()
        values = store[1, 1, :, :, :held + 1].float()
        ref = functional.scaled_dot_product_attention(
            q[:, :, token:token + 1].float(), keys, values, scale=dim ** -0.5)
        _close(out[0, token], ref[0, :, 0])


@runs_here
@pytest.mark.parametrize(("kv_heads", "group"), [(1, 2), (1, 6), (2, 4), (3, 2), (2, 6),
                                                 (3, 4)])
@pytest.mark.parametrize("dim", [16, 64, 128])
def test_grouped_query_attention_is_torchs_with_enable_gqa(kv_heads: int, group: int,
                                                           dim: int) -> None:
    """Query head h reads kv head h // group; the new key and value land at each row's length
    in its kv heads, and nothing else of the store changes. Lengths cross the kernel's tiles
    of 32 positions (0, 31, 32, 33, 77)."""
    torch.manual_seed(kv_heads * 100 + group * 10 + dim)
    heads, layers, layer = kv_heads * group, 3, 2
    lens, caps, tokens = [0, 31, 32, 33, 77], [1, 33, 40, 34, 78], [4, 1, 0, 3, 5]
    stores = [_store(layers, kv_heads, cap, dim) for cap in caps]
    before = [s.clone() for s in stores]
    q, k, v = _gqa(7, heads, kv_heads, dim)  # tokens 2 and 6: prompt tokens, left unwritten
    out = native_ops.attend_decode(q, k, v, DecodeCaches(stores, lens, tokens), layer,
                                   dim ** -0.5)
    assert out.shape == (1, 7, heads, dim)
    for store, old, held, token in zip(stores, before, lens, tokens, strict=True):
        expected_store = old.clone()
        expected_store[layer, 0, 0, :, held] = k[0, :, token]
        expected_store[layer, 1, 0, :, held] = v[0, :, token]
        assert torch.equal(store, expected_store)
        ref = functional.scaled_dot_product_attention(
            q[:, :, token:token + 1].float(), store[layer, 0, :, :, :held + 1].float(),
            store[layer, 1, :, :, :held + 1].float(), scale=dim ** -0.5, enable_gqa=True)
        _close(out[0, token], ref[0, :, 0])


@runs_here
@pytest.mark.parametrize(("kv_heads", "group", "dim"), [(1, 4, 64), (2, 6, 128), (3, 2, 80)])
def test_a_grouped_query_is_bit_for_bit_its_query_over_a_repeated_cache(
        kv_heads: int, group: int, dim: int) -> None:
    """The kernel reads a kv head once for its group, yet each query's sums are those of the
    same query over a cache with the kv head repeated (group 1, GPT-2's way)."""
    torch.manual_seed(group * dim)
    heads, lens, caps = kv_heads * group, [5, 40, 66], [6, 48, 67]
    stores = [_store(2, kv_heads, cap, dim) for cap in caps]
    repeated = [s.repeat_interleave(group, dim=3) for s in stores]
    q, k, v = _gqa(3, heads, kv_heads, dim)
    grouped = native_ops.attend_decode(q, k, v, DecodeCaches(stores, lens, [0, 1, 2]), 1,
                                       dim ** -0.5)
    k_all, v_all = (t.repeat_interleave(group, dim=1) for t in (k, v))
    plain = native_ops.attend_decode(q, k_all, v_all, DecodeCaches(repeated, lens, [0, 1, 2]), 1,
                                     dim ** -0.5)
    assert torch.equal(grouped, plain)
    for store, wide in zip(stores, repeated, strict=True):
        assert torch.equal(store.repeat_interleave(group, dim=3), wide)


def _gpt2_reference(weights: list[torch.Tensor], h: torch.Tensor, att: torch.Tensor,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(qkv of ln_1(h), h after the attention output and the MLP), torch's bf16 rounding
    at the same points as gpt2_bf16.c."""
    ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, out_w, out_b = (
        w.float() for w in weights)
    def norm(x, w, b):
        return functional.layer_norm(x.float(), (x.shape[1],), w, b, eps).to(BF16).float()
    qkv = norm(h, ln1_w, ln1_b) @ attn_w.T + attn_b
    h = (h.float() + (att.float() @ proj_w.T + proj_b).to(BF16).float()).to(BF16)
    inner = (norm(h, ln2_w, ln2_b) @ fc_w.T + fc_b).to(BF16).float()
    inner = functional.gelu(inner, approximate="tanh").to(BF16).float()
    h = (h.float() + (inner @ out_w.T + out_b).to(BF16).float()).to(BF16)
    return qkv, h


@runs_here
@pytest.mark.parametrize("tokens", [1, 3, 7])
def test_gpt2_layer_is_torchs_layer_norm_gemm_and_gelu(tokens: int) -> None:
    torch.manual_seed(tokens)
    width, hidden, heads, eps = 48, 80, 3, 1e-5
    weights = _gpt2_weights(width, hidden)
    packed = [native_ops.pack_vnni(w) if w.dim() == 2 else w for w in weights]
    block = native_ops.gpt2_block(width, hidden, packed)
    scratch = GPT2Scratch(width, hidden, heads, eps, 0.25, tokens)
    h = torch.randn(tokens, width).to(BF16)
    native_ops.gpt2_attn_in(block, scratch, h)
    att = torch.randn(tokens, width).to(BF16)
    scratch.buffers["att"].copy_(att)
    qkv, after = _gpt2_reference(weights, h, att, eps)
    _close(scratch.buffers["qkv"], qkv)
    native_ops.gpt2_attn_out(block, scratch, h)
    _close(h, after)


@runs_here
def test_gpt2_decode_is_its_layers_one_by_one_bit_for_bit() -> None:
    torch.manual_seed(7)
    width, hidden, heads, layers, eps, scale = 48, 80, 3, 2, 1e-5, 16 ** -0.5
    # The blocks hold pointers only: the weights must outlive them (gpt2_block's contract).
    weights = [[native_ops.pack_vnni(w) if w.dim() == 2 else w
                for w in _gpt2_weights(width, hidden)] for _ in range(layers)]
    blocks = [native_ops.gpt2_block(width, hidden, tensors) for tensors in weights]
    stores = [_store(layers, heads, cap, 16) for cap in (4, 11, 30)]
    lens = [3, 0, 17]
    h = torch.randn(3, width).to(BF16)
    copies, h_copy = [s.clone() for s in stores], h.clone()
    scratch = GPT2Scratch(width, hidden, heads, eps, scale, 3)
    native_ops.gpt2_decode((native_ops.Block * layers)(*blocks), scratch, h,
                           DecodeCaches(stores, lens, [0, 1, 2]))
    caches = DecodeCaches(copies, lens, [0, 1, 2])
    for layer, block in enumerate(blocks):
        native_ops.gpt2_attn_in(block, scratch, h_copy)
        q, k, v = (scratch.buffers["qkv"][:, i * width:(i + 1) * width].view(3, heads, 16)
                   .transpose(0, 1).unsqueeze(0) for i in range(3))
        scratch.buffers["att"].copy_(
            native_ops.attend_decode(q, k, v, caches, layer, scale).view(3, width))
        native_ops.gpt2_attn_out(block, scratch, h_copy)
    assert torch.equal(h, h_copy)
    assert all(torch.equal(a, b) for a, b in zip(stores, copies, strict=True))


# -- the AVX2 decode attention against torch (where the CPU has AVX2, FMA, F16C) -------------


def _attention_reference(query: torch.Tensor, store: torch.Tensor, layer: int, held: int,
                         token: int, scale: float) -> torch.Tensor:
    """Query ``token``'s heads over ``store``'s layer up to and including position ``held``,
    in float64 (query head h reads kv head h // group): [heads, dim]."""
    keys = store[layer, 0, 0, :, :held + 1].double()
    values = store[layer, 1, 0, :, :held + 1].double()
    q = query[0, :, token].double()
    group = q.shape[0] // keys.shape[0]
    keys, values = (t.repeat_interleave(group, dim=0) for t in (keys, values))
    weights = torch.softmax((q[:, None] * keys).sum(-1) * scale, dim=-1)
    return (weights[:, :, None] * values).sum(1)


def _close_in(dtype: torch.dtype, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 outputs: within fp32 sums in another order (and the exp polynomial's ~1e-7);
    bf16 outputs: within one bf16 rounding."""
    if dtype == F32:
        torch.testing.assert_close(actual.double(), expected, rtol=2e-5, atol=2e-6)
    else:
        _close(actual, expected)


@avx2_here
@pytest.mark.parametrize(("query", "cache"), PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(("kv_heads", "group", "dim"), [
    (1, 1, 16), (3, 1, 48), (1, 6, 64), (2, 4, 80), (3, 2, 128), (2, 5, 256), (1, 3, 32),
    (3, 6, 112)])
def test_avx2_attention_is_the_softmax_over_the_cache_with_the_new_token(
        query: torch.dtype, cache: torch.dtype, kv_heads: int, group: int, dim: int) -> None:
    """Rows of lengths 0, 1, 3, 31, 32, 33 and 77 (across the 32-position tiles and the
    four-key score blocks), tokens out of order, one prompt token left unwritten; every query
    over its kv head's cache, the new key and value written at its length in the cache's
    dtype (rounded as torch's copy rounds) and nothing else of any store changed."""
    torch.manual_seed(kv_heads * 1000 + group * 100 + dim)
    heads, layers, layer = kv_heads * group, 3, 1
    lens, caps = [0, 1, 3, 31, 32, 33, 77], [1, 5, 4, 40, 33, 34, 90]
    tokens = [5, 0, 7, 2, 6, 1, 3]  # token 4: a prompt token, left unwritten
    stores = [_store(layers, kv_heads, cap, dim, cache) for cap in caps]
    before = [s.clone() for s in stores]
    q, k, v = _gqa(8, heads, kv_heads, dim, query)
    out = native_ops.attend_decode(q, k, v, DecodeCaches(stores, lens, tokens), layer,
                                   dim ** -0.5, "avx2")
    assert out.shape == (1, 8, heads, dim) and out.dtype == query
    for store, old, held, token in zip(stores, before, lens, tokens, strict=True):
        expected_store = old.clone()
        expected_store[layer, 0, 0, :, held] = k[0, :, token]  # torch's rounding into cache
        expected_store[layer, 1, 0, :, held] = v[0, :, token]
        assert torch.equal(store, expected_store)
        _close_in(query, out[0, token], _attention_reference(q, store, layer, held, token,
                                                             dim ** -0.5))


@avx2_here
@pytest.mark.parametrize(("query", "cache"), PAIRS, ids=PAIR_IDS)
def test_avx2_attention_of_a_row_is_the_same_alone_and_beside_others(
        query: torch.dtype, cache: torch.dtype) -> None:
    torch.manual_seed(5)
    lens, caps = [9, 120, 0], [10, 128, 3]
    stores = [_store(2, 2, cap, 64, cache) for cap in caps]
    q, k, v = _gqa(3, 6, 2, 64, query)
    alone_store = stores[1].clone()
    together = native_ops.attend_decode(q, k, v, DecodeCaches(stores, lens, [0, 1, 2]), 0,
                                        0.125, "avx2")
    one = tuple(t[:, :, 1:2] for t in (q, k, v))
    alone = native_ops.attend_decode(*one, DecodeCaches([alone_store], [120], [0]), 0, 0.125,
                                     "avx2")
    assert torch.equal(alone[0, 0], together[0, 1])
    assert torch.equal(alone_store, stores[1])


@avx2_here
@pytest.mark.parametrize(("query", "cache"), PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(("kv_heads", "group", "dim"), [(1, 4, 64), (2, 6, 128), (3, 2, 80)])
def test_avx2_grouped_query_is_bit_for_bit_its_query_over_a_repeated_cache(
        query: torch.dtype, cache: torch.dtype, kv_heads: int, group: int, dim: int) -> None:
    """A kv head read once for its group gives each query what it gets over a cache with the
    kv head repeated (group 1)."""
    torch.manual_seed(group * dim + kv_heads)
    heads, lens, caps = kv_heads * group, [5, 40, 66], [6, 48, 67]
    stores = [_store(2, kv_heads, cap, dim, cache) for cap in caps]
    repeated = [s.repeat_interleave(group, dim=3) for s in stores]
    q, k, v = _gqa(3, heads, kv_heads, dim, query)
    grouped = native_ops.attend_decode(q, k, v, DecodeCaches(stores, lens, [0, 1, 2]), 1,
                                       dim ** -0.5, "avx2")
    k_all, v_all = (t.repeat_interleave(group, dim=1) for t in (k, v))
    plain = native_ops.attend_decode(q, k_all, v_all, DecodeCaches(repeated, lens, [0, 1, 2]),
                                     1, dim ** -0.5, "avx2")
    assert torch.equal(grouped, plain)
    for store, wide in zip(stores, repeated, strict=True):
        assert torch.equal(store.repeat_interleave(group, dim=3), wide)


@avx2_here
def test_avx2_attention_takes_gpt2s_packed_views_and_is_chosen_here_for_fp16_caches() -> None:
    """GPT-2's c_attn views (one packed tensor, fp32 as a float16 model computes them) over
    fp16 caches: the variant chosen without a name is the AVX2 one (no other takes fp32
    queries) and gives the same as naming it."""
    torch.manual_seed(8)
    qkv = torch.randn(1, 2, 3 * 3 * 32)
    q, k, v = (t.view(1, 2, 3, 32).transpose(1, 2) for t in qkv.split(3 * 32, dim=2))
    stores = [_store(1, 3, 20, 32, F16) for _ in range(2)]
    copies = [s.clone() for s in stores]
    assert native_ops.attention_variant(F32, F16) == "avx2"
    chosen = native_ops.attend_decode(q, k, v, DecodeCaches(stores, [7, 19], [1, 0]), 0, 0.2)
    named = native_ops.attend_decode(q, k, v, DecodeCaches(copies, [7, 19], [1, 0]), 0, 0.2,
                                     "avx2")
    assert torch.equal(chosen, named) and all(map(torch.equal, stores, copies))
    _close_in(F32, chosen[0, 1], _attention_reference(q, stores[0], 0, 7, 1, 0.2))
