/* The kernels' entry points and the structs they share: one declaration for the library's .c
 * files (each includes this, so a definition that drifts from its declaration does not
 * compile) and for tests/native/test_kernels.c. Python declares the same signatures for
 * ctypes in server/engine/native_ops.py. */
#ifndef GLL_KERNELS_H
#define GLL_KERNELS_H

#include <stdint.h>

/* One block's weights: layer norms (weight, bias), then each linear's packed weight and bias
 * (gemm_bf16's layout; bias may be NULL). */
typedef struct {
  const uint16_t *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
  const uint16_t *ln2_w, *ln2_b, *fc_w, *fc_b, *out_w, *out_b;
} gpt2_block;

/* The model's sizes and the step's scratch: x [rows][width], qkv [rows][3 width],
 * att [rows][width], inner [rows][hidden], y [rows][width]. */
typedef struct {
  int width, hidden, heads, threads;
  float eps, scale;
  uint16_t *x, *qkv, *att, *inner, *y;
} gpt2_step;

/* One GPT-2 layer on the fp16 GEMM (gpt2_f16.c): fp32 layer norms (weight, bias) and biases,
 * fp16 weights [outputs][inputs] as torch lays them out (c_attn [3 width][width], c_proj
 * [width][width], c_fc [hidden][width], the MLP's c_proj [width][hidden]). */
typedef struct {
  const float *ln1_w, *ln1_b, *attn_b, *proj_b, *ln2_w, *ln2_b, *fc_b, *out_b;
  const uint16_t *attn_w, *proj_w, *fc_w, *out_w;
} gpt2_f16_block;

/* gpt2_step's sizes with fp32 scratch: x [rows][width], qkv [rows][3 width], att [rows][width],
 * inner [rows][hidden], y [rows][width]. */
typedef struct {
  int width, hidden, heads, threads;
  float eps, scale;
  float *x, *qkv, *att, *inner, *y;
} gpt2_f16_step;

/* One int8 linear layer as gemm_int8_fma / gemm_int8_vnni take it: the packed weight (pack_int8
 * in the block's variant's layout), per-output fp32 scales, the vnni variant's int32 column
 * sums (NULL for fma) and the fp32 bias. */
typedef struct {
  const int8_t *q;
  const float *scale;
  const int32_t *colsum;
  const float *bias;
} gpt2_int8_linear;

/* One GPT-2 layer on the int8 GEMMs (gpt2_f16.c, DTYPE=int8): fp32 layer norms, then c_attn,
 * c_proj, c_fc and the MLP's c_proj in that order, all of one variant (GLL_INT8_*). */
enum { GLL_INT8_FMA = 0, GLL_INT8_VNNI = 1 };
typedef struct {
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
  gpt2_int8_linear linear[4];
  int variant;
} gpt2_int8_block;

/* One Llama-family layer's weights (llama_f16.c): RMSNorm weights [width] fp32; fp16 weights
 * [outputs][inputs] as torch lays them out: the fused q|k|v [(heads + 2 kv_heads) dim][width]
 * with its fp32 bias or NULL, the output projection [width][heads dim], the fused gate|up
 * [2 inter][width] and the down projection [width][inter]. */
typedef struct {
  const float *norm1, *norm2, *qkv_b;
  const uint16_t *qkv_w, *o_w, *gate_up_w, *down_w;
} llama_block;

/* A Llama-family model's sizes and one step's inputs and scratch (fp32, row-major, a row per
 * packed token): cos, sin [rows][dim] (the step's rotary tables, the sines' first halves
 * negated); x [rows][width], qkv [rows][(heads + 2 kv_heads) dim], att [rows][heads dim],
 * inner [rows][2 inter], act [rows][inter], y [rows][width]. */
typedef struct {
  int width, inter, heads, kv_heads, dim, threads;
  float eps, scale;
  const float *cos, *sin;
  float *x, *qkv, *att, *inner, *act, *y;
} llama_step;

/* One Llama-family layer's weights on the bf16 GEMM (llama_bf16.c): RMSNorm weights [width]
 * bf16; each linear's weight packed as gemm_bf16 takes it (unpadded: every output count a
 * multiple of 16), with its bf16 bias or NULL (Qwen2's q, k, v). */
typedef struct {
  const uint16_t *norm1, *norm2, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b;
  const uint16_t *o_w, *gate_w, *up_w, *down_w;
} llama_bf16_block;

/* llama_step's sizes with bf16 inputs and scratch (row-major, a row per packed token): cos,
 * sin [rows][dim] (the step's bf16 rotary tables, the sines' first halves negated);
 * x [rows][width], q [rows][heads dim], k and v [rows][kv_heads dim], att [rows][heads dim],
 * gate and up [rows][inter], y [rows][width]. */
typedef struct {
  int width, inter, heads, kv_heads, dim, threads;
  float eps, scale;
  const uint16_t *cos, *sin;
  uint16_t *x, *q, *k, *v, *att, *gate, *up, *y;
} llama_bf16_step;

