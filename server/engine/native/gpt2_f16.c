/* GPT-2's layers over the rows of one step, in C, for a model served by the fp16-weight GEMM
 * (float16+native: AVX2 + FMA + F16C; gpt2_bf16.c is the same plan for bfloat16+native on
 * AVX-512 BF16).
 *
 * Why: on CPUs without AVX-512 BF16 (the Zen 3) GPT-2 is served by float16+native, whose GEMMs
 * (gemm_f16.c) and decode attention (attention_avx2.c) are native while its layer norms, GELU,
 * residual adds and views were ~20 torch calls a layer, each a few microseconds of dispatch
 * for a few of work, 36 layers a gpt2-large step. Here a layer is two C calls around the
 * attention, and a step in which every row decodes one token runs every layer in one call.
 *
 * A layer, per row, everything fp32 but the fp16 weights (as the float16+native model's torch
 * forward computes it; server.engine.gpt2_forward):
 *   x = LayerNorm(h) w1 + b1              mean, then variance, each summed in 8 lanes
 *   qkv = x Wattn + battn                 one GEMM (GPT-2's c_attn: q, k, v side by side)
 *   att = attention(q, k, v over the cache)
 *   h += att Wproj + bproj
 *   x = LayerNorm(h) w2 + b2
 *   h += gelu_new(x Wfc + bfc) Wout + bout   gelu_new's tanh from e^-2|u| (exp8_nonpos)
 * The sums are in other orders than torch's, so the logits differ from the torch forward's by
 * float32 rounding; every row is computed by the same code whatever the other rows of the step,
 * so a row's tokens are the same alone, batched, or beside a prompt chunk
 * (tests/test_native_gpt2.py).
 */
#include <math.h>

#include "kernels.h"
#include "simd_bf16.h"

enum { PARALLEL_ROWS = 8 /* row-wise parts run threaded from here */ };

/* out[r] = (x[r] - mean) / sqrt(var + eps) * w + b; width % 8 == 0. */
GLL_AVX2_F16C static void layer_norm(const float *x, const float *w, const float *b, float *out,
                                     int rows, int width, float eps, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * width;
    float *o = out + (int64_t)r * width;
    __m256 sum = _mm256_setzero_ps();
    for (int i = 0; i < width; i += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(xr + i));
    const __m256 mean = _mm256_set1_ps(hsum8(sum) / (float)width);
    __m256 sq = _mm256_setzero_ps();
    for (int i = 0; i < width; i += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(xr + i), mean);
      sq = _mm256_fmadd_ps(d, d, sq);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sqrtf(hsum8(sq) / (float)width + eps));
    for (int i = 0; i < width; i += 8) {
      __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), mean), inv);
      _mm256_storeu_ps(o + i, _mm256_fmadd_ps(n, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
  }
}

/* GPT-2's gelu_new in place: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), n % 8 == 0;
 * tanh(u) = sign(u) (1 - e) / (1 + e) with e = e^-2|u|. */
GLL_AVX2_F16C static void gelu_tanh(float *x, int rows, int64_t width, int threads) {
  const __m256 k0 = _mm256_set1_ps(0.7978845608028654f), k1 = _mm256_set1_ps(0.044715f);
  const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const __m256 sign = _mm256_set1_ps(-0.0f), minus_two = _mm256_set1_ps(-2.0f);
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
  for (int r = 0; r < rows; r++)
    for (int64_t i = (int64_t)r * width; i < (int64_t)(r + 1) * width; i += 8) {
      __m256 v = _mm256_loadu_ps(x + i);
      __m256 u = _mm256_mul_ps(k0, _mm256_fmadd_ps(_mm256_mul_ps(k1, v), _mm256_mul_ps(v, v), v));
      __m256 e = exp8_nonpos(_mm256_mul_ps(_mm256_andnot_ps(sign, u), minus_two));
      __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
      t = _mm256_or_ps(t, _mm256_and_ps(u, sign)); /* tanh's sign is u's (t >= 0 here) */
      _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, t)));
    }
}

/* The sizes every entry point takes (plain C: runs on any x86-64); the caller
 * (server.engine.native_gpt2) checks these and the buffers' shapes before calling. */
static int step_check(const void *b, const gpt2_f16_step *s, const float *h, int rows) {
  if (!b || !s || !h || rows <= 0 || s->width <= 0 || s->hidden <= 0 || s->heads <= 0 ||
      s->threads <= 0 || s->width % 8 || s->hidden % 8 || s->width % s->heads ||
      (s->width / s->heads) % 16 || s->width / s->heads > 256)
    return GLL_BAD_SHAPE;
  if (!s->x || !s->qkv || !s->att || !s->inner || !s->y) return GLL_BAD_SHAPE;
  return GLL_OK;
}

