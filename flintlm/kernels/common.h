/* Shared by flintlm's CPU kernels: bfloat16 <-> float32, size limits, the kernels' prototypes.
 *
 * The kernels are built at run time by kernels/native.py (cc -O3 with the flags of the selected
 * instruction-set tier, see tier.h; -fopenmp) and
 * called through ctypes with raw pointers; every tensor is contiguous unless a stride is
 * passed. Each exists for float32 (suffix _f32) and bfloat16 (suffix _bf16); arithmetic is
 * float32. OpenMP here shares PyTorch's libgomp (same soname, already loaded), hence its
 * thread pool.
 */
#ifndef FLINTLM_KERNELS_COMMON_H
#define FLINTLM_KERNELS_COMMON_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

static inline float bf16_load(bf16 x) {
    uint32_t bits = (uint32_t)x << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Round to nearest even, as torch does; NaN stays NaN (quieted). */
static inline bf16 bf16_store(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
    uint32_t is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    return (bf16)((is_nan ? (bits | 0x00400000u) : rounded) >> 16);
}

static inline float f32_load(float x) { return x; }
static inline float f32_store(float x) { return x; }

#define MAX_GROUP 16      /* query heads per KV head */
#define MAX_HEAD_DIM 256
#define MAX_BLOCK 128     /* tokens per KV block */

/* The kernels other files compose (decode_step.c), declared once here so that every file
 * defining them is checked against the same signature by the compiler. A kernel that
 * allocates returns an int: 0, or nonzero where it could not allocate (outputs unwritten). */
#define DECLARE_KERNELS(SUFFIX, T)                                                               \
void add_rms_norm_##SUFFIX(const T *x, T *residual, const T *weight, T *out,                    \
                           int64_t num_tokens, int size, float eps);                             \
void silu_and_mul_##SUFFIX(const T *gate_up, T *out, int64_t num_tokens, int size);             \
int quant_matmul_##SUFFIX(const T *x, int64_t rows, int64_t k, const uint8_t *q,                \
                           const uint16_t *d, const uint16_t *m, int is_q4, int is_interleaved,  \
                           int64_t n, T *y, int64_t y_stride, int64_t col0, int use_int8);      \
void rope_write_kv_##SUFFIX(const T *q, const T *k, const T *v, int64_t row_stride,             \
                            const int64_t *positions, const float *cos_table,                     \
                            const float *sin_table, const int64_t *slots, T *q_out, T *k_out,    \
                            T *k_cache, T *v_cache, int64_t num_tokens, int num_heads,            \
                            int num_kv_heads, int head_dim, int block_size);                     \
void paged_attention_##SUFFIX(const T *q, const T *k_cache, const T *v_cache,                    \
                              const int32_t *block_tables, const int32_t *row_seq,                \
                              const int32_t *row_ctx, T *out, int64_t num_rows, int num_heads,    \
                              int num_kv_heads, int head_dim, int block_size, int max_blocks,     \
                              float scale);

DECLARE_KERNELS(f32, float)
DECLARE_KERNELS(bf16, bf16)

#endif
