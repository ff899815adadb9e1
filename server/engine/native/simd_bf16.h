/* Helpers shared by the native kernels (gemm_bf16.c, attention_bf16.c, gpt2_bf16.c,
 * gemm_int8.c, attention_avx2.c, gemm_f16.c, llama_f16.c): the target attributes of their SIMD
 * functions, bf16 <-> fp32 with AVX-512, and a vector e^x (AVX-512 and AVX2) for the softmaxes,
 * the tanh of GELU and SiLU. */
#ifndef GLL_SIMD_BF16_H
#define GLL_SIMD_BF16_H

#include <immintrin.h>
#include <stdint.h>

/* The instructions a kernel may use, per function rather than as global -m flags: the library
 * compiles with plain `cc -O3` on any x86-64, and a function without this attribute (the
 * entry points' argument checks, pack_vnni) runs on any x86-64 too. Python calls a kernel only
 * where the CPU has all of these (server.engine.native_ops.missing_flags). */
#define GLL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
/* The int8 GEMM's two variants (gemm_int8.c), each called only where the CPU has its features
 * (server.engine.native_ops.INT8_VARIANTS): AVX2 + FMA (Zen 3 and later, Haswell and later),
 * and AVX-512 VNNI (Zen 4, Ice Lake and later). */
#define GLL_AVX2 __attribute__((target("avx2,fma")))
#define GLL_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
/* The decode attention's AVX2 variant (attention_avx2.c) and the fp16-weight GEMM
 * (gemm_f16.c): F16C converts fp16 caches and weights in registers (Zen 3, Haswell and later
 * all have it). */
#define GLL_AVX2_F16C __attribute__((target("avx2,fma,f16c")))

/* Return codes of the entry points (server.engine.native_ops raises on any but GLL_OK). */
#define GLL_OK 0
#define GLL_BAD_SHAPE -1 /* a size or geometry outside what the kernel takes: nothing written */
#define GLL_NO_MEMORY -2 /* a scratch allocation failed */

/* 16 bf16 values widened exactly to fp32. */
GLL_AVX512 static inline __m512 widen16(const uint16_t *p) {
  __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

/* 16 fp32 values rounded (to nearest even) to bf16. */
GLL_AVX512 static inline void store16(uint16_t *p, __m512 v) {
  _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
}

/* e^x for x <= 0: 2^n * 2^f, f in [-0.5, 0.5], 2^f by its degree-6 Taylor polynomial
 * (relative error ~1e-7). */
GLL_AVX512 static inline __m512 exp_nonpos(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

/* e^x for x <= 0 in 8 fp32 lanes (AVX2: attention_avx2.c's softmax, llama_f16.c's SiLU), as
 * exp_nonpos: 2^n * 2^f, 2^f by its degree-6 Taylor
 * polynomial; x >= -87 keeps 2^n a normal float (n >= -126), built in its exponent bits. */
GLL_AVX2_F16C static inline __m256 exp8_nonpos(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
  __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_mul_ps(_mm256_sub_ps(t, n), _mm256_set1_ps(0.6931471805599453f));
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* The fixed horizontal sum of 8 fp32 lanes, ((0+4)+(2+6)) + ((1+5)+(3+7)): the norms of
 * llama_f16.c and gpt2_f16.c (one order for every row: batch invariance). */
GLL_AVX2_F16C static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* h += y in fp32 (a residual add, as torch's float32 add); n % 8 == 0. */
GLL_AVX2_F16C static inline void add8_into(float *h, const float *y, int64_t n) {
  for (int64_t i = 0; i < n; i += 8)
    _mm256_storeu_ps(h + i, _mm256_add_ps(_mm256_loadu_ps(h + i), _mm256_loadu_ps(y + i)));
}

#endif
