/* A Llama-family decoder's layers (Llama, Qwen2, Mistral) in bf16 over the rows of one step, in
 * C, for a model served by the native bf16 kernels (bfloat16+native: AVX-512 BF16).
 *
 * Why: with the GEMMs (gemm_bf16.c) and the decode attention (attention_bf16.c) native, a lone
 * qwen2.5-1.5b token still paid 7 ms of a 107 ms step for the rest of its 28 layers (AMD EPYC
 * Zen 4, 2 threads, `python -m bench step paths`: torch layers 106.8 ms, the GEMMs alone 99.6):
 * RMSNorm, RoPE, SiLU, the products, the residual adds and the views, ~25 torch calls a layer.
 * Here a layer is two C calls around the attention, and a step in which every row decodes one
 * token runs every layer in one call (gpt2_bf16.c's plan; llama_f16.c's on the fp16 GEMM).
 *
 * A layer, per row, in the operations and roundings of the bf16 model's torch forward
 * (server.engine.llama_forward, transformers' order):
 *   x = bf16(w1 * bf16(h / sqrt(mean(h^2) + eps)))       the mean in fp32
 *   q, k, v = x Wq + bq, x Wk + bk, x Wv + bv             three GEMMs (Qwen2's biases)
 *   q, k = bf16(bf16(x cos) + bf16(swap(x) sin))          bf16 tables, sines signed
 *   att = attention(q, k, v over the cache)               attention_bf16.c (torch for prompts)
 *   h = bf16(h + att Wo)
 *   x = bf16(w2 * bf16(h / sqrt(mean(h^2) + eps)))
 *   a = bf16(bf16(silu(x Wgate)) * x Wup)                 silu(g) = g / (1 + e^-g)
 *   h = bf16(h + a Wdown)
 * Two operations are not torch's to the bit: the norm's sum of squares is in another order
 * and its 1/sqrt is not torch's rsqrt, and SiLU's exponential is a polynomial; each can move
 * a bf16 rounding by one step, so logits differ from the torch forward's by bf16 rounding (a
 * stated tolerance in tests/test_native_llama_bf16.py). Every row is computed by the same
 * code in the same order whatever the other rows of the step, so a row's tokens are the same
 * alone, batched, or beside a prompt chunk.
 *
 * q|k|v and gate|up are not fused: each part is its own gemm_bf16 call writing its own
 * buffer. A fused, stacked weight measured 0.996x / 1.026x at 1 / 8 rows on this kernel
 * (results/profile/README.md): the parts' calls already stream at the memory's speed.
 *
 * Threads: the GEMMs and the attention run their own OpenMP loops (threads); the row-wise
 * parts here split rows over the same threads when a step has more than a few.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "simd_bf16.h"

enum { MAX_DIM = 256, PARALLEL_ROWS = 8 /* row-wise parts run threaded from here */ };

/* v rounded to bf16 and widened back: where torch's bf16 forward stores an intermediate. */
GLL_AVX512 static inline __m512 round16(__m512 v) {
  __m512i b = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
}

/* out[r] = bf16(w * bf16(x[r] / sqrt(mean(x[r]^2) + eps))); width % 16 == 0. */
GLL_AVX512 static void rms_norm(const uint16_t *x, const uint16_t *w, uint16_t *out, int rows,
                                int width, float eps, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++) {
    const uint16_t *xr = x + (int64_t)r * width;
    uint16_t *o = out + (int64_t)r * width;
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < width; i += 16) {
      __m512 v = widen16(xr + i);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) / width + eps));
    for (int i = 0; i < width; i += 16)
      store16(o + i, _mm512_mul_ps(widen16(w + i), round16(_mm512_mul_ps(widen16(xr + i), inv))));
  }
}

/* Rotate `heads` heads of `dim` of each row of x (row r at x + r * row_stride) by the row's
 * bf16 cos and signed sin [dim]: bf16(bf16(x cos) + bf16(swap(x) sin)), swap(x) = x's two
 * halves exchanged. dim % 16 == 0, dim <= MAX_DIM. */
