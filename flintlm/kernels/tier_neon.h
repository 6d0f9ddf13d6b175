/* NEON tier (ARM64 Advanced SIMD: Graviton, Ampere, Apple Silicon under Linux): the primitives
 * of tier.h on 128-bit vectors. Integer dot products use SDOT where the compiler targets the
 * dotprod extension (__ARM_FEATURE_DOTPROD, -march=armv8.2-a+dotprod and later), else widening
 * multiplies (SMULL + pairwise adds), which every ARM64 CPU has. Checked under qemu-user only
 * (tests/kernels/test_arm64_emulated.py); its speed is an estimate on paper (docs/arm64.md). */
#ifndef FLINTLM_KERNELS_TIER_NEON_H
#define FLINTLM_KERNELS_TIER_NEON_H

#include <arm_neon.h>

#define FLINTLM_TIER_NAME "neon"
/* Even without SDOT (5 instructions for 16 products) the int8 path issues ~10x fewer
 * instructions than the exact one (estimate, docs/arm64.md), so it is always offered. */
#define TIER_HAS_INT8_DOT 1

/* ---- float16 scales, activation quantization, the exact float path ---- */

static inline float32x4_t neon_f16x4(const uint16_t *src) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src)));
}

/* FCVTL converts every half exactly (subnormals, inf, NaN); the tail goes through a padded
 * copy so no element is converted by scalar code. */
static inline void tier_f16_row(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, neon_f16x4(src + i));
    if (i < n) {
        uint16_t tail[4] = {0};
        float out[4];
        memcpy(tail, src + i, sizeof(uint16_t) * (size_t)(n - i));
        vst1q_f32(out, neon_f16x4(tail));
        memcpy(dst + i, out, sizeof(float) * (size_t)(n - i));
    }
}

/* FCVTNS rounds to nearest even, as lrintf in the default rounding mode. */
static inline void tier_quantize_block(const float *x, int8_t *xq, float *dx, float *xqsum) {
    float32x4_t v[8];
    float32x4_t amax4 = vdupq_n_f32(0.0f);
    for (int i = 0; i < 8; i++) {
        v[i] = vld1q_f32(x + 4 * i);
        amax4 = vmaxq_f32(amax4, vabsq_f32(v[i]));
    }
    const float amax = vmaxvq_f32(amax4);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32x4_t q[8], sum = vdupq_n_s32(0);
    for (int i = 0; i < 8; i++) {
        q[i] = vcvtnq_s32_f32(vmulq_n_f32(v[i], inv));
        sum = vaddq_s32(sum, q[i]);
    }
    for (int half = 0; half < 2; half++) { /* |q| <= 127: the narrowing never saturates */
        const int32x4_t *h = q + 4 * half;
        const int16x8_t lo = vcombine_s16(vmovn_s32(h[0]), vmovn_s32(h[1]));
        const int16x8_t hi = vcombine_s16(vmovn_s32(h[2]), vmovn_s32(h[3]));
        vst1q_s8(xq + 16 * half, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
    }
    *dx = amax / 127.0f;
    *xqsum = amax / 127.0f * (float)vaddvq_s32(sum);
}

/* 16 unsigned bytes -> 4 vectors of float32 (bytes 0-3, 4-7, 8-11, 12-15). */
static inline void neon_u8_to_f32(uint8x16_t bytes, float32x4_t out[4]) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(bytes)), hi = vmovl_high_u8(bytes);
    out[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
    out[1] = vcvtq_f32_u32(vmovl_high_u16(lo));
    out[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
    out[3] = vcvtq_f32_u32(vmovl_high_u16(hi));
}

static inline float tier_qdot_exact_row(const uint8_t *q, const float *d, const float *x,
                                        int64_t nb, int is_q4) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        float32x4_t w[8]; /* values 0..31 of the block, 4 a vector */
        if (is_q4) {
            const uint8x16_t packed = vld1q_u8(q + b * 16);
            neon_u8_to_f32(vandq_u8(packed, vdupq_n_u8(0x0F)), w);
            neon_u8_to_f32(vshrq_n_u8(packed, 4), w + 4);
        } else {
            neon_u8_to_f32(vld1q_u8(q + b * 32), w);
            neon_u8_to_f32(vld1q_u8(q + b * 32 + 16), w + 4);
        }
        const float *xb = x + b * QBLOCK;
        float32x4_t even = vmulq_f32(w[0], vld1q_f32(xb)), odd = vmulq_f32(w[1], vld1q_f32(xb + 4));
        for (int j = 2; j < 8; j += 2) { /* two chains: the FMA latency overlaps */
            even = vfmaq_f32(even, w[j], vld1q_f32(xb + 4 * j));
            odd = vfmaq_f32(odd, w[j + 1], vld1q_f32(xb + 4 * j + 4));
        }
        acc = vfmaq_n_f32(acc, vaddq_f32(even, odd), d[b]);
    }
    return vaddvq_f32(acc);
}

