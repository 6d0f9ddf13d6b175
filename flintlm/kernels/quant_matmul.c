#include "tier.h"

/* ---- Small-batch matmul on quantized weights -----------------------------------------------
 * y[r, n] = sum_k W[n, k] x[r, k] for a few rows r (decode steps), reading GGUF-quantized
 * weights instead of a dense copy: at small batch sizes a step's time is the bytes of weights
 * it reads. models/quant.py repacks each GGML matrix once into this layout, per weight row n:
 *   q [N, K] as bytes: Q4 types two 4-bit values a byte (block of 32: byte j holds element j in
 *     its low and element j + 16 in its high nibble, as GGML stores it); Q8 types one byte a
 *     weight, stored as q + 128 (unsigned)
 *   d [N, K/32] float16 scale, m [N, K/32] float16 offset:  w = d * q + m
 *     (Q4_1: m as stored; Q4_0: m = -8 d; Q8_0: m = -128 d; `weight_kind` says which, and
 *     tiles may fold the last two's fixed offsets instead of reading m, see tier.h)
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
 *   int8:  x quantized to int8 per block of 32 (scale max|x| / 127), integer dot products
 *          (AVX-512 VNNI, AVX2, NEON), as llama.cpp does for its own Q4/Q8 kernels.
 * This file is the portable driver; the loops over blocks are the tier's (tier.h). */

/* Exact float path, `count` weight rows from `first` against activation row r. */
static void qdot_exact(const qweights *w, int64_t first, int count, const qactivations *a,
                       int64_t r, int64_t k, float *out) {
    const int64_t nb = w->nb;
    for (int i = 0; i < count; i++) {
        const int64_t row = first + i;
        float d[MAX_QBLOCKS];
        tier_f16_row(w->d + row * nb, d, nb);
        out[i] = tier_qdot_exact_row(w->q + row * w->row_q_bytes, d, a->xf + r * k, nb,
                                     kind_is_q4(w->kind))
                 + offset_dot(w->m + row * nb, a->xsum + r * nb, nb);
    }
}

/* Room for every field of `a`: xf is `in_place` where the activations are float32 already
 * (read where they lie), else room the caller fills before calling block_stats. Returns the
 * buffer to free, or 0 where it could not be allocated. */
static void *alloc_activations(qactivations *a, int64_t rows, int64_t k, const float *in_place) {
    const int64_t nb = k / QBLOCK, copy = in_place ? 0 : rows * k;
    float *buffer = malloc(sizeof(float) * (size_t)(copy + 3 * rows * nb) + (size_t)(rows * k));
    if (buffer == 0) return 0;
    a->xf = in_place ? in_place : buffer;
    a->xsum = buffer + copy;
    a->dx = a->xsum + rows * nb;
    a->xqsum = a->dx + rows * nb;
    a->xq = (int8_t *)(a->xqsum + rows * nb);
    return buffer;
}

/* Per block of 32: the int8 form (int8 path) or the sum of x (exact path, which never reads
 * the int8 form; the int8 path never reads xsum). */
static void block_stats(qactivations *a, int64_t rows, int64_t k, int want_int8) {
    const int64_t nb = k / QBLOCK;
    if (want_int8) {
#pragma omp parallel for schedule(static) if (rows * k >= 65536)
        for (int64_t i = 0; i < rows * nb; i++)
            tier_quantize_block(a->xf + i * QBLOCK, a->xq + i * QBLOCK, &a->dx[i], &a->xqsum[i]);
        return;
    }
    for (int64_t i = 0; i < rows * nb; i++) {
        float sum = 0.0f;
        for (int j = 0; j < QBLOCK; j++) sum += a->xf[i * QBLOCK + j];
        a->xsum[i] = sum;
    }
}

/* dots[i * rows + r] for weight rows [first, first + count) and every activation row. */
static void qdot_group(const qweights *w, int64_t first, int count, const qactivations *a,
                       int64_t rows, int64_t k, int use_int8, float *dots) {
    if (use_int8) {
        tier_int8_rows(w, first, count, a, rows, k, dots);
        return;
    }
    float row_dots[QROW_GROUP];
    for (int64_t r = 0; r < rows; r++) {
        qdot_exact(w, first, count, a, r, k, row_dots);
        for (int i = 0; i < count; i++) dots[i * rows + r] = row_dots[i];
    }
}

