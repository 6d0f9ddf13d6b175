/* AVX2 tier (x86-64-v3: AVX2, FMA, F16C; e.g. Zen 2/3, Intel client chips): the primitives of
 * tier.h on 256-bit vectors. There are 16 ymm registers (not 32 as with AVX-512), so the tiles
 * are half as wide: 8 weight rows or 8 tokens a vector, accumulators counted to fit.
 *
 * int8 dot products. Without VNNI the instruction is vpmaddubsw (u8 x s8 -> pairs summed in
 * saturating int16), then vpmaddwd with ones (int16 pairs -> int32):
 *   Q4 (q in 0..15, |xq| <= 127): one vpmaddubsw lane is at most 2 * 15 * 127 = 3810, so the 8
 *     chunks of a block add up in int16 (8 * 3810 = 30480 < 32767) before one vpmaddwd.
 *   Q8 (stored u = q + 128 in 0..255): u * xq pairs would saturate (2 * 255 * 127 > 32767), so
 *     the signed weight s = u ^ 0x80 = q multiplies instead: |s| (unsigned) * sign(xq, s) is
 *     q * xq per byte (|q| <= 128: pairs <= 32512), widened to int32 per chunk. The sum is then
 *     q . xq = u . xq - 128 sum(xq), and since Q8's m = -128 d,
 *       d dx (u . xq) + m xqsum = d dx (u . xq - 128 sum(xq)) = d dx (q . xq),
 *     so the offset term is dropped: the product the AVX-512 tier computes, up to float rounding.
 * With AVX-VNNI (__AVXVNNI__: Alder Lake and later, Zen 5) vpdpbusd does u8 x s8 -> int32 with
 * no saturation, and every kind takes the AVX-512 tier's math unchanged (Q4_0's and Q8_0's
 * fixed offsets folded into the sums, Q4_1's read). */
#ifndef FLINTLM_KERNELS_TIER_AVX2_H
#define FLINTLM_KERNELS_TIER_AVX2_H

#include <immintrin.h>

#define FLINTLM_TIER_NAME "avx2"
#define TIER_HAS_INT8_DOT 1

static inline float hsum8(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

static inline int32_t hsum8_i32(__m256i v) {
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1)));
}

static inline void tier_f16_row(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}

/* vcvtps2dq rounds to nearest even in the default rounding mode, as lrintf. */
static inline void tier_quantize_block(const float *x, int8_t *xq, float *dx, float *xqsum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 v[4], amax8 = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        amax8 = _mm256_max_ps(amax8, _mm256_and_ps(v[i], abs_mask));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m256i q[4];
    for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
    /* int32 -> int8 in order: the packs interleave 128-bit lanes, the permute undoes it */
    const __m256i words = _mm256_packs_epi32(q[0], q[1]), words_hi = _mm256_packs_epi32(q[2], q[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(words, words_hi),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)xq, bytes);
    const __m256i total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    *dx = amax / 127.0f;
    *xqsum = amax / 127.0f * (float)hsum8_i32(total);
}

static inline float tier_qdot_exact_row(const uint8_t *q, const float *d, const float *x,
                                        int64_t nb, int is_q4) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QBLOCK;
        __m256 w[4];
        if (is_q4) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(q + b * 16));
            const __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0F));
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F));
            w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
        } else {
            for (int i = 0; i < 4; i++)
                w[i] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                    _mm_loadl_epi64((const __m128i *)(q + b * 32 + 8 * i))));
        }
        const __m256 t = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + 8),
                                         _mm256_mul_ps(w[0], _mm256_loadu_ps(xb)));
        const __m256 u = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb + 24),
                                         _mm256_mul_ps(w[2], _mm256_loadu_ps(xb + 16)));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d[b]), t, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d[b]), u, acc1);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

/* Integer dot products of 32 weights (w: unsigned bytes as stored, in x's order) with 32
 * int8 activations: 8 int32 partial sums. Q8 weights arrive as signed (xor 0x80), see top. */
static inline __m256i dot_u8_s8(__m256i w, __m256i x) {
#ifdef __AVXVNNI__
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}

static inline __m256i dot_s8_s8(__m256i s, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(s, s), _mm256_sign_epi8(x, s)),
                             _mm256_set1_epi16(1));
}

#ifdef __AVXVNNI__
#define Q8_SIGNED 0 /* vpdpbusd takes q + 128 as is */
#else
#define Q8_SIGNED 1
#endif

/* Row layout: one weight row, one activation row; one block a 256-bit dot product. */
static inline float int8_row_dot(const uint8_t *q, const float *d, const int8_t *xq,
                                 const float *dx, int64_t nb, int is_q4) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * QBLOCK));
        __m256i isum;
        if (is_q4) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(q + b * 16));
            const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
            isum = dot_u8_s8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), x);
        } else {
            const __m256i u = _mm256_loadu_si256((const __m256i *)(q + b * 32));
            isum = Q8_SIGNED ? dot_s8_s8(_mm256_xor_si256(u, _mm256_set1_epi8((char)0x80)), x)
                             : dot_u8_s8(u, x);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d[b] * dx[b]), _mm256_cvtepi32_ps(isum), acc);
    }
    return hsum8(acc);
}

