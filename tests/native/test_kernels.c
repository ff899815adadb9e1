/* C-level tests of the native kernels (the .c files of server/engine/native), built and run under
 * AddressSanitizer and UBSan by tests/native/Makefile (`make native-sanitize`; CI through
 * tests/test_native_sanitize.py).
 *
 * Every buffer is allocated at its exact size, so a read or write one element past any edge is
 * a sanitizer error. Part 1 runs on any x86-64: the entry points' own checks reject bad sizes
 * and geometry (they run no AVX-512 instruction). Part 2 runs where the CPU has AVX-512 BF16:
 * pack + GEMM against a double-precision reference of the bf16 operands, the decode attention
 * against a scalar softmax over the cache (new key/value written, nothing else), GPT-2's packed
 * q/k/v and grouped-query caches (kv heads 1, 2, 3 serving groups of 2, 4, 6 queries, q, k, v
 * each with its own strides; each query bit for bit its output over a cache with the kv head
 * repeated), and gpt2_decode against its layers called one by one (bit for bit), at odd
 * shapes: rows 1, 3, 7, 9, 13; widths 2, 34, 66, 98 (not multiples of 32); 3 heads; lengths
 * across the attention's 32-position tiles. Elsewhere it exits 77 (skipped)
 * naming the missing CPU features. The Python tests (tests/test_native_ops.py) compare the
 * same kernels with torch's float math.
 *
 * The int8 GEMM (gemm_int8.c) has its own parts, each where the CPU has its variant's features
 * (printing SKIP naming them elsewhere): pack_int8's layouts, then gemm_int8_fma (AVX2 + FMA)
 * against a double-precision sum of the fp32 activations times the dequantized weight, and
 * gemm_int8_vnni (AVX-512 VNNI) against the same sum over activations quantized per row as the
 * kernel does, at odd shapes: rows 1-9 and 13, inputs 1, 3, 33, 98, 130, outputs 16, 48, 144.
 * Python's tests/test_native_int8.py compares them with torch.
 *
 * The decode attention's AVX2 variant (attention_avx2.c) has its own part, where the CPU has
 * AVX2, FMA and F16C (e.g. AMD Zen 3; SKIP naming them elsewhere): fp32 and bf16 queries over
 * fp16 and bf16 caches, kv heads 1-3 serving groups 1-6, dims 16-256, GPT-2's packed q/k/v
 * and Llama's separate ones, lengths 0, 1, 3 and across the 32-position tiles, each row's last
 * slot filled; against a double softmax over the cache, the new key/value written in the
 * cache's dtype (a plain-C rounding to nearest even) and nothing else; each grouped query
 * bit for bit its output over the cache with its kv head repeated; then fp32 and bf16 queries
 * over int8 caches (KV_DTYPE=int8) at the same shapes: the new key and value quantised to the
 * bytes and scale of a plain-C quantiser (half to even, exact halves checked), a cached
 * position of zeros at scale 0 read as zeros, the output against a double softmax over the dequantised cache, nothing else
 * written, the repeated-head property. Its plain-C checks (dtype codes, geometry, missing
 * scales) are part 1.
 *
 * The fp16-weight GEMM (gemm_f16.c) has its own part, where the CPU has AVX2, FMA and F16C
 * (SKIP naming them elsewhere): its argument checks, then rows 1-9 and 13, inputs 1, 7, 8, 9,
 * 33, 130 (tails of K % 8 and none), outputs 1, 5, 8, 17, 67 (not multiples of the tiles),
 * with and without bias, against a double-precision sum of the fp32 activations times the
 * fp16 weights widened in plain C; and each row of a batch bit for bit its result alone.
 *
 * The Llama-family layers on the bf16 GEMM (llama_bf16.c) are part of part 2: their size checks
 * in part 1, then llama_bf16_decode at 1, 3 and 7 rows (rows out of token order, 3 query heads
 * over 1 kv head) against its layers called one by one with attend_decode_bf16 between (bit
 * for bit, hidden states and caches), and each row of the last layer against a double
 * reference that makes the kernel's bf16 roundings.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../server/engine/native/kernels.h"

static int failures = 0;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      failures++;                                          \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                        \
      fprintf(stderr, "\n");                               \
    }                                                      \
  } while (0)

static float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint16_t to_bf16(float f) { /* round to nearest even (finite values) */
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static uint32_t seed = 12345;
static float uniform(void) { /* [-1, 1) */
  seed = seed * 1664525u + 1013904223u;
  return (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
}

static uint16_t *random_bf16(size_t n, float scale) {
  uint16_t *p = malloc(n * sizeof *p);
  if (!p) abort();
  for (size_t i = 0; i < n; i++) p[i] = to_bf16(uniform() * scale);
  return p;
}

/* fp16 <-> fp32 in plain C (the reference for F16C's conversions). */
static float from_f16(uint16_t h) {
  int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float f = exp == 0 ? ldexpf((float)man, -24)
            : exp == 31 ? (man ? NAN : INFINITY) : ldexpf((float)(man | 0x400), exp - 25);
  return h & 0x8000 ? -f : f;
}

static uint16_t to_f16(float f) { /* round to nearest even (not NaN) */
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  float a = fabsf(f);
  if (a >= 65520.0f) return sign | 0x7c00; /* the tie above 65504 rounds to even: infinity */
  if (a < ldexpf(1, -14)) return sign | (uint16_t)nearbyintf(a * 16777216.0f); /* 2^-24 steps */
  int e;
  float m = nearbyintf(ldexpf(frexpf(a, &e), 11)); /* 11 significant bits, nearest even */
  if (m == 2048.0f) m = 1024.0f, e++;
  return sign | (uint16_t)((e + 14) << 10) | (uint16_t)((int)m - 1024);
}

static int close_to(float got, double want) {
  return fabs(got - want) <= 2e-2 + 1.6e-2 * fabs(want);
}

/* Part 1: any x86-64. */
static void test_checks(void) {
  uint16_t *w = random_bf16(32 * 6, 1), *dst = random_bf16(32 * 6, 1);
  CHECK(pack_vnni(w, dst, 24, 6) == -1, "pack_vnni took 24 outputs");
  CHECK(pack_vnni(w, dst, 32, 5) == -1, "pack_vnni took 5 inputs");
  CHECK(pack_vnni(w, dst, 32, 6) == 0, "pack_vnni refused 32 x 6");
  CHECK(dst[2] == w[6] && dst[3] == w[7] && dst[32] == w[2],
        "pack_vnni layout [N/16][K/2][16][2]");
  CHECK(gemm_bf16(w, dst, NULL, dst, 1, 20, 6, 1) == -1, "gemm took 20 outputs");
  CHECK(gemm_bf16(w, dst, NULL, dst, 0, 16, 6, 1) == -1, "gemm took 0 rows");
  CHECK(gemm_bf16(w, dst, NULL, dst, 1, 16, 6, 0) == -1, "gemm took 0 threads");
  int64_t caps[2] = {4, 8}, lens[2] = {3, 8}, tokens[2] = {0, 1};
  uint16_t *stores[2] = {w, dst};
  decode_qkv in = {w, w, w, 48, 16, 48, 16, 48, 16};
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, 0, 1, 1, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took a full cache (lens == caps)");
  lens[1] = 2;
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, 0, 1, 1, 24, 0.25f, dst, 16, 1) ==
            -1, "attention took head dim 24");
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, -1, 1, 1, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took layer -1");
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, 0, 6, 4, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took 6 query heads over 4 kv heads");
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, 0, 2, 3, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took 2 query heads over 3 kv heads");
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, 0, 4, 0, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took 0 kv heads");
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, 0, 4, -2, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took -2 kv heads");
  CHECK(attend_decode_bf16(NULL, stores, caps, lens, tokens, 2, 0, 1, 1, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took no q/k/v");
  decode_qkv no_v = {w, w, NULL, 48, 16, 48, 16, 48, 16};
  CHECK(attend_decode_bf16(&no_v, stores, caps, lens, tokens, 2, 0, 1, 1, 16, 0.25f, dst, 16,
                           1) == -1, "attention took no values");
  tokens[1] = -1;
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, 2, 0, 1, 1, 16, 0.25f, dst, 16, 1) ==
            -1, "attention took token -1");
  /* The AVX2 variant: its dtype codes, then the same geometry checks (no AVX2 before them). */
  tokens[1] = 1;
  CHECK(attend_decode_avx2(&in, GLL_F16, stores, GLL_F16, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 1) == -1, "avx2 attention took fp16 queries");
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, GLL_F32, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 1) == -1, "avx2 attention took fp32 caches");
  CHECK(attend_decode_avx2(&in, 7, stores, GLL_BF16, NULL, caps, lens, tokens, 2, 0, 1, 1, 16, 0.25f,
                           dst, 16, 1) == -1, "avx2 attention took dtype 7");
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, -1, NULL, caps, lens, tokens, 2, 0, 1, 1, 16, 0.25f,
                           dst, 16, 1) == -1, "avx2 attention took cache dtype -1");
  lens[1] = 8;
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, GLL_F16, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 1) == -1, "avx2 attention took a full cache");
  lens[1] = 2;
  const int bad[][4] = {/* heads, kv heads, dim, layer */
                        {1, 1, 24, 0}, {1, 1, 272, 0}, {1, 1, 0, 0}, {6, 4, 16, 0},
                        {4, 0, 16, 0}, {2, 3, 16, 0}, {1, 1, 16, -1}};
  for (int i = 0; i < 7; i++)
    CHECK(attend_decode_avx2(&in, GLL_F32, stores, GLL_F16, NULL, caps, lens, tokens, 2, bad[i][3],
                             bad[i][0], bad[i][1], bad[i][2], 0.25f, dst, 16, 1) == -1,
          "avx2 attention took heads %d kv heads %d dim %d layer %d", bad[i][0], bad[i][1],
          bad[i][2], bad[i][3]);
  CHECK(attend_decode_avx2(NULL, GLL_F32, stores, GLL_F16, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 1) == -1, "avx2 attention took no q/k/v");
  CHECK(attend_decode_avx2(&no_v, GLL_BF16, stores, GLL_BF16, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 1) == -1, "avx2 attention took no values");
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, GLL_F16, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, NULL, 16, 1) == -1, "avx2 attention took no output");
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, GLL_F16, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 0) == -1, "avx2 attention took 0 threads");
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, GLL_I8, NULL, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 1) == -1, "avx2 attention took int8 caches, no scales");
  float scale_store[4] = {0};
  float *one_scale[2] = {scale_store, NULL};
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, GLL_I8, one_scale, caps, lens, tokens, 2, 0, 1, 1,
                           16, 0.25f, dst, 16, 1) == -1, "avx2 attention took row 1 without scales");
  CHECK(attend_decode_avx2(&in, GLL_F32, stores, 4, one_scale, caps, lens, tokens, 2, 0, 1, 1, 16,
                           0.25f, dst, 16, 1) == -1, "avx2 attention took cache dtype 4");
  gpt2_step s = {48, 80, 5, 1, 1e-5f, 0.25f, w, w, w, w, w};
  gpt2_block b = {0};
  CHECK(gpt2_attn_in(&b, &s, w, 1) == -1, "gpt2 took 48 wide in 5 heads");
  CHECK(gpt2_decode(&b, 0, &s, w, 1, stores, caps, lens, tokens) == -1, "gpt2 took 0 layers");
  free(w);
  free(dst);
}

/* Part 2: AVX-512 BF16. */
static void test_gemm(int M, int K, int N, int with_bias) {
  uint16_t *x = random_bf16((size_t)M * K, 1), *w = random_bf16((size_t)N * K, 1);
  uint16_t *bias = with_bias ? random_bf16(N, 1) : NULL;
  uint16_t *packed = malloc((size_t)N * K * 2), *out = malloc((size_t)M * N * 2);
  CHECK(pack_vnni(w, packed, N, K) == 0, "pack %d x %d", N, K);
  CHECK(gemm_bf16(x, packed, bias, out, M, N, K, 2) == 0, "gemm %d x %d x %d", M, K, N);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double want = bias ? from_bf16(bias[n]) : 0;
      for (int k = 0; k < K; k++)
        want += (double)from_bf16(x[(size_t)m * K + k]) * from_bf16(w[(size_t)n * K + k]);
      float got = from_bf16(out[(size_t)m * N + n]);
      if (!close_to(got, want)) {
        CHECK(0, "gemm %dx%dx%d bias %d: out[%d,%d] = %g, expected %g", M, K, N, with_bias, m, n,
              got, want);
        m = M;
        break;
      }
    }
  free(x), free(w), free(bias), free(packed), free(out);
}