/* The int8 path runs on every tier; it is faster than the exact one where the tier has
 * integer dot products (Python prefers it there, in bfloat16). */
int quant_int8_available(void) { return 1; }
int quant_int8_has_dot(void) { return TIER_HAS_INT8_DOT; }

#define DEFINE_QMATMUL(SUFFIX, T, LOAD, STORE, IS_FLOAT)                                         \
/* x [rows, k] (T); weights as documented above, n rows; writes y[r, col0 + j] (row stride     \
 * y_stride) for j < n. k a multiple of 32; the interleaved layout                          \
 * (n a multiple of 16) needs use_int8. The row layout is read MAX_QROWS rows at a time.       \
 * Returns 0, or 1 where the activations' buffer could not be allocated (y then unwritten). */ \
int quant_matmul_##SUFFIX(const T *x, int64_t rows, int64_t k, const uint8_t *q,              \
                           const uint16_t *d, const uint16_t *m, int weight_kind,              \
                           int is_interleaved, int64_t n, T *y, int64_t y_stride, int64_t col0, \
                           int use_int8) {                                                     \
    const int is_q4 = kind_is_q4(weight_kind);                                                  \
    if (!is_interleaved && rows > MAX_QROWS) {                                                  \
        for (int64_t r0 = 0; r0 < rows; r0 += MAX_QROWS)                                        \
            if (quant_matmul_##SUFFIX(x + r0 * k, rows - r0 < MAX_QROWS ? rows - r0 : MAX_QROWS, \
                                      k, q, d, m, weight_kind, 0, n, y + r0 * y_stride, y_stride, \
                                      col0, use_int8))                                          \
                return 1;                                                                       \
        return 0;                                                                               \
    }                                                                                           \
    qactivations a;                                                                             \
    void *buffer = alloc_activations(&a, rows, k, IS_FLOAT ? (const float *)x : 0);            \
    if (buffer == 0) return 1;                                                                  \
    if (!IS_FLOAT) /* xf is the start of the buffer */                                         \
        for (int64_t i = 0; i < rows * k; i++) ((float *)buffer)[i] = LOAD(x[i]);               \
    block_stats(&a, rows, k, use_int8);                                                         \
    const qweights w = {q, d, m, is_q4 ? k / 2 : k, k / QBLOCK, weight_kind};                   \
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
    free(buffer);                                                                               \
    return 0;                                                                                   \
}

/* Each thread takes whole groups of 16 weight rows, and the activation rows a tile at a time. */
#define QMATMUL_INTERLEAVED(T, STORE)                                                           \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t g = 0; g < n / IL_ROWS; g++) {                                                 \
        const int64_t nb = w.nb, group_bytes = nb * (is_q4 ? 256 : 512);                        \
        const qweights group = {q + g * group_bytes, d + g * nb * IL_ROWS,                      \
                                m + g * nb * IL_ROWS, 0, nb, weight_kind};                       \
        float dots[IL_XTILE * IL_ROWS];                                                         \
        for (int64_t r0 = 0; r0 < rows; r0 += IL_XTILE) {                                       \
            const int tile_rows = rows - r0 < IL_XTILE ? (int)(rows - r0) : IL_XTILE;           \
            tier_il_tile(&group, &a, k, r0, tile_rows, dots);                                   \
            for (int r = 0; r < tile_rows; r++) {                                               \
                T *dst = y + (r0 + r) * y_stride + col0 + g * IL_ROWS;                          \
                for (int i = 0; i < IL_ROWS; i++) dst[i] = STORE(dots[r * IL_ROWS + i]);        \
            }                                                                                   \
        }                                                                                       \
    }

DEFINE_QMATMUL(f32, float, f32_load, f32_store, 1) /* float32 activations read in place */
DEFINE_QMATMUL(bf16, bf16, bf16_load, bf16_store, 0)

