#include "common.h"

/* ---- Small-batch matmul on quantized weights -----------------------------------------------
 * y[r, n] = sum_k W[n, k] x[r, k] for a few rows r (decode steps), reading GGUF-quantized
 * weights instead of a dense copy: at small batch sizes a step's time is the bytes of weights
 * it reads. models/quant.py repacks each GGML matrix once into this layout, per weight row n:
 *   q [N, K] as bytes: Q4 types two 4-bit values a byte (block of 32: byte j holds element j in
 *     its low and element j + 16 in its high nibble, as GGML stores it); Q8 types one byte a
 *     weight, stored as q + 128 (unsigned)
 *   d [N, K/32] float16 scale, m [N, K/32] float16 offset:  w = d * q + m
 *     (Q4_1: m as stored; Q4_0: q - 8 folded into m = -8 d; Q8_0: m = -128 d)
 * or, for the int8 path, interleaved (models/quant.py `interleave`; N a multiple of 16):
 *   q [N/16][K/32][C][16][4] bytes: weight rows in groups of 16, each group's blocks in K order;
 *     chunk c of a block holds, for each of the 16 rows, 4 consecutive values: Q4 types C = 4,
 *     values 4c..4c+3 of the block in the low nibbles and 16+4c.. in the high ones; Q8 types
 *     C = 8, values 4c..4c+3 (as q + 128)
 *   d, m [N/16][K/32][16] float16
 *   so one 512-bit integer dot product multiplies 16 weight rows by 4 broadcast values of x:
 *   no horizontal sums, and each unpacked block serves every activation row.
 * Two ways to multiply, both float32-accumulated:
 *   exact: x as float32 (the dequantized weights times x, as the dense path computes)
 *   int8:  x quantized to int8 per block of 32 (scale max|x| / 127), integer dot products on
 *          AVX-512 VNNI, as llama.cpp does for its own Q4/Q8 kernels (bfloat16 mode only). */

#define QBLOCK 32
#define MAX_QROWS 8
#define QROW_GROUP 4  /* weight rows per pass: independent FMA chains sharing the x loads */
#define MAX_QBLOCKS 1024  /* blocks of 32 per row: K <= 32768 */

typedef struct {
    const uint8_t *q;  /* [n, row_q_bytes] */
    const uint16_t *d; /* [n, nb] float16 */
    const uint16_t *m; /* [n, nb] float16 */
    int64_t row_q_bytes, nb;
    int is_q4;
} qweights;

/* Prepared activations: float copy, per-block sums (exact), and the int8 form. */
typedef struct {
    float *xf;     /* [rows, k] */
    float *xsum;   /* [rows, nb] sum of the block's x */
    int8_t *xq;    /* [rows, k] round(x / dx) */
    float *dx;     /* [rows, nb] */
    float *xqsum;  /* [rows, nb] dx * sum of the block's xq (offsets against quantized x) */
} qactivations;

static inline float f16_to_f32(uint16_t h) {
#ifdef HAVE_AVX512
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    uint32_t bits;
    if (exponent == 0x1Fu) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else { /* zero or subnormal: mantissa * 2^-24 */
        const float value = (float)mantissa * 5.9604645e-8f;
        return sign ? -value : value;
    }
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
#endif
}

/* dst[0..n) = src as float32 (one weight row's scales). */
static inline void f16_row(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
#ifdef HAVE_AVX512
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = f16_to_f32(src[i]);
}

static float offset_dot(const uint16_t *m, const float *sums, int64_t nb) {
    float offsets[MAX_QBLOCKS];
    f16_row(m, offsets, nb);
    float total = 0.0f;
    for (int64_t b = 0; b < nb; b++) total += offsets[b] * sums[b];
    return total;
}

/* Exact float path, `count` weight rows from `first` against activation row r. */
static void qdot_exact(const qweights *w, int64_t first, int count, const qactivations *a,
                       int64_t r, int64_t k, float *out) {
    const int64_t nb = w->nb;
    const float *x = a->xf + r * k;
    for (int i = 0; i < count; i++) {
        const int64_t row = first + i;
        const uint8_t *q = w->q + row * w->row_q_bytes;
        float d[MAX_QBLOCKS];
        f16_row(w->d + row * nb, d, nb);
        float total = 0.0f;
#ifdef HAVE_AVX512
        __m512 acc = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            __m512 lo, hi;
            if (w->is_q4) {
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
        total = _mm512_reduce_add_ps(acc);
#else
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + b * QBLOCK;
            float dot = 0.0f;
            for (int j = 0; j < QBLOCK; j++) {
                const int value = w->is_q4 ? (j < 16 ? q[b * 16 + j] & 0x0F : q[b * 16 + j - 16] >> 4)
                                           : q[b * 32 + j];
                dot += (float)value * xb[j];
            }
            total += d[b] * dot;
        }
#endif
        out[i] = total + offset_dot(w->m + row * nb, a->xsum + r * nb, nb);
    }
}