/* One layer's decode attention over caches of kv_heads heads, each serving `group` queries.
 * packed: GPT-2's c_attn layout (q, k, v of a token side by side; group 1), else Llama's: q
 * [token][heads][dim], k [kv head][token][dim] (rotated: a new tensor), v [token][kv][dim]. */
static void test_attention(int kv_heads, int group, int dim, int packed) {
  enum { ROWS = 4, LAYERS = 2, TOKENS = 5, LAYER = 1 };
  const int64_t caps[ROWS] = {1, 33, 40, 78}, lens[ROWS] = {0, 32, 33, 77};
  const int64_t tokens[ROWS] = {2, 0, 4, 1}; /* token 3 is a prompt token: left unwritten */
  const int heads = kv_heads * group;
  const int64_t width = (int64_t)heads * dim, kv_width = (int64_t)kv_heads * dim;
  uint16_t *qkv = NULL, *q, *k, *v;
  decode_qkv in;
  if (packed) {
    qkv = random_bf16(TOKENS * 3 * width, 1);
    q = qkv, k = qkv + width, v = qkv + 2 * width;
    in = (decode_qkv){q, k, v, 3 * width, dim, 3 * width, dim, 3 * width, dim};
  } else {
    q = random_bf16(TOKENS * width, 1), k = random_bf16(TOKENS * kv_width, 1);
    v = random_bf16(TOKENS * kv_width, 1);
    in = (decode_qkv){q, k, v, width, dim, dim, TOKENS * dim, kv_width, dim};
  }
  uint16_t *stores[ROWS], *before[ROWS], *wide[ROWS];
  for (int r = 0; r < ROWS; r++) {
    size_t cells = (size_t)LAYERS * 2 * kv_heads * caps[r] * dim, plane = caps[r] * dim;
    stores[r] = random_bf16(cells, 1);
    before[r] = malloc(cells * 2);
    memcpy(before[r], stores[r], cells * 2);
    wide[r] = malloc(cells * group * 2); /* every kv head repeated for each of its queries */
    for (size_t part = 0; part < (size_t)LAYERS * 2; part++)
      for (int h = 0; h < heads; h++)
        memcpy(wide[r] + (part * heads + h) * plane,
               stores[r] + (part * kv_heads + h / group) * plane, plane * 2);
  }
  uint16_t *out = malloc(TOKENS * width * 2), *out_wide = malloc(TOKENS * width * 2);
  float scale = 1.0f / sqrtf((float)dim);
  CHECK(attend_decode_bf16(&in, stores, caps, lens, tokens, ROWS, LAYER, heads, kv_heads, dim,
                           scale, out, width, 2) == 0,
        "attention kv heads %d group %d dim %d", kv_heads, group, dim);
  double *p = malloc(sizeof(double) * 78);
  for (int r = 0; r < ROWS; r++) {
    int64_t plane = caps[r] * dim, n = lens[r] + 1;
    for (int h = 0; h < heads; h++) {
      int g = h / group;
      const uint16_t *qh = q + tokens[r] * in.q_token + h * in.q_head;
      const uint16_t *kn = k + tokens[r] * in.k_token + g * in.k_head;
      const uint16_t *vn = v + tokens[r] * in.v_token + g * in.v_head;
      uint16_t *keys = stores[r] + ((int64_t)LAYER * 2 * kv_heads + g) * plane;
      uint16_t *values = keys + kv_heads * plane;
      CHECK(!memcmp(keys + lens[r] * dim, kn, dim * 2) &&
                !memcmp(values + lens[r] * dim, vn, dim * 2),
            "kv %d group %d dim %d row %d kv head %d: new key/value not written", kv_heads,
            group, dim, r, g);
      double top = -INFINITY, total = 0;
      for (int64_t t = 0; t < n; t++) {
        double s = 0;
        for (int d = 0; d < dim; d++) s += (double)from_bf16(qh[d]) * from_bf16(keys[t * dim + d]);
        p[t] = s * scale;
        if (p[t] > top) top = p[t];
      }
      for (int64_t t = 0; t < n; t++) total += p[t] = exp(p[t] - top);
      for (int d = 0; d < dim; d++) {
        double want = 0;
        for (int64_t t = 0; t < n; t++) want += p[t] * from_bf16(values[t * dim + d]);
        want /= total;
        float got = from_bf16(out[tokens[r] * width + h * dim + d]);
        if (!close_to(got, want)) {
          CHECK(0, "attention kv %d group %d dim %d row %d head %d: out[%d] = %g, expected %g",
                kv_heads, group, dim, r, h, d, got, want);
          break;
        }
      }
    }
    /* Nothing else of the store changed: restore the written slots and compare. */
    for (int h = 0; h < 2 * kv_heads; h++) {
      size_t at = (((size_t)LAYER * 2 * kv_heads + h) * caps[r] + lens[r]) * dim;
      memcpy(stores[r] + at, before[r] + at, dim * 2);
    }
    CHECK(!memcmp(stores[r], before[r], (size_t)LAYERS * 2 * kv_heads * caps[r] * dim * 2),
          "kv %d group %d dim %d row %d: the attention wrote outside the new position",
          kv_heads, group, dim, r);
  }
  if (group > 1) {
    /* The same queries over the repeated caches (group 1: one kv head per query head, the
     * repeated new key and value alike), bit for bit. */
    uint16_t *k_wide = malloc(TOKENS * width * 2), *v_wide = malloc(TOKENS * width * 2);
    for (int t = 0; t < TOKENS; t++)
      for (int h = 0; h < heads; h++) {
        memcpy(k_wide + t * width + h * dim, k + t * in.k_token + h / group * in.k_head, dim * 2);
        memcpy(v_wide + t * width + h * dim, v + t * in.v_token + h / group * in.v_head, dim * 2);
      }
    decode_qkv flat = {q, k_wide, v_wide, width, dim, width, dim, width, dim};
    CHECK(attend_decode_bf16(&flat, wide, caps, lens, tokens, ROWS, LAYER, heads, heads, dim,
                             scale, out_wide, width, 2) == 0, "attention over repeated caches");
    for (int r = 0; r < ROWS; r++)
      CHECK(!memcmp(out + tokens[r] * width, out_wide + tokens[r] * width, width * 2),
            "kv %d group %d dim %d row %d: not its queries over the repeated cache", kv_heads,
            group, dim, r);
    free(k_wide), free(v_wide);
  }
  free(p), free(out), free(out_wide);
  if (packed) free(qkv);
  else free(q), free(k), free(v);
  for (int r = 0; r < ROWS; r++) free(stores[r]), free(before[r]), free(wide[r]);
}

/* -- the AVX2 decode attention --------------------------------------------------------- */

static float get(const void *p, int64_t i, int dtype) {
  if (dtype == GLL_F32) return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  return dtype == GLL_F16 ? from_f16(h) : from_bf16(h);
}

static void *random_of(size_t n, int dtype) {
  void *p = malloc(n * (dtype == GLL_F32 ? 4 : 2));
  if (!p) abort();
  for (size_t i = 0; i < n; i++) {
    float f = uniform();
    if (dtype == GLL_F32) ((float *)p)[i] = f;
    else ((uint16_t *)p)[i] = dtype == GLL_F16 ? to_f16(f) : to_bf16(f);
  }
  return p;
}

/* An element of a new key or value (dtype qt) as the cache stores it (dtype ct). */
static uint16_t as_cache(const void *p, int64_t i, int qt, int ct) {
  if (qt == ct) return ((const uint16_t *)p)[i];
  float f = get(p, i, qt);
  return ct == GLL_F16 ? to_f16(f) : to_bf16(f);
}

/* One layer over ROWS caches of dtype ct with queries, keys, values and output of dtype qt;
 * packed: GPT-2's c_attn layout (group 1), else Llama's (as test_attention). */
/* Random new queries, keys and values of tokens (dtype qt): packed as GPT-2's c_attn leaves
 * them (*qkv, one buffer, q | k | v per token, kv_width = width) or in three buffers, k and v
 * head-major ([kv heads][tokens][dim]); the decode_qkv over them. */
static decode_qkv random_qkv(int tokens, int64_t width, int64_t kv_width, int dim, int qt,
                             int packed, void **qkv, void **q, void **k, void **v) {
  const int size = qt == GLL_F32 ? 4 : 2;
  if (packed) {
    *qkv = random_of(tokens * 3 * width, qt);
    *q = *qkv, *k = (char *)*qkv + width * size, *v = (char *)*qkv + 2 * width * size;
    return (decode_qkv){*q, *k, *v, 3 * width, dim, 3 * width, dim, 3 * width, dim};
  }
  *q = random_of(tokens * width, qt), *k = random_of(tokens * kv_width, qt);
  *v = random_of(tokens * kv_width, qt);
  return (decode_qkv){*q, *k, *v, width, dim, dim, (int64_t)tokens * dim, kv_width, dim};
}

/* The keys and values of in's tokens (kv heads of dim, elements of size bytes) with each kv
 * head repeated for its group of queries: [tokens][heads * dim] copies in *k_wide, *v_wide,
 * and a decode_qkv over them and q (heads of dim, the layout of width). */
static decode_qkv repeat_kv(decode_qkv in, const void *q, int tokens, int heads, int group,
                            int dim, size_t size, void **k_wide, void **v_wide) {
  const int width = heads * dim;
  *k_wide = malloc(tokens * width * size);
  *v_wide = malloc(tokens * width * size);
  for (int t = 0; t < tokens; t++)
    for (int h = 0; h < heads; h++) {
      memcpy((char *)*k_wide + (t * width + h * dim) * size,
             (const char *)in.k + (t * in.k_token + h / group * in.k_head) * size, dim * size);
      memcpy((char *)*v_wide + (t * width + h * dim) * size,
             (const char *)in.v + (t * in.v_token + h / group * in.v_head) * size, dim * size);
    }
  decode_qkv flat = {q, *k_wide, *v_wide, width, dim, width, dim, width, dim};
  return flat;
}

