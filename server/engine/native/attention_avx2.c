/* Decode attention for CPUs with AVX2 + FMA + F16C and no AVX-512 BF16 (AMD Zen 3, Intel
 * Haswell to Alder Lake): attention_bf16.c's contract over fp16, bf16 or int8 KV caches, read
 * where they lie and widened to fp32 in registers (fp16 by F16C's vcvtph2ps, bf16 by a 16-bit
 * shift, int8 by vpmovsxbd + vcvtdq2ps).
 *
 * For each decoding row r and kv head g of one layer (query heads g * group .. g * group +
 * group - 1, group = heads / kv_heads):
 *   1. the token's new key and value of head g (fp32 or bf16, where the layer's projection left
 *      them) are written at position lens[r] of the row's cache, rounded to the cache's dtype
 *      to nearest even (as torch's copy into the cache rounds); an int8 cache quantised as
 *      server.engine.kv_int8.quantize does, to the same bytes: sk = max|k| / 127 (fp32), each
 *      element k / sk (an fp32 division; 1 when sk is 0) rounded half to even, clamped to
 *      [-127, 127], sk stored in the row's scale array beside;
 *   2. for each query of the group (widened to fp32), s_t = scale * q . K[t], t = 0 .. lens[r]
 *      (int8: s_t = (scale * sk[t]) * (q . Kint[t]), the integers widened exactly);
 *   3. softmax (max subtracted), out = sum_t p_t V[t] / sum_t p_t, in fp32, written in the
 *      queries' dtype (fp32 as is, bf16 rounded once) (int8: p_t * sv[t] times Vint[t]).
 *
 * The dtypes served on such a CPU (server.engine.code_path): a float16 or int8 model computes
 * in fp32 with an fp16 cache (KV_DTYPE=auto), a bfloat16 model in bf16 with a bf16 cache, and
 * either over an int8 cache with KV_DTYPE=int8. Any of the six (queries, cache) pairs is
 * taken: the query's dtype only changes how the query is read and the output written, the
 * cache's only how a key or value is written and widened (and, int8, where its scale folds in).
 *
 * Why: torch widened each row's whole cache to fp32 per layer (server.engine.row_cache
 * _widened: 2 bytes read, 4 written and 4 read again per element) before its attention; this
 * reads the 2 bytes once. Tiles of TILE positions serve every query of the group while they
 * are in L1 (a kv head is read from memory once per step, as in attention_bf16.c).
 *
 * With 16 vector registers (not AVX-512's 32) a query of up to 256 dims does not fit in
 * registers: the group's queries are widened once into fp32 scratch (L1) and streamed beside
 * the keys, four keys at a time (four sums, one horizontal reduction); the value sums are
 * kept 64 dims (8 registers) at a time. Each score and each output element is summed in an
 * order fixed by the row's own length and the head dim, so a row's result is the same alone or
 * beside other rows, and a query's does not depend on its group size.
 *
 * Threads: one OpenMP loop over (row, kv head) pairs, as attention_bf16.c. Cache layout per
 * row (server.engine.row_cache.RowCache.store): [layers][2][kv_heads][capacity][dim]; an int8
 * cache's scales (RowCache.scales) [layers][2][kv_heads][capacity] fp32. Every store pointer is
 * passed as uint16_t * whatever the cache's dtype (an int8 store is read as int8_t; RowCache
 * maps each store at a page boundary).
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "simd_bf16.h"

/* Fully unrolled register loops (gemm_int8.c says why). */
#define UNROLL _Pragma("GCC unroll 8")

/* Positions per tile: 32 keys of up to 256 dims (16 bits) are 16 KB, kept in L1 while each
 * query of the group reads them. */
enum { TILE = 32, CHUNK = 64 /* value dims summed in registers at a time: 8 vectors */ };

static int elem_size(int dtype) { return dtype == GLL_F32 ? 4 : 2; }

