/* AVX-512 tier (x86-64-v4 with VNNI, e.g. Zen 4, Ice Lake and later): the primitives of tier.h
 * on 512-bit vectors. Measured and tuned on Zen 4 (see the notes at each primitive). */
#ifndef FLINTLM_KERNELS_TIER_AVX512_H
#define FLINTLM_KERNELS_TIER_AVX512_H

#include <immintrin.h>

#define FLINTLM_TIER_NAME "avx512"
#define TIER_HAS_INT8_DOT 1

static inline void tier_f16_row(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}

/* Round to nearest even, as lrintf, 16 lanes at a time. */
static inline void tier_quantize_block(const float *xb, int8_t *xq, float *dx, float *xqsum) {
    const __m512 lo = _mm512_loadu_ps(xb), hi = _mm512_loadu_ps(xb + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512i q_lo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(inv)));
    const __m512i q_hi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(inv)));
    _mm_storeu_si128((__m128i *)xq, _mm512_cvtepi32_epi8(q_lo));
    _mm_storeu_si128((__m128i *)(xq + 16), _mm512_cvtepi32_epi8(q_hi));
    *dx = amax / 127.0f;
    *xqsum = amax / 127.0f * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q_lo, q_hi));
}

static inline float tier_qdot_exact_row(const uint8_t *q, const float *d, const float *x,
                                        int64_t nb, int is_q4) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 lo, hi;
        if (is_q4) {
            const __m512i packed = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + b * 16)));
            lo = _mm512_cvtepi32_ps(_mm512_and_si512(packed, _mm512_set1_epi32(0x0F)));
            hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(packed, 4));
        } else {
            lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + b * 32))));
            hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + b * 32 + 16))));
        }
        const __m512 t = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + b * QBLOCK + 16),
                                         _mm512_mul_ps(lo, _mm512_loadu_ps(x + b * QBLOCK)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d[b]), t, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* Row layout: two blocks per 512-bit integer dot product; QROW_GROUP weight rows, each block
 * unpacked once for up to XROW_GROUP activation rows. Inlined with constant counts for full
 * groups, so the accumulators stay in registers (with run-time counts they spilled to the
 * stack every block, measured; a weight block unpacked per activation row made 4 rows cost
 * 3x one row). */
#define XROW_GROUP 4

