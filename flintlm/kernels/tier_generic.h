/* Generic tier: the primitives of tier.h in portable C, no intrinsics. Correct on any CPU;
 * loops are written branch-free with constant trip counts so the compiler vectorises them for
 * the architecture's baseline (SSE2 on x86-64, Advanced SIMD on ARM64). */
#ifndef FLINTLM_KERNELS_TIER_GENERIC_H
#define FLINTLM_KERNELS_TIER_GENERIC_H

#define FLINTLM_TIER_NAME "generic"
#define TIER_HAS_INT8_DOT 0

/* IEEE half -> float without branches: the 15 value bits shifted into place are a float 2^112
 * times too small (subnormal halves become normal floats by the same multiply); inf and NaN
 * are the values that land at or above 2^16 and get the all-ones exponent back. */
static inline float generic_f16_to_f32(uint16_t h) {
    const float magic = 0x1p112f, was_inf_or_nan = 0x1p16f;
    uint32_t bits = (uint32_t)(h & 0x7FFFu) << 13;
    float value;
    memcpy(&value, &bits, sizeof value);
    value *= magic;
    memcpy(&bits, &value, sizeof bits);
    bits |= value >= was_inf_or_nan ? 0x7F800000u : 0u;
    bits |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline void tier_f16_row(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = generic_f16_to_f32(src[i]);
}

static inline void tier_quantize_block(const float *x, int8_t *xq, float *dx, float *xqsum) {
    float amax = 0.0f;
    for (int j = 0; j < QBLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < QBLOCK; j++) {
        const int value = (int)lrintf(x[j] * inv);
        xq[j] = (int8_t)value;
        sum += value;
    }
    *dx = amax / 127.0f;
    *xqsum = amax / 127.0f * (float)sum;
}

/* Each block is first widened to 32 floats (loops the compiler vectorises as they stand),
 * then one 32-lane dot product; is_q4 is tested once a row, outside the loops. */
static inline float tier_qdot_exact_row(const uint8_t *q, const float *d, const float *x,
                                        int64_t nb, int is_q4) {
    float total = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float w[QBLOCK];
        if (is_q4) {
            for (int j = 0; j < 16; j++) w[j] = (float)(q[b * 16 + j] & 0x0F);
            for (int j = 0; j < 16; j++) w[j + 16] = (float)(q[b * 16 + j] >> 4);
        } else {
            for (int j = 0; j < QBLOCK; j++) w[j] = (float)q[b * 32 + j];
        }
        float dot = 0.0f;
        for (int j = 0; j < QBLOCK; j++) dot += w[j] * x[b * QBLOCK + j];
        total += d[b] * dot;
    }
    return total;
}

/* q_b . xq_b of one block in the row layout (values as stored, unsigned). */
static inline int32_t generic_block_dot(const uint8_t *q, const int8_t *xq, int is_q4) {
    int32_t dot = 0;
    if (is_q4) {
        for (int j = 0; j < 16; j++) dot += (q[j] & 0x0F) * xq[j] + (q[j] >> 4) * xq[j + 16];
    } else {
        for (int j = 0; j < QBLOCK; j++) dot += q[j] * xq[j];
    }
    return dot;
}

static inline void tier_int8_rows(const qweights *w, int64_t first, int count,
                                  const qactivations *a, int64_t rows, int64_t k, float *out) {
    const int is_q4 = kind_is_q4(w->kind);
    const int64_t nb = w->nb, block_bytes = is_q4 ? 16 : 32;
    for (int i = 0; i < count; i++) {
        const int64_t row = first + i;
        float d[MAX_QBLOCKS];
        tier_f16_row(w->d + row * nb, d, nb);
        for (int64_t r = 0; r < rows; r++) {
            float total = 0.0f;
            for (int64_t b = 0; b < nb; b++)
                total += d[b] * a->dx[r * nb + b]
                         * (float)generic_block_dot(w->q + row * w->row_q_bytes + b * block_bytes,
                                                    a->xq + r * k + b * QBLOCK, is_q4);
            out[i * rows + r] = total + offset_dot(w->m + row * nb, a->xqsum + r * nb, nb);
        }
    }
}

/* One block of an interleaved group widened to int16, [16 rows][32 values in x's order], once
 * for every activation row: the dots are then plain loops the compiler vectorises. */
