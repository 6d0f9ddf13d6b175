/* Paged attention over the block KV cache, and the rotary embedding fused with the KV write.
 *
 * Cache layout (the native backend's own; the torch backend keeps [block, token, head, dim]),
 * with P = 1 for a float32 cache and P = 2 for a bfloat16 one (pairs, as AVX512-BF16 dot
 * products take them):
 *   K: [num_blocks, num_kv_heads, head_dim / P, block_size, P]   keys transposed per block, so
 *      the scores of a block's tokens come out as one vector per query, without reductions
 *   V: [num_blocks, num_kv_heads, block_size / P, head_dim, P]
 * The cache's element type (kv_kind: KV_F32, KV_BF16) is independent of the compute type T: a
 * float32 model may keep a bfloat16 cache, half the bytes each decode step reads (llama.cpp
 * keeps float16 by default). Decode reads each cached row once, in place; nothing is gathered
 * or copied per step.
 */
#include "tier.h"


/* Index of element (token j, dim d) inside one (block, head) slab. */
static inline int64_t key_index(int j, int d, int block_size, int pair) {
    return ((int64_t)(d / pair) * block_size + j) * pair + d % pair;
}
static inline int64_t value_index(int j, int d, int head_dim, int pair) {
    return ((int64_t)(j / pair) * head_dim + d) * pair + j % pair;
}

/* One token's k and v rows (elements read by LOAD) into slot j of a (block, head) slab pair of
 * element type C, pair P, rounded by CSTORE. */
#define WRITE_SLOT(C, CSTORE, PAIR, LOAD, k_slab, v_slab, k_row, v_row, j, head_dim, block_size) \
    do {                                                                                         \
        C *ks = (C *)(k_slab), *vs = (C *)(v_slab);                                              \
        for (int d = 0; d < (head_dim); d++) {                                                   \
            ks[key_index(j, d, block_size, PAIR)] = CSTORE(LOAD((k_row)[d]));                    \
            vs[value_index(j, d, head_dim, PAIR)] = CSTORE(LOAD((v_row)[d]));                    \
        }                                                                                        \
    } while (0)

#define DEFINE_ROPE_WRITE_KV(SUFFIX, T, LOAD, STORE)                                             \
/* Rotate q and k by their positions (rotate-half layout, float32 cos/sin tables [P, head_dim]) \
 * and write k and v into their cache slots (slot = block * block_size + token), elements of  \
 * kv_kind. q, k, v are row-strided views (e.g. of one fused qkv matmul output); q_out and      \
 * k_out are contiguous [T, heads, head_dim]. */                                                \
void rope_write_kv_##SUFFIX(const T *q, const T *k, const T *v, int64_t row_stride,           \
                            const int64_t *positions, const float *cos_table,                   \
                            const float *sin_table, const int64_t *slots, T *q_out, T *k_out,  \
                            void *k_cache, void *v_cache, int kv_kind, int64_t num_tokens,      \
                            int num_heads, int num_kv_heads, int head_dim, int block_size) {    \
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
            const int64_t at = (block * num_kv_heads + head) * slab;                            \
            const T *k_row = k_out + t * kv_width + (int64_t)head * head_dim;                   \
            const T *v_row = v + t * row_stride + (int64_t)head * head_dim;                     \
            if (kv_kind == KV_BF16)                                                             \
                WRITE_SLOT(bf16, bf16_store, 2, LOAD, (bf16 *)k_cache + at,                     \
                           (bf16 *)v_cache + at, k_row, v_row, j, head_dim, block_size);        \
            else                                                                                \
                WRITE_SLOT(float, f32_store, 1, LOAD, (float *)k_cache + at,                    \
                           (float *)v_cache + at, k_row, v_row, j, head_dim, block_size);       \
        }                                                                                       \
    }                                                                                           \
}

DEFINE_ROPE_WRITE_KV(f32, float, f32_load, f32_store)
DEFINE_ROPE_WRITE_KV(bf16, bf16, bf16_load, bf16_store)

/* Empty running state for `group` queries before their first block. */
static inline void reset_running(int group, int head_dim, float acc[][MAX_HEAD_DIM],
                                 float *running_max, float *running_sum) {
    for (int g = 0; g < group; g++) {
        running_max[g] = -FLT_MAX;
        running_sum[g] = 0.0f;
        for (int d = 0; d < head_dim; d++) acc[g][d] = 0.0f;
    }
}

/* Starts loading one (block, kv head) slab of `bytes`. A sequence's blocks are scattered over
 * the cache and the hardware prefetchers stop at page boundaries, so each next slab is fetched
 * while the current one is computed. */
static inline void prefetch_slab(const void *slab, int64_t bytes) {
    for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch((const char *)slab + line);
}

#define DEFINE_ATTEND(KIND, C)                                                                   \
/* One query row's `group` heads (float32) over one kv head's cache slabs of element type C     \
 * (layout P, see the top), with the tier's loops for the scores, the online softmax and p.v    \
 * (tier.h). */                                                                                 \