static inline __attribute__((always_inline)) void
int8_rows_tile(const qweights *w, int64_t first, const int count, const qactivations *a,
               int64_t r0, const int rows, int64_t k, int64_t out_rows, float *out) {
    const int64_t nb = w->nb;
    const __m512i nibble_order = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i pair_lanes = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
    __m512 acc[QROW_GROUP][XROW_GROUP];
    for (int i = 0; i < count; i++)
        for (int r = 0; r < rows; r++) acc[i][r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {
        const int is_pair = b + 1 < nb;
        const __mmask64 bytes = is_pair ? ~(__mmask64)0 : (__mmask64)0xFFFFFFFFu;
        __m512i qv[QROW_GROUP];
        __m128 d_pair[QROW_GROUP];
        for (int i = 0; i < count; i++) {
            const int64_t row = first + i;
            const uint8_t *q = w->q + row * w->row_q_bytes;
            /* the next group's rows follow these in memory: fetch them while this one runs */
            _mm_prefetch((const char *)(q + QROW_GROUP * w->row_q_bytes + b * 16), _MM_HINT_T0);
            if (kind_is_q4(w->kind)) {
                /* [A bytes | B bytes] -> [A low | A high | B low | B high] nibbles */
                const __m512i raw = _mm512_castsi256_si512(
                    _mm256_maskz_loadu_epi8(is_pair ? 0xFFFFFFFFu : 0xFFFFu, q + b * 16));
                const __m512i lo = _mm512_and_si512(raw, low_nibbles);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles);
                qv[i] = _mm512_permutex2var_epi64(lo, nibble_order, hi);
            } else {
                qv[i] = _mm512_maskz_loadu_epi8(bytes, q + b * 32);
            }
            /* the odd last block has no partner: never read past the row (0 * NaN is NaN) */
            const uint16_t *d_row = w->d + row * nb + b;
            const int d_bits = is_pair ? (int)(d_row[0] | (uint32_t)d_row[1] << 16) : d_row[0];
            d_pair[i] = _mm_cvtph_ps(_mm_cvtsi32_si128(d_bits));
        }
        for (int r = 0; r < rows; r++) {
            const int8_t *xq = a->xq + (r0 + r) * k;
            const float *dx = a->dx + (r0 + r) * nb;
            const __m512i xv = _mm512_maskz_loadu_epi8(bytes, xq + b * QBLOCK);
            const __m128 dx_pair = _mm_setr_ps(dx[b], is_pair ? dx[b + 1] : 0.0f, 0.0f, 0.0f);
            for (int i = 0; i < count; i++) {
                const __m512i isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qv[i], xv);
                const __m512 scale = _mm512_permutexvar_ps(
                    pair_lanes, _mm512_castps128_ps512(_mm_mul_ps(d_pair[i], dx_pair)));
                acc[i][r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[i][r]);
            }
        }
    }
    /* NOTE: the offsets multiply the sums of the quantized x too, so the result is the exact
     * product of the dequantized weights with the quantized x: with the exact sums instead, the
     * rounding of x would be scaled by q (0..15) rather than by the centred weight. */
    for (int i = 0; i < count; i++)
        for (int r = 0; r < rows; r++)
            out[i * out_rows + r0 + r] = _mm512_reduce_add_ps(acc[i][r])
                + offset_dot(w->m + (first + i) * nb, a->xqsum + (r0 + r) * nb, nb);
}

static inline void tier_int8_rows(const qweights *w, int64_t first, int count,
                                  const qactivations *a, int64_t rows, int64_t k, float *out) {
    for (int64_t r0 = 0; r0 < rows; r0 += XROW_GROUP) {
        const int tile_rows = rows - r0 < XROW_GROUP ? (int)(rows - r0) : XROW_GROUP;
        if (count == QROW_GROUP && tile_rows == 1)
            int8_rows_tile(w, first, QROW_GROUP, a, r0, 1, k, rows, out);
        else if (count == QROW_GROUP && tile_rows == 2)
            int8_rows_tile(w, first, QROW_GROUP, a, r0, 2, k, rows, out);
        else if (count == QROW_GROUP && tile_rows == 4)
            int8_rows_tile(w, first, QROW_GROUP, a, r0, 4, k, rows, out);
        else
            int8_rows_tile(w, first, count, a, r0, tile_rows, k, rows, out);
    }
}

/* Interleaved layout: the AVX2 tier's one-pass tile on 512-bit vectors. A block's chunk c
 * (64 bytes: 16 weight rows x 4 values) is one vector, multiplied by every activation row's
 * broadcast quad as it arrives, so each line of the group is read once, whole; the first tile
 * over a group (r0 = 0: every decode step's, and a batch's first) streams it from memory, so
 * it prefetches IL_PREFETCH_BYTES ahead (the next group follows this one in memory: the AVX2
 * tier's measured distance); later tiles find the group in cache. NOTE: 3-4-row tiles once
 * skipped the prefetch (llvm-mca: +3-6% cycles a block), but measured with it, 1 thread:
 * 3-4 rows +25%, 16 rows +10-20% on the 1B gate_up and down (bench/decode_matvec.py
 * --layer). The weight kind is a constant in each instance, so no test of it is left in the
 * block loop. Registers (32 zmm): ROWS float accumulators + 2 x ROWS block sums + one
 * chunk's weights, for any ROWS <= 4. */
#ifndef IL_PREFETCH_BYTES /* a -D flag overrides it, e.g. bench/decode_matvec.py --extra-flags */
#define IL_PREFETCH_BYTES 1024
#endif