/* ---- int8 dot products ----
 * NOTE: SDOT multiplies signed by signed bytes. Q4 values (0..15) are non-negative int8 as
 * they are. Q8 is stored as q + 128 with m = -128 d (tier.h), so d (q + 128) . x + m sum(x) =
 * d (q . x): the kernels flip the top bit back to the signed q (stored ^ 0x80) and drop the
 * offset term, an identity in integers, not an approximation. */

/* acc + the dot product of each 4-byte group of w with the same group of x (lane i: bytes
 * 4i..4i+3). Without SDOT: 8 x 8 -> 16-bit products (|p| <= 128 * 127), pairs of them summed
 * in 16 bits (<= 32512, no overflow), then pairs of pairs into the 32-bit lanes. */
static inline int32x4_t neon_dot(int32x4_t acc, int8x16_t w, int8x16_t x) {
#ifdef __ARM_FEATURE_DOTPROD
    return vdotq_s32(acc, w, x);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    const int16x8_t hi = vmull_high_s8(w, x);
    return vpadalq_s16(acc, vpaddq_s16(lo, hi));
#endif
}

/* x's 4-byte group `lane` repeated in every lane (SDOT's by-element form does this for free;
 * the compiler folds the duplicate into it). */
static inline __attribute__((always_inline)) int8x16_t neon_quad(int8x16_t x, const int lane) {
    return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(x), lane));
}

/* One weight row's block in the row layout as 2 vectors of int8, values 0-15 and 16-31
 * (Q8: signed, see the note above). */
static inline void neon_row_block(const uint8_t *q, int is_q4, int8x16_t w[2]) {
    if (is_q4) {
        const uint8x16_t packed = vld1q_u8(q);
        w[0] = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0F)));
        w[1] = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
    } else {
        w[0] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q), vdupq_n_u8(0x80)));
        w[1] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q + 16), vdupq_n_u8(0x80)));
    }
}

/* Row layout: COUNT weight rows x ROWS activation rows from r0, each block unpacked once for
 * all ROWS. Constant counts (inlined) keep the COUNT * ROWS accumulators in registers. */
static inline __attribute__((always_inline)) void
neon_int8_rows_tile(const qweights *w, int64_t first, const int count, const qactivations *a,
                    int64_t r0, const int rows, int64_t k, int64_t out_rows, float *out) {
    const int is_q4 = kind_is_q4(w->kind);
    const int64_t nb = w->nb, block_bytes = is_q4 ? 16 : 32;
    float32x4_t acc[QROW_GROUP][2];
    float d[QROW_GROUP][MAX_QBLOCKS];
    for (int i = 0; i < count; i++) {
        tier_f16_row(w->d + (first + i) * nb, d[i], nb);
        for (int r = 0; r < rows; r++) acc[i][r] = vdupq_n_f32(0.0f);
    }
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t wv[QROW_GROUP][2];
        for (int i = 0; i < count; i++)
            neon_row_block(w->q + (first + i) * w->row_q_bytes + b * block_bytes, is_q4, wv[i]);
        for (int r = 0; r < rows; r++) {
            const int8_t *xb = a->xq + (r0 + r) * k + b * QBLOCK;
            const int8x16_t x_lo = vld1q_s8(xb), x_hi = vld1q_s8(xb + 16);
            const float dx = a->dx[(r0 + r) * nb + b];
            for (int i = 0; i < count; i++) {
                const int32x4_t sums = neon_dot(neon_dot(vdupq_n_s32(0), wv[i][0], x_lo),
                                                wv[i][1], x_hi);
                acc[i][r] = vfmaq_n_f32(acc[i][r], vcvtq_f32_s32(sums), d[i][b] * dx);
            }
        }
    }
    for (int i = 0; i < count; i++)
        for (int r = 0; r < rows; r++) {
            const float offsets = is_q4 ? offset_dot(w->m + (first + i) * nb,
                                                     a->xqsum + (r0 + r) * nb, nb) : 0.0f;
            out[i * out_rows + r0 + r] = vaddvq_f32(acc[i][r]) + offsets;
        }
}