static void attend_##KIND(const float q_float[][MAX_HEAD_DIM], const C *k_cache,               \
                          const C *v_cache, const int32_t *table, int context, int group,       \
                          int head_dim, int block_size, int64_t slab_stride,                    \
                          int64_t head_offset, float scale, float acc[][MAX_HEAD_DIM],          \
                          float *running_sum) {                                                 \
    const int64_t slab_bytes = (int64_t)head_dim * block_size * sizeof(C);                      \
    float scores[MAX_GROUP][MAX_BLOCK];                                                         \
    float running_max[MAX_GROUP], correction[MAX_GROUP];                                        \
    reset_running(group, head_dim, acc, running_max, running_sum);                              \
    for (int start = 0; start < context; start += block_size) {                                 \
        const int64_t block = table[start / block_size];                                        \
        const int count = context - start < block_size ? context - start : block_size;         \
        const C *keys = k_cache + block * slab_stride + head_offset;                             \
        const C *values = v_cache + block * slab_stride + head_offset;                          \
        if (start + block_size < context) {                                                     \
            const int64_t next = table[start / block_size + 1] * slab_stride + head_offset;     \
            prefetch_slab(k_cache + next, slab_bytes);                                          \
            prefetch_slab(v_cache + next, slab_bytes);                                          \
        }                                                                                       \
        tier_##KIND##_scores(q_float, group, keys, block_size, head_dim, count, scale, scores); \
        for (int g = 0; g < group; g++)                                                         \
            tier_softmax_row(scores[g], count, &running_max[g], &running_sum[g],                \
                             &correction[g]);                                                   \
        tier_##KIND##_values((const float(*)[MAX_BLOCK])scores, group, values, head_dim, count, \
                             correction, acc);                                                  \
    }                                                                                           \
}

DEFINE_ATTEND(f32, float)
DEFINE_ATTEND(bf16, bf16)

#define DEFINE_PAGED_ATTENTION(SUFFIX, T, LOAD, STORE)                                           \
/* Attention of query rows over the paged cache (elements of kv_kind). Row r reads block-table \
 * row row_seq[r] and sees keys at positions [0, row_ctx[r]). q, out: [num_rows, num_heads,    \
 * head_dim]; block_tables: [num_seqs, max_blocks]; `scale` multiplies q.k. */                   \
void paged_attention_##SUFFIX(const T *q, const void *k_cache, const void *v_cache,            \
                              int kv_kind, const int32_t *block_tables, const int32_t *row_seq, \
                              const int32_t *row_ctx, T *out, int64_t num_rows, int num_heads,  \
                              int num_kv_heads, int head_dim, int block_size, int max_blocks,   \
                              float scale) {                                                    \
    const int group = num_heads / num_kv_heads;                                                 \
    const int64_t head_slab = (int64_t)block_size * head_dim;                                   \
    const int64_t slab_stride = num_kv_heads * head_slab;                                       \
    _Pragma("omp parallel for collapse(2) schedule(dynamic, 1)")                                \
    for (int64_t row = 0; row < num_rows; row++) {                                              \
        for (int kv_head = 0; kv_head < num_kv_heads; kv_head++) {                              \
            float q_float[MAX_GROUP][MAX_HEAD_DIM], acc[MAX_GROUP][MAX_HEAD_DIM];               \
            float running_sum[MAX_GROUP];                                                       \
            const T *query = q + (row * num_heads + kv_head * group) * head_dim;                \
            for (int g = 0; g < group; g++)                                                     \
                for (int d = 0; d < head_dim; d++) q_float[g][d] = LOAD(query[g * head_dim + d]); \
            const int32_t *table = block_tables + (int64_t)row_seq[row] * max_blocks;           \
            if (kv_kind == KV_BF16)                                                             \
                attend_bf16((const float(*)[MAX_HEAD_DIM])q_float, (const bf16 *)k_cache,       \
                            (const bf16 *)v_cache, table, row_ctx[row], group, head_dim,        \
                            block_size, slab_stride, kv_head * head_slab, scale, acc,           \
                            running_sum);                                                       \
            else                                                                                \
                attend_f32((const float(*)[MAX_HEAD_DIM])q_float, (const float *)k_cache,       \
                           (const float *)v_cache, table, row_ctx[row], group, head_dim,        \
                           block_size, slab_stride, kv_head * head_slab, scale, acc,            \
                           running_sum);                                                        \
            for (int g = 0; g < group; g++) {                                                   \
                T *dst = out + (row * num_heads + kv_head * group + g) * head_dim;              \
                const float inv = running_sum[g] > 0.0f ? 1.0f / running_sum[g] : 0.0f;        \
                for (int d = 0; d < head_dim; d++) dst[d] = STORE(acc[g][d] * inv);             \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}

DEFINE_PAGED_ATTENTION(f32, float, f32_load, f32_store)
DEFINE_PAGED_ATTENTION(bf16, bf16, bf16_load, bf16_store)