static void test_attention_avx2(int kv_heads, int group, int dim, int qt, int ct, int packed) {
  enum { ROWS = 6, LAYERS = 2, TOKENS = 7, LAYER = 1 };
  const int64_t caps[ROWS] = {1, 2, 4, 33, 40, 78}, lens[ROWS] = {0, 1, 3, 32, 33, 77};
  const int64_t tokens[ROWS] = {2, 0, 4, 6, 5, 1}; /* token 3 is a prompt token */
  const int heads = kv_heads * group, size = qt == GLL_F32 ? 4 : 2;
  const int64_t width = (int64_t)heads * dim, kv_width = (int64_t)kv_heads * dim;
  void *qkv = NULL, *q, *k, *v;
  decode_qkv in = random_qkv(TOKENS, width, kv_width, dim, qt, packed, &qkv, &q, &k, &v);
  uint16_t *stores[ROWS], *before[ROWS], *wide[ROWS];
  for (int r = 0; r < ROWS; r++) {
    size_t cells = (size_t)LAYERS * 2 * kv_heads * caps[r] * dim, plane = caps[r] * dim;
    stores[r] = random_of(cells, ct);
    before[r] = malloc(cells * 2);
    memcpy(before[r], stores[r], cells * 2);
    wide[r] = malloc(cells * group * 2);
    for (size_t part = 0; part < (size_t)LAYERS * 2; part++)
      for (int h = 0; h < heads; h++)
        memcpy(wide[r] + (part * heads + h) * plane,
               stores[r] + (part * kv_heads + h / group) * plane, plane * 2);
  }
  void *out = malloc(TOKENS * width * size), *out_wide = malloc(TOKENS * width * size);
  float scale = 1.0f / sqrtf((float)dim);
  CHECK(attend_decode_avx2(&in, qt, stores, ct, NULL, caps, lens, tokens, ROWS, LAYER, heads, kv_heads,
                           dim, scale, out, width, 2) == 0,
        "avx2 attention kv heads %d group %d dim %d", kv_heads, group, dim);
  double *p = malloc(sizeof(double) * 78);
  for (int r = 0; r < ROWS; r++) {
    int64_t plane = caps[r] * dim, n = lens[r] + 1;
    for (int h = 0; h < heads; h++) {
      int g = h / group, written = 1;
      uint16_t *keys = stores[r] + ((int64_t)LAYER * 2 * kv_heads + g) * plane;
      uint16_t *values = keys + kv_heads * plane;
      for (int d = 0; d < dim; d++)
        written &= keys[lens[r] * dim + d] ==
                       as_cache(k, tokens[r] * in.k_token + g * in.k_head + d, qt, ct) &&
                   values[lens[r] * dim + d] ==
                       as_cache(v, tokens[r] * in.v_token + g * in.v_head + d, qt, ct);
      CHECK(written, "avx2 q %d cache %d kv %d group %d dim %d row %d kv head %d: new key/value",
            qt, ct, kv_heads, group, dim, r, g);
      double top = -INFINITY, total = 0;
      for (int64_t t = 0; t < n; t++) {
        double s = 0;
        for (int d = 0; d < dim; d++)
          s += (double)get(q, tokens[r] * in.q_token + h * in.q_head + d, qt) *
               get(keys, t * dim + d, ct);
        p[t] = s * scale;
        if (p[t] > top) top = p[t];
      }
      for (int64_t t = 0; t < n; t++) total += p[t] = exp(p[t] - top);
      for (int d = 0; d < dim; d++) {
        double want = 0;
        for (int64_t t = 0; t < n; t++) want += p[t] * get(values, t * dim + d, ct);
        want /= total;
        float got = get(out, tokens[r] * width + h * dim + d, qt);
        /* fp32 out: sums in another order and the exp polynomial; bf16: one rounding. */
        int ok = qt == GLL_F32 ? fabs(got - want) <= 2e-6 + 2e-5 * fabs(want) : close_to(got, want);
        if (!ok) {
          CHECK(0, "avx2 q %d cache %d kv %d group %d dim %d row %d head %d: out[%d] = %.9g, "
                "expected %.9g", qt, ct, kv_heads, group, dim, r, h, d, got, want);
          break;
        }
      }
    }
    for (int h = 0; h < 2 * kv_heads; h++) {
      size_t at = (((size_t)LAYER * 2 * kv_heads + h) * caps[r] + lens[r]) * dim;
      memcpy(stores[r] + at, before[r] + at, dim * 2);
    }
    CHECK(!memcmp(stores[r], before[r], (size_t)LAYERS * 2 * kv_heads * caps[r] * dim * 2),
          "avx2 kv %d group %d dim %d row %d: the attention wrote outside the new position",
          kv_heads, group, dim, r);
  }
  if (group > 1) { /* the same queries over the repeated caches, bit for bit */
    void *k_wide, *v_wide;
    decode_qkv flat = repeat_kv(in, q, TOKENS, heads, group, dim, size, &k_wide, &v_wide);
    CHECK(attend_decode_avx2(&flat, qt, wide, ct, NULL, caps, lens, tokens, ROWS, LAYER, heads, heads,
                             dim, scale, out_wide, width, 2) == 0, "avx2 over repeated caches");
    for (int r = 0; r < ROWS; r++)
      CHECK(!memcmp((char *)out + tokens[r] * width * size,
                    (char *)out_wide + tokens[r] * width * size, width * size),
            "avx2 kv %d group %d dim %d row %d: not its queries over the repeated cache",
            kv_heads, group, dim, r);
    free(k_wide), free(v_wide);
  }
  free(p), free(out), free(out_wide);
  if (packed) free(qkv);
  else free(q), free(k), free(v);
  for (int r = 0; r < ROWS; r++) free(stores[r]), free(before[r]), free(wide[r]);
}

/* -- the AVX2 decode attention over int8 caches ------------------------------------------ */

/* dim elements of x (dtype qt) quantised as server.engine.kv_int8.quantize does, in plain C:
 * scale = max|x| / 127 in fp32, each x / scale (1 when scale is 0) rounded half to even
 * (nearbyintf in the default rounding mode), clamped to [-127, 127]. */
static float quantize_ref(const void *x, int64_t at, int qt, int dim, int8_t *q) {
  float top = 0;
  for (int d = 0; d < dim; d++) top = fmaxf(top, fabsf(get(x, at + d, qt)));
  float scale = top / 127.0f, divisor = scale == 0.0f ? 1.0f : scale;
  for (int d = 0; d < dim; d++) {
    float r = nearbyintf(get(x, at + d, qt) / divisor);
    q[d] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
  }
  return scale;
}

/* One layer over ROWS int8 caches (random integers and positive scales, one position of row 2
 * all zeros with scale 0) with queries, keys, values and output of dtype qt; packed: GPT-2's
 * c_attn layout (group 1), else Llama's. Row 0's new key holds exact halves (127 and k + 0.5:
 * scale 1), so half-to-even rounding is checked. */
static void test_attention_avx2_i8(int kv_heads, int group, int dim, int qt, int packed) {
  enum { ROWS = 6, LAYERS = 2, TOKENS = 7, LAYER = 1 };
  const int64_t caps[ROWS] = {1, 2, 4, 33, 40, 78}, lens[ROWS] = {0, 1, 3, 32, 33, 77};
  const int64_t tokens[ROWS] = {2, 0, 4, 6, 5, 1};
  const int heads = kv_heads * group, size = qt == GLL_F32 ? 4 : 2;
  const int64_t width = (int64_t)heads * dim, kv_width = (int64_t)kv_heads * dim;
  void *qkv = NULL, *q, *k, *v;
  decode_qkv in = random_qkv(TOKENS, width, kv_width, dim, qt, packed, &qkv, &q, &k, &v);
  for (int d = 0; d < dim; d++) { /* row 0's key of kv head 0: exact halves at scale 1 */
    float x = d == 0 ? 127.0f : (float)(d % 8) - 4.0f + 0.5f;
    int64_t at = tokens[0] * in.k_token + d;
    if (qt == GLL_F32) ((float *)k)[at] = x;
    else ((uint16_t *)k)[at] = to_bf16(x);
  }
  int8_t *stores[ROWS], *before[ROWS], *wide[ROWS];
  float *scales[ROWS], *scales_before[ROWS], *scales_wide[ROWS];
  for (int r = 0; r < ROWS; r++) {
    size_t cells = (size_t)LAYERS * 2 * kv_heads * caps[r] * dim, plane = caps[r] * dim;
    size_t slots = (size_t)LAYERS * 2 * kv_heads * caps[r];
    stores[r] = malloc(cells), before[r] = malloc(cells), wide[r] = malloc(cells * group);
    scales[r] = malloc(slots * 4), scales_before[r] = malloc(slots * 4);
    scales_wide[r] = malloc(slots * group * 4);
    if (!stores[r] || !before[r] || !wide[r] || !scales[r] || !scales_before[r] || !scales_wide[r])
      abort();
    for (size_t i = 0; i < cells; i++) stores[r][i] = (int8_t)(uniform() * 127.0f);
    for (size_t i = 0; i < slots; i++) scales[r][i] = (uniform() + 1.5f) / 127.0f;
    if (r == 2) { /* position 1 of every head: zeros, scale 0 */
      for (size_t part = 0; part < (size_t)LAYERS * 2 * kv_heads; part++) {
        memset(stores[r] + part * plane + dim, 0, dim);
        scales[r][part * caps[r] + 1] = 0;
      }
    }
    memcpy(before[r], stores[r], cells), memcpy(scales_before[r], scales[r], slots * 4);
    for (size_t part = 0; part < (size_t)LAYERS * 2; part++)
      for (int h = 0; h < heads; h++) {
        memcpy(wide[r] + (part * heads + h) * plane,
               stores[r] + (part * kv_heads + h / group) * plane, plane);
        memcpy(scales_wide[r] + (part * heads + h) * caps[r],
               scales[r] + (part * kv_heads + h / group) * caps[r], caps[r] * 4);
      }
  }
  void *out = malloc(TOKENS * width * size), *out_wide = malloc(TOKENS * width * size);
  float scale = 1.0f / sqrtf((float)dim);
  CHECK(attend_decode_avx2(&in, qt, (uint16_t *const *)stores, GLL_I8, scales, caps, lens, tokens,
                           ROWS, LAYER, heads, kv_heads, dim, scale, out, width, 2) == 0,
        "avx2 int8 attention kv heads %d group %d dim %d", kv_heads, group, dim);
  double *p = malloc(sizeof(double) * 78);
  int8_t *want_q = malloc(dim);
  for (int r = 0; r < ROWS; r++) {
    int64_t plane = caps[r] * dim, n = lens[r] + 1;
    for (int h = 0; h < heads; h++) {
      int g = h / group;
      const int8_t *keys = stores[r] + ((int64_t)LAYER * 2 * kv_heads + g) * plane;
      const int8_t *values = keys + kv_heads * plane;
      const float *ks = scales[r] + ((int64_t)LAYER * 2 * kv_heads + g) * caps[r];
      const float *vs = ks + kv_heads * caps[r];
      float sk = quantize_ref(k, tokens[r] * in.k_token + g * in.k_head, qt, dim, want_q);
      int written = !memcmp(keys + lens[r] * dim, want_q, dim) && ks[lens[r]] == sk;
      if (r == 0 && g == 0) written &= sk == 1.0f && want_q[1] == -2 && want_q[2] == -2 && want_q[4] == 0 && want_q[5] == 2;
      float sv = quantize_ref(v, tokens[r] * in.v_token + g * in.v_head, qt, dim, want_q);
      written &= !memcmp(values + lens[r] * dim, want_q, dim) && vs[lens[r]] == sv;
      CHECK(written, "avx2 int8 q %d kv %d group %d dim %d row %d kv head %d: new key/value",
            qt, kv_heads, group, dim, r, g);
      double top = -INFINITY, total = 0;
      for (int64_t t = 0; t < n; t++) {
        double s = 0;
        for (int d = 0; d < dim; d++)
          s += (double)get(q, tokens[r] * in.q_token + h * in.q_head + d, qt) *
               ((double)keys[t * dim + d] * ks[t]);
        p[t] = s * scale;
        if (p[t] > top) top = p[t];
      }
      for (int64_t t = 0; t < n; t++) total += p[t] = exp(p[t] - top);
      for (int d = 0; d < dim; d++) {
        double want = 0;
        for (int64_t t = 0; t < n; t++) want += p[t] * ((double)values[t * dim + d] * vs[t]);
        want /= total;
        float got = get(out, tokens[r] * width + h * dim + d, qt);
        int ok = qt == GLL_F32 ? fabs(got - want) <= 2e-6 + 2e-5 * fabs(want) : close_to(got, want);
        if (!ok) {
          CHECK(0, "avx2 int8 q %d kv %d group %d dim %d row %d head %d: out[%d] = %.9g, "
                "expected %.9g", qt, kv_heads, group, dim, r, h, d, got, want);
          break;
        }
      }
    }
    for (int h = 0; h < 2 * kv_heads; h++) {
      size_t slot = ((size_t)LAYER * 2 * kv_heads + h) * caps[r] + lens[r];
      memcpy(stores[r] + slot * dim, before[r] + slot * dim, dim);
      scales[r][slot] = scales_before[r][slot];
    }
    size_t slots = (size_t)LAYERS * 2 * kv_heads * caps[r];
    CHECK(!memcmp(stores[r], before[r], slots * dim) &&
              !memcmp(scales[r], scales_before[r], slots * 4),
          "avx2 int8 kv %d group %d dim %d row %d: the attention wrote outside the new position",
          kv_heads, group, dim, r);
  }
  if (group > 1) { /* the same queries over the repeated caches, bit for bit */
    void *k_wide, *v_wide;
    decode_qkv flat = repeat_kv(in, q, TOKENS, heads, group, dim, size, &k_wide, &v_wide);
    CHECK(attend_decode_avx2(&flat, qt, (uint16_t *const *)wide, GLL_I8, scales_wide, caps, lens,
                             tokens, ROWS, LAYER, heads, heads, dim, scale, out_wide, width,
                             2) == 0, "avx2 int8 over repeated caches");
    for (int r = 0; r < ROWS; r++)
      CHECK(!memcmp((char *)out + tokens[r] * width * size,
                    (char *)out_wide + tokens[r] * width * size, width * size),
            "avx2 int8 kv %d group %d dim %d row %d: not its queries over the repeated cache",
            kv_heads, group, dim, r);
    free(k_wide), free(v_wide);
  }
  free(p), free(want_q), free(out), free(out_wide);
  if (packed) free(qkv);
  else free(q), free(k), free(v);
  for (int r = 0; r < ROWS; r++) {
    free(stores[r]), free(before[r]), free(wide[r]);
    free(scales[r]), free(scales_before[r]), free(scales_wide[r]);
  }
}

