/* Paged attention over the block KV cache, and the rotary embedding fused with the KV write.
 *
 * Cache layout (the native backend's own; the torch backend keeps [block, token, head, dim]),
 * with P = 1 for float32 and P = 2 for bfloat16 (pairs, as AVX512-BF16 dot products take them):
 *   K: [num_blocks, num_kv_heads, head_dim / P, block_size, P]   keys transposed per block, so
 *      the scores of a block's tokens come out as one vector per query, without reductions
 *   V: [num_blocks, num_kv_heads, block_size / P, head_dim, P]
 * Decode reads each cached row once, in place; nothing is gathered or copied per step.
 */
#include "common.h"


/* Index of element (token j, dim d) inside one (block, head) slab. */
static inline int64_t key_index(int j, int d, int block_size, int pair) {
    return ((int64_t)(d / pair) * block_size + j) * pair + d % pair;
}
static inline int64_t value_index(int j, int d, int head_dim, int pair) {
    return ((int64_t)(j / pair) * head_dim + d) * pair + j % pair;
}

#define DEFINE_ROPE_WRITE_KV(SUFFIX, T, LOAD, STORE, PAIR)                                       \
/* Rotate q and k by their positions (rotate-half layout, float32 cos/sin tables [P, head_dim]) \
 * and write k and v into their cache slots (slot = block * block_size + token). q, k, v are   \
 * row-strided views (e.g. of one fused qkv matmul output); q_out and k_out are contiguous     \
 * [T, heads, head_dim]. */                                                                     \
