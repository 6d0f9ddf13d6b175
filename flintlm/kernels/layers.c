/* The elementwise work around the matmuls: residual add fused with RMSNorm, SiLU-and-mul. */
#include "tier.h"

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
    for (int64_t r = 0; r < num_rows; r++) out[r] = tier_argmax_row(logits + r * vocab, vocab);
}