static inline void tier_int8_rows(const qweights *w, int64_t first, int count,
                                  const qactivations *a, int64_t rows, int64_t k, float *out) {
    const int64_t nb = w->nb;
    const int is_q4 = kind_is_q4(w->kind), has_offsets = is_q4 || !Q8_SIGNED;
    for (int i = 0; i < count; i++) {
        const int64_t row = first + i;
        float d[MAX_QBLOCKS];
        tier_f16_row(w->d + row * nb, d, nb);
        for (int64_t r = 0; r < rows; r++) {
            float total = int8_row_dot(w->q + row * w->row_q_bytes, d, a->xq + r * k,
                                       a->dx + r * nb, nb, is_q4);
            if (has_offsets) total += offset_dot(w->m + row * nb, a->xqsum + r * nb, nb);
            out[i * rows + r] = total;
        }
    }
}

/* ---- Interleaved layout: one pass over a group's blocks, each 64-byte chunk read once as two
 * vectors (weight rows 0-7 and 8-15: h = 0, 1), so the group's bytes stream from memory once
 * and every line is used whole as it arrives. (3-4-row tiles once made two passes of 8 rows,
 * reading every line twice, with rolled loops: these are 1.2-1.9x faster at 3-256 rows,
 * measured with bench/decode_matvec.py --layer on the 1B gate_up and down, 1 thread.) Per
 * block, isum[h][r] holds the int32 sums of weight rows 8h..8h+7 with activation row r; the
 * block's scales then add them into float accumulators. How the offsets enter (tier.h): */
enum {
    OFFSETS_NONE,   /* Q8 signed sums are q . xq already (see the top) */
    OFFSETS_FOLDED, /* Q4_0, Q8_0 on AVX-VNNI: m = -c d, so d (dx isum - c xqsum); m unread */
    OFFSETS_READ,   /* Q4_1: d dx isum + m xqsum */
};

static inline int il_offsets(int kind) {
    if (kind == WEIGHT_Q4_1) return OFFSETS_READ;
    return kind == WEIGHT_Q8_0 && Q8_SIGNED ? OFFSETS_NONE : OFFSETS_FOLDED;
}

#ifndef IL_PREFETCH_BYTES /* a -D flag overrides it, e.g. bench/decode_matvec.py --extra-flags */
#define IL_PREFETCH_BYTES 1024 /* ahead on the group's weight stream (the next group follows) */
#endif

/* A block's weight scales (d, m: its 16 float16 values of each), per half: d, and m where
 * read. */
static inline __attribute__((always_inline)) void
il_weight_scales(const uint16_t *d, const uint16_t *m, const int kind, __m256 d8[2],
                 __m256 m8[2]) {
    for (int h = 0; h < 2; h++) {
        d8[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + 8 * h)));
        m8[h] = il_offsets(kind) == OFFSETS_READ
                    ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + 8 * h))) : d8[h];
    }
}

/* acc + the block's value for one activation row (its block's *dx, *xqsum) and one half: its
 * sums isum, weight scales d8, m8. Folded: one FMA inside the other (dx isum - c xqsum rounded
 * once, then scaled by d). */
static inline __attribute__((always_inline)) __m256
il_scaled(__m256 acc, __m256i isum, __m256 d8, __m256 m8, const float *dx, const float *xqsum,
          const int kind) {
    const int offsets = il_offsets(kind);
    const __m256 sum = _mm256_cvtepi32_ps(isum), dx8 = _mm256_set1_ps(*dx);
    if (offsets == OFFSETS_FOLDED) {
        const __m256 offset = _mm256_set1_ps(-kind_centre(kind) * *xqsum);
        return _mm256_fmadd_ps(d8, _mm256_fmadd_ps(sum, dx8, offset), acc);
    }
    acc = _mm256_fmadd_ps(sum, _mm256_mul_ps(d8, dx8), acc);
    return offsets == OFFSETS_READ ? _mm256_fmadd_ps(m8, _mm256_set1_ps(*xqsum), acc) : acc;
}

/* A Q4 chunk's weights, both halves, as low and high nibbles. */
static inline __attribute__((always_inline)) void
il_nibbles(const uint8_t *chunk, __m256i lo[2], __m256i hi[2]) {
    const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
    for (int h = 0; h < 2; h++) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(chunk + 32 * h));
        lo[h] = _mm256_and_si256(raw, low_nibbles);
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_nibbles);
    }
}

/* Decode steps (1-2 activation rows): float accumulators in registers. Registers: 2 x ROWS
 * accumulators + 2 x ROWS block sums + the chunk's 4 (Q4 nibbles) or 2 (Q8) weight vectors. */