static const void *elem_at(const void *p, int64_t i, int dtype) {
  return (const char *)p + i * elem_size(dtype);
}

/* 8 16-bit floats widened exactly to fp32: fp16 by F16C, bf16 by a 16-bit shift. */
GLL_AVX2_F16C static inline __m256 widen8(const uint16_t *p, int f16) {
  __m128i h = _mm_loadu_si128((const __m128i *)p);
  if (f16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 8 fp32 rounded to bf16, nearest even (NaN: the quiet NaN 0x7fc0, as torch rounds). */
GLL_AVX2_F16C static inline __m128i round_bf16(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(
      _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/* 8 elements of p + i (fp32 or bf16) as fp32. */
GLL_AVX2_F16C static inline __m256 load8(const void *p, int64_t i, int dtype) {
  if (dtype == GLL_F32) return _mm256_loadu_ps((const float *)p + i);
  return widen8((const uint16_t *)p + i, dtype == GLL_F16);
}

/* 8 elements of a cache (dtype GLL_F16, GLL_BF16 or GLL_I8) at p + i widened exactly to fp32;
 * kind is a constant where it is inlined, so the loops do not test it. */
GLL_AVX2_F16C static inline __m256 widen_kv(const void *p, int64_t i, const int kind) {
  if (kind == GLL_I8) {
    __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)p + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  return widen8((const uint16_t *)p + i, kind == GLL_F16);
}

/* 8 fp32 stored at p + i in dtype (fp16 and bf16 rounded to nearest even). */
GLL_AVX2_F16C static inline void store8(void *p, int64_t i, __m256 v, int dtype) {
  if (dtype == GLL_F32) {
    _mm256_storeu_ps((float *)p + i, v);
    return;
  }
  __m128i h = dtype == GLL_F16 ? _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                               : round_bf16(v);
  _mm_storeu_si128((__m128i *)((uint16_t *)p + i), h);
}

/* The 4 vectors' lane sums, each by the same tree: ((0+1)+(2+3)) + ((4+5)+(6+7)). */
GLL_AVX2_F16C static inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* Steps 2 and 3 for one kv head's cache (keys, values: [capacity][dim] of the cache's dtype
 * kind, positions 0 .. len written; an int8 cache's scales ks, vs [capacity], else NULL) and its
 * group's queries qf [group][dim] (fp32). Scratch: scores [group][stride] (stride >= len + 2:
 * the 1 / sum of weights goes in the last slot), sums [group][dim]. Inlined into one function
 * per cache dtype (kind a constant), so the hot loops do not test it. */
GLL_AVX2_F16C static inline __attribute__((always_inline)) void attend_group(
    const float *qf, const void *keys, const void *values, const float *ks, const float *vs,
    int len, int dim, int group, float scale, float *scores, int64_t stride, float *sums,
    const int kind) {
  const int n = len + 1;
  for (int t0 = 0; t0 < n; t0 += TILE) {
    int t1 = t0 + TILE < n ? t0 + TILE : n;
    for (int j = 0; j < group; j++) {
      const float *qj = qf + (int64_t)j * dim;
      float *s = scores + j * stride;
      for (int t = t0; t < t1; t += 4) {
        /* Past the tile's end a lane re-reads key t (its sum is dropped): no read beyond the
         * written positions, and every key's sum is the same whichever lane it took. */
        const int u1 = t + 1 < t1 ? t + 1 : t, u2 = t + 2 < t1 ? t + 2 : t;
        const int u3 = t + 3 < t1 ? t + 3 : t;
        const int64_t k0 = (int64_t)t * dim, k1 = (int64_t)u1 * dim, k2 = (int64_t)u2 * dim;
        const int64_t k3 = (int64_t)u3 * dim;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < dim; i += 8) {
          __m256 q = _mm256_loadu_ps(qj + i);
          a0 = _mm256_fmadd_ps(q, widen_kv(keys, k0 + i, kind), a0);
          a1 = _mm256_fmadd_ps(q, widen_kv(keys, k1 + i, kind), a1);
          a2 = _mm256_fmadd_ps(q, widen_kv(keys, k2 + i, kind), a2);
          a3 = _mm256_fmadd_ps(q, widen_kv(keys, k3 + i, kind), a3);
        }
        /* int8: each key's own scale folded into the softmax scale, then one product. */
        __m128 scales = kind == GLL_I8 ? _mm_mul_ps(_mm_set1_ps(scale),
                                                    _mm_setr_ps(ks[t], ks[u1], ks[u2], ks[u3]))
                                       : _mm_set1_ps(scale);
        __m128 four = _mm_mul_ps(sum4(a0, a1, a2, a3), scales);
        if (t + 4 <= t1) {
          _mm_storeu_ps(s + t, four);
        } else {
          float lanes[4];
          _mm_storeu_ps(lanes, four);
          for (int l = 0; t + l < t1; l++) s[t + l] = lanes[l];
        }
      }
    }
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int j = 0; j < group; j++) {
    float *s = scores + j * stride;
    float top = -INFINITY;
    for (int t = 0; t < n; t++)
      if (s[t] > top) top = s[t];
    __m256 mx = _mm256_set1_ps(top), total = _mm256_setzero_ps();
    int t = 0;
    for (; t + 8 <= n; t += 8) {
      __m256 p = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(s + t), mx));
      _mm256_storeu_ps(s + t, p);
      total = _mm256_add_ps(total, p);
    }
    if (t < n) {
      __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - t), lane);
      __m256 p = exp8_nonpos(_mm256_sub_ps(_mm256_maskload_ps(s + t, m), mx));
      p = _mm256_and_ps(p, _mm256_castsi256_ps(m));
      _mm256_maskstore_ps(s + t, m, p);
      total = _mm256_add_ps(total, p);
    }
    s[stride - 1] = 1.0f / _mm_cvtss_f32(sum4(total, total, total, total));
    for (int i = 0; i < dim; i += 8) _mm256_storeu_ps(sums + (int64_t)j * dim + i, _mm256_setzero_ps());
  }
  for (int t0 = 0; t0 < n; t0 += TILE) {
    int t1 = t0 + TILE < n ? t0 + TILE : n;
    for (int j = 0; j < group; j++) {
      const float *s = scores + j * stride;
      for (int c = 0; c < dim; c += CHUNK) {
        float *sj = sums + (int64_t)j * dim + c;
        const int w = (dim - c < CHUNK ? dim - c : CHUNK) / 8; /* 2, 4, 6 or 8 vectors */
        __m256 acc[8];
        UNROLL for (int i = 0; i < 8; i++) acc[i] = i < w ? _mm256_loadu_ps(sj + 8 * i) : _mm256_setzero_ps();
        for (int t = t0; t < t1; t++) {
          __m256 p = _mm256_set1_ps(kind == GLL_I8 ? s[t] * vs[t] : s[t]);
          const int64_t vt = (int64_t)t * dim + c;
          UNROLL for (int i = 0; i < 8; i++)
            if (i < w) acc[i] = _mm256_fmadd_ps(p, widen_kv(values, vt + 8 * i, kind), acc[i]);
        }
        UNROLL for (int i = 0; i < 8; i++)
          if (i < w) _mm256_storeu_ps(sj + 8 * i, acc[i]);
      }
    }
  }
}