void rope_write_kv_##SUFFIX(const T *q, const T *k, const T *v, int64_t row_stride,           \
                            const int64_t *positions, const float *cos_table,                   \
                            const float *sin_table, const int64_t *slots, T *q_out, T *k_out,  \
                            T *k_cache, T *v_cache, int64_t num_tokens, int num_heads,          \
                            int num_kv_heads, int head_dim, int block_size) {                   \
    const int half = head_dim / 2;                                                              \
    const int64_t kv_width = (int64_t)num_kv_heads * head_dim;                                  \
    const int64_t slab = (int64_t)block_size * head_dim;                                        \
    _Pragma("omp parallel for schedule(static) if (num_tokens > 1)")                            \
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
        const int64_t block = slots[t] / block_size;                                            \
        const int j = (int)(slots[t] % block_size);                                             \
        for (int head = 0; head < num_kv_heads; head++) {                                       \
            T *k_slab = k_cache + (block * num_kv_heads + head) * slab;                         \
            T *v_slab = v_cache + (block * num_kv_heads + head) * slab;                         \
            const T *k_row = k_out + t * kv_width + (int64_t)head * head_dim;                   \
            const T *v_row = v + t * row_stride + (int64_t)head * head_dim;                     \
            for (int d = 0; d < head_dim; d++) {                                                \
                k_slab[key_index(j, d, block_size, PAIR)] = k_row[d];                           \
                v_slab[value_index(j, d, head_dim, PAIR)] = v_row[d];                           \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}

DEFINE_ROPE_WRITE_KV(f32, float, f32_load, f32_store, 1)
DEFINE_ROPE_WRITE_KV(bf16, bf16, bf16_load, bf16_store, 2)

/* Empty running state for `group` queries before their first block. */
static inline void reset_running(int group, int head_dim, float acc[][MAX_HEAD_DIM],
                                 float *running_max, float *running_sum) {
    for (int g = 0; g < group; g++) {
        running_max[g] = -FLT_MAX;
        running_sum[g] = 0.0f;
        for (int d = 0; d < head_dim; d++) acc[g][d] = 0.0f;
    }
}

/* Online softmax over one block's scores s[g][0..count) (already scaled): rescales the running
 * sums and accumulators of each query and leaves the block's probabilities in s. */
static inline void softmax_block(float scores[][MAX_BLOCK], int group, int count,
                                 float *running_max, float *running_sum, float *correction) {
    for (int g = 0; g < group; g++) {
        float block_max = running_max[g];
        for (int j = 0; j < count; j++) block_max = scores[g][j] > block_max ? scores[g][j] : block_max;
        correction[g] = expf(running_max[g] - block_max);
        float sum = 0.0f;
        for (int j = 0; j < count; j++) {
            scores[g][j] = expf(scores[g][j] - block_max);
            sum += scores[g][j];
        }
        running_sum[g] = running_sum[g] * correction[g] + sum;
        running_max[g] = block_max;
    }
}

/* One query row's `group` heads over one kv head's cache slabs (float32 layout, P = 1). */
static void attend_f32(const float *query, const float *k_cache, const float *v_cache,
                       const int32_t *table, int context, int group, int head_dim,
                       int block_size, int64_t slab_stride, int64_t head_offset, float scale,
                       float acc[][MAX_HEAD_DIM], float *running_sum) {
    float scores[MAX_GROUP][MAX_BLOCK];
    float running_max[MAX_GROUP], correction[MAX_GROUP];
    reset_running(group, head_dim, acc, running_max, running_sum);
    for (int start = 0; start < context; start += block_size) {
        const int64_t block = table[start / block_size];
        const int count = context - start < block_size ? context - start : block_size;
        const float *keys = k_cache + block * slab_stride + head_offset;    /* [D][bs] */
        const float *values = v_cache + block * slab_stride + head_offset;  /* [bs][D] */
        for (int g = 0; g < group; g++) {
            for (int j = 0; j < block_size; j++) scores[g][j] = 0.0f;
            for (int d = 0; d < head_dim; d++) {
                const float qd = query[g * head_dim + d];
                const float *key_row = keys + (int64_t)d * block_size;
                for (int j = 0; j < block_size; j++) scores[g][j] += qd * key_row[j];
            }
            for (int j = 0; j < count; j++) scores[g][j] *= scale;
        }
        softmax_block(scores, group, count, running_max, running_sum, correction);
        for (int g = 0; g < group; g++) {
            for (int d = 0; d < head_dim; d++) acc[g][d] *= correction[g];
            for (int j = 0; j < count; j++) {
                const float p = scores[g][j];
                const float *value = values + (int64_t)j * head_dim;
                for (int d = 0; d < head_dim; d++) acc[g][d] += p * value[d];
            }
        }
    }
}

/* The same for bfloat16 slabs (P = 2), in float32: each 32-value vector of bf16 pairs splits
 * into its even and odd elements by a shift and a mask, then float32 FMAs. (AVX512-BF16 dot
 * products on the pairs were measured slower: vdpbf16ps issues at a quarter of the FMA rate
 * on this CPU, and rounds the probabilities to bf16.) */
#ifdef HAVE_AVX512
#define HAVE_BF16_FAST 1
__m512 _ZGVeN16v_expf(__m512 x); /* glibc's libmvec: expf on 16 lanes */

static inline __m512 even_bf16(__m512i pairs) { return _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16)); }
static inline __m512 odd_bf16(__m512i pairs) {
    return _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32((int)0xFFFF0000u)));
}

/* One query's block of scores [0, count) -> online-softmax update of its running max and sum,
 * the factor its accumulator must be rescaled by, and the probabilities in place (zero from
 * `count` to the next multiple of 16), 16 tokens a vector. */
