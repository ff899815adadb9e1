/* GPT-2's layers in bf16 over the rows of one step, in C (AVX-512 BF16).
 *
 * Why: with the GEMMs (gemm_bf16.c) and the decode attention (attention_bf16.c) native, a lone
 * gpt2-large token still paid ~10 ms for the rest of its 36 layers: about 20 torch calls a
 * layer (norms, GELU, adds, views) and their Python, each a few microseconds of dispatch for
 * a few microseconds of work. Here a layer is two C calls around the attention, and a step in
 * which every row decodes one token runs all layers in one call.
 *
 * Numerics: the residual stream is bf16 as in transformers' bf16 model; layer norm and the tanh
 * GELU compute in fp32 and round to bf16 once; a residual add rounds fp32(h) + fp32(y) to bf16
 * (as torch's bf16 add). Every row is computed by the same code whatever the other rows of the
 * step, so a row's result is the same alone, batched, or beside a prompt chunk.
 */
#include <math.h>

#include "kernels.h"
#include "simd_bf16.h"

/* out = layer_norm(x) * w + b per row; width % 16 == 0. */
GLL_AVX512 static void layer_norm(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *out,
                       int rows, int width, float eps) {
  for (int r = 0; r < rows; r++) {
    const uint16_t *xr = x + (int64_t)r * width;
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < width; i += 16) sum = _mm512_add_ps(sum, widen16(xr + i));
    __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / width);
    __m512 sq = _mm512_setzero_ps();
    for (int i = 0; i < width; i += 16) {
      __m512 d = _mm512_sub_ps(widen16(xr + i), mean);
      sq = _mm512_fmadd_ps(d, d, sq);
    }
    __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) / width + eps));
    for (int i = 0; i < width; i += 16) {
      __m512 n = _mm512_mul_ps(_mm512_sub_ps(widen16(xr + i), mean), rstd);
      store16(out + (int64_t)r * width + i, _mm512_fmadd_ps(n, widen16(w + i), widen16(b + i)));
    }
  }
}

/* GPT-2's gelu_new in place: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), n % 16 == 0;
 * tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|). */
GLL_AVX512 static void gelu_tanh(uint16_t *x, int64_t n) {
  const __m512 k0 = _mm512_set1_ps(0.7978845608028654f), k1 = _mm512_set1_ps(0.044715f);
  const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  for (int64_t i = 0; i < n; i += 16) {
    __m512 v = widen16(x + i);
    __m512 u = _mm512_mul_ps(k0, _mm512_fmadd_ps(_mm512_mul_ps(k1, v), _mm512_mul_ps(v, v), v));
    __m512 a = _mm512_abs_ps(u);
    __m512 e = exp_nonpos(_mm512_mul_ps(a, _mm512_set1_ps(-2.0f)));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
    __mmask16 neg = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ);
    t = _mm512_mask_sub_ps(t, neg, _mm512_setzero_ps(), t);
    store16(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, t)));
  }
}

/* h += y, rounded to bf16; n % 16 == 0. */
GLL_AVX512 static void add_into(uint16_t *h, const uint16_t *y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) store16(h + i, _mm512_add_ps(widen16(h + i), widen16(y + i)));
}

/* The sizes every entry point below takes (plain C: runs on any x86-64); the caller
 * (server.engine.native_ops) checks these and the buffers' shapes before calling. */
static int step_check(const gpt2_block *b, const gpt2_step *s, const uint16_t *h, int rows) {
  if (!b || !s || !h || rows <= 0 || s->width <= 0 || s->hidden <= 0 || s->heads <= 0 ||
      s->threads <= 0 || s->width % 16 || s->hidden % 16 || s->width % s->heads)
    return GLL_BAD_SHAPE;
  if (!s->x || !s->qkv || !s->att || !s->inner || !s->y) return GLL_BAD_SHAPE;
  return GLL_OK;
}