#define ATTEND_GROUP(name, kind)                                                                  \
  GLL_AVX2_F16C static void name(const float *qf, const void *keys, const void *values,        \
                                 const float *ks, const float *vs, int len, int dim, int group,  \
                                 float scale, float *scores, int64_t stride, float *sums) {      \
    attend_group(qf, keys, values, ks, vs, len, dim, group, scale, scores, stride, sums, kind); \
  }
ATTEND_GROUP(attend_group_f16, GLL_F16)
ATTEND_GROUP(attend_group_bf16, GLL_BF16)
ATTEND_GROUP(attend_group_i8, GLL_I8)

/* dim elements of src (dtype from) quantised into dst (int8) and *scale, as
 * server.engine.kv_int8.quantize: the same fp32 operations, so the same bytes. */
GLL_AVX2_F16C static void put_i8(int8_t *dst, float *scale, const void *src, int from, int dim) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 top = _mm256_setzero_ps();
  for (int i = 0; i < dim; i += 8) top = _mm256_max_ps(top, _mm256_andnot_ps(sign, load8(src, i, from)));
  __m128 half = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
  half = _mm_max_ps(half, _mm_movehl_ps(half, half));
  half = _mm_max_ss(half, _mm_shuffle_ps(half, half, 1));
  const float s = _mm_cvtss_f32(half) / 127.0f; /* the max is exact in any order */
  *scale = s;
  const __m256 divisor = _mm256_set1_ps(s == 0.0f ? 1.0f : s);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int i = 0; i < dim; i += 8) {
    __m256 r = _mm256_round_ps(_mm256_div_ps(load8(src, i, from), divisor),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256i n = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(n), _mm256_extracti128_si256(n, 1));
    _mm_storel_epi64((__m128i *)(dst + i), _mm_packs_epi16(w, w));
  }
}