/* Every (query, cache) dtype pair at odd shapes; SKIP (naming what is missing) without the
 * features. */
static void test_attention_avx2_variant(void) {
  const char *needed[] = {"avx2", "fma", "f16c"};
  const int has[] = {__builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma"),
                     __builtin_cpu_supports("f16c")};
  int missing = 0;
  for (int i = 0; i < 3; i++)
    if (!has[i]) printf("%s%s", missing++ ? ", " : "SKIP attention avx2: this CPU lacks ", needed[i]);
  if (missing) {
    printf("\n");
    return;
  }
  const int pairs[4][2] = {{GLL_F32, GLL_F16}, {GLL_BF16, GLL_BF16}, {GLL_F32, GLL_BF16},
                           {GLL_BF16, GLL_F16}};
  const int shapes[][3] = {/* kv heads, group, dim */
                           {1, 1, 16}, {3, 1, 48}, {1, 6, 64}, {2, 4, 80}, {3, 2, 128},
                           {2, 5, 256}, {1, 3, 32}, {3, 6, 112}};
  for (int i = 0; i < 4; i++) {
    test_attention_avx2(3, 1, 16 * (i + 1), pairs[i][0], pairs[i][1], 1); /* GPT-2's packed */
    for (int j = 0; j < 8; j++)
      test_attention_avx2(shapes[j][0], shapes[j][1], shapes[j][2], pairs[i][0], pairs[i][1], 0);
  }
  printf("attention avx2: %s\n", failures ? "FAILED" : "ok");
  const int queries[2] = {GLL_F32, GLL_BF16};
  for (int i = 0; i < 2; i++) {
    test_attention_avx2_i8(3, 1, 64, queries[i], 1); /* GPT-2's packed */
    for (int j = 0; j < 8; j++)
      test_attention_avx2_i8(shapes[j][0], shapes[j][1], shapes[j][2], queries[i], 0);
  }
  printf("attention avx2 int8: %s\n", failures ? "FAILED" : "ok");
}

typedef struct {
  uint16_t *w[12];
} weights;

static gpt2_block make_block(weights *ws, int width, int hidden) {
  const int outs[12] = {width, width, 3 * width, 3 * width, width, width,
                        width, width, hidden, hidden, width, width};
  const int ins[12] = {1, 1, width, 1, width, 1, 1, 1, width, 1, hidden, 1};
  for (int i = 0; i < 12; i++) {
    uint16_t *raw = random_bf16((size_t)outs[i] * ins[i], ins[i] > 1 ? 0.3f : 1.0f);
    if (ins[i] > 1) {
      ws->w[i] = malloc((size_t)outs[i] * ins[i] * 2);
      CHECK(pack_vnni(raw, ws->w[i], outs[i], ins[i]) == 0, "pack weight %d", i);
      free(raw);
    } else {
      ws->w[i] = raw;
    }
  }
  gpt2_block b = {ws->w[0], ws->w[1], ws->w[2], ws->w[3], ws->w[4],  ws->w[5],
                  ws->w[6], ws->w[7], ws->w[8], ws->w[9], ws->w[10], ws->w[11]};
  return b;
}

static gpt2_step make_step(int width, int hidden, int heads, int rows) {
  gpt2_step s = {width, hidden, heads, 2, 1e-5f, 1.0f / sqrtf((float)(width / heads)),
                 malloc((size_t)rows * width * 2), malloc((size_t)rows * 3 * width * 2),
                 malloc((size_t)rows * width * 2), malloc((size_t)rows * hidden * 2),
                 malloc((size_t)rows * width * 2)};
  return s;
}

static void free_step(gpt2_step *s) { free(s->x), free(s->qkv), free(s->att), free(s->inner), free(s->y); }

static void test_gpt2_decode(int rows) {
  enum { WIDTH = 48, HIDDEN = 80, HEADS = 3, LAYERS = 2, DIM = WIDTH / HEADS };
  weights ws[LAYERS];
  gpt2_block blocks[LAYERS];
  for (int l = 0; l < LAYERS; l++) blocks[l] = make_block(&ws[l], WIDTH, HIDDEN);
  int64_t caps[7], lens[7], tokens[7];
  uint16_t *stores[7], *copies[7];
  for (int r = 0; r < rows; r++) {
    caps[r] = 1 + 5 * r, lens[r] = 5 * r, tokens[r] = r;
    size_t cells = (size_t)LAYERS * 2 * HEADS * caps[r] * DIM;
    stores[r] = random_bf16(cells, 1);
    copies[r] = malloc(cells * 2);
    memcpy(copies[r], stores[r], cells * 2);
  }
  uint16_t *h = random_bf16((size_t)rows * WIDTH, 1), *h2 = malloc((size_t)rows * WIDTH * 2);
  memcpy(h2, h, (size_t)rows * WIDTH * 2);
  gpt2_step s = make_step(WIDTH, HIDDEN, HEADS, rows);
  CHECK(gpt2_decode(blocks, LAYERS, &s, h, rows, stores, caps, lens, tokens) == 0,
        "gpt2_decode %d rows", rows);
  for (int l = 0; l < LAYERS; l++) {
    CHECK(gpt2_attn_in(&blocks[l], &s, h2, rows) == 0, "attn_in layer %d", l);
    decode_qkv in = {s.qkv, s.qkv + WIDTH, s.qkv + 2 * WIDTH, 3 * WIDTH, DIM, 3 * WIDTH, DIM,
                     3 * WIDTH, DIM};
    CHECK(attend_decode_bf16(&in, copies, caps, lens, tokens, rows, l, HEADS, HEADS, DIM,
                             s.scale, s.att, WIDTH, 2) == 0, "attention layer %d", l);
    CHECK(gpt2_attn_out(&blocks[l], &s, h2, rows) == 0, "attn_out layer %d", l);
  }
  CHECK(!memcmp(h, h2, (size_t)rows * WIDTH * 2), "gpt2_decode %d rows != its layers", rows);
  for (int r = 0; r < rows; r++) {
    CHECK(!memcmp(stores[r], copies[r], (size_t)LAYERS * 2 * HEADS * caps[r] * DIM * 2),
          "gpt2_decode row %d's cache != its layers'", r);
    free(stores[r]), free(copies[r]);
  }
  for (int l = 0; l < LAYERS; l++)
    for (int i = 0; i < 12; i++) free(ws[l].w[i]);
  free(h), free(h2);
  free_step(&s);
}

/* -- int8 GEMM ------------------------------------------------------------------------- */

static int8_t *random_int8(size_t n) {
  int8_t *p = malloc(n);
  if (!p) abort();
  for (size_t i = 0; i < n; i++) p[i] = (int8_t)(uniform() * 127.5f);
  return p;
}

static float *random_f32(size_t n, float scale) {
  float *p = malloc(n * sizeof *p);
  if (!p) abort();
  for (size_t i = 0; i < n; i++) p[i] = uniform() * scale;
  return p;
}

/* Part 1 (any x86-64): the int8 entry points' checks and pack_int8's two layouts. */
static void test_int8_checks(void) {
  enum { N = 32, K = 5 };
  int8_t *q = random_int8(N * K), *fma = malloc(N * K), *vnni = malloc(N * 8);
  float *f = random_f32(N * K, 1);
  int32_t colsum[N] = {0};
  CHECK(pack_int8(q, fma, 24, K, 0) == -1, "pack_int8 took 24 outputs");
  CHECK(pack_int8(q, fma, N, K, 2) == -1, "pack_int8 took layout 2");
  CHECK(pack_int8(q, fma, N, 0, 0) == -1, "pack_int8 took 0 inputs");
  CHECK(pack_int8(q, fma, N, K, 0) == 0 && pack_int8(q, vnni, N, K, 1) == 0, "pack_int8 refused");
  /* [N/16][K][16]: output 17, input 3 at block 1, k 3, lane 1. */
  CHECK(fma[16 * K + 3 * 16 + 1] == q[17 * K + 3], "pack_int8 layout 0");
  /* [N/16][8/4][16][4]: output 17, input 3 at block 1, quad 0, lane 1, 3; input 5.. padded 0. */
  CHECK(vnni[16 * 8 + 1 * 4 + 3] == q[17 * K + 3], "pack_int8 layout 1");
  CHECK(vnni[16 * 8 + 64 + 1 * 4 + 0] == q[17 * K + 4] && vnni[16 * 8 + 64 + 1 * 4 + 1] == 0,
        "pack_int8 layout 1 padding");
  CHECK(gemm_int8_fma(f, fma, f, NULL, f, 1, 20, K, 1) == -1, "int8 fma took 20 outputs");
  CHECK(gemm_int8_fma(f, fma, f, NULL, f, 0, N, K, 1) == -1, "int8 fma took 0 rows");
  CHECK(gemm_int8_fma(f, fma, NULL, NULL, f, 1, N, K, 1) == -1, "int8 fma took no scales");
  CHECK(gemm_int8_vnni(f, vnni, f, NULL, NULL, f, 1, N, K, 1) == -1, "vnni took no colsum");
  CHECK(gemm_int8_vnni(f, vnni, f, colsum, NULL, f, 1, N, 65537, 1) == -1, "vnni took K 65537");
  CHECK(gemm_int8_vnni(f, vnni, f, colsum, NULL, f, 1, N, K, 0) == -1, "vnni took 0 threads");
  free(q), free(fma), free(vnni), free(f);
}

/* Row m of x quantized as gemm_int8_vnni does (symmetric, 127 / max|x|, nearest even). */
static float quantized_row(const float *x, int K, int8_t *xq) {
  float amax = 0;
  for (int k = 0; k < K; k++) amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
  float inv = amax > 0 ? 127.0f / amax : 0.0f;
  for (int k = 0; k < K; k++) xq[k] = (int8_t)nearbyintf(x[k] * inv);
  return amax / 127.0f;
}

/* Part 2: out against a double-precision reference (vnni: of the quantized activations). */
static void test_int8_gemm(int vnni, int M, int K, int N, int with_bias) {
  float *x = random_f32((size_t)M * K, 2), *scale = random_f32(N, 0.01f);
  float *bias = with_bias ? random_f32(N, 1) : NULL, *out = malloc((size_t)M * N * sizeof *out);
  const int kq = vnni ? (K + 3) / 4 * 4 : K;
  int8_t *q = random_int8((size_t)N * K), *packed = malloc((size_t)N * kq), *xq = malloc(K);
  int32_t *colsum = calloc(N, sizeof *colsum);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++) colsum[n] += q[(size_t)n * K + k];
  CHECK(pack_int8(q, packed, N, K, vnni) == 0, "pack_int8 %d x %d layout %d", N, K, vnni);
  int code = vnni ? gemm_int8_vnni(x, packed, scale, colsum, bias, out, M, N, K, 2)
                  : gemm_int8_fma(x, packed, scale, bias, out, M, N, K, 2);
  CHECK(code == 0, "int8 %s %d x %d x %d: %d", vnni ? "vnni" : "fma", M, K, N, code);
  for (int m = 0; m < M; m++) {
    float xs = vnni ? quantized_row(x + (size_t)m * K, K, xq) : 1;
    for (int n = 0; n < N; n++) {
      double sum = 0, size = 0;
      for (int k = 0; k < K; k++) {
        double a = vnni ? xq[k] : x[(size_t)m * K + k], w = q[(size_t)n * K + k];
        sum += a * w, size += fabs(a * w);
      }
      double want = sum * xs * scale[n] + (bias ? bias[n] : 0);
      float got = out[(size_t)m * N + n];
      /* fp32 sums of K products: a few ulps of the products' magnitudes (vnni: exact, then
         two roundings). */
      double tolerance = 1e-6 * (1 + size * fabs(xs * scale[n])) * (K + 4) + 1e-6 * fabs(want);
      if (fabs(got - want) > tolerance) {
        CHECK(0, "int8 %s %dx%dx%d bias %d: out[%d,%d] = %.9g, expected %.9g", vnni ? "vnni" : "fma",
              M, K, N, with_bias, m, n, got, want);
        m = M;
        break;
      }
    }
  }
  free(x), free(scale), free(bias), free(out), free(q), free(packed), free(xq), free(colsum);
}

