/* Decode attention over bf16 KV caches, AVX-512: one new token per row, every row its own cache.
 *
 * For each decoding row r and head h of one layer:
 *   1. the token's new key and value (bf16, read from the layer's packed q/k/v output) are
 *      written at position lens[r] of the row's cache;
 *   2. scores s_t = scale * q . K[t] for t = 0 .. lens[r], in fp32 (bf16 widened exactly);
 *   3. softmax (max subtracted), out = sum_t p_t V[t] / sum_t p_t, rounded to bf16 once.
 *
 * What torch did instead (server/engine/row_cache.py): widen the row's whole cache to fp32 per layer
 * (a copy written and read again), then scaled_dot_product_attention over it. Reading the bf16
 * cache once, where it lies, is the memory floor of this step.
 *
 * A row's result depends on its own query and cache only (summed in a fixed order), so it is
 * the same alone or beside other rows. Threads: an OpenMP loop over (row, head) pairs, on
 * torch's libgomp (see gemm_bf16.c).
 *
 * Cache layout per row (server.engine.row_cache.RowCache.store): [layers][2][heads][capacity][dim],
 * keys then values of each layer.
 */
#include <math.h>

#include "kernels.h"
#include "simd_bf16.h"

/* One row and head: dim is a multiple of 16 and at most 256. */
GLL_AVX512 static void attend_one(const uint16_t *q, const uint16_t *k_new, const uint16_t *v_new,
                       uint16_t *keys, uint16_t *values, int len, int dim, float scale,
                       float *scores, uint16_t *out) {
  int vecs = dim / 16;
  for (int d = 0; d < dim; d++) {
    keys[(int64_t)len * dim + d] = k_new[d];
    values[(int64_t)len * dim + d] = v_new[d];
  }
  __m512 qv[16];
  for (int i = 0; i < vecs; i++) qv[i] = widen16(q + 16 * i);
  int n = len + 1;
  float top = -INFINITY;
  for (int t = 0; t < n; t++) {
    const uint16_t *kt = keys + (int64_t)t * dim;
    __m512 acc = _mm512_mul_ps(qv[0], widen16(kt));
    for (int i = 1; i < vecs; i++) acc = _mm512_fmadd_ps(qv[i], widen16(kt + 16 * i), acc);
    float s = _mm512_reduce_add_ps(acc) * scale;
    scores[t] = s;
    if (s > top) top = s;
  }
  __m512 total = _mm512_setzero_ps();
  __m512 mx = _mm512_set1_ps(top);
  int t = 0;
  for (; t + 16 <= n; t += 16) {
    __m512 p = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(scores + t), mx));
    _mm512_storeu_ps(scores + t, p);
    total = _mm512_add_ps(total, p);
  }
  if (t < n) {
    __mmask16 m = (__mmask16)((1u << (n - t)) - 1);
    __m512 p = exp_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + t), mx));
    _mm512_mask_storeu_ps(scores + t, m, p);
    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(m, p));
  }
  __m512 acc[16];
  for (int i = 0; i < vecs; i++) acc[i] = _mm512_setzero_ps();
  for (t = 0; t < n; t++) {
    __m512 p = _mm512_set1_ps(scores[t]);
    const uint16_t *vt = values + (int64_t)t * dim;
    for (int i = 0; i < vecs; i++) acc[i] = _mm512_fmadd_ps(p, widen16(vt + 16 * i), acc[i]);
  }
  __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (int i = 0; i < vecs; i++)
    store16(out + 16 * i, _mm512_mul_ps(acc[i], inv));
}

GLL_AVX512 static int attend_run(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                 int64_t token_stride, int64_t head_stride,
                                 uint16_t *const *stores, const int64_t *caps,
                                 const int64_t *lens, const int64_t *tokens, int rows, int layer,
                                 int heads, int dim, float scale, uint16_t *out,
                                 int64_t out_stride, int threads) {
  int64_t longest = 0;
  for (int r = 0; r < rows; r++)
    if (lens[r] + 1 > longest) longest = lens[r] + 1;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    float *scores = (float *)_mm_malloc(sizeof(float) * (longest + 16), 64);
    if (!scores) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int task = 0; task < rows * heads; task++) {
      if (!scores) continue; /* this thread's share is left undone: the call fails */
      int r = task / heads, h = task % heads;
      int64_t plane = caps[r] * dim;  /* one head's keys (or values) in one layer */
      uint16_t *keys = stores[r] + ((int64_t)layer * 2 * heads + h) * plane;
      uint16_t *values = keys + (int64_t)heads * plane;
      int64_t at = tokens[r] * token_stride + h * head_stride;
      attend_one(q + at, k + at, v + at, keys, values, (int)lens[r], dim, scale, scores,
                 out + tokens[r] * out_stride + (int64_t)h * dim);
    }
    _mm_free(scores);
  }
  return failed ? GLL_NO_MEMORY : GLL_OK;
}

/* The geometry attend_decode_bf16 takes (plain C: runs on any x86-64). The caller (Python:
 * server.engine.native_ops) checks the same and more before calling; this is the last line. */
int attend_decode_check(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                        uint16_t *const *stores, const int64_t *caps, const int64_t *lens,
                        const int64_t *tokens, int rows, int layer, int heads, int dim,
                        const uint16_t *out, int threads) {
  if (!q || !k || !v || !stores || !caps || !lens || !tokens || !out) return GLL_BAD_SHAPE;
  if (dim <= 0 || dim % 16 || dim > 256 || rows <= 0 || heads <= 0 || layer < 0 || threads <= 0)
    return GLL_BAD_SHAPE;
  for (int r = 0; r < rows; r++)
    if (!stores[r] || lens[r] < 0 || lens[r] >= caps[r] || lens[r] >= INT32_MAX ||
        tokens[r] < 0)
      return GLL_BAD_SHAPE;
  return GLL_OK;
}

/* One layer, every decoding row.
 *   q, k, v: the new tokens' queries, keys, values (bf16); element (row r, head h, d) at
 *     [tokens[r] * token_stride + h * head_stride + d] of each.
 *   stores[r]: row r's cache (layout above), capacity caps[r]; lens[r] positions held before
 *     this token (it is written at lens[r]); layer: which layer's keys and values.
 *   out: [tokens[r] * out_stride + h * dim + d].
 * Returns GLL_OK; GLL_BAD_SHAPE when a size is outside what this kernel takes (nothing written
 * then); GLL_NO_MEMORY when a thread's scores could not be allocated (its rows not computed).
 * What it cannot see (the stores' layer count and heads, the extent of q/k/v/out) the caller
 * checks: server.engine.native_ops.attend_decode. */
int attend_decode_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                       int64_t token_stride, int64_t head_stride, uint16_t *const *stores,
                       const int64_t *caps, const int64_t *lens, const int64_t *tokens, int rows,
                       int layer, int heads, int dim, float scale, uint16_t *out,
                       int64_t out_stride, int threads) {
  int status = attend_decode_check(q, k, v, stores, caps, lens, tokens, rows, layer, heads, dim,
                                   out, threads);
  if (status != GLL_OK) return status;
  return attend_run(q, k, v, token_stride, head_stride, stores, caps, lens, tokens, rows, layer,
                    heads, dim, scale, out, out_stride, threads);
}