/* dim elements of src (dtype from) written at dst in dtype to (16-bit: the cache's). */
GLL_AVX2_F16C static void put(uint16_t *dst, int to, const void *src, int from, int dim) {
  if (from == to) {
    memcpy(dst, src, (size_t)dim * 2); /* bf16 into bf16: as is, bit for bit */
    return;
  }
  for (int i = 0; i < dim; i += 8) store8(dst, i, load8(src, i, from), to);
}

GLL_AVX2_F16C static int attend_run(const decode_qkv *in, int qkv_dtype, uint16_t *const *stores,
                                    int cache_dtype, float *const *scales, const int64_t *caps,
                                    const int64_t *lens,
                                    const int64_t *tokens, int rows, int layer, int heads,
                                    int kv_heads, int dim, float scale, void *out,
                                    int64_t out_stride, int threads) {
  int64_t longest = 0;
  for (int r = 0; r < rows; r++)
    if (lens[r] + 1 > longest) longest = lens[r] + 1;
  const int group = heads / kv_heads, size = cache_dtype == GLL_I8 ? 1 : 2;
  int failed = 0;
  /* Each query's scores, then its 1 / sum of weights in the last slot, in whole vectors. */
  const int64_t stride = (longest + 1 + 7) / 8 * 8;
#pragma omp parallel num_threads(threads)
  {
    /* This thread's scratch: scores [group][stride], queries and sums [group][dim]. */
    float *scores = (float *)_mm_malloc(sizeof(float) * group * (stride + 2 * (int64_t)dim), 32);
    if (!scores) {
#pragma omp atomic write
      failed = 1;
    }
    float *qf = scores ? scores + group * stride : NULL, *sums = qf ? qf + group * dim : NULL;
#pragma omp for schedule(static)
    for (int task = 0; task < rows * kv_heads; task++) {
      if (!scores) continue; /* this thread's share is left undone: the call fails */
      int r = task / kv_heads, g = task % kv_heads, h = g * group;
      int64_t plane = caps[r] * dim; /* one kv head's keys (or values) in one layer */
      char *keys = (char *)stores[r] + ((int64_t)layer * 2 * kv_heads + g) * plane * size;
      char *values = keys + (int64_t)kv_heads * plane * size;
      const void *k_new = elem_at(in->k, tokens[r] * in->k_token + g * in->k_head, qkv_dtype);
      const void *v_new = elem_at(in->v, tokens[r] * in->v_token + g * in->v_head, qkv_dtype);
      float *ks = NULL, *vs = NULL;
      if (cache_dtype == GLL_I8) {
        ks = scales[r] + ((int64_t)layer * 2 * kv_heads + g) * caps[r];
        vs = ks + (int64_t)kv_heads * caps[r];
        put_i8((int8_t *)keys + lens[r] * dim, ks + lens[r], k_new, qkv_dtype, dim);
        put_i8((int8_t *)values + lens[r] * dim, vs + lens[r], v_new, qkv_dtype, dim);
      } else {
        put((uint16_t *)keys + lens[r] * dim, cache_dtype, k_new, qkv_dtype, dim);
        put((uint16_t *)values + lens[r] * dim, cache_dtype, v_new, qkv_dtype, dim);
      }
      for (int j = 0; j < group; j++) {
        const void *q = elem_at(in->q, tokens[r] * in->q_token + (h + j) * in->q_head, qkv_dtype);
        for (int i = 0; i < dim; i += 8) _mm256_storeu_ps(qf + j * dim + i, load8(q, i, qkv_dtype));
      }
      const int len = (int)lens[r];
      if (cache_dtype == GLL_I8)
        attend_group_i8(qf, keys, values, ks, vs, len, dim, group, scale, scores, stride, sums);
      else if (cache_dtype == GLL_F16)
        attend_group_f16(qf, keys, values, ks, vs, len, dim, group, scale, scores, stride, sums);
      else
        attend_group_bf16(qf, keys, values, ks, vs, len, dim, group, scale, scores, stride, sums);
      for (int j = 0; j < group; j++) {
        __m256 inv = _mm256_set1_ps(scores[j * stride + stride - 1]);
        int64_t at = tokens[r] * out_stride + (int64_t)(h + j) * dim;
        for (int i = 0; i < dim; i += 8)
          store8(out, at + i, _mm256_mul_ps(_mm256_loadu_ps(sums + j * dim + i), inv), qkv_dtype);
      }
    }
    _mm_free(scores);
  }
  return failed ? GLL_NO_MEMORY : GLL_OK;
}