GLL_AVX512 static int attn_in_run(const gpt2_block *b, const gpt2_step *s, const uint16_t *h,
                                  int rows) {
  layer_norm(h, b->ln1_w, b->ln1_b, s->x, rows, s->width, s->eps);
  return gemm_bf16(s->x, b->attn_w, b->attn_b, s->qkv, rows, 3 * s->width, s->width, s->threads);
}

GLL_AVX512 static int attn_out_run(const gpt2_block *b, const gpt2_step *s, uint16_t *h,
                                   int rows) {
  int64_t cells = (int64_t)rows * s->width;
  int status = gemm_bf16(s->att, b->proj_w, b->proj_b, s->y, rows, s->width, s->width,
                         s->threads);
  if (status != GLL_OK) return status;
  add_into(h, s->y, cells);
  layer_norm(h, b->ln2_w, b->ln2_b, s->x, rows, s->width, s->eps);
  status = gemm_bf16(s->x, b->fc_w, b->fc_b, s->inner, rows, s->hidden, s->width, s->threads);
  if (status != GLL_OK) return status;
  gelu_tanh(s->inner, (int64_t)rows * s->hidden);
  status = gemm_bf16(s->inner, b->out_w, b->out_b, s->y, rows, s->width, s->hidden, s->threads);
  if (status != GLL_OK) return status;
  add_into(h, s->y, cells);
  return GLL_OK;
}

/* Before the attention: x = ln_1(h), qkv = x W_attn + b. GLL_OK or GLL_BAD_SHAPE. */
int gpt2_attn_in(const gpt2_block *b, const gpt2_step *s, const uint16_t *h, int rows) {
  int status = step_check(b, s, h, rows);
  return status != GLL_OK ? status : attn_in_run(b, s, h, rows);
}

/* After the attention (s->att): h += att W_proj + b; h += mlp(ln_2(h)). GLL_OK or
 * GLL_BAD_SHAPE. */
int gpt2_attn_out(const gpt2_block *b, const gpt2_step *s, uint16_t *h, int rows) {
  int status = step_check(b, s, h, rows);
  return status != GLL_OK ? status : attn_out_run(b, s, h, rows);
}

/* Every layer of a step in which each of the rows decodes one token (row r is token r; its
 * cache as attend_decode_bf16 takes it). Returns GLL_OK; GLL_BAD_SHAPE if a size is outside
 * what the kernels take (checked before the first layer: nothing written then); or the first
 * failing kernel's code (GLL_NO_MEMORY from the attention: h is then partly computed and the
 * step must fail). */
int gpt2_decode(const gpt2_block *blocks, int layers, const gpt2_step *s, uint16_t *h, int rows,
                uint16_t *const *stores, const int64_t *caps, const int64_t *lens,
                const int64_t *tokens) {
  int status = step_check(blocks, s, h, rows);
  if (status != GLL_OK || layers <= 0) return GLL_BAD_SHAPE;
  int dim = s->width / s->heads;
  /* GPT-2's c_attn output, one token a row: q, k, v side by side, every head its own kv head. */
  const int64_t wide = 3 * (int64_t)s->width;
  const decode_qkv in = {s->qkv, s->qkv + s->width, s->qkv + 2 * s->width, wide, dim, wide, dim,
                         wide, dim};
  status = attend_decode_check(&in, stores, caps, lens, tokens, rows, layers - 1, s->heads,
                               s->heads, dim, s->att, s->threads);
  if (status != GLL_OK) return status;
  for (int l = 0; l < layers; l++) {
    status = attn_in_run(&blocks[l], s, h, rows);
    if (status == GLL_OK)
      status = attend_decode_bf16(&in, stores, caps, lens, tokens, rows, l, s->heads, s->heads,
                                  dim, s->scale, s->att, s->width, s->threads);
    if (status == GLL_OK) status = attn_out_run(&blocks[l], s, h, rows);
    if (status != GLL_OK) return status;
  }
  return GLL_OK;
}