/* Every row count 1-9 and 13, odd widths; SKIP (naming what is missing) without the features. */
static void test_int8_variant(int vnni, const char *const *needed, const int *has, int count) {
  int missing = 0;
  for (int i = 0; i < count; i++)
    if (!has[i])
      printf("%s%s", missing++ ? ", " : (vnni ? "SKIP int8 vnni: this CPU lacks " :
                                                "SKIP int8 fma: this CPU lacks "), needed[i]);
  if (missing) {
    printf("\n");
    return;
  }
  const int ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13}, ks[] = {1, 3, 33, 98, 130}, ns[] = {16, 48, 144};
  for (int i = 0; i < 10; i++)
    for (int j = 0; j < 5; j++) {
      test_int8_gemm(vnni, ms[i], ks[j], ns[(i + j) % 3], 1);
      test_int8_gemm(vnni, ms[i], ks[j], ns[(i + j + 1) % 3], 0);
    }
  printf("int8 %s kernels: %s\n", vnni ? "vnni" : "fma", failures ? "FAILED" : "ok");
}

/* -- fp16-weight GEMM ------------------------------------------------------------------- */

static void test_f16_gemm(int M, int K, int N, int with_bias) {
  float *x = random_f32((size_t)M * K, 2), *bias = with_bias ? random_f32(N, 1) : NULL;
  float *out = malloc((size_t)M * N * sizeof *out), *alone = malloc((size_t)N * sizeof *alone);
  uint16_t *w = malloc((size_t)N * K * sizeof *w);
  if (!out || !alone || !w) abort();
  for (size_t i = 0; i < (size_t)N * K; i++) w[i] = to_f16(uniform() * 0.5f);
  int code = gemm_f16(x, w, bias, out, M, N, K, 2);
  CHECK(code == 0, "f16 %d x %d x %d: %d", M, K, N, code);
  for (int m = 0; m < M; m++) {
    for (int n = 0; n < N; n++) {
      double sum = 0, size = 0;
      for (int k = 0; k < K; k++) {
        double p = (double)x[(size_t)m * K + k] * from_f16(w[(size_t)n * K + k]);
        sum += p, size += fabs(p);
      }
      double want = sum + (bias ? bias[n] : 0);
      float got = out[(size_t)m * N + n];
      /* fp32 sums of K products: a few ulps of the products' magnitudes. */
      if (fabs(got - want) > 1e-6 * (1 + size) * (K + 4) + 1e-6 * fabs(want)) {
        CHECK(0, "f16 %dx%dx%d bias %d: out[%d,%d] = %.9g, expected %.9g", M, K, N, with_bias, m,
              n, got, want);
        m = M;
        break;
      }
    }
  }
  /* Batch invariance: the last row alone gives its batched result, bit for bit. */
  CHECK(gemm_f16(x + (size_t)(M - 1) * K, w, bias, alone, 1, N, K, 2) == 0, "f16 alone");
  CHECK(memcmp(alone, out + (size_t)(M - 1) * N, (size_t)N * sizeof *alone) == 0,
        "f16 %dx%dx%d: row %d alone differs from its batched result", M, K, N, M - 1);
  free(x), free(bias), free(out), free(alone), free(w);
}

static void test_f16_variant(void) {
  const char *needed[] = {"avx2", "fma", "f16c"};
  const int has[] = {__builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma"),
                     __builtin_cpu_supports("f16c")};
  float f[8] = {0};
  uint16_t w[8] = {0};
  /* Plain-C checks first (any x86-64): nothing written on a refusal. */
  CHECK(gemm_f16(f, w, NULL, f, 0, 1, 8, 1) == -1, "f16 took 0 rows");
  CHECK(gemm_f16(f, w, NULL, f, 1, 0, 8, 1) == -1, "f16 took 0 outputs");
  CHECK(gemm_f16(f, w, NULL, f, 1, 1, 0, 1) == -1, "f16 took 0 inputs");
  CHECK(gemm_f16(f, w, NULL, f, 1, 1, 8, 0) == -1, "f16 took 0 threads");
  CHECK(gemm_f16(f, NULL, NULL, f, 1, 1, 8, 1) == -1, "f16 took no weight");
  CHECK(gemm_f16(NULL, w, NULL, f, 1, 1, 8, 1) == -1, "f16 took no x");
  CHECK(gemm_f16(f, w, NULL, NULL, 1, 1, 8, 1) == -1, "f16 took no out");
  int missing = 0;
  for (int i = 0; i < 3; i++)
    if (!has[i]) printf("%s%s", missing++ ? ", " : "SKIP f16 gemm: this CPU lacks ", needed[i]);
  if (missing) {
    printf("\n");
    return;
  }
  const int ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13}, ks[] = {1, 7, 8, 9, 33, 130};
  const int ns[] = {1, 5, 8, 17, 67};
  for (int i = 0; i < 10; i++)
    for (int j = 0; j < 6; j++) {
      test_f16_gemm(ms[i], ks[j], ns[(i + j) % 5], 1);
      test_f16_gemm(ms[i], ks[j], ns[(i + j + 2) % 5], 0);
    }
  test_f16_gemm(3, 1280, 300, 1); /* several parallel groups of outputs */
  /* Prompt-sized calls: 16+ rows, long and odd k. */
  test_f16_gemm(16, 130, 67, 1);
  test_f16_gemm(17, 777, 53, 0);
  test_f16_gemm(21, 769, 50, 1);
  printf("f16 gemm: %s\n", failures ? "FAILED" : "ok");
}

/* -- a Llama-family layer on the fp16 GEMM (llama_f16.c) ---------------------------------- */

enum { LW = 40, LQ = 48, LI = 24, LHEADS = 3, LKV = 1, LDIM = 16, LLAYERS = 2,
       LQKV = (LHEADS + 2 * LKV) * LDIM };

typedef struct {
  float *norm1, *norm2, *qkv_b;
  uint16_t *qkv_w, *o_w, *gate_up_w, *down_w;
} llama_weights;

static uint16_t *random_f16(size_t n, float scale) {
  uint16_t *w = malloc(n * sizeof *w);
  if (!w) abort();
  for (size_t i = 0; i < n; i++) w[i] = to_f16(uniform() * scale);
  return w;
}

static llama_block make_llama_block(llama_weights *lw) {
  lw->norm1 = random_f32(LW, 1), lw->norm2 = random_f32(LW, 1), lw->qkv_b = random_f32(LQKV, 1);
  lw->qkv_w = random_f16((size_t)LQKV * LW, 0.3f), lw->o_w = random_f16((size_t)LW * LQ, 0.3f);
  lw->gate_up_w = random_f16((size_t)2 * LI * LW, 0.3f);
  lw->down_w = random_f16((size_t)LW * LI, 0.3f);
  llama_block b = {lw->norm1, lw->norm2, lw->qkv_b, lw->qkv_w, lw->o_w, lw->gate_up_w,
                   lw->down_w};
  return b;
}

static void free_llama_weights(llama_weights *lw) {
  free(lw->norm1), free(lw->norm2), free(lw->qkv_b), free(lw->qkv_w), free(lw->o_w);
  free(lw->gate_up_w), free(lw->down_w);
}

static llama_step make_llama_step(int rows, float *cos, float *sin) {
  llama_step s = {LW, LI, LHEADS, LKV, LDIM, 2, 1e-5f, 0.25f, cos, sin,
                  random_f32((size_t)rows * LW, 1), random_f32((size_t)rows * LQKV, 1),
                  random_f32((size_t)rows * LQ, 1), random_f32((size_t)rows * 2 * LI, 1),
                  random_f32((size_t)rows * LI, 1), random_f32((size_t)rows * LW, 1)};
  return s;
}

static void free_llama_step(llama_step *s) {
  free(s->x), free(s->qkv), free(s->att), free(s->inner), free(s->act), free(s->y);
}

/* x . w[n] over k inputs (w fp16 [outputs][k]), in double. */
static double dot_f16(const double *x, const uint16_t *w, int n, int k) {
  double sum = 0;
  for (int i = 0; i < k; i++) sum += x[i] * from_f16(w[(size_t)n * k + i]);
  return sum;
}

static void rms_ref(const float *h, const float *w, double *x) {
  double ss = 0;
  for (int i = 0; i < LW; i++) ss += (double)h[i] * h[i];
  for (int i = 0; i < LW; i++) x[i] = w[i] * (h[i] / sqrt(ss / LW + 1e-5));
}

/* One row of llama_attn_in and llama_attn_out against a double reference: RMSNorm, the fused
 * projection with its bias, RoPE on q and k (v untouched); then h + att Wo, RMSNorm, SiLU(gate)
 * * up, h + act Wdown. */
static void check_llama_row(const llama_block *b, const llama_step *s, const float *h0,
                            const float *h1, int r, const float *cos, const float *sin) {
  double x[LW], qkv[LQKV], h[LW], gu[2 * LI], act[LI];
  rms_ref(h0 + (size_t)r * LW, b->norm1, x);
  for (int n = 0; n < LQKV; n++) qkv[n] = dot_f16(x, b->qkv_w, n, LW) + b->qkv_b[n];
  for (int n = 0; n < LQKV; n++) {
    int head = n / LDIM, i = n % LDIM, half = LDIM / 2;
    double want = qkv[n];
    if (head < LHEADS + LKV) {
      double other = qkv[head * LDIM + (i < half ? i + half : i - half)];
      want = qkv[n] * cos[r * LDIM + i] + other * sin[r * LDIM + i];
    }
    float got = s->qkv[(size_t)r * LQKV + n];
    if (fabs(got - want) > 1e-4 * (1 + fabs(want))) {
      CHECK(0, "llama attn_in row %d: qkv[%d] = %.7g, expected %.7g", r, n, got, want);
      return;
    }
  }
  double att[LQ];
  for (int i = 0; i < LQ; i++) att[i] = s->att[(size_t)r * LQ + i];
  for (int n = 0; n < LW; n++) h[n] = h0[(size_t)r * LW + n] + dot_f16(att, b->o_w, n, LQ);
  float hf[LW];
  for (int n = 0; n < LW; n++) hf[n] = (float)h[n];
  rms_ref(hf, b->norm2, x);
  for (int n = 0; n < 2 * LI; n++) gu[n] = dot_f16(x, b->gate_up_w, n, LW);
  for (int n = 0; n < LI; n++) act[n] = gu[n] / (1 + exp(-gu[n])) * gu[LI + n];
  for (int n = 0; n < LW; n++) {
    double want = h[n] + dot_f16(act, b->down_w, n, LI);
    float got = h1[(size_t)r * LW + n];
    if (fabs(got - want) > 1e-4 * (1 + fabs(want))) {
      CHECK(0, "llama attn_out row %d: h[%d] = %.7g, expected %.7g", r, n, got, want);
      return;
    }
  }
}

/* Two copies of the decode caches of up to 7 rows (random content, of cache_dtype; an int8
 * cache with its scales): the kernel under test writes one, its reference path the other. The
 * caller sets caps, lens and tokens first. */