/* A decode step's new queries, keys and values of one layer, each where its projection left
 * it: query head h of packed token t at q + t * q_token + h * q_head (strides in elements),
 * its dims contiguous; kv head g's key at k + t * k_token + g * k_head, its value likewise in
 * v. GPT-2's packed c_attn output is one pattern for all three; a Llama-family step's rotated
 * q and k and its v may each have their own. The element type is the entry point's:
 * attend_decode_bf16 reads bf16; attend_decode_avx2 the dtype it is told (gll_dtype). */
typedef struct {
  const void *q, *k, *v;
  int64_t q_token, q_head, k_token, k_head, v_token, v_head;
} decode_qkv;

/* The element types attend_decode_avx2 reads and writes, passed as int (an out-of-range value
 * is refused, not undefined): Python's native_ops.DTYPE_CODES. GLL_I8: a cache of int8 with
 * an fp32 scale per (layer, k|v, kv head, position) (server.engine.kv_int8). */
typedef enum { GLL_BF16 = 0, GLL_F16 = 1, GLL_F32 = 2, GLL_I8 = 3 } gll_dtype;

int pack_vnni(const uint16_t *w, uint16_t *dst, int N, int K);
int gemm_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *out, int M,
              int N, int K, int threads);
int attend_decode_bf16(const decode_qkv *in, uint16_t *const *stores, const int64_t *caps,
                       const int64_t *lens, const int64_t *tokens, int rows, int layer,
                       int heads, int kv_heads, int dim, float scale, uint16_t *out,
                       int64_t out_stride, int threads);
int pack_int8(const int8_t *q, int8_t *dst, int N, int K, int layout);
int gemm_int8_fma(const float *x, const int8_t *w, const float *scale, const float *bias, float *out,
                  int M, int N, int K, int threads);
int gemm_int8_vnni(const float *x, const int8_t *w, const float *scale, const int32_t *colsum,
                   const float *bias, float *out, int M, int N, int K, int threads);
int gemm_f16(const float *x, const uint16_t *w, const float *bias, float *out, int M, int N, int K,
             int threads);
int gpt2_attn_in(const gpt2_block *b, const gpt2_step *s, const uint16_t *h, int rows);
int gpt2_attn_out(const gpt2_block *b, const gpt2_step *s, uint16_t *h, int rows);
int gpt2_decode(const gpt2_block *blocks, int layers, const gpt2_step *s, uint16_t *h, int rows,
                uint16_t *const *stores, const int64_t *caps, const int64_t *lens,
                const int64_t *tokens);
int gpt2_f16_attn_in(const gpt2_f16_block *b, const gpt2_f16_step *s, const float *h, int rows);
int gpt2_f16_attn_out(const gpt2_f16_block *b, const gpt2_f16_step *s, float *h, int rows);
int gpt2_f16_decode(const gpt2_f16_block *blocks, int layers, const gpt2_f16_step *s, float *h,
                    int rows, uint16_t *const *stores, int cache_dtype, float *const *scales,
                    const int64_t *caps, const int64_t *lens, const int64_t *tokens);
int gpt2_int8_attn_in(const gpt2_int8_block *b, const gpt2_f16_step *s, const float *h,
                      int rows);
int gpt2_int8_attn_out(const gpt2_int8_block *b, const gpt2_f16_step *s, float *h, int rows);
int gpt2_int8_decode(const gpt2_int8_block *blocks, int layers, const gpt2_f16_step *s, float *h,
                     int rows, uint16_t *const *stores, int cache_dtype, float *const *scales,
                     const int64_t *caps, const int64_t *lens, const int64_t *tokens);
int llama_attn_in(const llama_block *b, const llama_step *s, const float *h, int rows);
int llama_attn_out(const llama_block *b, const llama_step *s, float *h, int rows);
int llama_decode(const llama_block *blocks, int layers, const llama_step *s, float *h, int rows,
                 uint16_t *const *stores, int cache_dtype, float *const *scales,
                 const int64_t *caps, const int64_t *lens, const int64_t *tokens);
int llama_bf16_attn_in(const llama_bf16_block *b, const llama_bf16_step *s, const uint16_t *h,
                       int rows);
int llama_bf16_attn_out(const llama_bf16_block *b, const llama_bf16_step *s, uint16_t *h,
                        int rows);
int llama_bf16_decode(const llama_bf16_block *blocks, int layers, const llama_bf16_step *s,
                      uint16_t *h, int rows, uint16_t *const *stores, const int64_t *caps,
                      const int64_t *lens, const int64_t *tokens);
int attend_decode_check(const decode_qkv *in, uint16_t *const *stores, const int64_t *caps,
                        const int64_t *lens, const int64_t *tokens, int rows, int layer,
                        int heads, int kv_heads, int dim, const void *out, int threads);
int attend_decode_avx2(const decode_qkv *in, int qkv_dtype, uint16_t *const *stores,
                       int cache_dtype, float *const *scales, const int64_t *caps,
                       const int64_t *lens, const int64_t *tokens, int rows, int layer,
                       int heads, int kv_heads, int dim, float scale, void *out,
                       int64_t out_stride, int threads);

#endif
