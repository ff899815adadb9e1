/* Weight-only int8 matrix multiply for decode steps: half the bytes of a bf16 weight per token.
 *
 * out[m, n] = scale[n] * sum_k x[m, k] * q[n, k] + bias[n], x / bias / out in fp32, q the int8
 * weight quantized symmetrically per output channel (scale[n] = max_k |w[n, k]| / 127, done
 * once at load by server.engine.native_int8). Two variants, picked by CPU features at load:
 *
 * - gemm_int8_fma (AVX2 + FMA, e.g. AMD Zen 3): activations stay fp32. The weight is packed
 *   [N/16][K][16]: for each k, 16 consecutive outputs' bytes, which two vpmovsxbd widen to 2 x 8
 *   int32, vcvtdq2ps makes exact floats, and one FMA per 8 multiplies them by a broadcast x[m, k].
 *   The scale is applied once per output at the end (the k sum is of the integers' floats).
 * - gemm_int8_vnni (AVX-512 VNNI, e.g. Zen 4): activations are quantized per row (symmetric,
 *   127 / max|x[m, :]|, as u8 = q + 128) and vpdpbusd sums u8 x s8 products of 4 k in int32
 *   lanes, 16 outputs per vector, exactly. The weight is packed [N/16][Kq/4][16][4] (Kq = K
 *   rounded up to 4, zero padded); colsum[n] = sum_k q[n, k] removes the +128 at the end:
 *   out = x_scale[m] * scale[n] * (acc - 128 colsum[n]) + bias[n].
 *
 * In both, every output is summed over k in the same order whatever M or the register tile,
 * and a row's activation scale is its own: a row's result does not depend on the other rows
 * of the call (batch invariance, bit for bit). Threads: an OpenMP loop over groups of 16-output
 * blocks, on torch's pool (see gemm_bf16.c). Rows are taken a register tile at a time (4 rows
 * in AVX2's 16 registers, 8 in AVX-512's 32); the next tile re-reads the group's weights from
 * cache (a group of K = 1280 is 120-160 KB; of K = 5120, 480-640 KB).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "simd_bf16.h"

/* Fully unrolled tile loops: GCC then keeps the accumulator arrays in registers (without it,
 * -O3 stored every accumulator to the stack on each k, a 3x slower 4-row tile). */
#define UNROLL _Pragma("GCC unroll 16")

#define INT8_FMA_LAYOUT 0  /* [N/16][K][16] */
#define INT8_VNNI_LAYOUT 1 /* [N/16][Kq/4][16][4], Kq = K rounded up to 4, zero padded */
#define FMA_GROUP 6        /* 16-output blocks per parallel task: 2 one-row tiles */
#define VNNI_GROUP 8       /* 16-output blocks per parallel task: 1 one-row tile */
#define VNNI_MAX_K 65536   /* |sum| <= K * 255 * 127 stays within int32 */

static int padded_k(int K, int layout) { return layout == INT8_VNNI_LAYOUT ? (K + 3) / 4 * 4 : K; }

/* q: [N, K] int8 row-major -> dst in ``layout``'s packing (N * padded K bytes); GLL_BAD_SHAPE
 * (nothing written) unless N % 16 == 0, K > 0, layout 0 or 1. Plain C: runs on any x86-64. */
int pack_int8(const int8_t *q, int8_t *dst, int N, int K, int layout) {
  if (!q || !dst || N <= 0 || K <= 0 || N % 16 || (layout != INT8_FMA_LAYOUT && layout != INT8_VNNI_LAYOUT))
    return GLL_BAD_SHAPE;
  const int kq = padded_k(K, layout), step = layout == INT8_VNNI_LAYOUT ? 4 : 1;
  for (int b = 0; b < N / 16; b++)
    for (int k = 0; k < kq; k++)
      for (int j = 0; j < 16; j++) {
        size_t at = (size_t)b * kq * 16 + (size_t)(k / step) * 16 * step + (size_t)j * step + k % step;
        dst[at] = k < K ? q[(size_t)(b * 16 + j) * K + k] : 0;
      }
  return GLL_OK;
}

/* -- AVX2 + FMA ------------------------------------------------------------------------- */

