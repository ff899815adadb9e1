/* fp16-weight matrix multiply for decode steps: half float32's bytes, computed in float32.
 *
 * out[m, n] = sum_k x[m, k] * w[n, k] + bias[n]: x [M, K] fp32 row-major, w [N, K] fp16
 * ROW-MAJOR (torch's Linear and Embedding layout: a model's fp16 embedding table is its tied
 * LM head's weight as it lies, no packed copy), bias [N] fp32 or NULL, out [M, N] fp32.
 *
 * AVX2 + FMA + F16C (Zen 3, Haswell and later). A register tile holds MR rows x NR outputs,
 * one 8-lane accumulator each: per 8 k, MR activation vectors are loaded once and each of the
 * NR weight rows' 8 halves is widened once (vcvtph2ps) and multiplied into MR accumulators.
 * At one row the tile streams 8 weight rows side by side (8 independent FMA chains, 8 DRAM
 * streams the prefetchers follow). Calls of 2+ rows also prefetch the next tile's weights into
 * L2 (they compute more per byte, and later passes re-read the group); a one-row call leaves
 * that to the hardware prefetchers, which stream it faster alone (a standalone loop over
 * qwen2.5-1.5b's shapes, 2 threads, AMD EPYC Zen 3: 29-32 GB/s against 26-28 prefetched). The K % 8 tail is one more step over zero-padded copies,
 * then each accumulator is summed horizontally by one fixed function (simd_bf16.h's hsum8),
 * then the bias added.
 *
 * Batch invariance: every output is summed in the same order (k in steps of 8 in order, the
 * tail, the same horizontal sum) whatever the tile, so a row's result does not depend on the
 * other rows of the call, bit for bit. Threads: an OpenMP loop over groups of output rows, on
 * torch's pool (see gemm_bf16.c); a group is ~96 KB of weights, so the tiles after the first
 * 4 rows re-read it from L2.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "simd_bf16.h"

#define UNROLL _Pragma("GCC unroll 16") /* accumulators in registers (see gemm_int8.c) */
#define GROUP_BYTES (96 * 1024)         /* weights per parallel task (fits Zen 3's 512 KB L2) */
#define MAX_ROWS 4                      /* rows per register tile */

GLL_AVX2_F16C static inline __m256 widen_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* MR rows x NR outputs: MR * NR accumulators + the activations + 1 weight in 16 registers
 * (at 3-4 rows the compiler reads activations as FMA memory operands from L1). 12 accumulators
 * at 3 and 4 rows: 12 independent FMA chains hide the FMA latency that 8 or 9 did not
 * (one process, alternating, over qwen2.5-1.5b's shapes on the AMD EPYC Zen 3: 4 x 3 against
 * 4 x 2 read 8% faster at 4 rows, 18% at 8, 28% at 16; 3 x 4 against 3 x 3 12% at 3 rows;
 * 2 x 6 was 7% slower than 2 x 4). The tail's zero-padded copies: x's last K % 8 of each row,
 * w's of each output. */
#define F16_TILE(MR, NR)                                                                        \
  GLL_AVX2_F16C static void f16_##MR##_##NR(const float *x, const uint16_t *w, const float *bias, \
                                            float *out, int N, int K, int ahead_too) {          \
    __m256 acc[MR][NR];                                                                         \
    UNROLL for (int i = 0; i < MR; i++) UNROLL for (int j = 0; j < NR; j++) acc[i][j] =         \
        _mm256_setzero_ps();                                                                    \
    const int k8 = K & ~7;                                                                      \
    const char *ahead = (const char *)(w + (size_t)NR * K); /* the next tile's weights */      \
    for (int k = 0; k < k8; k += 8) {                                                           \
      if (NR > 1 && ahead_too)                                                                  \
        for (int p = 0; p < NR * 16; p += 64)                                                   \
          _mm_prefetch(ahead + (size_t)k * NR * 2 + p, _MM_HINT_T1);                            \
      __m256 xv[MR];                                                                            \
      UNROLL for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + (size_t)i * K + k);       \
      UNROLL for (int j = 0; j < NR; j++) {                                                     \
        __m256 wv = widen_f16(w + (size_t)j * K + k);                                           \
        UNROLL for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(wv, xv[i], acc[i][j]);  \
      }                                                                                         \
    }                                                                                           \
    if (k8 < K) {                                                                               \
      float xt[MR][8] = {{0}};                                                                  \
      uint16_t wt[NR][8] = {{0}};                                                               \
      for (int i = 0; i < MR; i++) memcpy(xt[i], x + (size_t)i * K + k8, (K - k8) * 4);         \
      for (int j = 0; j < NR; j++) memcpy(wt[j], w + (size_t)j * K + k8, (K - k8) * 2);         \
      UNROLL for (int j = 0; j < NR; j++) {                                                     \
        __m256 wv = widen_f16(wt[j]);                                                           \
        UNROLL for (int i = 0; i < MR; i++)                                                     \
          acc[i][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xt[i]), acc[i][j]);                   \
      }                                                                                         \
    }                                                                                           \
    UNROLL for (int i = 0; i < MR; i++) UNROLL for (int j = 0; j < NR; j++)                     \
        out[(size_t)i * N + j] = hsum8(acc[i][j]) + (bias ? bias[j] : 0.0f);                     \
  }