static inline void softmax_row(float *scores, int count, float *running_max,
                               float *running_sum, float *correction) {
    float block_max = *running_max;
    for (int chunk = 0; chunk < count; chunk += 16) {
        const __mmask16 live = count - chunk >= 16 ? 0xFFFF
                                                   : (__mmask16)((1u << (count - chunk)) - 1u);
        const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-FLT_MAX), live, scores + chunk);
        const float chunk_max = _mm512_reduce_max_ps(v);
        block_max = chunk_max > block_max ? chunk_max : block_max;
    }
    *correction = expf(*running_max - block_max);
    *running_max = block_max;
    float sum = 0.0f;
    for (int chunk = 0; chunk < count; chunk += 16) {
        const __mmask16 live = count - chunk >= 16 ? 0xFFFF
                                                   : (__mmask16)((1u << (count - chunk)) - 1u);
        const __m512 v = _mm512_loadu_ps(scores + chunk);
        const __m512 p = _mm512_maskz_mov_ps(
            live, _ZGVeN16v_expf(_mm512_sub_ps(v, _mm512_set1_ps(block_max))));
        sum += _mm512_reduce_add_ps(p);
        _mm512_storeu_ps(scores + chunk, p);
    }
    *running_sum = *running_sum * *correction + sum;
}

/* Specialised per group size G so every accumulator has a constant index and stays in a
 * register: the FMAs are latency-bound chains otherwise (measured 3x slower). The scores of a
 * 16-token chunk use CHAINS independent sums per query (each over even and odd dims); p.v
 * covers 64 dims (4 vectors) per query at a time. */
#define DEFINE_ATTEND_BF16(G, CHAINS)                                                              \
static void attend_bf16_g##G(const float query[][MAX_HEAD_DIM], const bf16 *k_cache,             \
                             const bf16 *v_cache, const int32_t *table, int context,             \
                             int head_dim, int block_size, int64_t slab_stride,                   \
                             int64_t head_offset, float scale, float acc[][MAX_HEAD_DIM],         \
                             float *running_sum) {                                                \
    float scores[MAX_GROUP][MAX_BLOCK];                                                           \
    float running_max[MAX_GROUP], correction[MAX_GROUP];                                          \
    reset_running(G, head_dim, acc, running_max, running_sum);                                    \
    for (int start = 0; start < context; start += block_size) {                                   \
        const int64_t block = table[start / block_size];                                          \
        const int count = context - start < block_size ? context - start : block_size;            \
        const bf16 *keys = k_cache + block * slab_stride + head_offset;   /* [D/2][bs][2] */      \
        const bf16 *values = v_cache + block * slab_stride + head_offset; /* [bs/2][D][2] */      \
        for (int chunk = 0; chunk < count; chunk += 16) {                                         \
            __m512 s[G][CHAINS];                                                                  \
            for (int g = 0; g < G; g++)                                                           \
                for (int c = 0; c < CHAINS; c++) s[g][c] = _mm512_setzero_ps();                   \
            for (int dp = 0; dp < head_dim / 2; dp += CHAINS) {                                   \
                for (int c = 0; c < CHAINS; c++) {                                                \
                    const __m512i pairs = _mm512_loadu_si512(                                     \
                        keys + ((int64_t)(dp + c) * block_size + chunk) * 2);                     \
                    const __m512 k_even = even_bf16(pairs), k_odd = odd_bf16(pairs);              \
                    for (int g = 0; g < G; g++) {                                                 \
                        s[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(query[g][2 * (dp + c)]),         \
                                                  k_even, s[g][c]);                               \
                        s[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(query[g][2 * (dp + c) + 1]),     \
                                                  k_odd, s[g][c]);                                \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
            for (int g = 0; g < G; g++) {                                                         \
                __m512 total = s[g][0];                                                           \
                for (int c = 1; c < CHAINS; c++) total = _mm512_add_ps(total, s[g][c]);           \
                _mm512_storeu_ps(scores[g] + chunk, _mm512_mul_ps(total, _mm512_set1_ps(scale))); \
            }                                                                                     \
        }                                                                                         \
        for (int g = 0; g < G; g++)                                                               \
            softmax_row(scores[g], count, &running_max[g], &running_sum[g], &correction[g]);      \
        const int num_pairs = (count + 1) / 2;                                                    \
        for (int dc = 0; dc < head_dim; dc += 64) {                                               \
            if (head_dim - dc >= 64)                                                              \
                ACCUMULATE_VALUES(G, 4);                                                          \
            else if (head_dim - dc >= 32)                                                         \
                ACCUMULATE_VALUES(G, 2);                                                          \
            else                                                                                  \
                ACCUMULATE_VALUES(G, 1);                                                          \
        }                                                                                         \
    }                                                                                             \
}

/* acc[g][dc .. dc + 16 W) = acc * correction + p.v for the block: W vectors per query, the
 * accumulators in registers (constant trip counts). A pair vector holds 16 dims of tokens
 * 2 jp (even elements) and 2 jp + 1 (odd ones). */
#define ACCUMULATE_VALUES(G, W)                                                                   \
    do {                                                                                          \
        __m512 a[G][W];                                                                           \
        for (int g = 0; g < G; g++)                                                               \
            for (int v = 0; v < W; v++)                                                           \
                a[g][v] = _mm512_mul_ps(_mm512_loadu_ps(acc[g] + dc + 16 * v),                    \
                                        _mm512_set1_ps(correction[g]));                           \
        for (int jp = 0; jp < num_pairs; jp++) {                                                  \
            for (int v = 0; v < W; v++) {                                                         \
                const __m512i pairs = _mm512_loadu_si512(                                         \
                    values + ((int64_t)jp * head_dim + dc + 16 * v) * 2);                         \
                const __m512 v_even = even_bf16(pairs), v_odd = odd_bf16(pairs);                  \
                for (int g = 0; g < G; g++) {                                                     \
                    a[g][v] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g][2 * jp]), v_even, a[g][v]);\
                    a[g][v] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g][2 * jp + 1]), v_odd,       \
                                              a[g][v]);                                           \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (int g = 0; g < G; g++)                                                               \
            for (int v = 0; v < W; v++) _mm512_storeu_ps(acc[g] + dc + 16 * v, a[g][v]);          \
    } while (0)