#define IL_FULL_ROWS 2

/* One Q4 block's int32 sums q . xq, isum[h][r] for weight rows 8h..8h+7. */
static inline __attribute__((always_inline)) void
il_full_block_q4(const uint8_t *qb, const int8_t *xb, int64_t k, const int rows,
                 __m256i isum[2][IL_FULL_ROWS]) {
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++) isum[h][r] = _mm256_setzero_si256();
    /* NOTE: unrolled, gcc's reassociation computed all the block's products before summing
     * them and spilled them to the stack (measured ~1.6x slower at 4 rows) */
#pragma GCC unroll 1
    for (int c = 0; c < 4; c++) {
        __m256i lo[2], hi[2];
        il_nibbles(qb + 64 * c, lo, hi);
        for (int r = 0; r < rows; r++) {
            const int8_t *xr = xb + r * k;
            const __m256i x_lo = _mm256_set1_epi32(*(const aliased_i32 *)(xr + 4 * c));
            const __m256i x_hi = _mm256_set1_epi32(*(const aliased_i32 *)(xr + 16 + 4 * c));
            for (int h = 0; h < 2; h++) {
#ifdef __AVXVNNI__
                isum[h][r] = _mm256_dpbusd_avx_epi32(isum[h][r], lo[h], x_lo);
                isum[h][r] = _mm256_dpbusd_avx_epi32(isum[h][r], hi[h], x_hi);
#else           /* int16 sums: see the bound at the top */
                isum[h][r] = _mm256_add_epi16(isum[h][r], _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo[h], x_lo), _mm256_maddubs_epi16(hi[h], x_hi)));
#endif
            }
        }
    }
#ifndef __AVXVNNI__
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++)
            isum[h][r] = _mm256_madd_epi16(isum[h][r], _mm256_set1_epi16(1));
#endif
}

/* One Q8 block's int32 sums: u . xq with AVX-VNNI, else q . xq (see the top). */
static inline __attribute__((always_inline)) void
il_full_block_q8(const uint8_t *qb, const int8_t *xb, int64_t k, const int rows,
                 __m256i isum[2][IL_FULL_ROWS]) {
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++) isum[h][r] = _mm256_setzero_si256();
#pragma GCC unroll 1 /* see il_full_block_q4 */
    for (int j = 0; j < 8; j++) {
        __m256i u[2];
        for (int h = 0; h < 2; h++)
            u[h] = _mm256_loadu_si256((const __m256i *)(qb + 64 * j + 32 * h));
        for (int r = 0; r < rows; r++) {
            const __m256i x = _mm256_set1_epi32(*(const aliased_i32 *)(xb + r * k + 4 * j));
            for (int h = 0; h < 2; h++) {
#if Q8_SIGNED
                const __m256i s = _mm256_xor_si256(u[h], _mm256_set1_epi8((char)0x80));
                isum[h][r] = _mm256_add_epi32(isum[h][r], dot_s8_s8(s, x));
#else
                isum[h][r] = _mm256_dpbusd_avx_epi32(isum[h][r], u[h], x);
#endif
            }
        }
    }
}

/* kind and rows are constants in each instance. */
static inline __attribute__((always_inline)) void
il_full(const qweights *g, const qactivations *a, int64_t k, int64_t r0, const int rows,
        const int kind, float *dots) {
    const int64_t block_bytes = kind_is_q4(kind) ? 256 : 512;
    __m256 acc[2][IL_FULL_ROWS];
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++) acc[h][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < g->nb; b++) {
        const uint8_t *qb = g->q + b * block_bytes;
        for (int line = 0; line < block_bytes; line += 64)
            _mm_prefetch((const char *)(qb + IL_PREFETCH_BYTES + line), _MM_HINT_T0);
        const int8_t *xb = a->xq + r0 * k + b * QBLOCK;
        __m256i isum[2][IL_FULL_ROWS];
        if (kind_is_q4(kind))
            il_full_block_q4(qb, xb, k, rows, isum);
        else
            il_full_block_q8(qb, xb, k, rows, isum);
        __m256 d8[2], m8[2];
        il_weight_scales(g->d + b * IL_ROWS, g->m + b * IL_ROWS, kind, d8, m8);
        for (int r = 0; r < rows; r++) {
            const int64_t at = (r0 + r) * g->nb + b;
            for (int h = 0; h < 2; h++)
                acc[h][r] = il_scaled(acc[h][r], isum[h][r], d8[h], m8[h], a->dx + at,
                                      a->xqsum + at, kind);
        }
    }
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++) _mm256_storeu_ps(dots + r * IL_ROWS + 8 * h, acc[h][r]);
}

/* Batched steps (3-4 activation rows): the block's 2 x ROWS sums, the chunk's weights (4
 * vectors), a broadcast, a product and a constant take the 16 registers, so the float
 * accumulators live in `dots` (L1): a load and a store each a block, against the block's 64
 * vpmaddubsw (Q4, 4 rows). Each product is added as it comes, one broadcast live at a time;
 * vpaddw wraps, so the int16 sums are exact in any order as long as the block's total stays
 * within the bound at the top, which it does (8 products a lane, as in il_full_block_q4). */

