/* AVX2 tier (x86-64-v3). Placeholder until its vector code lands: the portable primitives. */
#ifndef FLINTLM_KERNELS_TIER_AVX2_H
#define FLINTLM_KERNELS_TIER_AVX2_H
#include "tier_generic.h"
#undef FLINTLM_TIER_NAME
#define FLINTLM_TIER_NAME "avx2"
#endif