F16_TILE(1, 8) F16_TILE(2, 4) F16_TILE(3, 4) F16_TILE(4, 3) F16_TILE(4, 2)
F16_TILE(1, 1) F16_TILE(2, 1) F16_TILE(3, 1) F16_TILE(4, 1)

typedef void (*f16_fn)(const float *, const uint16_t *, const float *, float *, int, int, int);
static const f16_fn F16_WIDE[MAX_ROWS + 1] = {0, f16_1_8, f16_2_4, f16_3_4, f16_4_3};
static const int F16_NR[MAX_ROWS + 1] = {0, 8, 4, 4, 3};
static const f16_fn F16_ONE[MAX_ROWS + 1] = {0, f16_1_1, f16_2_1, f16_3_1, f16_4_1};

GLL_AVX2_F16C static void f16_run(const float *x, const uint16_t *w, const float *bias, float *out,
                                  int M, int N, int K, int threads) {
  /* Outputs per task: ~GROUP_BYTES of weights, a multiple of the one-row tile's 8. */
  int group = (int)(GROUP_BYTES / ((size_t)K * 2)) / 8 * 8;
  group = group < 8 ? 8 : group;
  const int tasks = (N + group - 1) / group;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int t = 0; t < tasks; t++) {
    const int n0 = t * group, n1 = n0 + group < N ? n0 + group : N;
    const int ahead_too = M > 1; /* see the header: one row streams faster unprefetched */
    for (int m0 = 0; m0 < M; m0 += MAX_ROWS) {
      const int mr = M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS, nr = F16_NR[mr];
      const float *xs = x + (size_t)m0 * K;
      float *os = out + (size_t)m0 * N;
      int n = n0;
      for (; n + nr <= n1; n += nr)
        F16_WIDE[mr](xs, w + (size_t)n * K, bias ? bias + n : 0, os + n, N, K, ahead_too);
      /* A group is a multiple of 8 outputs, not of 3: its last 2 take a 4 x 2 tile, not two
       * 4 x 1 (4 FMA chains; 6% of a group's outputs at a third of the speed). */
      if (mr == MAX_ROWS)
        for (; n + 2 <= n1; n += 2)
          f16_4_2(xs, w + (size_t)n * K, bias ? bias + n : 0, os + n, N, K, ahead_too);
      for (; n < n1; n++) F16_ONE[mr](xs, w + (size_t)n * K, bias ? bias + n : 0, os + n, N, K, 0);
    }
  }
}

/* x: [M, K] fp32, w: [N, K] fp16 row-major, bias: [N] fp32 or NULL, out: [M, N] fp32.
 * GLL_BAD_SHAPE (nothing written) unless x, w, out are given and M, N, K, threads > 0. Plain C
 * up to the call: the checks run on any x86-64. */
int gemm_f16(const float *x, const uint16_t *w, const float *bias, float *out, int M, int N, int K,
             int threads) {
  if (!x || !w || !out || M <= 0 || N <= 0 || K <= 0 || threads <= 0) return GLL_BAD_SHAPE;
  f16_run(x, w, bias, out, M, N, K, threads);
  return GLL_OK;
}