/* v as computed here, in a register: gcc may not reassociate the sums across it. NOTE: left
 * free, gcc paired the products before adding them (2 broadcasts and 2 products live) and
 * spilled 5 of the 8 sums to the stack at 4 rows, rolled or not (bench/tile_loops.py). */
static inline __attribute__((always_inline)) __m256i il_pinned(__m256i v) {
    __asm__("" : "+x"(v));
    return v;
}

static inline __attribute__((always_inline)) void
il_wide_block_q4(const uint8_t *qb, const int8_t *xb, int64_t k, const int rows,
                 __m256i isum[2][IL_XTILE]) {
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++) isum[h][r] = _mm256_setzero_si256();
#pragma GCC unroll 4 /* pinned sums: unrolled without spills, ~8% faster than rolled */
    for (int c = 0; c < 4; c++) {
        __m256i lo[2], hi[2];
        il_nibbles(qb + 64 * c, lo, hi);
        for (int r = 0; r < rows; r++) {
            const aliased_i32 *quads = (const aliased_i32 *)(xb + r * k);
            const __m256i x_lo = _mm256_set1_epi32(quads[c]);
            for (int h = 0; h < 2; h++)
#ifdef __AVXVNNI__
                isum[h][r] = _mm256_dpbusd_avx_epi32(isum[h][r], lo[h], x_lo);
#else
                isum[h][r] = il_pinned(_mm256_add_epi16(isum[h][r],
                                                        _mm256_maddubs_epi16(lo[h], x_lo)));
#endif
            const __m256i x_hi = _mm256_set1_epi32(quads[4 + c]);
            for (int h = 0; h < 2; h++)
#ifdef __AVXVNNI__
                isum[h][r] = _mm256_dpbusd_avx_epi32(isum[h][r], hi[h], x_hi);
#else
                isum[h][r] = il_pinned(_mm256_add_epi16(isum[h][r],
                                                        _mm256_maddubs_epi16(hi[h], x_hi)));
#endif
        }
    }
#ifndef __AVXVNNI__
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++)
            isum[h][r] = _mm256_madd_epi16(isum[h][r], _mm256_set1_epi16(1));
#endif
}

/* Q8: without VNNI, the chunk's signed weights and their magnitudes (4 vectors) are shared by
 * the rows; each product is widened to int32 at once (Q8 pairs reach 32512, see the top). */
static inline __attribute__((always_inline)) void
il_wide_block_q8(const uint8_t *qb, const int8_t *xb, int64_t k, const int rows,
                 __m256i isum[2][IL_XTILE]) {
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < rows; r++) isum[h][r] = _mm256_setzero_si256();
#pragma GCC unroll 1 /* see il_full_block_q4 */
    for (int j = 0; j < 8; j++) {
        __m256i u[2];
        for (int h = 0; h < 2; h++)
            u[h] = _mm256_loadu_si256((const __m256i *)(qb + 64 * j + 32 * h));
#if Q8_SIGNED
        __m256i s[2], s_abs[2];
        for (int h = 0; h < 2; h++) {
            s[h] = _mm256_xor_si256(u[h], _mm256_set1_epi8((char)0x80));
            s_abs[h] = _mm256_sign_epi8(s[h], s[h]);
        }
#endif
        for (int r = 0; r < rows; r++) {
            const __m256i x = _mm256_set1_epi32(*(const aliased_i32 *)(xb + r * k + 4 * j));
            for (int h = 0; h < 2; h++)
#if Q8_SIGNED
                isum[h][r] = il_pinned(_mm256_add_epi32(isum[h][r], _mm256_madd_epi16(
                    _mm256_maddubs_epi16(s_abs[h], _mm256_sign_epi8(x, s[h])),
                    _mm256_set1_epi16(1))));
#else
                isum[h][r] = _mm256_dpbusd_avx_epi32(isum[h][r], u[h], x);
#endif
        }
    }
}

/* Only the first tile over a group (r0 = 0) streams it from memory: later tiles find it in
 * cache, and prefetching there would only take issue slots. NOTE: the fields of g and a are
 * copied first: the vector stores into dots may alias anything (as _mm256_storeu_ps is
 * declared), and gcc reloaded every field after each store. */