GLL_AVX2 static inline __m256 widen8(const int8_t *p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

GLL_AVX2 static inline void finish8(__m256 acc, const float *scale, const float *bias, float *out) {
  __m256 s = _mm256_loadu_ps(scale);
  _mm256_storeu_ps(out, bias ? _mm256_fmadd_ps(acc, s, _mm256_loadu_ps(bias)) : _mm256_mul_ps(acc, s));
}

/* MR rows x NB blocks: 2 * MR * NB accumulators + MR broadcasts + 1 weight in 16 registers. */
#define FMA_TILE(MR, NB)                                                                        \
  GLL_AVX2 static void fma_##MR##_##NB(const float *x, int K, const int8_t *w, const float *scale, \
                                       const float *bias, float *out, int N) {                  \
    __m256 acc[MR][2 * NB];                                                                     \
    UNROLL for (int i = 0; i < MR; i++)                                                                \
      UNROLL for (int j = 0; j < 2 * NB; j++) acc[i][j] = _mm256_setzero_ps();                         \
    const size_t block = (size_t)K * 16;                                                        \
    for (int k = 0; k < K; k++) {                                                               \
      __m256 xv[MR];                                                                            \
      UNROLL for (int i = 0; i < MR; i++) xv[i] = _mm256_broadcast_ss(x + (size_t)i * K + k);          \
      __m256 wv[2 * NB];                                                                        \
      UNROLL for (int j = 0; j < 2 * NB; j++)                                                          \
        wv[j] = widen8(w + (j / 2) * block + (size_t)k * 16 + (j % 2) * 8);                     \
      UNROLL for (int j = 0; j < 2 * NB; j++)                                                          \
        UNROLL for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(wv[j], xv[i], acc[i][j]);      \
    }                                                                                           \
    UNROLL for (int i = 0; i < MR; i++)                                                                \
      UNROLL for (int j = 0; j < 2 * NB; j++)                                                          \
        finish8(acc[i][j], scale + 8 * j, bias ? bias + 8 * j : 0, out + (size_t)i * N + 8 * j); \
  }

/* One row streams 3 blocks (6 widened weights + 6 accumulators: 4 blocks spilled one), more rows
   reuse each widened weight. */
FMA_TILE(1, 3) FMA_TILE(2, 2) FMA_TILE(3, 1) FMA_TILE(4, 1) FMA_TILE(1, 1) FMA_TILE(2, 1)

typedef void (*fma_fn)(const float *, int, const int8_t *, const float *, const float *, float *, int);
static const fma_fn FMA_WIDE[5] = {0, fma_1_3, fma_2_2, fma_3_1, fma_4_1};
static const int FMA_NB[5] = {0, 3, 2, 1, 1};
static const fma_fn FMA_ONE[5] = {0, fma_1_1, fma_2_1, fma_3_1, fma_4_1};

GLL_AVX2 static void fma_run(const float *x, const int8_t *w, const float *scale, const float *bias,
                             float *out, int M, int N, int K, int threads) {
  const int blocks = N / 16, tasks = (blocks + FMA_GROUP - 1) / FMA_GROUP;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int t = 0; t < tasks; t++) {
    const int b0 = t * FMA_GROUP, b1 = b0 + FMA_GROUP < blocks ? b0 + FMA_GROUP : blocks;
    for (int m0 = 0; m0 < M; m0 += 4) {
      const int mr = M - m0 < 4 ? M - m0 : 4, nb = FMA_NB[mr];
      const float *xs = x + (size_t)m0 * K;
      float *os = out + (size_t)m0 * N;
      int b = b0;
      for (; b + nb <= b1; b += nb)
        FMA_WIDE[mr](xs, K, w + (size_t)b * K * 16, scale + 16 * b, bias ? bias + 16 * b : 0,
                     os + 16 * b, N);
      for (; b < b1; b++)
        FMA_ONE[mr](xs, K, w + (size_t)b * K * 16, scale + 16 * b, bias ? bias + 16 * b : 0,
                    os + 16 * b, N);
    }
  }
}