static inline void tier_int8_rows(const qweights *w, int64_t first, int count,
                                  const qactivations *a, int64_t rows, int64_t k, float *out) {
    for (int64_t r0 = 0; r0 < rows; r0 += 2) {
        const int tile_rows = rows - r0 < 2 ? 1 : 2;
        if (count == QROW_GROUP && tile_rows == 2)
            neon_int8_rows_tile(w, first, QROW_GROUP, a, r0, 2, k, rows, out);
        else if (count == QROW_GROUP)
            neon_int8_rows_tile(w, first, QROW_GROUP, a, r0, 1, k, rows, out);
        else
            neon_int8_rows_tile(w, first, count, a, r0, tile_rows, k, rows, out);
    }
}

/* Interleaved layout: 4 weight rows ("a quad", one vector's 4 lanes) x one activation row
 * over one block: w[j] holds values 4j..4j+3 (j < 4: of x's first 16, else its last 16) of
 * the quad's rows. Two chains so consecutive SDOTs do not wait on each other. */
static inline __attribute__((always_inline)) int32x4_t
neon_quad_block(const int8x16_t w[8], int8x16_t x_lo, int8x16_t x_hi) {
    int32x4_t even = vdupq_n_s32(0), odd = vdupq_n_s32(0);
#ifdef __ARM_FEATURE_DOTPROD
    even = vdotq_laneq_s32(even, w[0], x_lo, 0);
    odd = vdotq_laneq_s32(odd, w[1], x_lo, 1);
    even = vdotq_laneq_s32(even, w[2], x_lo, 2);
    odd = vdotq_laneq_s32(odd, w[3], x_lo, 3);
    even = vdotq_laneq_s32(even, w[4], x_hi, 0);
    odd = vdotq_laneq_s32(odd, w[5], x_hi, 1);
    even = vdotq_laneq_s32(even, w[6], x_hi, 2);
    odd = vdotq_laneq_s32(odd, w[7], x_hi, 3);
#else
    even = neon_dot(even, w[0], neon_quad(x_lo, 0));
    odd = neon_dot(odd, w[1], neon_quad(x_lo, 1));
    even = neon_dot(even, w[2], neon_quad(x_lo, 2));
    odd = neon_dot(odd, w[3], neon_quad(x_lo, 3));
    even = neon_dot(even, w[4], neon_quad(x_hi, 0));
    odd = neon_dot(odd, w[5], neon_quad(x_hi, 1));
    even = neon_dot(even, w[6], neon_quad(x_hi, 2));
    odd = neon_dot(odd, w[7], neon_quad(x_hi, 3));
#endif
    return vaddq_s32(even, odd);
}

/* The quad's 8 vectors of one interleaved block (chunk c of a block: 64 bytes, 16 per quad). */
static inline __attribute__((always_inline)) void
neon_il_unpack(const uint8_t *block, int quad, int is_q4, int8x16_t w[8]) {
    if (is_q4) {
        for (int c = 0; c < 4; c++) {
            const uint8x16_t packed = vld1q_u8(block + 64 * c + 16 * quad);
            w[c] = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0F)));
            w[c + 4] = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
        }
    } else {
        for (int c = 0; c < 8; c++)
            w[c] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(block + 64 * c + 16 * quad),
                                                vdupq_n_u8(0x80)));
    }
}

/* acc[r][quad] (rows 4 quad .. 4 quad + 3 of the group) for ROWS activation rows. The quads
 * run one after another so only one quad's 8 weight vectors are live: 16 float accumulators,
 * 8 x vectors and 8 weight vectors fit the 32 registers at ROWS = 4. */
