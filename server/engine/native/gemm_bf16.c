/* bf16 matrix multiply for decode steps and prompt chunks, AVX-512 BF16 (vdpbf16ps).
 *
 * out[m, n] = sum_k x[m, k] * w[n, k] + bias[n], in bf16, summed in fp32.
 *
 * The weight is packed once (pack_vnni) into blocks of 16 outputs: [N/16][K/2][16][2], so
 * one 64-byte load holds 2 consecutive k of 16 outputs, the pair vdpbf16ps multiplies with
 * a broadcast pair of x. Outputs live in vector lanes: no horizontal sums. A register tile
 * is MR rows of x by NB blocks of 16 outputs; each weight vector loaded feeds MR rows.
 *
 * Every output is summed over k in the same order whatever M or the tile, so a row's
 * result does not depend on the other rows of the call (batch invariance, bit for bit).
 *
 * Threads: an OpenMP loop over groups of output blocks. Built against libgomp.so.1 and
 * loaded into a process where torch already loaded its own libgomp.so.1: the loader reuses
 * that library (same soname), so these loops share torch's thread pool and thread count.
 */
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "simd_bf16.h"

/* w: [N, K] row-major bf16 -> dst: [N/16][K/2][16][2]; N % 16 == 0, K % 2 == 0 (else
 * GLL_BAD_SHAPE, nothing written). Plain C: runs on any x86-64. */
int pack_vnni(const uint16_t *w, uint16_t *dst, int N, int K) {
  if (!w || !dst || N <= 0 || K <= 0 || N % 16 || K % 2) return GLL_BAD_SHAPE;
  for (int b = 0; b < N / 16; b++)
    for (int p = 0; p < K / 2; p++)
      for (int j = 0; j < 16; j++) {
        uint16_t *d = dst + (((size_t)b * (K / 2) + p) * 16 + j) * 2;
        const uint16_t *s = w + (size_t)(b * 16 + j) * K + 2 * p;
        d[0] = s[0];
        d[1] = s[1];
      }
  return GLL_OK;
}

GLL_AVX512 static inline __m512i pair(const uint16_t *x) {
  int32_t v;
  memcpy(&v, x, 4);
  return _mm512_set1_epi32(v);
}

GLL_AVX512 static inline void finish(__m512 acc, const uint16_t *bias, uint16_t *out) {
  if (bias) {
    __m512i b = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)bias)), 16);
    acc = _mm512_add_ps(acc, _mm512_castsi512_ps(b));
  }
  _mm256_storeu_si256((__m256i *)out, (__m256i)_mm512_cvtneps_pbh(acc));
}

#define TILE(MR, NB)                                                                      \
  GLL_AVX512 static void tile_##MR##_##NB(const uint16_t *x, int K, const uint16_t *w,               \
                               const uint16_t *bias, uint16_t *out, int N) {              \
    __m512 acc[MR][NB];                                                                   \
    for (int i = 0; i < MR; i++)                                                          \
      for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();                       \
    const size_t block = (size_t)K * 16;                                                  \
    for (int p = 0; p < K / 2; p++) {                                                     \
      __m512i wv[NB];                                                                     \
      for (int j = 0; j < NB; j++) wv[j] = _mm512_loadu_si512(w + j * block + (size_t)p * 32); \
      for (int i = 0; i < MR; i++) {                                                      \
        __m512bh xv = (__m512bh)pair(x + (size_t)i * K + 2 * p);                          \
        for (int j = 0; j < NB; j++)                                                      \
          acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv[j], xv);                   \
      }                                                                                   \
    }                                                                                     \
    for (int i = 0; i < MR; i++)                                                          \
      for (int j = 0; j < NB; j++)                                                        \
        finish(acc[i][j], bias ? bias + 16 * j : 0, out + (size_t)i * N + 16 * j);        \
  }

/* Wide tiles keep MR x NB accumulators within the 32 vector registers; NB is what is
   left for weight streams (8 at one row: enough loads in flight to reach the memory's
   speed). The one-block tiles finish a group whose block count NB does not divide. */
TILE(1, 8) TILE(2, 4) TILE(3, 4) TILE(4, 4) TILE(5, 2) TILE(6, 2) TILE(7, 2) TILE(8, 2)
TILE(1, 1) TILE(2, 1) TILE(3, 1) TILE(4, 1) TILE(5, 1) TILE(6, 1) TILE(7, 1) TILE(8, 1)

typedef void (*tile_fn)(const uint16_t *, int, const uint16_t *, const uint16_t *, uint16_t *, int);
static const tile_fn WIDE[9] = {0, tile_1_8, tile_2_4, tile_3_4, tile_4_4,
                                tile_5_2, tile_6_2, tile_7_2, tile_8_2};
static const int WIDE_NB[9] = {0, 8, 4, 4, 4, 2, 2, 2, 2};
static const tile_fn ONE[9] = {0, tile_1_1, tile_2_1, tile_3_1, tile_4_1,
                               tile_5_1, tile_6_1, tile_7_1, tile_8_1};
#define GROUP 8 /* 16-output blocks per parallel task */

GLL_AVX512 static void gemm_run(const uint16_t *x, const uint16_t *w, const uint16_t *bias,
                                uint16_t *out, int M, int N, int K, int threads) {
  const int blocks = N / 16, tasks = (blocks + GROUP - 1) / GROUP;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int t = 0; t < tasks; t++) {
    const int b0 = t * GROUP, b1 = b0 + GROUP < blocks ? b0 + GROUP : blocks;
    for (int m0 = 0; m0 < M; m0 += 8) {
      const int mr = M - m0 < 8 ? M - m0 : 8, nb = WIDE_NB[mr];
      const uint16_t *xs = x + (size_t)m0 * K;
      uint16_t *os = out + (size_t)m0 * N;
      int b = b0;
      for (; b + nb <= b1; b += nb)
        WIDE[mr](xs, K, w + (size_t)b * K * 16, bias ? bias + 16 * b : 0, os + 16 * b, N);
      for (; b < b1; b++)
        ONE[mr](xs, K, w + (size_t)b * K * 16, bias ? bias + 16 * b : 0, os + 16 * b, N);
    }
  }
}

/* x: [M, K] bf16, w: packed [N/16][K/2][16][2], bias: [N] or NULL, out: [M, N], on
   ``threads`` threads (torch's count: the calling thread's OpenMP default may differ).
   GLL_BAD_SHAPE (nothing written) unless M, N, K, threads > 0, N % 16 == 0, K % 2 == 0. */
int gemm_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *out, int M,
              int N, int K, int threads) {
  if (!x || !w || !out || M <= 0 || N <= 0 || K <= 0 || threads <= 0 || N % 16 || K % 2)
    return GLL_BAD_SHAPE;
  gemm_run(x, w, bias, out, M, N, K, threads);
  return GLL_OK;
}