GLL_AVX512 static void rope(uint16_t *x, int64_t row_stride, const uint16_t *cos,
                            const uint16_t *sin, int rows, int heads, int dim, int threads) {
  const int half = dim / 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++) {
    const uint16_t *c = cos + (int64_t)r * dim, *s = sin + (int64_t)r * dim;
    for (int h = 0; h < heads; h++) {
      uint16_t *xh = x + (int64_t)r * row_stride + (int64_t)h * dim;
      uint16_t swapped[MAX_DIM];
      memcpy(swapped, xh + half, sizeof(uint16_t) * half);
      memcpy(swapped + half, xh, sizeof(uint16_t) * half);
      for (int i = 0; i < dim; i += 16) {
        __m512 a = round16(_mm512_mul_ps(widen16(xh + i), widen16(c + i)));
        __m512 b = round16(_mm512_mul_ps(widen16(swapped + i), widen16(s + i)));
        store16(xh + i, _mm512_add_ps(a, b));
      }
    }
  }
}

/* gate[r] = bf16(bf16(silu(gate[r])) * up[r]) in place, `inter` wide; inter % 16 == 0.
 * silu(g) = g * sigmoid(g), sigmoid from e = e^-|g| (never overflows): 1/(1+e) or e/(1+e). */
GLL_AVX512 static void swiglu(uint16_t *gate, const uint16_t *up, int rows, int inter,
                              int threads) {
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++) {
    uint16_t *g = gate + (int64_t)r * inter;
    const uint16_t *u = up + (int64_t)r * inter;
    for (int i = 0; i < inter; i += 16) {
      __m512 v = widen16(g + i);
      __m512 e = exp_nonpos(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(v)));
      __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
      __m512 num = _mm512_mask_blend_ps(neg, one, e); /* v < 0: e, else 1 */
      __m512 silu = round16(_mm512_mul_ps(v, _mm512_div_ps(num, _mm512_add_ps(one, e))));
      store16(g + i, _mm512_mul_ps(silu, widen16(u + i)));
    }
  }
}

/* h += y, rounded to bf16 (torch's bf16 add); n % 16 == 0. */
GLL_AVX512 static void add_into(uint16_t *h, const uint16_t *y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) store16(h + i, _mm512_add_ps(widen16(h + i), widen16(y + i)));
}

/* The sizes every entry point takes (plain C: runs on any x86-64); the caller
 * (server.engine.native_llama) checks these and the buffers' shapes before calling. */
static int step_check(const llama_bf16_block *b, const llama_bf16_step *s, const uint16_t *h,
                      int rows) {
  if (!b || !s || !h || rows <= 0 || s->width <= 0 || s->inter <= 0 || s->heads <= 0 ||
      s->kv_heads <= 0 || s->dim <= 0 || s->threads <= 0 || s->width % 16 || s->inter % 16 ||
      s->dim % 16 || s->dim > MAX_DIM || s->heads % s->kv_heads)
    return GLL_BAD_SHAPE;
  if (!s->cos || !s->sin || !s->x || !s->q || !s->k || !s->v || !s->att || !s->gate ||
      !s->up || !s->y)
    return GLL_BAD_SHAPE;
  return GLL_OK;
}

GLL_AVX512 static int attn_in_run(const llama_bf16_block *b, const llama_bf16_step *s,
                                  const uint16_t *h, int rows) {
  const int q_wide = s->heads * s->dim, kv_wide = s->kv_heads * s->dim;
  rms_norm(h, b->norm1, s->x, rows, s->width, s->eps, s->threads);
  int status = gemm_bf16(s->x, b->q_w, b->q_b, s->q, rows, q_wide, s->width, s->threads);
  if (status == GLL_OK)
    status = gemm_bf16(s->x, b->k_w, b->k_b, s->k, rows, kv_wide, s->width, s->threads);
  if (status == GLL_OK)
    status = gemm_bf16(s->x, b->v_w, b->v_b, s->v, rows, kv_wide, s->width, s->threads);
  if (status != GLL_OK) return status;
  rope(s->q, q_wide, s->cos, s->sin, rows, s->heads, s->dim, s->threads);
  rope(s->k, kv_wide, s->cos, s->sin, rows, s->kv_heads, s->dim, s->threads);
  return GLL_OK;
}

