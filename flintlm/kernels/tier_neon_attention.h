/* NEON tier, bfloat16 paged attention (tier.h's tier_bf16_scores, tier_softmax_row,
 * tier_bf16_values): bf16 pairs split into even and odd float32 by a shift and a mask, float32
 * FMAs; at most 2 query heads at a time so the accumulators stay in the 32 registers.
 * Included by tier_neon.h only. */
#ifndef FLINTLM_KERNELS_TIER_NEON_ATTENTION_H
#define FLINTLM_KERNELS_TIER_NEON_ATTENTION_H

/* [e0 o0 e1 o1 e2 o2 e3 o3] bf16 -> (e0..e3) and (o0..o3) as float32: a bf16 is the top half
 * of a float. */
static inline float32x4_t neon_even_bf16(uint16x8_t pairs) {
    return vreinterpretq_f32_u32(vshlq_n_u32(vreinterpretq_u32_u16(pairs), 16));
}
static inline float32x4_t neon_odd_bf16(uint16x8_t pairs) {
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_u16(pairs), vdupq_n_u32(0xFFFF0000u)));
}

/* exp on 4 lanes for the softmax's x <= 0 (valid up to 88): 2^n exp(r) with n = round(x / ln 2),
 * r = x - n ln 2 in two parts, exp(r) by Cephes' expf polynomial (~1 ulp). Below -87 it returns
 * 0: exp is < 1.7e-38 there, nothing next to the block maximum's exp(0) = 1. */
static inline float32x4_t neon_expf(float32x4_t x) {
    const float32x4_t clamped = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(clamped, 1.44269504088896341f));
    float32x4_t r = vfmsq_n_f32(clamped, n, 0.693359375f);
    r = vfmsq_n_f32(r, n, -2.12194440e-4f);
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    const float32x4_t e = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    const int32x4_t exponent = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const float32x4_t result = vmulq_f32(e, vreinterpretq_f32_s32(exponent));
    return vbslq_f32(vcltq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(0.0f), result);
}

/* Lanes j .. j + 3 that are below count. */
static inline uint32x4_t neon_live(int j, int count) {
    static const int32_t lanes[4] = {0, 1, 2, 3};
    return vcltq_s32(vaddq_s32(vld1q_s32(lanes), vdupq_n_s32(j)), vdupq_n_s32(count));
}

static inline void tier_softmax_row(float *scores, int count, float *running_max,
                                    float *running_sum, float *correction) {
    const int padded = (count + 15) / 16 * 16;
    float32x4_t max4 = vdupq_n_f32(*running_max);
    for (int j = 0; j < padded; j += 4)
        max4 = vmaxq_f32(max4, vbslq_f32(neon_live(j, count), vld1q_f32(scores + j),
                                         vdupq_n_f32(-FLT_MAX)));
    const float block_max = vmaxvq_f32(max4);
    *correction = expf(*running_max - block_max);
    *running_max = block_max;
    float32x4_t sum = vdupq_n_f32(0.0f);
    for (int j = 0; j < padded; j += 4) {
        const float32x4_t p = neon_expf(vsubq_f32(vld1q_f32(scores + j), vdupq_n_f32(block_max)));
        const float32x4_t live_p = vbslq_f32(neon_live(j, count), p, vdupq_n_f32(0.0f));
        sum = vaddq_f32(sum, live_p);
        vst1q_f32(scores + j, live_p);
    }
    *running_sum = *running_sum * *correction + vaddvq_f32(sum);
}

/* scores[g][chunk .. chunk + 16) for G <= 2 queries: keys [head_dim / 2][block_size][2], so one
 * 8-element load is 4 tokens' (even, odd) dims; even and odd dims sum in separate chains. */