typedef struct {
  int rows, dtype;
  size_t elem, row_cells[7], dim;
  int64_t caps[7], lens[7], tokens[7];
  uint16_t *stores[7], *copies[7];
  float *scales[7], *scale_copies[7];
} twin_caches;

static void fill_twin_caches(twin_caches *t, int rows, int layers, int kv_heads, int dim,
                             int cache_dtype) {
  t->rows = rows, t->dtype = cache_dtype, t->dim = (size_t)dim;
  t->elem = cache_dtype == GLL_I8 ? 1 : 2;
  for (int r = 0; r < rows; r++) {
    size_t cells = (size_t)layers * 2 * kv_heads * t->caps[r] * dim, spots = cells / dim;
    t->row_cells[r] = cells;
    t->stores[r] = malloc(cells * t->elem), t->copies[r] = malloc(cells * t->elem);
    for (size_t i = 0; i < cells; i++)
      if (t->elem == 1) ((int8_t *)t->stores[r])[i] = (int8_t)(uniform() * 127);
      else t->stores[r][i] = cache_dtype == GLL_F16 ? to_f16(uniform()) : to_bf16(uniform());
    memcpy(t->copies[r], t->stores[r], cells * t->elem);
    t->scales[r] = t->scale_copies[r] = NULL;
    if (t->elem == 1) {
      t->scales[r] = random_f32(spots, 0.02f), t->scale_copies[r] = malloc(spots * sizeof(float));
      memcpy(t->scale_copies[r], t->scales[r], spots * sizeof(float));
    }
  }
}

/* Both copies equal (caches and scales), then freed. */
static void check_and_free_twin_caches(twin_caches *t, const char *what) {
  for (int r = 0; r < t->rows; r++) {
    CHECK(!memcmp(t->stores[r], t->copies[r], t->row_cells[r] * t->elem), "%s row %d's cache",
          what, r);
    if (t->elem == 1)
      CHECK(!memcmp(t->scales[r], t->scale_copies[r], t->row_cells[r] / t->dim * sizeof(float)),
            "%s row %d's scales", what, r);
    free(t->stores[r]), free(t->copies[r]), free(t->scales[r]), free(t->scale_copies[r]);
  }
}

/* llama_decode against its layers called one by one with attend_decode_avx2 between (bit for
 * bit, h and the caches), and the last layer's two calls against the double reference. */
static void test_llama_decode(int rows, int cache_dtype) {
  llama_weights lw[LLAYERS];
  llama_block blocks[LLAYERS];
  for (int l = 0; l < LLAYERS; l++) blocks[l] = make_llama_block(&lw[l]);
  twin_caches c;
  for (int r = 0; r < rows; r++)
    c.caps[r] = 1 + 5 * r, c.lens[r] = 5 * r, c.tokens[r] = rows - 1 - r; /* out of token order */
  fill_twin_caches(&c, rows, LLAYERS, LKV, LDIM, cache_dtype);
  float *cos = random_f32((size_t)rows * LDIM, 1), *sin = random_f32((size_t)rows * LDIM, 1);
  float *h = random_f32((size_t)rows * LW, 2), *h2 = malloc((size_t)rows * LW * sizeof *h2);
  float *h0 = malloc((size_t)rows * LW * sizeof *h0);
  memcpy(h2, h, (size_t)rows * LW * sizeof *h);
  llama_step s = make_llama_step(rows, cos, sin);
  CHECK(llama_decode(blocks, LLAYERS, &s, h, rows, c.stores, cache_dtype, c.scales, c.caps,
                     c.lens, c.tokens) == 0, "llama_decode %d rows", rows);
  for (int l = 0; l < LLAYERS; l++) {
    memcpy(h0, h2, (size_t)rows * LW * sizeof *h0); /* this layer's input */
    CHECK(llama_attn_in(&blocks[l], &s, h2, rows) == 0, "llama attn_in layer %d", l);
    decode_qkv in = {s.qkv, s.qkv + LQ, s.qkv + LQ + LKV * LDIM, LQKV, LDIM, LQKV, LDIM,
                     LQKV, LDIM};
    CHECK(attend_decode_avx2(&in, GLL_F32, c.copies, cache_dtype, c.scale_copies, c.caps, c.lens,
                             c.tokens, rows, l, LHEADS, LKV, LDIM, s.scale, s.att, LQ, 2) == 0,
          "llama attention layer %d", l);
    CHECK(llama_attn_out(&blocks[l], &s, h2, rows) == 0, "llama attn_out layer %d", l);
    if (l == LLAYERS - 1) /* s holds this layer's qkv and att: its inputs were h0 */
      for (int r = 0; r < rows; r++) check_llama_row(&blocks[l], &s, h0, h2, r, cos, sin);
  }
  CHECK(!memcmp(h, h2, (size_t)rows * LW * sizeof *h), "llama_decode %d rows != its layers",
        rows);
  check_and_free_twin_caches(&c, "llama_decode");
  for (int l = 0; l < LLAYERS; l++) free_llama_weights(&lw[l]);
  free(cos), free(sin), free(h), free(h2), free(h0);
  free_llama_step(&s);
}

static void test_llama_checks(void) {
  float f[64] = {0};
  llama_block b = {f, f, NULL, (uint16_t *)f, (uint16_t *)f, (uint16_t *)f, (uint16_t *)f};
  llama_step s = {LW, LI, LHEADS, LKV, LDIM, 1, 1e-5f, 0.25f, f, f, f, f, f, f, f, f};
  llama_step bad = s;
  bad.width = 36; /* not whole vectors */
  CHECK(llama_attn_in(&b, &bad, f, 1) == -1, "llama took width 36");
  bad = s, bad.dim = 24;
  CHECK(llama_attn_out(&b, &bad, f, 1) == -1, "llama took head dim 24");
  bad = s, bad.heads = 4, bad.kv_heads = 3;
  CHECK(llama_attn_in(&b, &bad, f, 1) == -1, "llama took 4 heads over 3");
  bad = s, bad.act = NULL;
  CHECK(llama_attn_out(&b, &bad, f, 1) == -1, "llama took no act buffer");
  CHECK(llama_attn_in(&b, &s, f, 0) == -1, "llama took 0 rows");
  CHECK(llama_decode(&b, 0, &s, f, 1, NULL, GLL_F16, NULL, NULL, NULL, NULL) == -1,
        "llama took 0 layers");
}

static void test_llama_variant(void) {
  test_llama_checks();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
      !__builtin_cpu_supports("f16c")) {
    printf("SKIP llama layers: this CPU lacks avx2, fma or f16c\n");
    return;
  }
  const int dtypes[] = {GLL_F16, GLL_BF16, GLL_I8};
  for (int i = 0; i < 3; i++) {
    test_llama_decode(1, dtypes[i]);
    test_llama_decode(3, dtypes[i]);
    test_llama_decode(7, dtypes[i]);
  }
  printf("llama layers: %s\n", failures ? "FAILED" : "ok");
}

/* -- GPT-2's layers on the fp16 GEMM (gpt2_f16.c) ---------------------------------------- */

enum { GW = 48, GH = 40, GHEADS = 3, GDIM = GW / GHEADS, GLAYERS = 2 };

typedef struct {
  float *f[8];    /* ln1_w, ln1_b, attn_b, proj_b, ln2_w, ln2_b, fc_b, out_b */
  uint16_t *w[4]; /* attn_w, proj_w, fc_w, out_w */
} gpt2_f16_weights;

static gpt2_f16_block make_gpt2_f16_block(gpt2_f16_weights *gw) {
  const int sizes[8] = {GW, GW, 3 * GW, GW, GW, GW, GH, GW};
  for (int i = 0; i < 8; i++) gw->f[i] = random_f32(sizes[i], 1);
  gw->w[0] = random_f16((size_t)3 * GW * GW, 0.3f), gw->w[1] = random_f16((size_t)GW * GW, 0.3f);
  gw->w[2] = random_f16((size_t)GH * GW, 0.3f), gw->w[3] = random_f16((size_t)GW * GH, 0.3f);
  gpt2_f16_block b = {gw->f[0], gw->f[1], gw->f[2], gw->f[3], gw->f[4], gw->f[5],
                      gw->f[6], gw->f[7], gw->w[0], gw->w[1], gw->w[2], gw->w[3]};
  return b;
}

static void layer_norm_ref(const float *h, const float *w, const float *b, double *x) {
  double mean = 0, var = 0;
  for (int i = 0; i < GW; i++) mean += h[i];
  mean /= GW;
  for (int i = 0; i < GW; i++) var += (h[i] - mean) * (h[i] - mean);
  for (int i = 0; i < GW; i++) x[i] = (h[i] - mean) / sqrt(var / GW + 1e-5) * w[i] + b[i];
}

static int far(float got, double want) { return fabs(got - want) > 1e-4 * (1 + fabs(want)); }

/* One row of gpt2_f16_attn_in and _attn_out against a double reference. */
static void check_gpt2_f16_row(const gpt2_f16_block *b, const gpt2_f16_step *s, const float *h0,
                               const float *h1, int r) {
  double x[GW], h[GW], inner[GH], att[GW];
  layer_norm_ref(h0 + (size_t)r * GW, b->ln1_w, b->ln1_b, x);
  for (int n = 0; n < 3 * GW; n++) {
    double want = dot_f16(x, b->attn_w, n, GW) + b->attn_b[n];
    if (far(s->qkv[(size_t)r * 3 * GW + n], want)) {
      CHECK(0, "gpt2 f16 attn_in row %d: qkv[%d] = %.7g, expected %.7g", r, n,
            s->qkv[(size_t)r * 3 * GW + n], want);
      return;
    }
  }
  for (int i = 0; i < GW; i++) att[i] = s->att[(size_t)r * GW + i];
  float hf[GW];
  for (int n = 0; n < GW; n++) {
    h[n] = h0[(size_t)r * GW + n] + dot_f16(att, b->proj_w, n, GW) + b->proj_b[n];
    hf[n] = (float)h[n];
  }
  layer_norm_ref(hf, b->ln2_w, b->ln2_b, x);
  for (int n = 0; n < GH; n++) {
    double v = dot_f16(x, b->fc_w, n, GW) + b->fc_b[n];
    inner[n] = 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
  }
  for (int n = 0; n < GW; n++) {
    double want = h[n] + dot_f16(inner, b->out_w, n, GH) + b->out_b[n];
    if (far(h1[(size_t)r * GW + n], want)) {
      CHECK(0, "gpt2 f16 attn_out row %d: h[%d] = %.7g, expected %.7g", r, n,
            h1[(size_t)r * GW + n], want);
      return;
    }
  }
}

/* gpt2_f16_decode against its layers one by one with attend_decode_avx2 between (bit for bit,
 * h and the caches), and the last layer's two calls against the double reference. */