#if defined(HAVE_AVX512) && defined(__AVX512VNNI__)
#define HAVE_VNNI 1
/* int8 path: two blocks per 512-bit integer dot product; QROW_GROUP weight rows, each block
 * unpacked once for up to XROW_GROUP activation rows. Inlined with constant counts for full
 * groups, so the accumulators stay in registers (with run-time counts they spilled to the
 * stack every block, measured; a weight block unpacked per activation row made 4 rows cost
 * 3x one row). out[i * rows + r]. */
#define XROW_GROUP 4

static inline __attribute__((always_inline)) void
qdot_int8_tile(const qweights *w, int64_t first, const int count, const qactivations *a,
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
            if (w->is_q4) {
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

/* All `rows` activation rows against weight rows [first, first + count). */
static void qdot_int8_group(const qweights *w, int64_t first, int count, const qactivations *a,
                            int64_t rows, int64_t k, float *out) {
    for (int64_t r0 = 0; r0 < rows; r0 += XROW_GROUP) {
        const int tile_rows = rows - r0 < XROW_GROUP ? (int)(rows - r0) : XROW_GROUP;
        if (count == QROW_GROUP && tile_rows == 1)
            qdot_int8_tile(w, first, QROW_GROUP, a, r0, 1, k, rows, out);
        else if (count == QROW_GROUP && tile_rows == 2)
            qdot_int8_tile(w, first, QROW_GROUP, a, r0, 2, k, rows, out);
        else if (count == QROW_GROUP && tile_rows == 4)
            qdot_int8_tile(w, first, QROW_GROUP, a, r0, 4, k, rows, out);
        else
            qdot_int8_tile(w, first, count, a, r0, tile_rows, k, rows, out);
    }
}

/* ---- int8 path on the interleaved layout ---- */
typedef int32_t __attribute__((may_alias)) aliased_i32;
#define IL_ROWS 16   /* weight rows per group: the 16 lanes of a vector */
#define IL_XTILE 4   /* activation rows per pass over a group's blocks */

/* One block of a group -> 8 vectors of unsigned bytes: w[j] lane i = values 4j..4j+3 of row i. */
static inline __attribute__((always_inline)) void il_unpack(const uint8_t *q, int is_q4,
                                                           __m512i w[8]) {
    if (is_q4) {
        const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
        for (int c = 0; c < 4; c++) {
            const __m512i raw = _mm512_loadu_si512(q + 64 * c);
            w[c] = _mm512_and_si512(raw, low_nibbles);
            w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles);
        }
    } else {
        for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512(q + 64 * j);
    }
}

/* acc[r] (16 weight rows) = group . x row r0 + r, for `rows` <= IL_XTILE activation rows. The
 * 8 dot products of a block run as two chains so their latency overlaps. Same math as
 * qdot_int8_tile: sum_b d_b dx_b (q . xq) + m_b dx_b sum(xq). */
static inline __attribute__((always_inline)) void
il_tile(const uint8_t *q, const uint16_t *d, const uint16_t *m, int is_q4, int64_t nb,
        const qactivations *a, int64_t k, int64_t r0, const int rows, __m512 acc[IL_XTILE]) {
    const int64_t block_bytes = is_q4 ? 256 : 512;
    for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i w[8];
        il_unpack(q + b * block_bytes, is_q4, w);
        const __m512 d16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d + b * IL_ROWS)));
        const __m512 m16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(m + b * IL_ROWS)));
        for (int r = 0; r < rows; r++) {
            /* 4 values of x as one int32, broadcast as a memory operand (a broadcast from a
             * general register measured the same) */
            const aliased_i32 *quad = (const aliased_i32 *)(a->xq + (r0 + r) * k + b * QBLOCK);
            __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
            for (int j = 0; j < 8; j += 2) {
                even = _mm512_dpbusd_epi32(even, w[j], _mm512_set1_epi32(quad[j]));
                odd = _mm512_dpbusd_epi32(odd, w[j + 1], _mm512_set1_epi32(quad[j + 1]));
            }
            const int64_t at = (r0 + r) * nb + b;
            const __m512 scale = _mm512_mul_ps(d16, _mm512_set1_ps(a->dx[at]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)), scale,
                                     acc[r]);
            acc[r] = _mm512_fmadd_ps(m16, _mm512_set1_ps(a->xqsum[at]), acc[r]);
        }
    }
}