/* Q4 block -> isum[r] = q . xq (16 int32 lanes, one per weight row). The high nibbles are not
 * shifted down: raw & 0xF0 is 16 x the nibble, so their sum is 16 x the one wanted, and an
 * arithmetic shift of the int32 sum by 4 is exact (|sum| <= 16 * 240 * 127 < 2^31). Low and
 * high sums are two dependency chains per row. */
static inline __attribute__((always_inline)) void
il_block_q4(const uint8_t *qb, const int8_t *xb, int64_t k, const int rows,
            __m512i isum[IL_XTILE]) {
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
    __m512i lo_sum[IL_XTILE], hi_sum[IL_XTILE];
    for (int r = 0; r < rows; r++) lo_sum[r] = hi_sum[r] = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
        const __m512i raw = _mm512_loadu_si512(qb + 64 * c);
        const __m512i lo = _mm512_and_si512(raw, low_nibbles);
        const __m512i hi16 = _mm512_andnot_si512(low_nibbles, raw);
        for (int r = 0; r < rows; r++) {
            const aliased_i32 *quad = (const aliased_i32 *)(xb + r * k);
            lo_sum[r] = _mm512_dpbusd_epi32(lo_sum[r], lo, _mm512_set1_epi32(quad[c]));
            hi_sum[r] = _mm512_dpbusd_epi32(hi_sum[r], hi16, _mm512_set1_epi32(quad[4 + c]));
        }
    }
    for (int r = 0; r < rows; r++)
        isum[r] = _mm512_add_epi32(lo_sum[r], _mm512_srai_epi32(hi_sum[r], 4));
}

/* Q8 block (bytes q + 128) -> isum[r] = u . xq; the offsets (m = -128 d) make it q . xq. */
static inline __attribute__((always_inline)) void
il_block_q8(const uint8_t *qb, const int8_t *xb, int64_t k, const int rows,
            __m512i isum[IL_XTILE]) {
    __m512i even[IL_XTILE], odd[IL_XTILE];
    for (int r = 0; r < rows; r++) even[r] = odd[r] = _mm512_setzero_si512();
    for (int j = 0; j < 8; j += 2) {
        const __m512i u_even = _mm512_loadu_si512(qb + 64 * j);
        const __m512i u_odd = _mm512_loadu_si512(qb + 64 * (j + 1));
        for (int r = 0; r < rows; r++) {
            const aliased_i32 *quad = (const aliased_i32 *)(xb + r * k);
            even[r] = _mm512_dpbusd_epi32(even[r], u_even, _mm512_set1_epi32(quad[j]));
            odd[r] = _mm512_dpbusd_epi32(odd[r], u_odd, _mm512_set1_epi32(quad[j + 1]));
        }
    }
    for (int r = 0; r < rows; r++) isum[r] = _mm512_add_epi32(even[r], odd[r]);
}

/* dots[r * 16 ..] for `rows` activation rows; kind and rows are constants in each instance.
 * Q4_0's and Q8_0's offsets are fixed (m = -c d, tier.h), so they fold into the block's value:
 * d (dx isum - c xqsum), one FMA inside the other, m never read. Q4_1's go to a separate
 * accumulator, so each is one FMA chain a block (one shared chain of two FMAs bounded a 1-row
 * block at 8 cycles of latency); the folded form's inner FMA is off the chain. */
