/* What kernels/native.py checks at load: the ABI version, limits and structure layouts as this
 * compiler laid them out (against kernels/abi.py's ctypes layout), and the tier it was built for.
 */
#include "common.h"
#include "tier.h"

/* Writes up to `capacity` values of FLINTLM_ABI_LAYOUT into out; returns how many there are. */
int64_t flintlm_kernels_layout(int64_t *out, int64_t capacity) {
    static const int64_t layout[] = FLINTLM_ABI_LAYOUT;
    const int64_t count = (int64_t)(sizeof layout / sizeof layout[0]);
    for (int64_t i = 0; i < count && i < capacity; i++) out[i] = layout[i];
    return count;
}

/* The tier this library was compiled for (tier.h), checked against the one Python asked for. */
const char *flintlm_kernels_tier(void) { return FLINTLM_TIER_NAME; }
