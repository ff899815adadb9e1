/* A Llama-family decoder's layers (Llama, Qwen2, Mistral) over the rows of one step, in C, for
 * a model served by the fp16-weight GEMM (float16+native: AVX2 + FMA + F16C).
 *
 * Why: with the GEMMs (gemm_f16.c) and the decode attention (attention_avx2.c) native, a lone
 * qwen2.5-1.5b token still paid ~18 ms of a 126 ms step for the rest of its 28 layers (AMD
 * EPYC Zen 3, 2 threads): RMSNorm alone is ~8 torch calls (4.3 ms a step), RoPE 8 more,
 * SiLU, the products, the residual adds and the views ~10 more, each a few microseconds of
 * dispatch for a few of work. Here a layer is two C calls around the attention, and a step in
 * which every row decodes one token runs every layer in one call (gpt2_bf16.c's plan for
 * GPT-2 on AVX-512 BF16).
 *
 * A layer, per row (everything fp32 but the fp16 weights, as the float16+native model's torch
 * forward computes it; server.engine.llama_forward):
 *   x = RMSNorm(h) * w1                      sum of squares in 8 lanes, 1/sqrt(mean + eps)
 *   q|k|v = x Wqkv + b                       one fused GEMM (Qwen2's biases, Llama's none)
 *   q, k = RoPE(q, k)                        x cos + swap(x) sin, sines signed by the caller
 *   att = attention(q, k, v over the cache)  attention_avx2.c (or torch, for prompt rows)
 *   h += att Wo
 *   x = RMSNorm(h) * w2
 *   g|u = x Wgate_up;  a = silu(g) * u       silu(g) = g / (1 + e^-g), exp as the softmax's
 *   h += a Wdown
 * The sums are in other orders than torch's (the norm's 8-lane sum; the exp polynomial), so
 * logits differ from the torch forward's by float32 rounding; every row is computed by the same
 * code in the same order whatever the other rows of the step, so a row's tokens are the same
 * alone, batched, or beside a prompt chunk (tests/test_native_llama.py).
 *
 * Threads: the GEMMs and the attention run their own OpenMP loops (threads); the row-wise
 * parts here split rows over the same threads when a step has more than a few.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "simd_bf16.h"

enum { MAX_DIM = 256, PARALLEL_ROWS = 8 /* row-wise parts run threaded from here */ };

/* out[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps)); width % 8 == 0. */
GLL_AVX2_F16C static void rms_norm(const float *x, const float *w, float *out, int rows,
                                   int width, float eps, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * width;
    float *o = out + (int64_t)r * width;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < width; i += 8) {
      __m256 v = _mm256_loadu_ps(xr + i);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sqrtf(hsum8(acc) / (float)width + eps));
    for (int i = 0; i < width; i += 8)
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(w + i),
                                            _mm256_mul_ps(_mm256_loadu_ps(xr + i), inv)));
  }
}

/* Rotate each row's first `heads` heads of `dim` (its queries then its keys, side by side in
 * the fused projection's output) by the row's cos and signed sin [dim]: x cos + swap(x) sin,
 * swap(x) = x's two halves exchanged. dim % 16 == 0, dim <= MAX_DIM. */
GLL_AVX2_F16C static void rope(float *qkv, int64_t row_stride, const float *cos,
                               const float *sin, int rows, int heads, int dim, int threads) {
  const int half = dim / 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++) {
    const float *c = cos + (int64_t)r * dim, *s = sin + (int64_t)r * dim;
    for (int h = 0; h < heads; h++) {
      float *x = qkv + (int64_t)r * row_stride + (int64_t)h * dim;
      float swapped[MAX_DIM];
      memcpy(swapped, x + half, sizeof(float) * half);
      memcpy(swapped + half, x, sizeof(float) * half);
      for (int i = 0; i < dim; i += 8) {
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(c + i));
        __m256 b = _mm256_mul_ps(_mm256_loadu_ps(swapped + i), _mm256_loadu_ps(s + i));
        _mm256_storeu_ps(x + i, _mm256_add_ps(a, b));
      }
    }
  }
}

/* act[r] = silu(gate) * up of gate_up[r] = [gate | up], each `inter` wide; inter % 8 == 0.
 * silu(g) = g * sigmoid(g), sigmoid from e = e^-|g| (never overflows): 1/(1+e) or e/(1+e). */
GLL_AVX2_F16C static void swiglu(const float *gate_up, float *act, int rows, int inter,
                                 int threads) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++) {
    const float *g = gate_up + (int64_t)r * 2 * inter, *u = g + inter;
    float *a = act + (int64_t)r * inter;
    for (int i = 0; i < inter; i += 8) {
      __m256 v = _mm256_loadu_ps(g + i);
      __m256 e = exp8_nonpos(_mm256_or_ps(v, sign)); /* e^-|v| */
      __m256 num = _mm256_blendv_ps(one, e, v);      /* v < 0 (sign bit set): e, else 1 */
      __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
      _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_mul_ps(v, sig), _mm256_loadu_ps(u + i)));
    }
  }
}

static int qkv_width(const llama_step *s) { return (s->heads + 2 * s->kv_heads) * s->dim; }