GLL_AVX512 static int attn_out_run(const llama_bf16_block *b, const llama_bf16_step *s,
                                   uint16_t *h, int rows) {
  const int64_t cells = (int64_t)rows * s->width;
  int status = gemm_bf16(s->att, b->o_w, 0, s->y, rows, s->width, s->heads * s->dim,
                         s->threads);
  if (status != GLL_OK) return status;
  add_into(h, s->y, cells);
  rms_norm(h, b->norm2, s->x, rows, s->width, s->eps, s->threads);
  status = gemm_bf16(s->x, b->gate_w, 0, s->gate, rows, s->inter, s->width, s->threads);
  if (status == GLL_OK)
    status = gemm_bf16(s->x, b->up_w, 0, s->up, rows, s->inter, s->width, s->threads);
  if (status != GLL_OK) return status;
  swiglu(s->gate, s->up, rows, s->inter, s->threads);
  status = gemm_bf16(s->gate, b->down_w, 0, s->y, rows, s->width, s->inter, s->threads);
  if (status != GLL_OK) return status;
  add_into(h, s->y, cells);
  return GLL_OK;
}

/* Before the attention: x = RMSNorm(h); q, k, v = x W + b; q and k rotated. GLL_OK or
 * GLL_BAD_SHAPE (nothing written). */
int llama_bf16_attn_in(const llama_bf16_block *b, const llama_bf16_step *s, const uint16_t *h,
                       int rows) {
  int status = step_check(b, s, h, rows);
  return status != GLL_OK ? status : attn_in_run(b, s, h, rows);
}

/* After the attention (s->att): h += att Wo; h += down(silu(gate(x)) * up(x)), x =
 * RMSNorm(h). GLL_OK or GLL_BAD_SHAPE (nothing written). */
int llama_bf16_attn_out(const llama_bf16_block *b, const llama_bf16_step *s, uint16_t *h,
                        int rows) {
  int status = step_check(b, s, h, rows);
  return status != GLL_OK ? status : attn_out_run(b, s, h, rows);
}

/* Every layer of a step in which each of the rows decodes one token (row r is token r; its
 * cache as attend_decode_bf16 takes it: bf16). Returns GLL_OK; GLL_BAD_SHAPE if a size is
 * outside what the kernels take (checked before the first layer: nothing written then); or
 * the first failing kernel's code (h is then partly computed and the step must fail). */
int llama_bf16_decode(const llama_bf16_block *blocks, int layers, const llama_bf16_step *s,
                      uint16_t *h, int rows, uint16_t *const *stores, const int64_t *caps,
                      const int64_t *lens, const int64_t *tokens) {
  int status = step_check(blocks, s, h, rows);
  if (status != GLL_OK || layers <= 0) return GLL_BAD_SHAPE;
  const int64_t q_wide = (int64_t)s->heads * s->dim, kv_wide = (int64_t)s->kv_heads * s->dim;
  const decode_qkv in = {s->q, s->k, s->v, q_wide, s->dim, kv_wide, s->dim, kv_wide, s->dim};
  /* The whole step's geometry, once, with the last layer (attend_decode_bf16 checks its own
   * again per layer: cheap). */
  status = attend_decode_check(&in, stores, caps, lens, tokens, rows, layers - 1, s->heads,
                               s->kv_heads, s->dim, s->att, s->threads);
  if (status != GLL_OK) return status;
  for (int l = 0; l < layers; l++) {
    status = attn_in_run(&blocks[l], s, h, rows);
    if (status == GLL_OK)
      status = attend_decode_bf16(&in, stores, caps, lens, tokens, rows, l, s->heads,
                                  s->kv_heads, s->dim, s->scale, s->att, q_wide, s->threads);
    if (status == GLL_OK) status = attn_out_run(&blocks[l], s, h, rows);
    if (status != GLL_OK) return status;
  }
  return GLL_OK;
}