static inline __attribute__((always_inline)) void
il_tile(const qweights *g, const qactivations *a, int64_t k, int64_t r0, const int rows,
        const int kind, float *dots) {
    const int is_q4 = kind_is_q4(kind), reads_m = kind == WEIGHT_Q4_1;
    const float fold = -kind_centre(kind);
    const int64_t nb = g->nb, block_bytes = is_q4 ? 256 : 512;
    __m512 acc[IL_XTILE], acc_offsets[IL_XTILE];
    for (int r = 0; r < rows; r++) acc[r] = acc_offsets[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qb = g->q + b * block_bytes;
        if (r0 == 0)
            for (int line = 0; line < block_bytes; line += 64)
                _mm_prefetch((const char *)(qb + IL_PREFETCH_BYTES + line), _MM_HINT_T0);
        __m512i isum[IL_XTILE];
        if (is_q4)
            il_block_q4(qb, a->xq + r0 * k + b * QBLOCK, k, rows, isum);
        else
            il_block_q8(qb, a->xq + r0 * k + b * QBLOCK, k, rows, isum);
        const __m256i *d_bits = (const __m256i *)(g->d + b * IL_ROWS);
        const __m256i *m_bits = (const __m256i *)(g->m + b * IL_ROWS);
        const __m512 d16 = _mm512_cvtph_ps(_mm256_loadu_si256(d_bits));
        const __m512 m16 = reads_m ? _mm512_cvtph_ps(_mm256_loadu_si256(m_bits)) : d16;
        for (int r = 0; r < rows; r++) {
            const int64_t at = (r0 + r) * nb + b;
            const __m512 sum = _mm512_cvtepi32_ps(isum[r]), dx = _mm512_set1_ps(a->dx[at]);
            if (reads_m) {
                acc[r] = _mm512_fmadd_ps(sum, _mm512_mul_ps(d16, dx), acc[r]);
                acc_offsets[r] = _mm512_fmadd_ps(m16, _mm512_set1_ps(a->xqsum[at]),
                                                 acc_offsets[r]);
            } else {
                const __m512 offset = _mm512_set1_ps(fold * a->xqsum[at]);
                acc[r] = _mm512_fmadd_ps(d16, _mm512_fmadd_ps(sum, dx, offset), acc[r]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        _mm512_storeu_ps(dots + r * IL_ROWS, _mm512_add_ps(acc[r], acc_offsets[r]));
}

/* Constant row counts keep the accumulators in registers. */
static inline __attribute__((always_inline)) void
il_tile_rows(const qweights *g, const qactivations *a, int64_t k, int64_t r0, int rows,
             const int kind, float *dots) {
    switch (rows) {
        case 1: il_tile(g, a, k, r0, 1, kind, dots); break;
        case 2: il_tile(g, a, k, r0, 2, kind, dots); break;
        case 3: il_tile(g, a, k, r0, 3, kind, dots); break;
        default: il_tile(g, a, k, r0, IL_XTILE, kind, dots); break;
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
    if (n >= 16) {
        /* per lane: the largest value seen and where (strictly greater keeps the first) */
        __m512 lane_best = _mm512_loadu_ps(row);
        __m512i lane_index = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        __m512i index = lane_index;
        const __m512i step = _mm512_set1_epi32(16);
        for (i = 16; i + 16 <= n; i += 16) {
            index = _mm512_add_epi32(index, step);
            const __m512 v = _mm512_loadu_ps(row + i);
            const __mmask16 greater = _mm512_cmp_ps_mask(v, lane_best, _CMP_GT_OQ);
            lane_best = _mm512_mask_mov_ps(lane_best, greater, v);
            lane_index = _mm512_mask_mov_epi32(lane_index, greater, index);
        }
        float values[16];
        int32_t indices[16];
        _mm512_storeu_ps(values, lane_best);
        _mm512_storeu_si512(indices, lane_index);
        return argmax_finish(values, indices, 16, row, i, n);
    }
    for (; i < n; i++)
        if (row[i] > best) {
            best = row[i];
            best_index = i;
        }
    return best_index;
}

/* ---- bfloat16 attention: each 32-value vector of bf16 pairs splits into its even and odd
 * elements by a shift and a mask, then float32 FMAs. (AVX512-BF16 dot products on the pairs
 * were measured slower: vdpbf16ps issues at a quarter of the FMA rate on this CPU, and rounds
 * the probabilities to bf16.) */
__m512 _ZGVeN16v_expf(__m512 x); /* glibc's libmvec: expf on 16 lanes */

static inline __m512 even_bf16(__m512i pairs) { return _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16)); }
static inline __m512 odd_bf16(__m512i pairs) {
    return _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32((int)0xFFFF0000u)));
}

static inline void tier_softmax_row(float *scores, int count, float *running_max,
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
 * 16-token chunk use CHAINS independent sums per query (each over even and odd dims). */
#define DEFINE_SCORES_BF16(G, CHAINS)                                                             \
static inline void scores_bf16_g##G(const float query[][MAX_HEAD_DIM], const bf16 *keys,         \
                                    int block_size, int head_dim, int count, float scale,         \
                                    float scores[][MAX_BLOCK]) {                                  \
    for (int chunk = 0; chunk < count; chunk += 16) {                                             \
        __m512 s[G][CHAINS];                                                                      \
        for (int g = 0; g < G; g++)                                                               \
            for (int c = 0; c < CHAINS; c++) s[g][c] = _mm512_setzero_ps();                       \
        for (int dp = 0; dp < head_dim / 2; dp += CHAINS) {                                       \
            for (int c = 0; c < CHAINS; c++) {                                                    \
                const __m512i pairs = _mm512_loadu_si512(                                         \
                    keys + ((int64_t)(dp + c) * block_size + chunk) * 2);                         \
                const __m512 k_even = even_bf16(pairs), k_odd = odd_bf16(pairs);                  \
                for (int g = 0; g < G; g++) {                                                     \
                    s[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(query[g][2 * (dp + c)]), k_even,     \
                                              s[g][c]);                                           \
                    s[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(query[g][2 * (dp + c) + 1]), k_odd,  \
                                              s[g][c]);                                           \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (int g = 0; g < G; g++) {                                                             \
            __m512 total = s[g][0];                                                               \
            for (int c = 1; c < CHAINS; c++) total = _mm512_add_ps(total, s[g][c]);               \
            _mm512_storeu_ps(scores[g] + chunk, _mm512_mul_ps(total, _mm512_set1_ps(scale)));     \
        }                                                                                         \
    }                                                                                             \
}

/* acc[g][dc .. dc + 16 W) = acc * correction + p.v for the block: W vectors per query, the
 * accumulators in registers (constant trip counts). A pair vector holds 16 dims of tokens
 * 2 jp (even elements) and 2 jp + 1 (odd ones). */
#define DEFINE_VALUES_BF16_TILE(G, W)                                                             \
static inline void values_bf16_g##G##_w##W(const float scores[][MAX_BLOCK], const bf16 *values,  \
                                           int head_dim, int num_pairs, int dc,                  \
                                           const float *correction, float acc[][MAX_HEAD_DIM]) { \
    __m512 a[G][W];                                                                               \
    for (int g = 0; g < G; g++)                                                                   \
        for (int v = 0; v < W; v++)                                                               \
            a[g][v] = _mm512_mul_ps(_mm512_loadu_ps(acc[g] + dc + 16 * v),                        \
                                    _mm512_set1_ps(correction[g]));                               \
    for (int jp = 0; jp < num_pairs; jp++) {                                                      \
        for (int v = 0; v < W; v++) {                                                             \
            const __m512i pairs = _mm512_loadu_si512(values + ((int64_t)jp * head_dim + dc       \
                                                               + 16 * v) * 2);                    \
            const __m512 v_even = even_bf16(pairs), v_odd = odd_bf16(pairs);                      \
            for (int g = 0; g < G; g++) {                                                         \
                a[g][v] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g][2 * jp]), v_even, a[g][v]);    \
                a[g][v] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g][2 * jp + 1]), v_odd, a[g][v]);\
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    for (int g = 0; g < G; g++)                                                                   \
        for (int v = 0; v < W; v++) _mm512_storeu_ps(acc[g] + dc + 16 * v, a[g][v]);              \
}