static inline void generic_il_unpack(const uint8_t *q, int is_q4, int16_t w[IL_ROWS][QBLOCK]) {
    if (is_q4) {
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < IL_ROWS; i++)
                for (int t = 0; t < 4; t++) {
                    w[i][4 * c + t] = q[64 * c + 4 * i + t] & 0x0F;
                    w[i][16 + 4 * c + t] = q[64 * c + 4 * i + t] >> 4;
                }
    } else {
        for (int c = 0; c < 8; c++)
            for (int i = 0; i < IL_ROWS; i++)
                for (int t = 0; t < 4; t++) w[i][4 * c + t] = q[64 * c + 4 * i + t];
    }
}

static inline void tier_il_tile(const qweights *group, const qactivations *a, int64_t k,
                                int64_t r0, int rows, float dots[IL_XTILE * IL_ROWS]) {
    const int is_q4 = kind_is_q4(group->kind);
    const int64_t nb = group->nb, block_bytes = is_q4 ? 256 : 512;
    for (int i = 0; i < rows * IL_ROWS; i++) dots[i] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float d[IL_ROWS], m[IL_ROWS];
        tier_f16_row(group->d + b * IL_ROWS, d, IL_ROWS);
        tier_f16_row(group->m + b * IL_ROWS, m, IL_ROWS);
        int16_t w[IL_ROWS][QBLOCK];
        generic_il_unpack(group->q + b * block_bytes, is_q4, w);
        for (int r = 0; r < rows; r++) {
            const int8_t *xb = a->xq + (r0 + r) * k + b * QBLOCK;
            int32_t sums[IL_ROWS];
            for (int i = 0; i < IL_ROWS; i++) {
                int32_t dot = 0;
                for (int j = 0; j < QBLOCK; j++) dot += w[i][j] * xb[j];
                sums[i] = dot;
            }
            const int64_t at = (r0 + r) * nb + b;
            for (int i = 0; i < IL_ROWS; i++)
                dots[r * IL_ROWS + i] += d[i] * a->dx[at] * (float)sums[i] + m[i] * a->xqsum[at];
        }
    }
}

/* Two passes, each branch-free: the maximum, then its first position. */
static inline int64_t tier_argmax_row(const float *row, int64_t n) {
    float best = row[0];
    for (int64_t i = 1; i < n; i++) best = row[i] > best ? row[i] : best;
    int64_t i = 0;
    while (row[i] != best) i++;
    return i;
}

static inline void tier_bf16_scores(const float query[][MAX_HEAD_DIM], int group,
                                    const bf16 *keys, int block_size, int head_dim, int count,
                                    float scale, float scores[][MAX_BLOCK]) {
    for (int g = 0; g < group; g++) {
        float *s = scores[g];
        for (int j = 0; j < count; j++) s[j] = 0.0f;
        for (int dp = 0; dp < head_dim / 2; dp++) {
            const float q_even = query[g][2 * dp], q_odd = query[g][2 * dp + 1];
            const bf16 *pairs = keys + (int64_t)dp * block_size * 2;
            for (int j = 0; j < count; j++)
                s[j] += q_even * bf16_load(pairs[2 * j]) + q_odd * bf16_load(pairs[2 * j + 1]);
        }
        for (int j = 0; j < count; j++) s[j] *= scale;
    }
}

static inline void tier_softmax_row(float *scores, int count, float *running_max,
                                    float *running_sum, float *correction) {
    float block_max = *running_max;
    for (int j = 0; j < count; j++) block_max = fmaxf(block_max, scores[j]);
    *correction = expf(*running_max - block_max);
    *running_max = block_max;
    float sum = 0.0f;
    for (int j = 0; j < count; j++) {
        scores[j] = expf(scores[j] - block_max);
        sum += scores[j];
    }
    for (int j = count; j < (count + 15) / 16 * 16; j++) scores[j] = 0.0f;
    *running_sum = *running_sum * *correction + sum;
}

static inline void tier_bf16_values(const float scores[][MAX_BLOCK], int group,
                                    const bf16 *values, int head_dim, int count,
                                    const float *correction, float acc[][MAX_HEAD_DIM]) {
    for (int g = 0; g < group; g++) {
        float *out = acc[g];
        for (int d = 0; d < head_dim; d++) out[d] *= correction[g];
        for (int jp = 0; jp < (count + 1) / 2; jp++) {
            const float p_even = scores[g][2 * jp], p_odd = scores[g][2 * jp + 1];
            const bf16 *pairs = values + (int64_t)jp * head_dim * 2;
            for (int d = 0; d < head_dim; d++)
                out[d] += p_even * bf16_load(pairs[2 * d]) + p_odd * bf16_load(pairs[2 * d + 1]);
        }
    }
}

#endif