DEFINE_ATTEND_BF16(1, 4)
DEFINE_ATTEND_BF16(2, 4)
DEFINE_ATTEND_BF16(3, 2)
DEFINE_ATTEND_BF16(4, 2)
DEFINE_ATTEND_BF16(5, 2)
DEFINE_ATTEND_BF16(6, 2)
DEFINE_ATTEND_BF16(7, 1)
DEFINE_ATTEND_BF16(8, 1)
#endif


/* Generic bfloat16 path: any group size, and CPUs without AVX-512. */
static void attend_bf16_scalar(const bf16 *query, const bf16 *k_cache, const bf16 *v_cache,
                               const int32_t *table, int context, int group, int head_dim,
                               int block_size, int64_t slab_stride, int64_t head_offset,
                               float scale, float acc[][MAX_HEAD_DIM], float *running_sum) {
    float scores[MAX_GROUP][MAX_BLOCK];
    float running_max[MAX_GROUP], correction[MAX_GROUP];
    reset_running(group, head_dim, acc, running_max, running_sum);
    for (int start = 0; start < context; start += block_size) {
        const int64_t block = table[start / block_size];
        const int count = context - start < block_size ? context - start : block_size;
        const bf16 *keys = k_cache + block * slab_stride + head_offset;
        const bf16 *values = v_cache + block * slab_stride + head_offset;
        for (int g = 0; g < group; g++)
            for (int j = 0; j < count; j++) {
                float dot = 0.0f;
                for (int d = 0; d < head_dim; d++)
                    dot += bf16_load(query[g * head_dim + d])
                           * bf16_load(keys[key_index(j, d, block_size, 2)]);
                scores[g][j] = dot * scale;
            }
        softmax_block(scores, group, count, running_max, running_sum, correction);
        for (int g = 0; g < group; g++) {
            for (int d = 0; d < head_dim; d++) acc[g][d] *= correction[g];
            for (int j = 0; j < count; j++) {
                const float p = bf16_load(bf16_store(scores[g][j]));
                for (int d = 0; d < head_dim; d++)
                    acc[g][d] += p * bf16_load(values[value_index(j, d, head_dim, 2)]);
            }
        }
    }
}