static void test_gpt2_f16_decode(int rows, int cache_dtype) {
  gpt2_f16_weights gw[GLAYERS];
  gpt2_f16_block blocks[GLAYERS];
  for (int l = 0; l < GLAYERS; l++) blocks[l] = make_gpt2_f16_block(&gw[l]);
  twin_caches c;
  for (int r = 0; r < rows; r++)
    c.caps[r] = 2 + 3 * r, c.lens[r] = 1 + 3 * r, c.tokens[r] = r;
  fill_twin_caches(&c, rows, GLAYERS, GHEADS, GDIM, cache_dtype);
  float *h = random_f32((size_t)rows * GW, 2), *h2 = malloc((size_t)rows * GW * sizeof *h2);
  float *h0 = malloc((size_t)rows * GW * sizeof *h0);
  memcpy(h2, h, (size_t)rows * GW * sizeof *h);
  gpt2_f16_step s = {GW, GH, GHEADS, 2, 1e-5f, 0.25f, random_f32((size_t)rows * GW, 1),
                     random_f32((size_t)rows * 3 * GW, 1), random_f32((size_t)rows * GW, 1),
                     random_f32((size_t)rows * GH, 1), random_f32((size_t)rows * GW, 1)};
  CHECK(gpt2_f16_decode(blocks, GLAYERS, &s, h, rows, c.stores, cache_dtype, c.scales, c.caps,
                        c.lens, c.tokens) == 0, "gpt2_f16_decode %d rows", rows);
  for (int l = 0; l < GLAYERS; l++) {
    memcpy(h0, h2, (size_t)rows * GW * sizeof *h0);
    CHECK(gpt2_f16_attn_in(&blocks[l], &s, h2, rows) == 0, "gpt2 f16 attn_in layer %d", l);
    decode_qkv in = {s.qkv, s.qkv + GW, s.qkv + 2 * GW, 3 * GW, GDIM, 3 * GW, GDIM, 3 * GW,
                     GDIM};
    CHECK(attend_decode_avx2(&in, GLL_F32, c.copies, cache_dtype, c.scale_copies, c.caps, c.lens,
                             c.tokens, rows, l, GHEADS, GHEADS, GDIM, s.scale, s.att, GW, 2) == 0,
          "gpt2 f16 attention layer %d", l);
    CHECK(gpt2_f16_attn_out(&blocks[l], &s, h2, rows) == 0, "gpt2 f16 attn_out layer %d", l);
    if (l == GLAYERS - 1)
      for (int r = 0; r < rows; r++) check_gpt2_f16_row(&blocks[l], &s, h0, h2, r);
  }
  CHECK(!memcmp(h, h2, (size_t)rows * GW * sizeof *h), "gpt2_f16_decode %d rows != its layers",
        rows);
  check_and_free_twin_caches(&c, "gpt2_f16_decode");
  for (int l = 0; l < GLAYERS; l++) {
    for (int i = 0; i < 8; i++) free(gw[l].f[i]);
    for (int i = 0; i < 4; i++) free(gw[l].w[i]);
  }
  free(h), free(h2), free(h0), free(s.x), free(s.qkv), free(s.att), free(s.inner), free(s.y);
}

static void test_gpt2_f16_variant(void) {
  float f[64] = {0};
  uint16_t *w = (uint16_t *)f;
  gpt2_f16_block b = {f, f, f, f, f, f, f, f, w, w, w, w};
  gpt2_f16_step s = {GW, GH, GHEADS, 1, 1e-5f, 0.25f, f, f, f, f, f};
  gpt2_f16_step bad = s;
  bad.heads = 5; /* 48 wide is not 5 heads */
  CHECK(gpt2_f16_attn_in(&b, &bad, f, 1) == -1, "gpt2 f16 took 48 wide in 5 heads");
  bad = s, bad.hidden = 36;
  CHECK(gpt2_f16_attn_out(&b, &bad, f, 1) == -1, "gpt2 f16 took hidden 36");
  bad = s, bad.y = NULL;
  CHECK(gpt2_f16_attn_out(&b, &bad, f, 1) == -1, "gpt2 f16 took no y buffer");
  CHECK(gpt2_f16_decode(&b, 0, &s, f, 1, NULL, GLL_F16, NULL, NULL, NULL, NULL) == -1,
        "gpt2 f16 took 0 layers");
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
      !__builtin_cpu_supports("f16c")) {
    printf("SKIP gpt2 f16 layers: this CPU lacks avx2, fma or f16c\n");
    return;
  }
  const int dtypes[] = {GLL_F16, GLL_BF16, GLL_I8};
  for (int i = 0; i < 3; i++) {
    test_gpt2_f16_decode(1, dtypes[i]);
    test_gpt2_f16_decode(4, dtypes[i]);
    test_gpt2_f16_decode(7, dtypes[i]);
  }
  printf("gpt2 f16 layers: %s\n", failures ? "FAILED" : "ok");
}

/* -- GPT-2's layers on the int8 GEMMs (gpt2_f16.c's gpt2_int8_*) ----------------------------- */

enum { IH = 64 }; /* the MLP's width: the int8 GEMMs take outputs in whole 16-blocks */

typedef struct {
  float *f[4 + 4 * 2]; /* ln1_w, ln1_b, ln2_w, ln2_b; each linear's scale and bias */
  int8_t *q[4];
  int32_t *colsum[4];
} gpt2_int8_weights;

static gpt2_int8_block make_gpt2_int8_block(gpt2_int8_weights *gw, int vnni) {
  const int outs[4] = {3 * GW, GW, IH, GW}, ins[4] = {GW, GW, GW, IH};
  gpt2_int8_block b;
  memset(&b, 0, sizeof b);
  for (int i = 0; i < 4; i++) gw->f[i] = random_f32(GW, 1);
  b.ln1_w = gw->f[0], b.ln1_b = gw->f[1], b.ln2_w = gw->f[2], b.ln2_b = gw->f[3];
  for (int i = 0; i < 4; i++) {
    const int N = outs[i], K = ins[i], kq = vnni ? (K + 3) / 4 * 4 : K;
    int8_t *q = random_int8((size_t)N * K);
    gw->q[i] = malloc((size_t)N * kq);
    gw->colsum[i] = calloc(N, sizeof(int32_t));
    for (int n = 0; n < N; n++)
      for (int k = 0; k < K; k++) gw->colsum[i][n] += q[(size_t)n * K + k];
    CHECK(pack_int8(q, gw->q[i], N, K, vnni) == 0, "pack_int8 %d x %d", N, K);
    free(q);
    gw->f[4 + 2 * i] = random_f32(N, 0.01f), gw->f[5 + 2 * i] = random_f32(N, 1);
    b.linear[i] = (gpt2_int8_linear){gw->q[i], gw->f[4 + 2 * i], vnni ? gw->colsum[i] : NULL,
                                     gw->f[5 + 2 * i]};
  }
  b.variant = vnni ? GLL_INT8_VNNI : GLL_INT8_FMA;
  return b;
}

/* gpt2_int8_decode against its layers one by one with attend_decode_avx2 between: the same
 * bits (h and the caches); under the sanitizers, every operand the int8 plan reads. */
static void test_gpt2_int8_decode(int rows, int cache_dtype, int vnni) {
  gpt2_int8_weights gw[GLAYERS];
  gpt2_int8_block blocks[GLAYERS];
  for (int l = 0; l < GLAYERS; l++) blocks[l] = make_gpt2_int8_block(&gw[l], vnni);
  twin_caches c;
  for (int r = 0; r < rows; r++)
    c.caps[r] = 2 + 3 * r, c.lens[r] = 1 + 3 * r, c.tokens[r] = r;
  fill_twin_caches(&c, rows, GLAYERS, GHEADS, GDIM, cache_dtype);
  float *h = random_f32((size_t)rows * GW, 2), *h2 = malloc((size_t)rows * GW * sizeof *h2);
  float *h_in = malloc((size_t)rows * GW * sizeof *h_in);
  memcpy(h2, h, (size_t)rows * GW * sizeof *h);
  memcpy(h_in, h, (size_t)rows * GW * sizeof *h);
  gpt2_f16_step s = {GW, IH, GHEADS, 2, 1e-5f, 0.25f, random_f32((size_t)rows * GW, 1),
                     random_f32((size_t)rows * 3 * GW, 1), random_f32((size_t)rows * GW, 1),
                     random_f32((size_t)rows * IH, 1), random_f32((size_t)rows * GW, 1)};
  CHECK(gpt2_int8_decode(blocks, GLAYERS, &s, h, rows, c.stores, cache_dtype, c.scales, c.caps,
                         c.lens, c.tokens) == 0, "gpt2_int8_decode %d rows", rows);
  for (int l = 0; l < GLAYERS; l++) {
    CHECK(gpt2_int8_attn_in(&blocks[l], &s, h2, rows) == 0, "gpt2 int8 attn_in layer %d", l);
    decode_qkv in = {s.qkv, s.qkv + GW, s.qkv + 2 * GW, 3 * GW, GDIM, 3 * GW, GDIM, 3 * GW,
                     GDIM};
    CHECK(attend_decode_avx2(&in, GLL_F32, c.copies, cache_dtype, c.scale_copies, c.caps, c.lens,
                             c.tokens, rows, l, GHEADS, GHEADS, GDIM, s.scale, s.att, GW, 2) == 0,
          "gpt2 int8 attention layer %d", l);
    CHECK(gpt2_int8_attn_out(&blocks[l], &s, h2, rows) == 0, "gpt2 int8 attn_out layer %d", l);
  }
  CHECK(!memcmp(h, h2, (size_t)rows * GW * sizeof *h), "gpt2_int8_decode %d rows != its layers",
        rows);
  CHECK(memcmp(h, h_in, (size_t)rows * GW * sizeof *h), "gpt2_int8_decode left h as it was");
  check_and_free_twin_caches(&c, "gpt2_int8_decode");
  for (int l = 0; l < GLAYERS; l++) {
    for (int i = 0; i < 12; i++) free(gw[l].f[i]);
    for (int i = 0; i < 4; i++) free(gw[l].q[i]), free(gw[l].colsum[i]);
  }
  free(h), free(h2), free(h_in), free(s.x), free(s.qkv), free(s.att), free(s.inner), free(s.y);
}

/* The int8 entry points' own checks (any x86-64), then each variant this CPU runs. */
static void test_gpt2_int8_variant(void) {
  float f[64] = {0};
  int8_t q[64] = {0};
  int32_t cs[16] = {0};
  gpt2_int8_block b = {f, f, f, f, {{q, f, cs, f}, {q, f, cs, f}, {q, f, cs, f}, {q, f, cs, f}},
                       GLL_INT8_VNNI};
  gpt2_f16_step s = {GW, IH, GHEADS, 1, 1e-5f, 0.25f, f, f, f, f, f};
  gpt2_int8_block bad = b;
  bad.variant = 7;
  CHECK(gpt2_int8_attn_in(&bad, &s, f, 1) == -1, "gpt2 int8 took variant 7");
  bad = b, bad.linear[2].q = NULL;
  CHECK(gpt2_int8_attn_out(&bad, &s, f, 1) == -1, "gpt2 int8 took no fc weight");
  bad = b, bad.linear[1].colsum = NULL;
  CHECK(gpt2_int8_attn_out(&bad, &s, f, 1) == -1, "gpt2 int8 vnni took no colsum");
  CHECK(gpt2_int8_decode(&b, 0, &s, f, 1, NULL, GLL_F16, NULL, NULL, NULL, NULL) == -1,
        "gpt2 int8 took 0 layers");
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
      !__builtin_cpu_supports("f16c")) {
    printf("SKIP gpt2 int8 layers: this CPU lacks avx2, fma or f16c\n");
    return;
  }
  const int vnni_here = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  for (int vnni = 0; vnni < 2; vnni++) {
    if (vnni && !vnni_here) {
      printf("SKIP gpt2 int8 layers, vnni: this CPU lacks avx512 vnni\n");
      continue;
    }
    test_gpt2_int8_decode(1, GLL_F16, vnni);
    test_gpt2_int8_decode(5, GLL_I8, vnni);
  }
  printf("gpt2 int8 layers: %s\n", failures ? "FAILED" : "ok");
}

/* -- a Llama-family layer on the bf16 GEMM (llama_bf16.c) ----------------------------------- */

enum { BW = 48, BI = 32, BHEADS = 3, BKV = 1, BDIM = 16, BLAYERS = 2, BQ = BHEADS * BDIM,
       BK = BKV * BDIM };

/* norm1, norm2, q, k, v, o, gate, up, down (packed), q_b, k_b, v_b; and the unpacked weights. */
typedef struct {
  uint16_t *w[12], *raw[7];
} llama_bf16_weights;

static llama_bf16_block make_llama_bf16_block(llama_bf16_weights *lw) {
  const int outs[7] = {BQ, BK, BK, BW, BI, BI, BW}, ins[7] = {BW, BW, BW, BQ, BW, BW, BI};
  lw->w[0] = random_bf16(BW, 1), lw->w[1] = random_bf16(BW, 1);
  for (int i = 0; i < 7; i++) {
    lw->raw[i] = random_bf16((size_t)outs[i] * ins[i], 0.3f);
    lw->w[2 + i] = malloc((size_t)outs[i] * ins[i] * 2);
    CHECK(pack_vnni(lw->raw[i], lw->w[2 + i], outs[i], ins[i]) == 0, "pack llama weight %d", i);
  }
  lw->w[9] = random_bf16(BQ, 1), lw->w[10] = random_bf16(BK, 1), lw->w[11] = random_bf16(BK, 1);
  llama_bf16_block b = {lw->w[0], lw->w[1], lw->w[2], lw->w[9], lw->w[3], lw->w[10],
                        lw->w[4], lw->w[11], lw->w[5], lw->w[6], lw->w[7], lw->w[8]};
  return b;
}

