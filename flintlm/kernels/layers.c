/* The elementwise work around the matmuls: residual add fused with RMSNorm, SiLU-and-mul. */
#include "common.h"

#define DEFINE_LAYER_KERNELS(SUFFIX, T, LOAD, STORE)                                            \
/* residual += x (when x is given), then out = rmsnorm(residual) * weight, as HF's Llama       \
 * rounds it: the normalised row is rounded to the dtype before the weight multiplies it. */    \
void add_rms_norm_##SUFFIX(const T *x, T *residual, const T *weight, T *out,                  \
                           int64_t num_tokens, int size, float eps) {                          \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t t = 0; t < num_tokens; t++) {                                                  \
        T *r = residual + t * size;                                                             \
        if (x != 0) {                                                                           \
            const T *xr = x + t * size;                                                         \
            for (int i = 0; i < size; i++) r[i] = STORE(LOAD(r[i]) + LOAD(xr[i]));              \
        }                                                                                       \
        float sum_sq = 0.0f;                                                                    \
        for (int i = 0; i < size; i++) {                                                        \
            const float value = LOAD(r[i]);                                                     \
            sum_sq += value * value;                                                            \
        }                                                                                       \
        const float inv = 1.0f / sqrtf(sum_sq / (float)size + eps);                             \
        T *o = out + t * size;                                                                  \
        for (int i = 0; i < size; i++)                                                          \
            o[i] = STORE(LOAD(STORE(LOAD(r[i]) * inv)) * LOAD(weight[i]));                      \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* out[t, i] = silu(gate_up[t, i]) * gate_up[t, size + i]. */                                   \
void silu_and_mul_##SUFFIX(const T *gate_up, T *out, int64_t num_tokens, int size) {          \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t t = 0; t < num_tokens; t++) {                                                  \
        const T *gate = gate_up + t * 2 * (int64_t)size;                                        \
        const T *up = gate + size;                                                              \
        T *o = out + t * (int64_t)size;                                                         \
        for (int i = 0; i < size; i++) {                                                        \
            const float g = LOAD(gate[i]);                                                      \
            o[i] = STORE(g / (1.0f + expf(-g)) * LOAD(up[i]));                                  \
        }                                                                                       \
    }                                                                                           \
}


DEFINE_LAYER_KERNELS(f32, float, f32_load, f32_store)
DEFINE_LAYER_KERNELS(bf16, bf16, bf16_load, bf16_store)

/* out[r] = index of the largest of logits[r, 0..vocab) (the first one on ties, as torch). */
void argmax_rows_f32(const float *logits, int64_t num_rows, int64_t vocab, int64_t *out) {
    _Pragma("omp parallel for schedule(static) if (num_rows > 1)")
    for (int64_t r = 0; r < num_rows; r++) {
        const float *row = logits + r * vocab;
        int64_t i = 0, best_index = 0;
        float best = row[0];
#ifdef HAVE_AVX512
        if (vocab >= 16) {
            /* per lane: the largest value seen and where (strictly greater keeps the first) */
            __m512 lane_best = _mm512_loadu_ps(row);
            __m512i lane_index = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
            __m512i index = lane_index;
            const __m512i step = _mm512_set1_epi32(16);
            for (i = 16; i + 16 <= vocab; i += 16) {
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
            best = values[0];
            best_index = indices[0];
            for (int lane = 1; lane < 16; lane++)
                if (values[lane] > best || (values[lane] == best && indices[lane] < best_index)) {
                    best = values[lane];
                    best_index = indices[lane];
                }
        }
#endif
        for (; i < vocab; i++)
            if (row[i] > best) {
                best = row[i];
                best_index = i;
            }
        out[r] = best_index;
    }
}
