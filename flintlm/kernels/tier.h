/* The instruction-set tier of the CPU kernels: which header implements the primitives, and
 * the contract every tier header meets.
 *
 * The drivers (quant_matmul.c, attention.c, layers.c) are portable C and call only the
 * primitives below; each tier header implements all of them with exactly these signatures,
 * as static inline functions, so a driver inlines its tier's code. The tier is fixed by the
 * compiler flags kernels/native.py picks for it; no header tests the CPU at run time.
 *   tier_avx512.h   x86-64-v4 with VNNI: __AVX512F__ BW VL VNNI, F16C
 *   tier_avx2.h     x86-64-v3: __AVX2__ FMA F16C (AVX-VNNI where __AVXVNNI__)
 *   tier_neon.h     __aarch64__ with __ARM_NEON (dotprod where __ARM_FEATURE_DOTPROD)
 *   tier_generic.h  anything else, or -DFLINTLM_TIER_GENERIC: portable C that the compiler
 *                   vectorises, no intrinsics
 * A tier whose header is missing (tier_neon.h until it lands) is not offered by native.py.
 *
 * Every tier header defines
 *   FLINTLM_TIER_NAME  "avx512" | "avx2" | "neon" | "generic": the loader compares it with the
 *                      tier it asked for (flintlm_kernels_tier()).
 *   TIER_HAS_INT8_DOT  1 where the int8 path runs on integer dot-product instructions and so
 *                      beats the exact path; 0 where it is portable C (still correct).
 * and these primitives. "Block" = 32 consecutive values along K; weights w = d q + m per
 * block, q as stored (Q4: 0..15, Q8: q + 128 in 0..255); the weight kind (WEIGHT_*, abi.h)
 * says which: Q4_1 reads m, while Q4_0's m is always -8 d and Q8_0's -128 d, so a tile may
 * fold those into its sums (d (q - c) . x) instead of reading m. The two weight layouts, row
 * and interleaved, are drawn in quant_matmul.c. Integer sums must be exact; float sums may
 * come in any order.
 *
 *   void tier_f16_row(const uint16_t *src, float *dst, int64_t n)
 *       dst[i] = IEEE half src[i] as float, exactly (subnormals, inf and NaN included).
 *
 *   void tier_quantize_block(const float *x, int8_t *xq, float *dx, float *xqsum)
 *       x[0..32) -> xq[j] = round-to-nearest-even(x[j] * 127 / amax) in [-127, 127]
 *       (all 0 when amax = max|x| is 0), *dx = amax / 127, *xqsum = *dx * sum(xq).
 *
 *   float tier_qdot_exact_row(const uint8_t *q, const float *d, const float *x, int64_t nb,
 *                             int is_q4)
 *       One weight row in the row layout (nb blocks; d already float32) against float x:
 *       sum_b d[b] * sum_j q[b][j] x[32 b + j]. No offsets: the driver adds sum_b m_b sum(x_b).
 *
 *   void tier_int8_rows(const qweights *w, int64_t first, int count, const qactivations *a,
 *                       int64_t rows, int64_t k, float *out)
 *       Row layout, weight rows [first, first + count) (count <= QROW_GROUP) against every
 *       quantized activation row r < rows (rows <= MAX_QROWS):
 *       out[i * rows + r] = sum_b d_b dx_rb (q_b . xq_rb) + m_b xqsum_rb, i.e. the exact
 *       product of the dequantized weights and the dequantized activations.
 *
 *   void tier_il_tile(const qweights *group, const qactivations *a, int64_t k, int64_t r0,
 *                     int rows, float dots[IL_XTILE * IL_ROWS])
 *       Interleaved layout: the 16 weight rows of one group (group->q, d, m point at its first
 *       block) against activation rows [r0, r0 + rows), rows <= IL_XTILE:
 *       dots[r * 16 + i] = the same value as tier_int8_rows for weight row i, act. row r0 + r.
 *
 *   int64_t tier_argmax_row(const float *row, int64_t n)
 *       Index of the largest of row[0..n) (n >= 1), the first one on ties, as torch.argmax.
 *
 *   bfloat16 paged attention, one (block, kv head) slab at a time, for `group` <= MAX_GROUP
 *   query heads (query [group][head_dim] float32); head_dim and block_size multiples of 16:
 *   void tier_bf16_scores(const float query[][MAX_HEAD_DIM], int group, const bf16 *keys,
 *                         int block_size, int head_dim, int count, float scale,
 *                         float scores[][MAX_BLOCK])
 *       keys [head_dim / 2][block_size][2]; scores[g][j] = scale * query[g] . key_j, j < count
 *       (entries up to the next multiple of 16 may be written).
 *   void tier_softmax_row(float *scores, int count, float *running_max, float *running_sum,
 *                         float *correction)
 *       Online softmax over scores[0..count): new max M = max(*running_max, scores);
 *       *correction = exp(old max - M); scores[j] = exp(scores[j] - M), and 0 from count to
 *       the next multiple of 16; *running_sum = *running_sum * *correction + sum of scores.
 *   void tier_bf16_values(const float scores[][MAX_BLOCK], int group, const bf16 *values,
 *                         int head_dim, int count, const float *correction,
 *                         float acc[][MAX_HEAD_DIM])
 *       values [block_size / 2][head_dim][2]; acc[g][d] = acc[g][d] * correction[g]
 *       + sum_{j < count} scores[g][j] value_j[d] (scores[g][count] is 0 when count is odd,
 *       so whole pairs may be read).
 *
 *   float32 paged attention, the same contracts over float32 slabs:
 *   void tier_f32_scores(query, group, const float *keys, block_size, head_dim, count, scale,
 *                        scores)      keys [head_dim][block_size]
 *   void tier_f32_values(scores, group, const float *values, head_dim, count, correction,
 *                        acc)         values [block_size][head_dim]; rows j < count are read
 *   A tier header that defines TIER_F32_ATTENTION implements them; the others take the portable
 *   loops at the end of this file.
 */