/* x: [M, K] fp32, w: [N/16][K][16] (pack_int8 layout 0), scale: [N], bias: [N] or NULL,
 * out: [M, N] fp32. GLL_BAD_SHAPE (nothing written) unless M, N, K, threads > 0, N % 16 == 0. */
int gemm_int8_fma(const float *x, const int8_t *w, const float *scale, const float *bias, float *out,
                  int M, int N, int K, int threads) {
  if (!x || !w || !scale || !out || M <= 0 || N <= 0 || K <= 0 || threads <= 0 || N % 16)
    return GLL_BAD_SHAPE;
  fma_run(x, w, scale, bias, out, M, N, K, threads);
  return GLL_OK;
}

/* -- AVX-512 VNNI ----------------------------------------------------------------------- */

/* Row m of x as u8 (round(x * 127 / max|x|) + 128, pads of 128 = 0 up to Kq), its scale. */
GLL_AVX512_VNNI static void quantize_rows(const float *x, int M, int K, int kq, uint8_t *xq, float *xs) {
  for (int m = 0; m < M; m++) {
    const float *row = x + (size_t)m * K;
    __m512 top = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
      __mmask16 live = K - k >= 16 ? 0xffff : (__mmask16)((1u << (K - k)) - 1);
      top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_maskz_loadu_ps(live, row + k)));
    }
    const float amax = _mm512_reduce_max_ps(top);
    const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    uint8_t *dst = xq + (size_t)m * kq;
    for (int k = 0; k < K; k += 16) {
      __mmask16 live = K - k >= 16 ? 0xffff : (__mmask16)((1u << (K - k)) - 1);
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(live, row + k), inv));
      q = _mm512_add_epi32(q, _mm512_set1_epi32(128)); /* nearest-even rounding: in [1, 255] */
      _mm_mask_storeu_epi8(dst + k, live, _mm512_cvtusepi32_epi8(q));
    }
    for (int k = K; k < kq; k++) dst[k] = 128;
    xs[m] = amax / 127.0f;
  }
}

GLL_AVX512_VNNI static inline __m512i quad(const uint8_t *x) {
  int32_t v;
  memcpy(&v, x, 4);
  return _mm512_set1_epi32(v);
}

GLL_AVX512_VNNI static inline void finish16(__m512i acc, const int32_t *colsum, float row_scale,
                                            const float *scale, const float *bias, float *out) {
  __m512i exact = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_loadu_si512(colsum), 7));
  __m512 s = _mm512_mul_ps(_mm512_loadu_ps(scale), _mm512_set1_ps(row_scale));
  __m512 v = _mm512_cvtepi32_ps(exact);
  _mm512_storeu_ps(out, bias ? _mm512_fmadd_ps(v, s, _mm512_loadu_ps(bias)) : _mm512_mul_ps(v, s));
}

/* MR rows x NB blocks: MR * NB accumulators + NB weights + 1 broadcast in 32 registers. */
#define VNNI_TILE(MR, NB)                                                                        \
  GLL_AVX512_VNNI static void vnni_##MR##_##NB(const uint8_t *xq, const float *xs, int kq,       \
                                               const int8_t *w, const float *scale,              \
                                               const int32_t *colsum, const float *bias,         \
                                               float *out, int N) {                              \
    __m512i acc[MR][NB];                                                                         \
    UNROLL for (int i = 0; i < MR; i++)                                                                 \
      UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_si512();                           \
    const size_t block = (size_t)kq * 16;                                                        \
    for (int p = 0; p < kq / 4; p++) {                                                           \
      __m512i wv[NB];                                                                            \
      UNROLL for (int j = 0; j < NB; j++) wv[j] = _mm512_loadu_si512(w + j * block + (size_t)p * 64);   \
      UNROLL for (int i = 0; i < MR; i++) {                                                             \
        __m512i xv = quad(xq + (size_t)i * kq + 4 * p);                                          \
        UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[j]);      \
      }                                                                                          \
    }                                                                                            \
    UNROLL for (int i = 0; i < MR; i++)                                                                 \
      UNROLL for (int j = 0; j < NB; j++)                                                               \
        finish16(acc[i][j], colsum + 16 * j, xs[i], scale + 16 * j, bias ? bias + 16 * j : 0,    \
                 out + (size_t)i * N + 16 * j);                                                  \
  }