/* A layer as the runners below see it: its layer norms, and its four GEMMs (c_attn, c_proj,
 * c_fc, the MLP's c_proj) behind ``gemm``: the fp16 ones of a gpt2_f16_block or the int8 ones
 * of a gpt2_int8_block, the rest of the layer being the same code. */
enum { QKV, PROJ, FC, OUT };
typedef int (*layer_gemm)(const void *block, int which, const float *x, float *out, int M, int N,
                          int K, int threads);
typedef struct {
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
  const void *block;
  layer_gemm gemm;
} layer_plan;

GLL_AVX2_F16C static int attn_in_run(const layer_plan *p, const gpt2_f16_step *s, const float *h,
                                     int rows) {
  layer_norm(h, p->ln1_w, p->ln1_b, s->x, rows, s->width, s->eps, s->threads);
  return p->gemm(p->block, QKV, s->x, s->qkv, rows, 3 * s->width, s->width, s->threads);
}

GLL_AVX2_F16C static int attn_out_run(const layer_plan *p, const gpt2_f16_step *s, float *h,
                                      int rows) {
  const int64_t cells = (int64_t)rows * s->width;
  int status = p->gemm(p->block, PROJ, s->att, s->y, rows, s->width, s->width, s->threads);
  if (status != GLL_OK) return status;
  add8_into(h, s->y, cells);
  layer_norm(h, p->ln2_w, p->ln2_b, s->x, rows, s->width, s->eps, s->threads);
  status = p->gemm(p->block, FC, s->x, s->inner, rows, s->hidden, s->width, s->threads);
  if (status != GLL_OK) return status;
  gelu_tanh(s->inner, rows, s->hidden, s->threads);
  status = p->gemm(p->block, OUT, s->inner, s->y, rows, s->width, s->hidden, s->threads);
  if (status != GLL_OK) return status;
  add8_into(h, s->y, cells);
  return GLL_OK;
}

/* Every layer of a decode-only step: each layer's plan from ``plan_of``. */
typedef layer_plan (*plan_fn)(const void *blocks, int layer);
GLL_AVX2_F16C static int decode_run(const void *blocks, plan_fn plan_of, int layers,
                                    const gpt2_f16_step *s, float *h, int rows,
                                    uint16_t *const *stores, int cache_dtype,
                                    float *const *scales, const int64_t *caps,
                                    const int64_t *lens, const int64_t *tokens) {
  const int dim = s->width / s->heads;
  const int64_t wide = 3 * (int64_t)s->width;
  const decode_qkv in = {s->qkv, s->qkv + s->width, s->qkv + 2 * s->width, wide, dim, wide, dim,
                         wide, dim};
  int status = attend_decode_check(&in, stores, caps, lens, tokens, rows, layers - 1, s->heads,
                                   s->heads, dim, s->att, s->threads);
  if (status != GLL_OK) return status;
  for (int l = 0; l < layers; l++) {
    const layer_plan p = plan_of(blocks, l);
    status = attn_in_run(&p, s, h, rows);
    if (status == GLL_OK)
      status = attend_decode_avx2(&in, GLL_F32, stores, cache_dtype, scales, caps, lens, tokens,
                                  rows, l, s->heads, s->heads, dim, s->scale, s->att, s->width,
                                  s->threads);
    if (status == GLL_OK) status = attn_out_run(&p, s, h, rows);
    if (status != GLL_OK) return status;
  }
  return GLL_OK;
}

/* -- the fp16 GEMM's layers ---------------------------------------------------------------- */

static int f16_gemm(const void *block, int which, const float *x, float *out, int M, int N, int K,
                    int threads) {
  const gpt2_f16_block *b = block;
  const uint16_t *w[] = {b->attn_w, b->proj_w, b->fc_w, b->out_w};
  const float *bias[] = {b->attn_b, b->proj_b, b->fc_b, b->out_b};
  return gemm_f16(x, w[which], bias[which], out, M, N, K, threads);
}

static layer_plan f16_plan(const void *blocks, int layer) {
  const gpt2_f16_block *b = (const gpt2_f16_block *)blocks + layer;
  return (layer_plan){b->ln1_w, b->ln1_b, b->ln2_w, b->ln2_b, b, f16_gemm};
}

/* Before the attention: x = ln_1(h), qkv = x W_attn + b. GLL_OK or GLL_BAD_SHAPE. */
int gpt2_f16_attn_in(const gpt2_f16_block *b, const gpt2_f16_step *s, const float *h, int rows) {
  if (step_check(b, s, h, rows) != GLL_OK) return GLL_BAD_SHAPE;
  const layer_plan p = f16_plan(b, 0);
  return attn_in_run(&p, s, h, rows);
}