/* Activation rows [r0, r0 + tile_rows) against weight group g (rows 16 g ..):
 * dots[r][0..16), tile_rows <= IL_XTILE. */
static void il_group_tile(const qweights *w, int64_t g, const qactivations *a, int64_t k,
                          int64_t r0, int tile_rows, float dots[IL_XTILE * IL_ROWS]) {
    const int64_t nb = w->nb;
    const uint8_t *q = w->q + g * nb * (w->is_q4 ? 256 : 512);
    const uint16_t *d = w->d + g * nb * IL_ROWS, *m = w->m + g * nb * IL_ROWS;
    __m512 acc[IL_XTILE];
    switch (tile_rows) { /* constant row counts keep acc in registers */
        case 1: il_tile(q, d, m, w->is_q4, nb, a, k, r0, 1, acc); break;
        case 2: il_tile(q, d, m, w->is_q4, nb, a, k, r0, 2, acc); break;
        case 3: il_tile(q, d, m, w->is_q4, nb, a, k, r0, 3, acc); break;
        default: il_tile(q, d, m, w->is_q4, nb, a, k, r0, IL_XTILE, acc); break;
    }
    for (int r = 0; r < tile_rows; r++) _mm512_storeu_ps(dots + r * IL_ROWS, acc[r]);
}
#endif

/* Room for every field of `a`, with xf unset: the caller fills it, then calls block_stats. */
static int alloc_activations(qactivations *a, int64_t rows, int64_t k) {
    const int64_t nb = k / QBLOCK;
    a->xf = malloc(sizeof(float) * (size_t)(rows * k + 3 * rows * nb) + (size_t)(rows * k));
    if (a->xf == 0) return 0;
    a->xsum = a->xf + rows * k;
    a->dx = a->xsum + rows * nb;
    a->xqsum = a->dx + rows * nb;
    a->xq = (int8_t *)(a->xqsum + rows * nb);
    return 1;
}

#ifdef HAVE_AVX512
/* One block of 32 activations -> int8 (round to nearest even, as lrintf), its scale and
 * dx * sum(q): the same values as the scalar loop in block_stats, 16 lanes at a time. */