/* One layer, every decoding row: attend_decode_bf16's contract (attention_bf16.c), with
 *   qkv_dtype: GLL_F32 or GLL_BF16, the dtype of in's q, k, v and of out (strides in its
 *     elements);
 *   cache_dtype: GLL_F16, GLL_BF16 or GLL_I8, the dtype of every row's store;
 *   scales: GLL_I8 only (else ignored, may be NULL): scales[r] is row r's scale array,
 *     [layers][2][kv_heads][caps[r]] fp32 (RowCache.scales).
 * Returns GLL_OK; GLL_BAD_SHAPE when a dtype or size is outside what this kernel takes
 * (attend_decode_check; nothing written then); GLL_NO_MEMORY when a thread's scratch could not
 * be allocated. Call only where the CPU has AVX2, FMA and F16C (server.engine.native_ops). */
int attend_decode_avx2(const decode_qkv *in, int qkv_dtype, uint16_t *const *stores,
                       int cache_dtype, float *const *scales, const int64_t *caps,
                       const int64_t *lens, const int64_t *tokens, int rows, int layer,
                       int heads, int kv_heads, int dim, float scale, void *out,
                       int64_t out_stride, int threads) {
  if ((qkv_dtype != GLL_F32 && qkv_dtype != GLL_BF16) ||
      (cache_dtype != GLL_F16 && cache_dtype != GLL_BF16 && cache_dtype != GLL_I8))
    return GLL_BAD_SHAPE;
  int status = attend_decode_check(in, stores, caps, lens, tokens, rows, layer, heads, kv_heads,
                                   dim, out, threads);
  if (status != GLL_OK) return status;
  if (cache_dtype == GLL_I8) {
    if (!scales) return GLL_BAD_SHAPE;
    for (int r = 0; r < rows; r++)
      if (!scales[r]) return GLL_BAD_SHAPE;
  }
  return attend_run(in, qkv_dtype, stores, cache_dtype, scales, caps, lens, tokens, rows, layer,
                    heads, kv_heads, dim, scale, out, out_stride, threads);
}
