/* Shared by flintlm's CPU kernels: bfloat16 <-> float32, and abi.h (limits, structures, the
 * kernels' prototypes).
 *
 * The kernels are built at run time by kernels/native.py (cc -O3 with the flags of the selected
 * instruction-set tier, see tier.h; -fopenmp) and
 * called through ctypes with raw pointers; every tensor is contiguous unless a stride is
 * passed. Each exists for float32 (suffix _f32) and bfloat16 (suffix _bf16); arithmetic is
 * float32. OpenMP here shares PyTorch's libgomp (same soname, already loaded), hence its
 * thread pool.
 */
#ifndef FLINTLM_KERNELS_COMMON_H
#define FLINTLM_KERNELS_COMMON_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"

typedef uint16_t bf16;

static inline float bf16_load(bf16 x) {
    uint32_t bits = (uint32_t)x << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Round to nearest even, as torch does; NaN stays NaN (quieted). */
static inline bf16 bf16_store(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
    uint32_t is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    return (bf16)((is_nan ? (bits | 0x00400000u) : rounded) >> 16);
}

/* argmax's last steps on x86: the best of `lanes` per-lane winners (the first index on ties),
 * then row[from..n) one by one. */
static inline int64_t argmax_finish(const float *values, const int32_t *indices, int lanes,
                                    const float *row, int64_t from, int64_t n) {
    float best = values[0];
    int64_t best_index = indices[0];
    for (int lane = 1; lane < lanes; lane++)
        if (values[lane] > best || (values[lane] == best && indices[lane] < best_index)) {
            best = values[lane];
            best_index = indices[lane];
        }
    for (int64_t i = from; i < n; i++)
        if (row[i] > best) {
            best = row[i];
            best_index = i;
        }
    return best_index;
}

static inline float f32_load(float x) { return x; }
static inline float f32_store(float x) { return x; }

/* Limits, structures and the kernels' prototypes (DECLARE_KERNELS) come from abi.h, which
 * kernels/native.py generates from kernels/abi.py, the one place they are declared. */
DECLARE_KERNELS(f32, float)
DECLARE_KERNELS(bf16, bf16)

#endif