#define DEFINE_ATTEND_BF16(G, CHAINS)                                                             \
DEFINE_SCORES_BF16(G, CHAINS)                                                                     \
DEFINE_VALUES_BF16_TILE(G, 4)                                                                     \
DEFINE_VALUES_BF16_TILE(G, 2)                                                                     \
DEFINE_VALUES_BF16_TILE(G, 1)                                                                     \
static inline void values_bf16_g##G(const float scores[][MAX_BLOCK], const bf16 *values,         \
                                    int head_dim, int count, const float *correction,             \
                                    float acc[][MAX_HEAD_DIM]) {                                  \
    const int num_pairs = (count + 1) / 2;                                                        \
    for (int dc = 0; dc < head_dim; dc += 64) {                                                   \
        if (head_dim - dc >= 64)                                                                  \
            values_bf16_g##G##_w4(scores, values, head_dim, num_pairs, dc, correction, acc);      \
        else if (head_dim - dc >= 32)                                                             \
            values_bf16_g##G##_w2(scores, values, head_dim, num_pairs, dc, correction, acc);      \
        else                                                                                      \
            values_bf16_g##G##_w1(scores, values, head_dim, num_pairs, dc, correction, acc);      \
    }                                                                                             \
}

DEFINE_ATTEND_BF16(1, 4)
DEFINE_ATTEND_BF16(2, 4)
DEFINE_ATTEND_BF16(3, 2)
DEFINE_ATTEND_BF16(4, 2)
DEFINE_ATTEND_BF16(5, 2)
DEFINE_ATTEND_BF16(6, 2)
DEFINE_ATTEND_BF16(7, 1)
DEFINE_ATTEND_BF16(8, 1)