static inline __attribute__((always_inline)) void
neon_scores_tile(const float query[][MAX_HEAD_DIM], const int G, const bf16 *keys, int block_size,
                 int head_dim, int count, float scale, float scores[][MAX_BLOCK]) {
    for (int chunk = 0; chunk < count; chunk += 16) {
        float32x4_t even[2][4], odd[2][4];
        for (int g = 0; g < G; g++)
            for (int v = 0; v < 4; v++) even[g][v] = odd[g][v] = vdupq_n_f32(0.0f);
        for (int dp = 0; dp < head_dim / 2; dp++) {
            const bf16 *pairs = keys + ((int64_t)dp * block_size + chunk) * 2;
            for (int v = 0; v < 4; v++) {
                const uint16x8_t k = vld1q_u16(pairs + 8 * v);
                const float32x4_t k_even = neon_even_bf16(k), k_odd = neon_odd_bf16(k);
                for (int g = 0; g < G; g++) {
                    even[g][v] = vfmaq_n_f32(even[g][v], k_even, query[g][2 * dp]);
                    odd[g][v] = vfmaq_n_f32(odd[g][v], k_odd, query[g][2 * dp + 1]);
                }
            }
        }
        for (int g = 0; g < G; g++)
            for (int v = 0; v < 4; v++)
                vst1q_f32(scores[g] + chunk + 4 * v,
                          vmulq_n_f32(vaddq_f32(even[g][v], odd[g][v]), scale));
    }
}

static inline void tier_bf16_scores(const float query[][MAX_HEAD_DIM], int group,
                                    const bf16 *keys, int block_size, int head_dim, int count,
                                    float scale, float scores[][MAX_BLOCK]) {
    int g = 0;
    for (; g + 2 <= group; g += 2)
        neon_scores_tile(query + g, 2, keys, block_size, head_dim, count, scale, scores + g);
    if (g < group)
        neon_scores_tile(query + g, 1, keys, block_size, head_dim, count, scale, scores + g);
}

/* acc[g][dc .. dc + 16) for G <= 2 queries: values [block_size / 2][head_dim][2], one
 * 8-element load is 4 dims of tokens 2 jp (even) and 2 jp + 1 (odd), each its own chain. */
static inline __attribute__((always_inline)) void
neon_values_tile(const float scores[][MAX_BLOCK], const int G, const bf16 *values, int head_dim,
                 int count, int dc, const float *correction, float acc[][MAX_HEAD_DIM]) {
    float32x4_t even[2][4], odd[2][4];
    for (int g = 0; g < G; g++)
        for (int v = 0; v < 4; v++) {
            even[g][v] = vmulq_n_f32(vld1q_f32(acc[g] + dc + 4 * v), correction[g]);
            odd[g][v] = vdupq_n_f32(0.0f);
        }
    for (int jp = 0; jp < (count + 1) / 2; jp++) {
        const bf16 *pairs = values + ((int64_t)jp * head_dim + dc) * 2;
        for (int v = 0; v < 4; v++) {
            const uint16x8_t x = vld1q_u16(pairs + 8 * v);
            const float32x4_t v_even = neon_even_bf16(x), v_odd = neon_odd_bf16(x);
            for (int g = 0; g < G; g++) {
                even[g][v] = vfmaq_n_f32(even[g][v], v_even, scores[g][2 * jp]);
                odd[g][v] = vfmaq_n_f32(odd[g][v], v_odd, scores[g][2 * jp + 1]);
            }
        }
    }
    for (int g = 0; g < G; g++)
        for (int v = 0; v < 4; v++)
            vst1q_f32(acc[g] + dc + 4 * v, vaddq_f32(even[g][v], odd[g][v]));
}

static inline void tier_bf16_values(const float scores[][MAX_BLOCK], int group,
                                    const bf16 *values, int head_dim, int count,
                                    const float *correction, float acc[][MAX_HEAD_DIM]) {
    for (int dc = 0; dc < head_dim; dc += 16) {
        int g = 0;
        for (; g + 2 <= group; g += 2)
            neon_values_tile(scores + g, 2, values, head_dim, count, dc, correction + g, acc + g);
        if (g < group)
            neon_values_tile(scores + g, 1, values, head_dim, count, dc, correction + g, acc + g);
    }
}

#endif