static inline void quantize_block(const float *xb, int8_t *xq, float *dx, float *xqsum) {
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
#endif

static void block_stats(qactivations *a, int64_t rows, int64_t k, int want_int8) {
    const int64_t nb = k / QBLOCK;
#ifdef HAVE_AVX512
    if (want_int8) { /* the int8 path never reads xsum */
#pragma omp parallel for schedule(static) if (rows * k >= 65536)
        for (int64_t i = 0; i < rows * nb; i++)
            quantize_block(a->xf + i * QBLOCK, a->xq + i * QBLOCK, &a->dx[i], &a->xqsum[i]);
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = a->xf + r * k + b * QBLOCK;
            float sum = 0.0f, amax = 0.0f;
            for (int j = 0; j < QBLOCK; j++) {
                sum += xb[j];
                amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax;
            }
            a->xsum[r * nb + b] = sum;
            if (!want_int8) continue;
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            int qsum = 0;
            for (int j = 0; j < QBLOCK; j++) {
                const int value = (int)lrintf(xb[j] * inv);
                a->xq[r * k + b * QBLOCK + j] = (int8_t)value;
                qsum += value;
            }
            a->dx[r * nb + b] = amax / 127.0f;
            a->xqsum[r * nb + b] = amax / 127.0f * (float)qsum;
        }
}

/* dots[i * rows + r] for weight rows [first, first + count) and every activation row. */
static void qdot_group(const qweights *w, int64_t first, int count, const qactivations *a,
                       int64_t rows, int64_t k, int use_int8, float *dots) {
#ifdef HAVE_VNNI
    if (use_int8) {
        qdot_int8_group(w, first, count, a, rows, k, dots);
        return;
    }
#else
    (void)use_int8;
#endif
    float row_dots[QROW_GROUP];
    for (int64_t r = 0; r < rows; r++) {
        qdot_exact(w, first, count, a, r, k, row_dots);
        for (int i = 0; i < count; i++) dots[i * rows + r] = row_dots[i];
    }
}

#ifdef HAVE_VNNI
int quant_int8_available(void) { return 1; }
#else
int quant_int8_available(void) { return 0; }
#endif

#define DEFINE_QMATMUL(SUFFIX, T, LOAD, STORE)                                                   \
/* x [rows, k] (T); weights as documented above, n rows; writes y[r, col0 + j] (row stride     \
 * y_stride) for j < n. k a multiple of 32; use_int8 needs VNNI, and the interleaved layout    \
 * (n a multiple of 16) needs use_int8. The row layout is read MAX_QROWS rows at a time. */     \
void quant_matmul_##SUFFIX(const T *x, int64_t rows, int64_t k, const uint8_t *q,             \
                           const uint16_t *d, const uint16_t *m, int is_q4, int is_interleaved, \
                           int64_t n, T *y, int64_t y_stride, int64_t col0, int use_int8) {     \
    if (!is_interleaved && rows > MAX_QROWS) {                                                  \
        for (int64_t r0 = 0; r0 < rows; r0 += MAX_QROWS)                                        \
            quant_matmul_##SUFFIX(x + r0 * k, rows - r0 < MAX_QROWS ? rows - r0 : MAX_QROWS, k, \
                                  q, d, m, is_q4, 0, n, y + r0 * y_stride, y_stride, col0,      \
                                  use_int8);                                                    \
        return;                                                                                 \
    }                                                                                           \
    qactivations a;                                                                             \
    if (!alloc_activations(&a, rows, k)) return;                                                \
    for (int64_t i = 0; i < rows * k; i++) a.xf[i] = LOAD(x[i]);                                \
    block_stats(&a, rows, k, use_int8);                                                         \
    const qweights w = {q, d, m, is_q4 ? k / 2 : k, k / QBLOCK, is_q4};                         \
    if (is_interleaved) {                                                                       \
        QMATMUL_INTERLEAVED(T, STORE);                                                          \
    } else {                                                                                    \
        _Pragma("omp parallel for schedule(static)")                                            \
        for (int64_t first = 0; first < n; first += QROW_GROUP) {                               \
            const int count = n - first < QROW_GROUP ? (int)(n - first) : QROW_GROUP;           \
            float dots[QROW_GROUP * MAX_QROWS];                                                 \
            qdot_group(&w, first, count, &a, rows, k, use_int8, dots);                          \
            for (int i = 0; i < count; i++)                                                     \
                for (int64_t r = 0; r < rows; r++)                                              \
                    y[r * y_stride + col0 + first + i] = STORE(dots[i * rows + r]);             \
        }                                                                                       \
    }                                                                                           \
    free(a.xf);                                                                                 \
}

#ifdef HAVE_VNNI
/* Each thread takes whole groups of 16 weight rows, and the activation rows a tile at a time. */
#define QMATMUL_INTERLEAVED(T, STORE)                                                           \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t g = 0; g < n / IL_ROWS; g++) {                                                 \
        float dots[IL_XTILE * IL_ROWS];                                                         \
        for (int64_t r0 = 0; r0 < rows; r0 += IL_XTILE) {                                       \
            const int tile_rows = rows - r0 < IL_XTILE ? (int)(rows - r0) : IL_XTILE;           \
            il_group_tile(&w, g, &a, k, r0, tile_rows, dots);                                   \
            for (int r = 0; r < tile_rows; r++) {                                               \
                T *dst = y + (r0 + r) * y_stride + col0 + g * IL_ROWS;                          \
                for (int i = 0; i < IL_ROWS; i++) dst[i] = STORE(dots[r * IL_ROWS + i]);        \
            }                                                                                   \
        }                                                                                       \
    }
#else
#define QMATMUL_INTERLEAVED(T, STORE) (void)0 /* never asked for: Python checks has_int8_dot */
#endif

DEFINE_QMATMUL(f32, float, f32_load, f32_store)
DEFINE_QMATMUL(bf16, bf16, bf16_load, bf16_store)