/* After the attention (s->att): h += att W_proj + b; h += mlp(ln_2(h)). GLL_OK or
 * GLL_BAD_SHAPE. */
int gpt2_f16_attn_out(const gpt2_f16_block *b, const gpt2_f16_step *s, float *h, int rows) {
  if (step_check(b, s, h, rows) != GLL_OK) return GLL_BAD_SHAPE;
  const layer_plan p = f16_plan(b, 0);
  return attn_out_run(&p, s, h, rows);
}

/* Every layer of a step in which each of the rows decodes one token (row r is token r; its
 * cache as attend_decode_avx2 takes it, of cache_dtype with its scales). GLL_OK;
 * GLL_BAD_SHAPE if a size is outside what the kernels take (checked before the first layer:
 * nothing written then); or the first failing kernel's code (h then partly computed). */
int gpt2_f16_decode(const gpt2_f16_block *blocks, int layers, const gpt2_f16_step *s, float *h,
                    int rows, uint16_t *const *stores, int cache_dtype, float *const *scales,
                    const int64_t *caps, const int64_t *lens, const int64_t *tokens) {
  int status = step_check(blocks, s, h, rows);
  if (status != GLL_OK || layers <= 0) return GLL_BAD_SHAPE;
  return decode_run(blocks, f16_plan, layers, s, h, rows, stores, cache_dtype, scales, caps, lens,
                    tokens);
}

/* -- the int8 GEMMs' layers (DTYPE=int8: weight-only int8, everything else fp32) ------------ */

/* The one check the int8 layers add to step_check: a known GEMM variant, and every weight's
 * operands present (the vnni variant's column sums too). */
static int int8_check(const gpt2_int8_block *b) {
  if (!b || (b->variant != GLL_INT8_FMA && b->variant != GLL_INT8_VNNI)) return GLL_BAD_SHAPE;
  for (int i = 0; i < 4; i++)
    if (!b->linear[i].q || !b->linear[i].scale || !b->linear[i].bias ||
        (b->variant == GLL_INT8_VNNI && !b->linear[i].colsum))
      return GLL_BAD_SHAPE;
  return GLL_OK;
}

static int int8_gemm(const void *block, int which, const float *x, float *out, int M, int N,
                     int K, int threads) {
  const gpt2_int8_block *b = block;
  const gpt2_int8_linear *w = &b->linear[which];
  return b->variant == GLL_INT8_VNNI
             ? gemm_int8_vnni(x, w->q, w->scale, w->colsum, w->bias, out, M, N, K, threads)
             : gemm_int8_fma(x, w->q, w->scale, w->bias, out, M, N, K, threads);
}

static layer_plan int8_plan(const void *blocks, int layer) {
  const gpt2_int8_block *b = (const gpt2_int8_block *)blocks + layer;
  return (layer_plan){b->ln1_w, b->ln1_b, b->ln2_w, b->ln2_b, b, int8_gemm};
}

/* gpt2_f16_attn_in's work on the int8 GEMMs. GLL_OK or GLL_BAD_SHAPE (nothing written). */
int gpt2_int8_attn_in(const gpt2_int8_block *b, const gpt2_f16_step *s, const float *h,
                      int rows) {
  if (step_check(b, s, h, rows) != GLL_OK || int8_check(b) != GLL_OK) return GLL_BAD_SHAPE;
  const layer_plan p = int8_plan(b, 0);
  return attn_in_run(&p, s, h, rows);
}

/* gpt2_f16_attn_out's work on the int8 GEMMs. GLL_OK or GLL_BAD_SHAPE (nothing written). */
int gpt2_int8_attn_out(const gpt2_int8_block *b, const gpt2_f16_step *s, float *h, int rows) {
  if (step_check(b, s, h, rows) != GLL_OK || int8_check(b) != GLL_OK) return GLL_BAD_SHAPE;
  const layer_plan p = int8_plan(b, 0);
  return attn_out_run(&p, s, h, rows);
}

/* gpt2_f16_decode's work on the int8 GEMMs (every block checked before the first layer). */
int gpt2_int8_decode(const gpt2_int8_block *blocks, int layers, const gpt2_f16_step *s, float *h,
                     int rows, uint16_t *const *stores, int cache_dtype, float *const *scales,
                     const int64_t *caps, const int64_t *lens, const int64_t *tokens) {
  if (step_check(blocks, s, h, rows) != GLL_OK || layers <= 0) return GLL_BAD_SHAPE;
  for (int l = 0; l < layers; l++)
    if (int8_check(&blocks[l]) != GLL_OK) return GLL_BAD_SHAPE;
  return decode_run(blocks, int8_plan, layers, s, h, rows, stores, cache_dtype, scales, caps, lens,
                    tokens);
}