/* The sizes every entry point takes (plain C: runs on any x86-64); the caller
 * (server.engine.native_llama) checks these and the buffers' shapes before calling. */
static int step_check(const llama_block *b, const llama_step *s, const float *h, int rows) {
  if (!b || !s || !h || rows <= 0 || s->width <= 0 || s->inter <= 0 || s->heads <= 0 ||
      s->kv_heads <= 0 || s->dim <= 0 || s->threads <= 0 || s->width % 8 || s->inter % 8 ||
      s->dim % 16 || s->dim > MAX_DIM || s->heads % s->kv_heads)
    return GLL_BAD_SHAPE;
  if (!s->cos || !s->sin || !s->x || !s->qkv || !s->att || !s->inner || !s->act || !s->y)
    return GLL_BAD_SHAPE;
  return GLL_OK;
}

GLL_AVX2_F16C static int attn_in_run(const llama_block *b, const llama_step *s, const float *h,
                                     int rows) {
  const int wide = qkv_width(s);
  rms_norm(h, b->norm1, s->x, rows, s->width, s->eps, s->threads);
  int status = gemm_f16(s->x, b->qkv_w, b->qkv_b, s->qkv, rows, wide, s->width, s->threads);
  if (status == GLL_OK)
    rope(s->qkv, wide, s->cos, s->sin, rows, s->heads + s->kv_heads, s->dim, s->threads);
  return status;
}

GLL_AVX2_F16C static int attn_out_run(const llama_block *b, const llama_step *s, float *h,
                                      int rows) {
  const int64_t cells = (int64_t)rows * s->width;
  int status = gemm_f16(s->att, b->o_w, 0, s->y, rows, s->width, s->heads * s->dim, s->threads);
  if (status != GLL_OK) return status;
  add8_into(h, s->y, cells);
  rms_norm(h, b->norm2, s->x, rows, s->width, s->eps, s->threads);
  status = gemm_f16(s->x, b->gate_up_w, 0, s->inner, rows, 2 * s->inter, s->width, s->threads);
  if (status != GLL_OK) return status;
  swiglu(s->inner, s->act, rows, s->inter, s->threads);
  status = gemm_f16(s->act, b->down_w, 0, s->y, rows, s->width, s->inter, s->threads);
  if (status != GLL_OK) return status;
  add8_into(h, s->y, cells);
  return GLL_OK;
}

/* Before the attention: x = RMSNorm(h), qkv = x Wqkv + b, q and k rotated. GLL_OK or
 * GLL_BAD_SHAPE (nothing written). */
int llama_attn_in(const llama_block *b, const llama_step *s, const float *h, int rows) {
  int status = step_check(b, s, h, rows);
  return status != GLL_OK ? status : attn_in_run(b, s, h, rows);
}

/* After the attention (s->att): h += att Wo; h += down(silu(gate(x)) * up(x)), x =
 * RMSNorm(h). GLL_OK or GLL_BAD_SHAPE (nothing written). */
int llama_attn_out(const llama_block *b, const llama_step *s, float *h, int rows) {
  int status = step_check(b, s, h, rows);
  return status != GLL_OK ? status : attn_out_run(b, s, h, rows);
}

/* Every layer of a step in which each of the rows decodes one token (row r is token r; its
 * cache as attend_decode_avx2 takes it, of cache_dtype with its scales). Returns GLL_OK;
 * GLL_BAD_SHAPE if a size is outside what the kernels take (checked before the first layer:
 * nothing written then); or the first failing kernel's code (GLL_NO_MEMORY from the
 * attention: h is then partly computed and the step must fail). */
int llama_decode(const llama_block *blocks, int layers, const llama_step *s, float *h, int rows,
                 uint16_t *const *stores, int cache_dtype, float *const *scales,
                 const int64_t *caps, const int64_t *lens, const int64_t *tokens) {
  int status = step_check(blocks, s, h, rows);
  if (status != GLL_OK || layers <= 0) return GLL_BAD_SHAPE;
  const int64_t wide = qkv_width(s), q_end = (int64_t)s->heads * s->dim;
  const decode_qkv in = {s->qkv, s->qkv + q_end, s->qkv + q_end + (int64_t)s->kv_heads * s->dim,
                         wide, s->dim, wide, s->dim, wide, s->dim};
  /* The whole step's geometry, once, with the last layer (attend_decode_avx2 checks its own
   * again per layer: cheap, and the dtypes). */
  status = attend_decode_check(&in, stores, caps, lens, tokens, rows, layers - 1, s->heads,
                               s->kv_heads, s->dim, s->att, s->threads);
  if (status != GLL_OK) return status;
  for (int l = 0; l < layers; l++) {
    status = attn_in_run(&blocks[l], s, h, rows);
    if (status == GLL_OK)
      status = attend_decode_avx2(&in, GLL_F32, stores, cache_dtype, scales, caps, lens, tokens,
                                  rows, l, s->heads, s->kv_heads, s->dim, s->scale, s->att,
                                  q_end, s->threads);
    if (status == GLL_OK) status = attn_out_run(&blocks[l], s, h, rows);
    if (status != GLL_OK) return status;
  }
  return GLL_OK;
}