#ifndef FLINTLM_KERNELS_TIER_H
#define FLINTLM_KERNELS_TIER_H

#include "common.h"

#define MAX_QROWS 8       /* activation rows a pass of the row layout */
#define QROW_GROUP 4      /* weight rows a pass of the row layout */
#define IL_ROWS 16        /* weight rows per interleaved group */
#define IL_XTILE 4        /* activation rows per pass over a group's blocks */

typedef struct {
    const uint8_t *q;  /* row layout: [n, row_q_bytes]; interleaved: a group's blocks */
    const uint16_t *d; /* float16 scales */
    const uint16_t *m; /* float16 offsets */
    int64_t row_q_bytes, nb;
    int kind;          /* WEIGHT_* (abi.h) */
} qweights;

/* Q4_0 and Q4_1 hold two 4-bit values a byte, Q8_0 one value a byte. */
static inline int kind_is_q4(int kind) { return kind != WEIGHT_Q8_0; }

/* c in the fixed offset m = -c d of Q4_0 (8) and Q8_0 (128). */
static inline float kind_centre(int kind) { return kind == WEIGHT_Q4_0 ? 8.0f : 128.0f; }

/* Prepared activations: float copy, per-block sums (exact path), and the int8 form. */
typedef struct {
    const float *xf; /* [rows, k] */
    float *xsum;   /* [rows, nb] sum of the block's x */
    int8_t *xq;    /* [rows, k] */
    float *dx;     /* [rows, nb] */
    float *xqsum;  /* [rows, nb] dx * sum of the block's xq */
} qactivations;

/* 4 int8 values read as one int32 (to broadcast them), without breaking aliasing rules. */
typedef int32_t __attribute__((may_alias)) aliased_i32;

static inline void tier_f16_row(const uint16_t *src, float *dst, int64_t n);

/* sum_b m_b sums_b over one weight row's nb float16 offsets: shared by every tier. */
static inline float offset_dot(const uint16_t *m, const float *sums, int64_t nb) {
    float offsets[MAX_QBLOCKS];
    tier_f16_row(m, offsets, nb);
    float total = 0.0f;
    for (int64_t b = 0; b < nb; b++) total += offsets[b] * sums[b];
    return total;
}

#if defined(FLINTLM_TIER_GENERIC) /* forced by native.py: ARM64's baseline has NEON too */
#include "tier_generic.h"
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#include "tier_avx512.h"
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "tier_avx2.h"
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include "tier_neon.h"
#else
#include "tier_generic.h"
#endif

#ifndef TIER_F32_ATTENTION /* portable loops the compiler vectorises */
static inline void tier_f32_scores(const float query[][MAX_HEAD_DIM], int group, const float *keys,
                                   int block_size, int head_dim, int count, float scale,
                                   float scores[][MAX_BLOCK]) {
    for (int g = 0; g < group; g++) {
        float *s = scores[g];
        for (int j = 0; j < count; j++) s[j] = 0.0f;
        for (int d = 0; d < head_dim; d++) {
            const float qd = query[g][d];
            const float *key_row = keys + (int64_t)d * block_size;
            for (int j = 0; j < count; j++) s[j] += qd * key_row[j];
        }
        for (int j = 0; j < count; j++) s[j] *= scale;
    }
}

static inline void tier_f32_values(const float scores[][MAX_BLOCK], int group,
                                   const float *values, int head_dim, int count,
                                   const float *correction, float acc[][MAX_HEAD_DIM]) {
    for (int g = 0; g < group; g++) {
        float *out = acc[g];
        for (int d = 0; d < head_dim; d++) out[d] *= correction[g];
        for (int j = 0; j < count; j++) {
            const float p = scores[g][j];
            const float *value = values + (int64_t)j * head_dim;
            for (int d = 0; d < head_dim; d++) out[d] += p * value[d];
        }
    }
}
#endif

#endif