/* Groups above 8 run as several of at most 8 queries (their scores are independent). */
static inline void tier_bf16_scores(const float query[][MAX_HEAD_DIM], int group,
                                    const bf16 *keys, int block_size, int head_dim, int count,
                                    float scale, float scores[][MAX_BLOCK]) {
    for (int g0 = 0; g0 < group; g0 += 8) {
        const float (*q)[MAX_HEAD_DIM] = query + g0;
        float (*s)[MAX_BLOCK] = scores + g0;
        switch (group - g0 < 8 ? group - g0 : 8) {
            case 1: scores_bf16_g1(q, keys, block_size, head_dim, count, scale, s); break;
            case 2: scores_bf16_g2(q, keys, block_size, head_dim, count, scale, s); break;
            case 3: scores_bf16_g3(q, keys, block_size, head_dim, count, scale, s); break;
            case 4: scores_bf16_g4(q, keys, block_size, head_dim, count, scale, s); break;
            case 5: scores_bf16_g5(q, keys, block_size, head_dim, count, scale, s); break;
            case 6: scores_bf16_g6(q, keys, block_size, head_dim, count, scale, s); break;
            case 7: scores_bf16_g7(q, keys, block_size, head_dim, count, scale, s); break;
            default: scores_bf16_g8(q, keys, block_size, head_dim, count, scale, s); break;
        }
    }
}

static inline void tier_bf16_values(const float scores[][MAX_BLOCK], int group,
                                    const bf16 *values, int head_dim, int count,
                                    const float *correction, float acc[][MAX_HEAD_DIM]) {
    for (int g0 = 0; g0 < group; g0 += 8) {
        const float (*s)[MAX_BLOCK] = scores + g0;
        const float *c = correction + g0;
        float (*out)[MAX_HEAD_DIM] = acc + g0;
        switch (group - g0 < 8 ? group - g0 : 8) {
            case 1: values_bf16_g1(s, values, head_dim, count, c, out); break;
            case 2: values_bf16_g2(s, values, head_dim, count, c, out); break;
            case 3: values_bf16_g3(s, values, head_dim, count, c, out); break;
            case 4: values_bf16_g4(s, values, head_dim, count, c, out); break;
            case 5: values_bf16_g5(s, values, head_dim, count, c, out); break;
            case 6: values_bf16_g6(s, values, head_dim, count, c, out); break;
            case 7: values_bf16_g7(s, values, head_dim, count, c, out); break;
            default: values_bf16_g8(s, values, head_dim, count, c, out); break;
        }
    }
}

#endif