static inline __attribute__((always_inline)) void
il_wide(const qweights *g, const qactivations *a, int64_t k, int64_t r0, const int rows,
        const int kind, float *dots) {
    const int64_t nb = g->nb, block_bytes = kind_is_q4(kind) ? 256 : 512;
    const uint8_t *q = g->q;
    const uint16_t *d = g->d, *m = g->m;
    const int8_t *xq = a->xq + r0 * k;
    const float *dx = a->dx + r0 * nb, *xqsum = a->xqsum + r0 * nb;
    for (int i = 0; i < rows * IL_ROWS; i++) dots[i] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qb = q + b * block_bytes;
        if (r0 == 0)
            for (int line = 0; line < block_bytes; line += 64)
                _mm_prefetch((const char *)(qb + IL_PREFETCH_BYTES + line), _MM_HINT_T0);
        __m256i isum[2][IL_XTILE];
        if (kind_is_q4(kind))
            il_wide_block_q4(qb, xq + b * QBLOCK, k, rows, isum);
        else
            il_wide_block_q8(qb, xq + b * QBLOCK, k, rows, isum);
        __m256 d8[2], m8[2];
        il_weight_scales(d + b * IL_ROWS, m + b * IL_ROWS, kind, d8, m8);
        for (int r = 0; r < rows; r++) { /* both halves stored last: dx is read once a row */
            float *acc = dots + r * IL_ROWS;
            const float *dx_rb = dx + r * nb + b, *xqsum_rb = xqsum + r * nb + b;
            const __m256 acc0 = il_scaled(_mm256_loadu_ps(acc), isum[0][r], d8[0], m8[0], dx_rb,
                                          xqsum_rb, kind);
            const __m256 acc1 = il_scaled(_mm256_loadu_ps(acc + 8), isum[1][r], d8[1], m8[1],
                                          dx_rb, xqsum_rb, kind);
            _mm256_storeu_ps(acc, acc0);
            _mm256_storeu_ps(acc + 8, acc1);
        }
    }
}

/* Constant row counts and kinds keep the sums in registers and the kind's tests out of the
 * loops. */
static inline __attribute__((always_inline)) void
il_tile_rows(const qweights *g, const qactivations *a, int64_t k, int64_t r0, int rows,
             const int kind, float *dots) {
    switch (rows) {
        case 1: il_full(g, a, k, r0, 1, kind, dots); break;
        case 2: il_full(g, a, k, r0, 2, kind, dots); break;
        case 3: il_wide(g, a, k, r0, 3, kind, dots); break;
        default: il_wide(g, a, k, r0, IL_XTILE, kind, dots); break;
    }
}

static inline void tier_il_tile(const qweights *group, const qactivations *a, int64_t k,
                                int64_t r0, int rows, float dots[IL_XTILE * IL_ROWS]) {
    switch (group->kind) {
        case WEIGHT_Q8_0: il_tile_rows(group, a, k, r0, rows, WEIGHT_Q8_0, dots); break;
        case WEIGHT_Q4_1: il_tile_rows(group, a, k, r0, rows, WEIGHT_Q4_1, dots); break;
        default: il_tile_rows(group, a, k, r0, rows, WEIGHT_Q4_0, dots); break;
    }
}

static inline int64_t tier_argmax_row(const float *row, int64_t n) {
    int64_t i = 0, best_index = 0;
    float best = row[0];
    if (n >= 8) {
        /* per lane: the largest value seen and where (strictly greater keeps the first) */
        __m256 lane_best = _mm256_loadu_ps(row);
        __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), index = lane_index;
        for (i = 8; i + 8 <= n; i += 8) {
            index = _mm256_add_epi32(index, _mm256_set1_epi32(8));
            const __m256 v = _mm256_loadu_ps(row + i);
            const __m256 greater = _mm256_cmp_ps(v, lane_best, _CMP_GT_OQ);
            lane_best = _mm256_blendv_ps(lane_best, v, greater);
            lane_index = _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(lane_index), _mm256_castsi256_ps(index), greater));
        }
        float values[8];
        int32_t indices[8];
        _mm256_storeu_ps(values, lane_best);
        _mm256_storeu_si256((__m256i *)indices, lane_index);
        return argmax_finish(values, indices, 8, row, i, n);
    }
    for (; i < n; i++)
        if (row[i] > best) {
            best = row[i];
            best_index = i;
        }
    return best_index;
}

/* ---- bfloat16 attention: a 256-bit vector of bf16 pairs splits into its even and odd
 * elements by a shift and a mask, then float32 FMAs, as the AVX-512 tier does. Tiles are
 * specialised per group size G <= 4 (larger groups run as several): G x V accumulators for
 * V vectors of 8 tokens (scores) or W vectors of 8 dims (p.v), at most 12 of the 16 registers,
 * at least 6 independent FMA chains to cover the FMA latency. */
__m256 _ZGVdN8v_expf(__m256 x); /* glibc's libmvec: expf on 8 lanes */

static inline __m256 even_bf16_8(__m256i pairs) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
}
static inline __m256 odd_bf16_8(__m256i pairs) {
    return _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32((int)0xFFFF0000u)));
}