static inline __attribute__((always_inline)) void
neon_il_tile(const qweights *group, const qactivations *a, int64_t k, int64_t r0,
             const int rows, float32x4_t acc[IL_XTILE][4]) {
    const int is_q4 = kind_is_q4(group->kind);
    const int64_t nb = group->nb, block_bytes = is_q4 ? 256 : 512;
    for (int r = 0; r < rows; r++)
        for (int quad = 0; quad < 4; quad++) acc[r][quad] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *block = group->q + b * block_bytes;
        int8x16_t x_lo[IL_XTILE], x_hi[IL_XTILE];
        for (int r = 0; r < rows; r++) {
            x_lo[r] = vld1q_s8(a->xq + (r0 + r) * k + b * QBLOCK);
            x_hi[r] = vld1q_s8(a->xq + (r0 + r) * k + b * QBLOCK + 16);
        }
        for (int quad = 0; quad < 4; quad++) {
            int8x16_t w[8];
            neon_il_unpack(block, quad, is_q4, w);
            const float32x4_t d = neon_f16x4(group->d + b * IL_ROWS + 4 * quad);
            const float32x4_t m = neon_f16x4(group->m + b * IL_ROWS + 4 * quad);
            for (int r = 0; r < rows; r++) {
                const int64_t at = (r0 + r) * nb + b;
                const int32x4_t sums = neon_quad_block(w, x_lo[r], x_hi[r]);
                acc[r][quad] = vfmaq_f32(acc[r][quad], vcvtq_f32_s32(sums),
                                         vmulq_n_f32(d, a->dx[at]));
                if (is_q4) acc[r][quad] = vfmaq_n_f32(acc[r][quad], m, a->xqsum[at]);
            }
        }
    }
}

static inline void tier_il_tile(const qweights *group, const qactivations *a, int64_t k,
                                int64_t r0, int rows, float dots[IL_XTILE * IL_ROWS]) {
    float32x4_t acc[IL_XTILE][4];
    switch (rows) { /* constant row counts keep acc in registers */
        case 1: neon_il_tile(group, a, k, r0, 1, acc); break;
        case 2: neon_il_tile(group, a, k, r0, 2, acc); break;
        case 3: neon_il_tile(group, a, k, r0, 3, acc); break;
        default: neon_il_tile(group, a, k, r0, IL_XTILE, acc); break;
    }
    for (int r = 0; r < rows; r++)
        for (int quad = 0; quad < 4; quad++) vst1q_f32(dots + r * IL_ROWS + 4 * quad, acc[r][quad]);
}

/* ---- argmax ---- */

/* Per lane the largest value seen and where (strictly greater keeps the first); the last 4
 * values are read again as one overlapping vector instead of a scalar tail (re-reading an
 * element never changes a lane's answer). */
static inline int64_t tier_argmax_row(const float *row, int64_t n) {
    if (n < 4) {
        int64_t best = 0;
        for (int64_t i = 1; i < n; i++) best = row[i] > row[best] ? i : best;
        return best;
    }
    static const int32_t first_indices[4] = {0, 1, 2, 3};
    float32x4_t best = vld1q_f32(row);
    int32x4_t best_index = vld1q_s32(first_indices);
    for (int64_t i = 4; i < n; i += 4) {
        const int64_t at = i + 4 <= n ? i : n - 4;
        const int32x4_t index = vaddq_s32(vld1q_s32(first_indices), vdupq_n_s32((int32_t)at));
        const float32x4_t v = vld1q_f32(row + at);
        const uint32x4_t greater = vcgtq_f32(v, best);
        best = vbslq_f32(greater, v, best);
        best_index = vbslq_s32(greater, index, best_index);
    }
    const float top = vmaxvq_f32(best);
    const uint32x4_t is_top = vceqq_f32(best, vdupq_n_f32(top));
    return vminvq_s32(vbslq_s32(is_top, best_index, vdupq_n_s32(INT32_MAX)));
}

/* ---- bfloat16 paged attention: bf16 pairs split into even and odd float32 by a shift and a
 * mask, float32 FMAs; at most 2 query heads at a time so the accumulators stay in the 32
 * registers ---- */

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