static void attend_bf16(const bf16 *query, const bf16 *k_cache, const bf16 *v_cache,
                        const int32_t *table, int context, int group, int head_dim,
                        int block_size, int64_t slab_stride, int64_t head_offset, float scale,
                        float acc[][MAX_HEAD_DIM], float *running_sum) {
#ifdef HAVE_BF16_FAST
    float q_float[MAX_GROUP][MAX_HEAD_DIM];
    for (int g = 0; g < group && g < MAX_GROUP; g++)
        for (int d = 0; d < head_dim; d++) q_float[g][d] = bf16_load(query[g * head_dim + d]);
#define ATTEND_G(G) attend_bf16_g##G(q_float, k_cache, v_cache, table, context, head_dim, \
                                     block_size, slab_stride, head_offset, scale, acc, running_sum)
    switch (group) {
        case 1: ATTEND_G(1); return;
        case 2: ATTEND_G(2); return;
        case 3: ATTEND_G(3); return;
        case 4: ATTEND_G(4); return;
        case 5: ATTEND_G(5); return;
        case 6: ATTEND_G(6); return;
        case 7: ATTEND_G(7); return;
        case 8: ATTEND_G(8); return;
        default: break;
    }
#undef ATTEND_G
#endif
    attend_bf16_scalar(query, k_cache, v_cache, table, context, group, head_dim, block_size,
                       slab_stride, head_offset, scale, acc, running_sum);
}

#define DEFINE_PAGED_ATTENTION(SUFFIX, T, LOAD, STORE, ATTEND)                                   \
/* Attention of query rows over the paged cache. Row r reads block-table row row_seq[r] and   \
 * sees keys at positions [0, row_ctx[r]). q, out: [num_rows, num_heads, head_dim];            \
 * block_tables: [num_seqs, max_blocks]; `scale` multiplies q.k. */                             \
void paged_attention_##SUFFIX(const T *q, const T *k_cache, const T *v_cache,                  \
                              const int32_t *block_tables, const int32_t *row_seq,              \
                              const int32_t *row_ctx, T *out, int64_t num_rows, int num_heads,  \
                              int num_kv_heads, int head_dim, int block_size, int max_blocks,   \
                              float scale) {                                                    \
    const int group = num_heads / num_kv_heads;                                                 \
    const int64_t head_slab = (int64_t)block_size * head_dim;                                   \
    const int64_t slab_stride = num_kv_heads * head_slab;                                       \
    _Pragma("omp parallel for collapse(2) schedule(dynamic, 1)")                                \
    for (int64_t row = 0; row < num_rows; row++) {                                              \
        for (int kv_head = 0; kv_head < num_kv_heads; kv_head++) {                              \
            float acc[MAX_GROUP][MAX_HEAD_DIM];                                                 \
            float running_sum[MAX_GROUP];                                                       \
            const T *query = q + (row * num_heads + kv_head * group) * head_dim;                \
            ATTEND(query, k_cache, v_cache, block_tables + (int64_t)row_seq[row] * max_blocks,  \
                   row_ctx[row], group, head_dim, block_size, slab_stride,                      \
                   kv_head * head_slab, scale, acc, running_sum);                               \
            for (int g = 0; g < group; g++) {                                                   \
                T *dst = out + (row * num_heads + kv_head * group + g) * head_dim;              \
                const float inv = running_sum[g] > 0.0f ? 1.0f / running_sum[g] : 0.0f;        \
                for (int d = 0; d < head_dim; d++) dst[d] = STORE(acc[g][d] * inv);             \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}

DEFINE_PAGED_ATTENTION(f32, float, f32_load, f32_store, attend_f32)
DEFINE_PAGED_ATTENTION(bf16, bf16, bf16_load, bf16_store, attend_bf16)

/* Lets the loader check that the library and its Python bindings agree. */
int flintlm_kernels_abi_version(void) { return 5; }