VNNI_TILE(1, 8) VNNI_TILE(2, 4) VNNI_TILE(3, 4) VNNI_TILE(4, 4)
VNNI_TILE(5, 2) VNNI_TILE(6, 2) VNNI_TILE(7, 2) VNNI_TILE(8, 2)
VNNI_TILE(1, 1) VNNI_TILE(2, 1) VNNI_TILE(3, 1) VNNI_TILE(4, 1)
VNNI_TILE(5, 1) VNNI_TILE(6, 1) VNNI_TILE(7, 1) VNNI_TILE(8, 1)

typedef void (*vnni_fn)(const uint8_t *, const float *, int, const int8_t *, const float *,
                        const int32_t *, const float *, float *, int);
static const vnni_fn VNNI_WIDE[9] = {0, vnni_1_8, vnni_2_4, vnni_3_4, vnni_4_4,
                                     vnni_5_2, vnni_6_2, vnni_7_2, vnni_8_2};
static const int VNNI_NB[9] = {0, 8, 4, 4, 4, 2, 2, 2, 2};
static const vnni_fn VNNI_ONE[9] = {0, vnni_1_1, vnni_2_1, vnni_3_1, vnni_4_1,
                                    vnni_5_1, vnni_6_1, vnni_7_1, vnni_8_1};

GLL_AVX512_VNNI static void vnni_run(const uint8_t *xq, const float *xs, const int8_t *w,
                                     const float *scale, const int32_t *colsum, const float *bias,
                                     float *out, int M, int N, int kq, int threads) {
  const int blocks = N / 16, tasks = (blocks + VNNI_GROUP - 1) / VNNI_GROUP;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int t = 0; t < tasks; t++) {
    const int b0 = t * VNNI_GROUP, b1 = b0 + VNNI_GROUP < blocks ? b0 + VNNI_GROUP : blocks;
    for (int m0 = 0; m0 < M; m0 += 8) {
      const int mr = M - m0 < 8 ? M - m0 : 8, nb = VNNI_NB[mr];
      const uint8_t *xr = xq + (size_t)m0 * kq;
      float *os = out + (size_t)m0 * N;
      int b = b0;
      for (; b + nb <= b1; b += nb)
        VNNI_WIDE[mr](xr, xs + m0, kq, w + (size_t)b * kq * 16, scale + 16 * b, colsum + 16 * b,
                      bias ? bias + 16 * b : 0, os + 16 * b, N);
      for (; b < b1; b++)
        VNNI_ONE[mr](xr, xs + m0, kq, w + (size_t)b * kq * 16, scale + 16 * b, colsum + 16 * b,
                     bias ? bias + 16 * b : 0, os + 16 * b, N);
    }
  }
}

/* x: [M, K] fp32, w: [N/16][Kq/4][16][4] (pack_int8 layout 1), scale and colsum (sum_k q[n, k]):
 * [N], bias: [N] or NULL, out: [M, N] fp32. GLL_BAD_SHAPE (nothing written) unless M, N, K,
 * threads > 0, N % 16 == 0, K <= 65536; GLL_NO_MEMORY if the quantized rows' scratch fails. */
int gemm_int8_vnni(const float *x, const int8_t *w, const float *scale, const int32_t *colsum,
                   const float *bias, float *out, int M, int N, int K, int threads) {
  if (!x || !w || !scale || !colsum || !out || M <= 0 || N <= 0 || K <= 0 || K > VNNI_MAX_K ||
      threads <= 0 || N % 16)
    return GLL_BAD_SHAPE;
  const int kq = padded_k(K, INT8_VNNI_LAYOUT);
  uint8_t *xq = malloc((size_t)M * kq);
  float *xs = malloc((size_t)M * sizeof *xs);
  if (!xq || !xs) {
    free(xq), free(xs);
    return GLL_NO_MEMORY;
  }
  quantize_rows(x, M, K, kq, xq, xs);
  vnni_run(xq, xs, w, scale, colsum, bias, out, M, N, kq, threads);
  free(xq), free(xs);
  return GLL_OK;
}