static void free_llama_bf16_weights(llama_bf16_weights *lw) {
  for (int i = 0; i < 12; i++) free(lw->w[i]);
  for (int i = 0; i < 7; i++) free(lw->raw[i]);
}

static llama_bf16_step make_llama_bf16_step(int rows, const uint16_t *cos, const uint16_t *sin) {
  llama_bf16_step s = {BW, BI, BHEADS, BKV, BDIM, 2, 1e-5f, 0.25f, cos, sin,
                       random_bf16((size_t)rows * BW, 1), random_bf16((size_t)rows * BQ, 1),
                       random_bf16((size_t)rows * BK, 1), random_bf16((size_t)rows * BK, 1),
                       random_bf16((size_t)rows * BQ, 1), random_bf16((size_t)rows * BI, 1),
                       random_bf16((size_t)rows * BI, 1), random_bf16((size_t)rows * BW, 1)};
  return s;
}

static void free_llama_bf16_step(llama_bf16_step *s) {
  free(s->x), free(s->q), free(s->k), free(s->v), free(s->att), free(s->gate), free(s->up);
  free(s->y);
}

static double bf(double v) { return from_bf16(to_bf16((float)v)); }

/* x . w[n] over k inputs (w bf16 [outputs][k]), in double. */
static double dot_bf16(const double *x, const uint16_t *w, int n, int k) {
  double sum = 0;
  for (int i = 0; i < k; i++) sum += x[i] * from_bf16(w[(size_t)n * k + i]);
  return sum;
}

/* The kernel's RMSNorm with its roundings: bf16(w * bf16(h / rms)). */
static void rms_bf16_ref(const double *h, const uint16_t *w, double *x) {
  double ss = 0;
  for (int i = 0; i < BW; i++) ss += h[i] * h[i];
  for (int i = 0; i < BW; i++) x[i] = bf(from_bf16(w[i]) * bf(h[i] / sqrt(ss / BW + 1e-5)));
}

static int near_bf16(double got, double want) { return fabs(got - want) <= 2e-2 * (1 + fabs(want)); }

/* One row of llama_bf16_attn_in and _attn_out against a double reference making the kernel's
 * bf16 roundings (so only the sums' order and the exponential differ: a few bf16 steps at
 * most): RMSNorm, q, k, v with biases, RoPE on q and k; then h + att Wo, RMSNorm,
 * silu(gate) * up, h + act Wdown. */
static void check_llama_bf16_row(const llama_bf16_block *b, const llama_bf16_weights *lw,
                                 const llama_bf16_step *s, const uint16_t *h0, const uint16_t *h1,
                                 int r) {
  double h[BW], x[BW], proj[BQ + 2 * BK];
  for (int i = 0; i < BW; i++) h[i] = from_bf16(h0[(size_t)r * BW + i]);
  rms_bf16_ref(h, b->norm1, x);
  const uint16_t *bias[3] = {b->q_b, b->k_b, b->v_b};
  const int start[3] = {0, BQ, BQ + BK}, width[3] = {BQ, BK, BK};
  for (int p = 0; p < 3; p++)
    for (int n = 0; n < width[p]; n++)
      proj[start[p] + n] = bf(dot_bf16(x, lw->raw[p], n, BW) + from_bf16(bias[p][n]));
  const uint16_t *got_p[3] = {s->q, s->k, s->v};
  const uint16_t *cos = s->cos + (size_t)r * BDIM, *sin = s->sin + (size_t)r * BDIM;
  for (int p = 0; p < 3; p++)
    for (int n = 0; n < width[p]; n++) {
      double want = proj[start[p] + n];
      if (p < 2) { /* rotated: bf16(bf16(x cos) + bf16(swap(x) sin)) */
        int i = n % BDIM, half = BDIM / 2, base = start[p] + n - i;
        double other = proj[base + (i < half ? i + half : i - half)];
        want = bf(bf(want * from_bf16(cos[i])) + bf(other * from_bf16(sin[i])));
      }
      double got = from_bf16(got_p[p][(size_t)r * width[p] + n]);
      if (!near_bf16(got, want)) {
        CHECK(0, "llama bf16 attn_in row %d: part %d [%d] = %.6g, expected %.6g", r, p, n, got, want);
        return;
      }
    }
  double att[BQ], gate[BI], up[BI];
  for (int i = 0; i < BQ; i++) att[i] = from_bf16(s->att[(size_t)r * BQ + i]);
  for (int n = 0; n < BW; n++) h[n] = bf(h[n] + bf(dot_bf16(att, lw->raw[3], n, BQ)));
  rms_bf16_ref(h, b->norm2, x);
  for (int n = 0; n < BI; n++) {
    gate[n] = bf(dot_bf16(x, lw->raw[4], n, BW)), up[n] = bf(dot_bf16(x, lw->raw[5], n, BW));
    gate[n] = bf(bf(gate[n] / (1 + exp(-gate[n]))) * up[n]);
  }
  for (int n = 0; n < BW; n++) {
    double want = bf(h[n] + bf(dot_bf16(gate, lw->raw[6], n, BI)));
    double got = from_bf16(h1[(size_t)r * BW + n]);
    if (!near_bf16(got, want)) {
      CHECK(0, "llama bf16 attn_out row %d: h[%d] = %.6g, expected %.6g", r, n, got, want);
      return;
    }
  }
}

/* llama_bf16_decode against its layers called one by one with attend_decode_bf16 between (bit
 * for bit, h and the caches), and the last layer's two calls against the double reference. */
static void test_llama_bf16_decode(int rows) {
  llama_bf16_weights lw[BLAYERS];
  llama_bf16_block blocks[BLAYERS];
  for (int l = 0; l < BLAYERS; l++) blocks[l] = make_llama_bf16_block(&lw[l]);
  twin_caches c;
  for (int r = 0; r < rows; r++)
    c.caps[r] = 1 + 5 * r, c.lens[r] = 5 * r, c.tokens[r] = rows - 1 - r; /* out of token order */
  fill_twin_caches(&c, rows, BLAYERS, BKV, BDIM, GLL_BF16);
  uint16_t *cos = random_bf16((size_t)rows * BDIM, 1), *sin = random_bf16((size_t)rows * BDIM, 1);
  uint16_t *h = random_bf16((size_t)rows * BW, 2), *h2 = malloc((size_t)rows * BW * 2);
  uint16_t *h0 = malloc((size_t)rows * BW * 2);
  memcpy(h2, h, (size_t)rows * BW * 2);
  llama_bf16_step s = make_llama_bf16_step(rows, cos, sin);
  CHECK(llama_bf16_decode(blocks, BLAYERS, &s, h, rows, c.stores, c.caps, c.lens, c.tokens) == 0,
        "llama_bf16_decode %d rows", rows);
  for (int l = 0; l < BLAYERS; l++) {
    memcpy(h0, h2, (size_t)rows * BW * 2); /* this layer's input */
    CHECK(llama_bf16_attn_in(&blocks[l], &s, h2, rows) == 0, "llama bf16 attn_in layer %d", l);
    decode_qkv in = {s.q, s.k, s.v, BQ, BDIM, BK, BDIM, BK, BDIM};
    CHECK(attend_decode_bf16(&in, c.copies, c.caps, c.lens, c.tokens, rows, l, BHEADS, BKV, BDIM,
                             s.scale, s.att, BQ, 2) == 0, "llama bf16 attention layer %d", l);
    CHECK(llama_bf16_attn_out(&blocks[l], &s, h2, rows) == 0, "llama bf16 attn_out layer %d", l);
    if (l == BLAYERS - 1)
      for (int r = 0; r < rows; r++) check_llama_bf16_row(&blocks[l], &lw[l], &s, h0, h2, r);
  }
  CHECK(!memcmp(h, h2, (size_t)rows * BW * 2), "llama_bf16_decode %d rows != its layers", rows);
  check_and_free_twin_caches(&c, "llama_bf16_decode");
  for (int l = 0; l < BLAYERS; l++) free_llama_bf16_weights(&lw[l]);
  free(cos), free(sin), free(h), free(h2), free(h0);
  free_llama_bf16_step(&s);
}

/* The plain-C size checks (any CPU). */
static void test_llama_bf16_checks(void) {
  uint16_t f[128] = {0};
  llama_bf16_block b = {f, f, f, NULL, f, NULL, f, NULL, f, f, f, f};
  llama_bf16_step s = {BW, BI, BHEADS, BKV, BDIM, 1, 1e-5f, 0.25f, f, f, f, f, f, f, f, f, f, f};
  llama_bf16_step bad = s;
  bad.width = 40; /* not whole 16-lane vectors */
  CHECK(llama_bf16_attn_in(&b, &bad, f, 1) == -1, "llama bf16 took width 40");
  bad = s, bad.inter = 24;
  CHECK(llama_bf16_attn_out(&b, &bad, f, 1) == -1, "llama bf16 took intermediate 24");
  bad = s, bad.dim = 24;
  CHECK(llama_bf16_attn_out(&b, &bad, f, 1) == -1, "llama bf16 took head dim 24");
  bad = s, bad.heads = 4, bad.kv_heads = 3;
  CHECK(llama_bf16_attn_in(&b, &bad, f, 1) == -1, "llama bf16 took 4 heads over 3");
  bad = s, bad.up = NULL;
  CHECK(llama_bf16_attn_out(&b, &bad, f, 1) == -1, "llama bf16 took no up buffer");
  CHECK(llama_bf16_attn_in(&b, &s, f, 0) == -1, "llama bf16 took 0 rows");
  CHECK(llama_bf16_decode(&b, 0, &s, f, 1, NULL, NULL, NULL, NULL) == -1,
        "llama bf16 took 0 layers");
}

int main(void) {
  test_checks();
  test_int8_checks();
  test_llama_bf16_checks();
  printf("checks: %s\n", failures ? "FAILED" : "ok");
  __builtin_cpu_init();
  const char *fma[] = {"avx2", "fma"}, *vnni[] = {"avx512f", "avx512bw", "avx512vl", "avx512vnni"};
  const int has_fma[] = {__builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma")};
  const int has_vnni[] = {__builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bw"),
                          __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512vnni")};
  test_int8_variant(0, fma, has_fma, 2);
  test_int8_variant(1, vnni, has_vnni, 4);
  test_attention_avx2_variant();
  test_f16_variant();
  test_llama_variant();
  test_gpt2_f16_variant();
  test_gpt2_int8_variant();
  const char *needed[] = {"avx512f", "avx512bw", "avx512vl", "avx512bf16"};
  const int has[] = {__builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bw"),
                     __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512bf16")};
  int missing = 0;
  for (int i = 0; i < 4; i++)
    if (!has[i]) printf("%s%s", missing++ ? ", " : "SKIP kernels: this CPU lacks ", needed[i]);
  if (missing) {
    printf("\n");
    return failures ? 1 : 77;
  }
  const int ms[] = {1, 3, 7, 9, 13}, ks[] = {2, 34, 98, 66}, ns[] = {16, 48, 80, 144};
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 4; j++) {
      test_gemm(ms[i], ks[j], ns[j], 1);
      test_gemm(ms[i], ks[j], ns[j], 0);
    }
  test_attention(3, 1, 16, 1); /* GPT-2: one kv head per query head, packed q/k/v */
  test_attention(3, 1, 48, 1);
  test_attention(3, 1, 80, 1);
  const int kvs[] = {1, 2, 3}, groups[] = {2, 4, 6}, dims[] = {16, 64, 128, 80};
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) test_attention(kvs[i], groups[j], dims[(i + j) % 4], 0);
  test_attention(2, 4, 256, 0); /* the longest head the kernel takes */
  test_gpt2_decode(1);
  test_gpt2_decode(3);
  test_gpt2_decode(7);
  test_llama_bf16_decode(1);
  test_llama_bf16_decode(3);
  test_llama_bf16_decode(7);
  printf("kernels: %s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
