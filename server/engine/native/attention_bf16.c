/* Decode attention over bf16 KV caches, AVX-512: one new token per row, every row its own cache,
 * and grouped-query caches (GQA: kv_heads K/V heads, each read by heads / kv_heads queries).
 * attention_avx2.c is the same contract for CPUs with AVX2 + FMA + F16C only, over bf16 or
 * fp16 caches with bf16 or fp32 queries.
 *
 * For each decoding row r and kv head g of one layer (query heads g * group .. g * group +
 * group - 1, group = heads / kv_heads; GPT-2 has group 1):
 *   1. the token's new key and value of head g (bf16, read where the layer's projection left
 *      them) are written at position lens[r] of the row's cache;
 *   2. for each query of the group, scores s_t = scale * q . K[t] for t = 0 .. lens[r], in fp32
 *      (bf16 widened exactly);
 *   3. softmax (max subtracted), out = sum_t p_t V[t] / sum_t p_t, rounded to bf16 once.
 *
 * Why per kv head: the group's queries read the same keys and values, so steps 2 and 3 walk the
 * cache in tiles of TILE positions and let every query of the group use a tile while it is in
 * L1: the cache is read from memory once per kv head, not once per query head (4x less for
 * Llama-3.2-1B's 32 / 8 heads). Each query's sums are the same operations in the same order as
 * with group 1, so a query's output does not depend on its group size, and GPT-2's (group 1)
 * is bit for bit what this kernel computed before it took GQA caches.
 *
 * RoPE: none here. The caller rotates q and k by their positions before this call (torch, in
 * the Llama-family forward, as transformers, vLLM and llama.cpp do), so the cache holds rotated
 * keys: rotating a key once when it is written is cheaper than rotating every cached key of
 * every step, and a rotated key depends only on its own position, so the prefix cache can
 * share it.
 *
 * What torch did instead (server/engine/row_cache.py): widen the row's whole cache to fp32 per
 * layer (a copy written and read again), then scaled_dot_product_attention over it. Reading the
 * bf16 cache once, where it lies, is the memory floor of this step.
 *
 * A row's result depends on its own query and cache only (summed in a fixed order), so it is
 * the same alone or beside other rows. Threads: an OpenMP loop over (row, kv head) pairs, on
 * torch's libgomp (see gemm_bf16.c). (A lone row of a model with fewer kv heads than threads
 * leaves threads idle: its few positions' memory is read by one core.)
 *
 * Cache layout per row (server.engine.row_cache.RowCache.store):
 * [layers][2][kv_heads][capacity][dim], keys then values of each layer.
 */
#include <math.h>

#include "kernels.h"
#include "simd_bf16.h"

/* Positions per tile: 32 keys (or values) of up to 256 dims are 16 KB, which stay in L1 while
 * each query of the group reads them. */
enum { TILE = 32 };

/* One row's kv head and its group of queries, which lie q_head apart from q; outputs for the
 * group's heads at out (dim apart). dim is a multiple of 16 and at most 256. Scratch: scores
 * [group][stride] (stride >= len + 16) and sums [group][dim] of fp32. */
GLL_AVX512 static void attend_group(const uint16_t *q, int64_t q_head, const uint16_t *k_new,
                                    const uint16_t *v_new, uint16_t *keys, uint16_t *values,
                                    int len, int dim, int group, float scale, float *scores,
                                    int64_t stride, float *sums, uint16_t *out) {
  int vecs = dim / 16, n = len + 1;
  for (int d = 0; d < dim; d++) {
    keys[(int64_t)len * dim + d] = k_new[d];
    values[(int64_t)len * dim + d] = v_new[d];
  }
  for (int t0 = 0; t0 < n; t0 += TILE) {
    int t1 = t0 + TILE < n ? t0 + TILE : n;
    for (int j = 0; j < group; j++) {
      __m512 qv[16];
      for (int i = 0; i < vecs; i++) qv[i] = widen16(q + j * q_head + 16 * i);
      float *s = scores + j * stride;
      for (int t = t0; t < t1; t++) {
        const uint16_t *kt = keys + (int64_t)t * dim;
        __m512 acc = _mm512_mul_ps(qv[0], widen16(kt));
        for (int i = 1; i < vecs; i++) acc = _mm512_fmadd_ps(qv[i], widen16(kt + 16 * i), acc);
        s[t] = _mm512_reduce_add_ps(acc) * scale;
      }
    }
  }
  for (int j = 0; j < group; j++) {
    float *s = scores + j * stride;
    float top = -INFINITY;
    for (int t = 0; t < n; t++)
      if (s[t] > top) top = s[t];
    __m512 total = _mm512_setzero_ps();
    __m512 mx = _mm512_set1_ps(top);
    int t = 0;
    for (; t + 16 <= n; t += 16) {
      __m512 p = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(s + t), mx));
      _mm512_storeu_ps(s + t, p);
      total = _mm512_add_ps(total, p);
    }
    if (t < n) {
      __mmask16 m = (__mmask16)((1u << (n - t)) - 1);
      __m512 p = exp_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + t), mx));
      _mm512_mask_storeu_ps(s + t, m, p);
      total = _mm512_add_ps(total, _mm512_maskz_mov_ps(m, p));
    }
    /* The row's sum of weights, kept past the scores (stride >= n + 1). */
    s[stride - 1] = 1.0f / _mm512_reduce_add_ps(total);
    for (int i = 0; i < vecs; i++) _mm512_storeu_ps(sums + j * dim + 16 * i, _mm512_setzero_ps());
  }
  for (int t0 = 0; t0 < n; t0 += TILE) {
    int t1 = t0 + TILE < n ? t0 + TILE : n;
    for (int j = 0; j < group; j++) {
      const float *s = scores + j * stride;
      float *sj = sums + j * dim;
      __m512 acc[16];
      for (int i = 0; i < vecs; i++) acc[i] = _mm512_loadu_ps(sj + 16 * i);
      for (int t = t0; t < t1; t++) {
        __m512 p = _mm512_set1_ps(s[t]);
        const uint16_t *vt = values + (int64_t)t * dim;
        for (int i = 0; i < vecs; i++) acc[i] = _mm512_fmadd_ps(p, widen16(vt + 16 * i), acc[i]);
      }
      for (int i = 0; i < vecs; i++) _mm512_storeu_ps(sj + 16 * i, acc[i]);
    }
  }
  for (int j = 0; j < group; j++) {
    __m512 inv = _mm512_set1_ps(scores[j * stride + stride - 1]);
    for (int i = 0; i < vecs; i++)
      store16(out + j * dim + 16 * i, _mm512_mul_ps(_mm512_loadu_ps(sums + j * dim + 16 * i), inv));
  }
}

