/* flintlm's CPU kernels: the per-layer work between the matmuls, fused so that each touches
 * its data once. Paged attention over the block KV cache, rotary embedding fused with the KV
 * write, residual add fused with RMSNorm, and SiLU-and-mul.
 *
 * Built at run time by kernels/native.py (cc -O3 -march=native -fopenmp) and called through
 * ctypes with raw pointers; every tensor is contiguous unless a row stride is passed. Each
 * kernel exists for float32 (suffix _f32) and bfloat16 (suffix _bf16); arithmetic is float32.
 * OpenMP here shares PyTorch's libgomp (same soname, already loaded), hence its thread pool.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
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

#define DEFINE_KERNELS(SUFFIX, T, LOAD, STORE)                                                  \
                                                                                                \
/* Attention of query rows over the paged cache. Row r reads block-table row row_seq[r] and   \
 * sees keys at positions [0, row_ctx[r]); the softmax runs online, one block at a time.       \
 * q, out: [num_rows, num_heads, head_dim]; caches: [num_blocks, block_size, num_kv_heads,     \
 * head_dim]; block_tables: [num_seqs, max_blocks]. `scale` multiplies q.k. */                 \
void paged_attention_##SUFFIX(const T *q, const T *k_cache, const T *v_cache,                  \
                              const int32_t *block_tables, const int32_t *row_seq,              \
                              const int32_t *row_ctx, T *out, int64_t num_rows, int num_heads,  \
                              int num_kv_heads, int head_dim, int block_size, int max_blocks,   \
                              float scale) {                                                    \
    const int group = num_heads / num_kv_heads;                                                 \
    const int64_t token_stride = (int64_t)num_kv_heads * head_dim;                              \
    _Pragma("omp parallel for collapse(2) schedule(dynamic, 1)")                                \
    for (int64_t row = 0; row < num_rows; row++) {                                              \
        for (int kv_head = 0; kv_head < num_kv_heads; kv_head++) {                              \
            float query[MAX_GROUP][MAX_HEAD_DIM];                                               \
            float acc[MAX_GROUP][MAX_HEAD_DIM];                                                 \
            float scores[MAX_GROUP][MAX_BLOCK];                                                 \
            float running_max[MAX_GROUP], running_sum[MAX_GROUP];                               \
            const int32_t *table = block_tables + (int64_t)row_seq[row] * max_blocks;          \
            const int context = row_ctx[row];                                                   \
            for (int g = 0; g < group; g++) {                                                   \
                const T *src = q + (row * num_heads + kv_head * group + g) * head_dim;          \
                for (int d = 0; d < head_dim; d++) {                                            \
                    query[g][d] = LOAD(src[d]) * scale;                                         \
                    acc[g][d] = 0.0f;                                                           \
                }                                                                               \
                running_max[g] = -FLT_MAX;                                                      \
                running_sum[g] = 0.0f;                                                          \
            }                                                                                   \
            for (int start = 0; start < context; start += block_size) {                         \
                const int64_t block = table[start / block_size];                                \
                const int count = context - start < block_size ? context - start : block_size;  \
                const T *keys = k_cache + block * block_size * token_stride                     \
                                + (int64_t)kv_head * head_dim;                                  \
                const T *values = v_cache + block * block_size * token_stride                   \
                                  + (int64_t)kv_head * head_dim;                                \
                for (int j = 0; j < count; j++) {                                               \
                    const T *key = keys + j * token_stride;                                     \
                    for (int g = 0; g < group; g++) {                                           \
                        float dot = 0.0f;                                                       \
                        for (int d = 0; d < head_dim; d++) dot += query[g][d] * LOAD(key[d]);   \
                        scores[g][j] = dot;                                                     \
                    }                                                                           \
                }                                                                               \
                for (int g = 0; g < group; g++) {                                               \
                    float block_max = running_max[g];                                           \
                    for (int j = 0; j < count; j++)                                             \
                        block_max = scores[g][j] > block_max ? scores[g][j] : block_max;        \
                    const float correction = expf(running_max[g] - block_max);                  \
                    float sum = 0.0f;                                                           \
                    for (int j = 0; j < count; j++) {                                          \
                        scores[g][j] = expf(scores[g][j] - block_max);                          \
                        sum += scores[g][j];                                                    \
                    }                                                                           \
                    running_sum[g] = running_sum[g] * correction + sum;                         \
                    running_max[g] = block_max;                                                 \
                    for (int d = 0; d < head_dim; d++) acc[g][d] *= correction;                 \
                }                                                                               \
                for (int j = 0; j < count; j++) {                                               \
                    const T *value = values + j * token_stride;                                 \
                    float value_f[MAX_HEAD_DIM];                                                \
                    for (int d = 0; d < head_dim; d++) value_f[d] = LOAD(value[d]);             \
                    for (int g = 0; g < group; g++) {                                           \
                        const float p = scores[g][j];                                           \
                        for (int d = 0; d < head_dim; d++) acc[g][d] += p * value_f[d];         \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            for (int g = 0; g < group; g++) {                                                   \
                T *dst = out + (row * num_heads + kv_head * group + g) * head_dim;              \
                const float inv = running_sum[g] > 0.0f ? 1.0f / running_sum[g] : 0.0f;        \
                for (int d = 0; d < head_dim; d++) dst[d] = STORE(acc[g][d] * inv);             \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* Rotate q and k by their positions (rotate-half layout, float32 cos/sin tables [P, head_dim]) \
 * and write k and v into their cache slots. q, k, v are row-strided views (e.g. of one fused  \
 * qkv matmul output); q_out and k_out are contiguous [T, heads, head_dim]. */                  \
void rope_write_kv_##SUFFIX(const T *q, const T *k, const T *v, int64_t row_stride,           \
                            const int64_t *positions, const float *cos_table,                   \
                            const float *sin_table, const int64_t *slots, T *q_out, T *k_out,  \
                            T *k_cache, T *v_cache, int64_t num_tokens, int num_heads,          \
                            int num_kv_heads, int head_dim) {                                   \
    const int half = head_dim / 2;                                                              \
    const int64_t kv_width = (int64_t)num_kv_heads * head_dim;                                  \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t t = 0; t < num_tokens; t++) {                                                  \
        const float *c = cos_table + positions[t] * head_dim;                                   \
        const float *s = sin_table + positions[t] * head_dim;                                   \
        for (int h = 0; h < num_heads + num_kv_heads; h++) {                                    \
            const int is_key = h >= num_heads;                                                  \
            const int head = is_key ? h - num_heads : h;                                        \
            const T *x = (is_key ? k : q) + t * row_stride + (int64_t)head * head_dim;          \
            T *y = is_key ? k_out + t * kv_width + (int64_t)head * head_dim                     \
                          : q_out + (t * num_heads + head) * head_dim;                          \
            for (int i = 0; i < half; i++) {                                                    \
                const float x1 = LOAD(x[i]), x2 = LOAD(x[i + half]);                            \
                y[i] = STORE(x1 * c[i] - x2 * s[i]);                                            \
                y[i + half] = STORE(x2 * c[i + half] + x1 * s[i + half]);                       \
            }                                                                                   \
        }                                                                                       \
        if (slots[t] >= 0) {                                                                    \
            memcpy(k_cache + slots[t] * kv_width, k_out + t * kv_width, kv_width * sizeof(T));  \
            memcpy(v_cache + slots[t] * kv_width, v + t * row_stride, kv_width * sizeof(T));    \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* residual += x (when x is given), then out = rmsnorm(residual) * weight, as HF's Llama       \
 * rounds it: the normalised row is rounded to the dtype before the weight multiplies it. */    \
void add_rms_norm_##SUFFIX(const T *x, T *residual, const T *weight, T *out,                  \
                           int64_t num_tokens, int size, float eps) {                          \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t t = 0; t < num_tokens; t++) {                                                  \
        T *r = residual + t * size;                                                             \
        if (x != 0) {                                                                           \
            const T *xr = x + t * size;                                                         \
            for (int i = 0; i < size; i++) r[i] = STORE(LOAD(r[i]) + LOAD(xr[i]));              \
        }                                                                                       \
        float sum_sq = 0.0f;                                                                    \
        for (int i = 0; i < size; i++) {                                                        \
            const float value = LOAD(r[i]);                                                     \
            sum_sq += value * value;                                                            \
        }                                                                                       \
        const float inv = 1.0f / sqrtf(sum_sq / (float)size + eps);                             \
        T *o = out + t * size;                                                                  \
        for (int i = 0; i < size; i++)                                                          \
            o[i] = STORE(LOAD(STORE(LOAD(r[i]) * inv)) * LOAD(weight[i]));                      \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* out[t, i] = silu(gate_up[t, i]) * gate_up[t, size + i]. */                                   \
void silu_and_mul_##SUFFIX(const T *gate_up, T *out, int64_t num_tokens, int size) {          \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t t = 0; t < num_tokens; t++) {                                                  \
        const T *gate = gate_up + t * 2 * (int64_t)size;                                        \
        const T *up = gate + size;                                                              \
        T *o = out + t * (int64_t)size;                                                         \
        for (int i = 0; i < size; i++) {                                                        \
            const float g = LOAD(gate[i]);                                                      \
            o[i] = STORE(g / (1.0f + expf(-g)) * LOAD(up[i]));                                  \
        }                                                                                       \
    }                                                                                           \
}

DEFINE_KERNELS(f32, float, f32_load, f32_store)
DEFINE_KERNELS(bf16, bf16, bf16_load, bf16_store)

/* Lets the loader check that the library and its Python bindings agree. */
int flintlm_kernels_abi_version(void) { return 1; }