/* Scores of 16 tokens a pass (2 vectors), CHAINS sums per vector over alternate dim pairs. */
#define DEFINE_SCORES_BF16_8(G, CHAINS)                                                           \
static inline void scores_bf16_8_g##G(const float query[][MAX_HEAD_DIM], const bf16 *keys,       \
                                      int block_size, int head_dim, int count, float scale,       \
                                      float scores[][MAX_BLOCK]) {                                \
    for (int chunk = 0; chunk < count; chunk += 16) {                                             \
        __m256 s[G][2][CHAINS];                                                                   \
        for (int g = 0; g < G; g++)                                                               \
            for (int v = 0; v < 2; v++)                                                           \
                for (int c = 0; c < CHAINS; c++) s[g][v][c] = _mm256_setzero_ps();                \
        for (int dp = 0; dp < head_dim / 2; dp += CHAINS) {                                       \
            for (int c = 0; c < CHAINS; c++) {                                                    \
                const bf16 *row = keys + ((int64_t)(dp + c) * block_size + chunk) * 2;            \
                for (int v = 0; v < 2; v++) {                                                     \
                    const __m256i pairs = _mm256_loadu_si256((const __m256i *)(row + 16 * v));    \
                    const __m256 k_even = even_bf16_8(pairs), k_odd = odd_bf16_8(pairs);          \
                    for (int g = 0; g < G; g++) {                                                 \
                        s[g][v][c] = _mm256_fmadd_ps(_mm256_set1_ps(query[g][2 * (dp + c)]),      \
                                                     k_even, s[g][v][c]);                         \
                        s[g][v][c] = _mm256_fmadd_ps(_mm256_set1_ps(query[g][2 * (dp + c) + 1]),  \
                                                     k_odd, s[g][v][c]);                          \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (int g = 0; g < G; g++)                                                               \
            for (int v = 0; v < 2; v++) {                                                         \
                __m256 total = s[g][v][0];                                                        \
                for (int c = 1; c < CHAINS; c++) total = _mm256_add_ps(total, s[g][v][c]);        \
                _mm256_storeu_ps(scores[g] + chunk + 8 * v,                                       \
                                 _mm256_mul_ps(total, _mm256_set1_ps(scale)));                    \
            }                                                                                     \
    }                                                                                             \
}

/* acc[g][dc .. dc + 8 W) = acc * correction + p.v over the block's token pairs. */
#define DEFINE_VALUES_BF16_8(G, W)                                                                \
static inline void values_bf16_8_g##G##_w##W(const float scores[][MAX_BLOCK], const bf16 *values,\
                                             int head_dim, int num_pairs, int dc,                \
                                             const float *correction,                            \
                                             float acc[][MAX_HEAD_DIM]) {                        \
    __m256 a[G][W];                                                                               \
    for (int g = 0; g < G; g++)                                                                   \
        for (int v = 0; v < W; v++)                                                               \
            a[g][v] = _mm256_mul_ps(_mm256_loadu_ps(acc[g] + dc + 8 * v),                         \
                                    _mm256_set1_ps(correction[g]));                               \
    for (int jp = 0; jp < num_pairs; jp++) {                                                      \
        for (int v = 0; v < W; v++) {                                                             \
            const __m256i pairs = _mm256_loadu_si256(                                             \
                (const __m256i *)(values + ((int64_t)jp * head_dim + dc + 8 * v) * 2));           \
            const __m256 v_even = even_bf16_8(pairs), v_odd = odd_bf16_8(pairs);                  \
            for (int g = 0; g < G; g++) {                                                         \
                a[g][v] = _mm256_fmadd_ps(_mm256_set1_ps(scores[g][2 * jp]), v_even, a[g][v]);    \
                a[g][v] = _mm256_fmadd_ps(_mm256_set1_ps(scores[g][2 * jp + 1]), v_odd, a[g][v]);\
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    for (int g = 0; g < G; g++)                                                                   \
        for (int v = 0; v < W; v++) _mm256_storeu_ps(acc[g] + dc + 8 * v, a[g][v]);               \
}

/* p.v for group size G: W-vector tiles, then 2-vector ones for the rest of head_dim. */
#define DEFINE_VALUES_ROW_BF16_8(G, W)                                                            \
static inline void values_bf16_8_g##G(const float scores[][MAX_BLOCK], const bf16 *values,       \
                                      int head_dim, int count, const float *correction,           \
                                      float acc[][MAX_HEAD_DIM]) {                                \
    const int num_pairs = (count + 1) / 2;                                                        \
    int dc = 0;                                                                                   \
    for (; dc + 8 * (W) <= head_dim; dc += 8 * (W))                                               \
        values_bf16_8_g##G##_w##W(scores, values, head_dim, num_pairs, dc, correction, acc);      \
    for (; dc < head_dim; dc += 16) /* head_dim is a multiple of 16 */                           \
        values_bf16_8_g##G##_w2(scores, values, head_dim, num_pairs, dc, correction, acc);        \
}

DEFINE_SCORES_BF16_8(1, 4)
DEFINE_SCORES_BF16_8(2, 2)
DEFINE_SCORES_BF16_8(3, 1)
DEFINE_SCORES_BF16_8(4, 1)
DEFINE_VALUES_BF16_8(1, 8)
DEFINE_VALUES_BF16_8(1, 2)
DEFINE_VALUES_BF16_8(2, 4)
DEFINE_VALUES_BF16_8(2, 2)
DEFINE_VALUES_BF16_8(3, 4)
DEFINE_VALUES_BF16_8(3, 2)
DEFINE_VALUES_BF16_8(4, 2)
DEFINE_VALUES_ROW_BF16_8(1, 8)
DEFINE_VALUES_ROW_BF16_8(2, 4)
DEFINE_VALUES_ROW_BF16_8(3, 4)
DEFINE_VALUES_ROW_BF16_8(4, 2)

/* tier_<KIND>_scores and tier_<KIND>_values (tier.h) over the G-specialised tiles: groups of
 * up to 4 query heads a call, larger groups as several. */
#define DEFINE_ATTENTION_ENTRIES(KIND, T)                                                        \
static inline void tier_##KIND##_scores(const float query[][MAX_HEAD_DIM], int group,          \
                                        const T *keys, int block_size, int head_dim, int count, \
                                        float scale, float scores[][MAX_BLOCK]) {               \
    for (int g0 = 0; g0 < group; g0 += 4) {                                                     \
        const float (*q)[MAX_HEAD_DIM] = query + g0;                                            \
        float (*s)[MAX_BLOCK] = scores + g0;                                                    \
        switch (group - g0 < 4 ? group - g0 : 4) {                                              \
            case 1: scores_##KIND##_8_g1(q, keys, block_size, head_dim, count, scale, s); break;\
            case 2: scores_##KIND##_8_g2(q, keys, block_size, head_dim, count, scale, s); break;\
            case 3: scores_##KIND##_8_g3(q, keys, block_size, head_dim, count, scale, s); break;\
            default: scores_##KIND##_8_g4(q, keys, block_size, head_dim, count, scale, s);     \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
static inline void tier_##KIND##_values(const float scores[][MAX_BLOCK], int group,            \
                                        const T *values, int head_dim, int count,               \
                                        const float *correction, float acc[][MAX_HEAD_DIM]) {   \
    for (int g0 = 0; g0 < group; g0 += 4) {                                                     \
        const float (*s)[MAX_BLOCK] = scores + g0;                                              \
        const float *c = correction + g0;                                                       \
        float (*out)[MAX_HEAD_DIM] = acc + g0;                                                  \
        switch (group - g0 < 4 ? group - g0 : 4) {                                              \
            case 1: values_##KIND##_8_g1(s, values, head_dim, count, c, out); break;            \
            case 2: values_##KIND##_8_g2(s, values, head_dim, count, c, out); break;            \
            case 3: values_##KIND##_8_g3(s, values, head_dim, count, c, out); break;            \
            default: values_##KIND##_8_g4(s, values, head_dim, count, c, out);                  \
        }                                                                                       \
    }                                                                                           \
}

DEFINE_ATTENTION_ENTRIES(bf16, bf16)

/* ---- float32 attention: the same tiles over float32 slabs (keys [D][bs], values [bs][D]), one
 * vector of 8 tokens or 8 dims a load. (The portable loops kept their sums in memory, a
 * store-to-load chain per dim: ~1.8x slower than these, 64 rows over 192 tokens of the 1B
 * shape.) */
#define TIER_F32_ATTENTION 1

#define DEFINE_SCORES_F32_8(G, CHAINS)                                                            \
static inline void scores_f32_8_g##G(const float query[][MAX_HEAD_DIM], const float *keys,       \
                                     int block_size, int head_dim, int count, float scale,        \
                                     float scores[][MAX_BLOCK]) {                                 \
    for (int chunk = 0; chunk < count; chunk += 16) {                                             \
        __m256 s[G][2][CHAINS];                                                                   \
        for (int g = 0; g < G; g++)                                                               \
            for (int v = 0; v < 2; v++)                                                           \
                for (int c = 0; c < CHAINS; c++) s[g][v][c] = _mm256_setzero_ps();                \
        for (int d = 0; d < head_dim; d += CHAINS) {                                              \
            for (int c = 0; c < CHAINS; c++) {                                                    \
                const float *row = keys + (int64_t)(d + c) * block_size + chunk;                  \
                for (int v = 0; v < 2; v++) {                                                     \
                    const __m256 key = _mm256_loadu_ps(row + 8 * v);                              \
                    for (int g = 0; g < G; g++)                                                   \
                        s[g][v][c] = _mm256_fmadd_ps(_mm256_set1_ps(query[g][d + c]), key,        \
                                                     s[g][v][c]);                                 \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (int g = 0; g < G; g++)                                                               \
            for (int v = 0; v < 2; v++) {                                                         \
                __m256 total = s[g][v][0];                                                        \
                for (int c = 1; c < CHAINS; c++) total = _mm256_add_ps(total, s[g][v][c]);        \
                _mm256_storeu_ps(scores[g] + chunk + 8 * v,                                       \
                                 _mm256_mul_ps(total, _mm256_set1_ps(scale)));                    \
            }                                                                                     \
    }                                                                                             \
}

/* acc[g][dc .. dc + 8 W) = acc * correction + p.v over the block's first `count` tokens. */
#define DEFINE_VALUES_F32_8(G, W)                                                                 \
static inline void values_f32_8_g##G##_w##W(const float scores[][MAX_BLOCK], const float *values,\
                                            int head_dim, int count, int dc,                      \
                                            const float *correction,                              \
                                            float acc[][MAX_HEAD_DIM]) {                          \
    __m256 a[G][W];                                                                               \
    for (int g = 0; g < G; g++)                                                                   \
        for (int v = 0; v < W; v++)                                                               \
            a[g][v] = _mm256_mul_ps(_mm256_loadu_ps(acc[g] + dc + 8 * v),                         \
                                    _mm256_set1_ps(correction[g]));                               \
    for (int j = 0; j < count; j++) {                                                             \
        const float *row = values + (int64_t)j * head_dim + dc;                                   \
        for (int v = 0; v < W; v++) {                                                             \
            const __m256 value = _mm256_loadu_ps(row + 8 * v);                                    \
            for (int g = 0; g < G; g++)                                                           \
                a[g][v] = _mm256_fmadd_ps(_mm256_set1_ps(scores[g][j]), value, a[g][v]);          \
        }                                                                                         \
    }                                                                                             \
    for (int g = 0; g < G; g++)                                                                   \
        for (int v = 0; v < W; v++) _mm256_storeu_ps(acc[g] + dc + 8 * v, a[g][v]);               \
}

#define DEFINE_VALUES_ROW_F32_8(G, W)                                                             \
static inline void values_f32_8_g##G(const float scores[][MAX_BLOCK], const float *values,       \
                                     int head_dim, int count, const float *correction,            \
                                     float acc[][MAX_HEAD_DIM]) {                                 \
    int dc = 0;                                                                                   \
    for (; dc + 8 * (W) <= head_dim; dc += 8 * (W))                                               \
        values_f32_8_g##G##_w##W(scores, values, head_dim, count, dc, correction, acc);           \
    for (; dc < head_dim; dc += 16) /* head_dim is a multiple of 16 */                           \
        values_f32_8_g##G##_w2(scores, values, head_dim, count, dc, correction, acc);             \
}

DEFINE_SCORES_F32_8(1, 4)
DEFINE_SCORES_F32_8(2, 2)
DEFINE_SCORES_F32_8(3, 1)
DEFINE_SCORES_F32_8(4, 1)
DEFINE_VALUES_F32_8(1, 8)
DEFINE_VALUES_F32_8(1, 2)
DEFINE_VALUES_F32_8(2, 4)
DEFINE_VALUES_F32_8(2, 2)
DEFINE_VALUES_F32_8(3, 4)
DEFINE_VALUES_F32_8(3, 2)
DEFINE_VALUES_F32_8(4, 2)
DEFINE_VALUES_ROW_F32_8(1, 8)
DEFINE_VALUES_ROW_F32_8(2, 4)
DEFINE_VALUES_ROW_F32_8(3, 4)
DEFINE_VALUES_ROW_F32_8(4, 2)

DEFINE_ATTENTION_ENTRIES(f32, float)

static inline void tier_softmax_row(float *scores, int count, float *running_max,
                                    float *running_sum, float *correction) {
    const int whole = count / 8 * 8;
    __m256 max8 = _mm256_set1_ps(*running_max);
    for (int j = 0; j < whole; j += 8) max8 = _mm256_max_ps(max8, _mm256_loadu_ps(scores + j));
    float values[8], block_max = *running_max;
    _mm256_storeu_ps(values, max8);
    for (int lane = 0; lane < 8; lane++) block_max = fmaxf(block_max, values[lane]);
    for (int j = whole; j < count; j++) block_max = fmaxf(block_max, scores[j]);
    *correction = expf(*running_max - block_max);
    *running_max = block_max;
    __m256 sum8 = _mm256_setzero_ps();
    for (int j = 0; j < whole; j += 8) {
        const __m256 p = _ZGVdN8v_expf(_mm256_sub_ps(_mm256_loadu_ps(scores + j),
                                                     _mm256_set1_ps(block_max)));
        sum8 = _mm256_add_ps(sum8, p);
        _mm256_storeu_ps(scores + j, p);
    }
    float sum = hsum8(sum8);
    for (int j = whole; j < count; j++) {
        scores[j] = expf(scores[j] - block_max);
        sum += scores[j];
    }
    for (int j = count; j < (count + 15) / 16 * 16; j++) scores[j] = 0.0f;
    *running_sum = *running_sum * *correction + sum;
}

#endif