GLL_AVX512 static int attend_run(const decode_qkv *in, uint16_t *const *stores,
                                 const int64_t *caps, const int64_t *lens, const int64_t *tokens,
                                 int rows, int layer, int heads, int kv_heads, int dim,
                                 float scale, uint16_t *out, int64_t out_stride, int threads) {
  int64_t longest = 0;
  for (int r = 0; r < rows; r++)
    if (lens[r] + 1 > longest) longest = lens[r] + 1;
  int group = heads / kv_heads, failed = 0;
  /* Each query's scores, then its 1 / sum of weights in the last slot (+16: the softmax's
   * masked tail stays inside), rounded up to whole vectors. */
  int64_t stride = (longest + 16 + 15) / 16 * 16;
#pragma omp parallel num_threads(threads)
  {
    float *scores = (float *)_mm_malloc(sizeof(float) * group * (stride + dim), 64);
    if (!scores) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int task = 0; task < rows * kv_heads; task++) {
      if (!scores) continue; /* this thread's share is left undone: the call fails */
      int r = task / kv_heads, g = task % kv_heads, h = g * group;
      int64_t plane = caps[r] * dim; /* one kv head's keys (or values) in one layer */
      uint16_t *keys = stores[r] + ((int64_t)layer * 2 * kv_heads + g) * plane;
      uint16_t *values = keys + (int64_t)kv_heads * plane;
      const uint16_t *q = in->q, *k = in->k, *v = in->v; /* bf16 here */
      attend_group(q + tokens[r] * in->q_token + h * in->q_head, in->q_head,
                   k + tokens[r] * in->k_token + g * in->k_head,
                   v + tokens[r] * in->v_token + g * in->v_head, keys, values,
                   (int)lens[r], dim, group, scale, scores, stride, scores + group * stride,
                   out + tokens[r] * out_stride + (int64_t)h * dim);
    }
    _mm_free(scores);
  }
  return failed ? GLL_NO_MEMORY : GLL_OK;
}

/* The geometry attend_decode_bf16 and attend_decode_avx2 take (plain C: runs on any x86-64).
 * The caller (Python: server.engine.native_ops) checks the same and more before calling; this
 * is the last line. */
int attend_decode_check(const decode_qkv *in, uint16_t *const *stores, const int64_t *caps,
                        const int64_t *lens, const int64_t *tokens, int rows, int layer,
                        int heads, int kv_heads, int dim, const void *out, int threads) {
  if (!in || !in->q || !in->k || !in->v || !stores || !caps || !lens || !tokens || !out)
    return GLL_BAD_SHAPE;
  if (dim <= 0 || dim % 16 || dim > 256 || rows <= 0 || heads <= 0 || kv_heads <= 0 ||
      heads % kv_heads || layer < 0 || threads <= 0)
    return GLL_BAD_SHAPE;
  for (int r = 0; r < rows; r++)
    if (!stores[r] || lens[r] < 0 || lens[r] >= caps[r] || lens[r] >= INT32_MAX ||
        tokens[r] < 0)
      return GLL_BAD_SHAPE;
  return GLL_OK;
}

/* One layer, every decoding row.
 *   in: the new tokens' queries (heads per token), keys and values (kv_heads per token), bf16,
 *     token t of row r is tokens[r] (kernels.h: decode_qkv); heads a multiple of kv_heads,
 *     query head h reads kv head h / (heads / kv_heads).
 *   stores[r]: row r's cache (layout above), capacity caps[r]; lens[r] positions held before
 *     this token (it is written at lens[r]); layer: which layer's keys and values.
 *   out: [tokens[r] * out_stride + h * dim + d].
 * Returns GLL_OK; GLL_BAD_SHAPE when a size is outside what this kernel takes (nothing written
 * then); GLL_NO_MEMORY when a thread's scores could not be allocated (its rows not computed).
 * What it cannot see (the stores' layer count and kv heads, the extent of q/k/v/out) the caller
 * checks: server.engine.native_ops.attend_decode. */
int attend_decode_bf16(const decode_qkv *in, uint16_t *const *stores, const int64_t *caps,
                       const int64_t *lens, const int64_t *tokens, int rows, int layer,
                       int heads, int kv_heads, int dim, float scale, uint16_t *out,
                       int64_t out_stride, int threads) {
  int status = attend_decode_check(in, stores, caps, lens, tokens, rows, layer, heads, kv_heads,
                                   dim, out, threads);
  if (status != GLL_OK) return status;
  return attend_run(in, stores, caps, lens, tokens, rows, layer, heads, kv_heads, dim, scale,
                    out, out_stride, threads);
}
