/* libbnncl: the portable random stream of the CWR* experience loop (src/cwr_learn.c).
 *
 * O'Neill's PCG32 (pcg32_random_r of the minimal C library: a 64-bit LCG, multiplier 6364136223846793005,
 * increment 2 stream + 1, output XSH-RR 64/32) with draws defined to the bit, the same as its Python twin
 * bnncl.cl.portable_rng.PortableRNG (whose docstring is the specification; tests/native/
 * test_libbnncl_cwr_loop.py compares the two on many draws):
 *
 *   bnncl_rng_seed      pcg32_srandom_r: state 0, inc 2 stream + 1, step, state += seed, step
 *   bnncl_rng_next32    one 32-bit output
 *   bnncl_rng_bounded   uniform in [0, n): Lemire's multiply-shift, m = next32 * n (64 bits), rejected while
 *                       (m mod 2^32) < (2^32 - n) mod n, the value m >> 32
 *   bnncl_rng_random    a double in [0, 1): ((next32 >> 5) * 2^26 + (next32 >> 6)) / 2^53, high part first
 *   bnncl_rng_shuffle   partial Fisher-Yates from the front: for i < min(size, n - 1): j = i + bounded(n - i),
 *                       swap items i and j (NumPy-like choice(a, size, replace=False); size n: permutation)
 */
#include "bnncl.h"

void bnncl_rng_seed(bnncl_rng *rng, uint64_t seed, uint64_t stream) {
    if (!rng) return;
    rng->state = 0u;
    rng->inc = (stream << 1) | 1u;
    (void)bnncl_rng_next32(rng);
    rng->state += seed;
    (void)bnncl_rng_next32(rng);
}

uint32_t bnncl_rng_next32(bnncl_rng *rng) {
    const uint64_t old = rng->state;
    rng->state = old * 6364136223846793005ull + rng->inc;
    const uint32_t x = (uint32_t)(((old >> 18) ^ old) >> 27);
    const uint32_t r = (uint32_t)(old >> 59);
    return (x >> r) | (x << ((32u - r) & 31u));
}

uint32_t bnncl_rng_bounded(bnncl_rng *rng, uint32_t n) {
    if (n == 0u) return 0u;
    uint64_t m = (uint64_t)bnncl_rng_next32(rng) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        const uint32_t t = (uint32_t)(0u - n) % n; /* (2^32 - n) mod n */
        while (low < t) {
            m = (uint64_t)bnncl_rng_next32(rng) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

double bnncl_rng_random(bnncl_rng *rng) {
    const uint32_t hi = bnncl_rng_next32(rng) >> 5, lo = bnncl_rng_next32(rng) >> 6;
    return ((double)hi * 67108864.0 + (double)lo) / 9007199254740992.0;
}

int bnncl_rng_shuffle(bnncl_rng *rng, int32_t *items, int64_t n, int64_t size) {
    if (!rng || (n > 0 && !items)) return BNNCL_E_NULL;
    if (n < 0 || size < 0 || size > n || n > (int64_t)UINT32_MAX) return BNNCL_E_SIZE;
    const int64_t steps = size < n - 1 ? size : n - 1;
    for (int64_t i = 0; i < steps; ++i) {
        const int64_t j = i + (int64_t)bnncl_rng_bounded(rng, (uint32_t)(n - i));
        const int32_t t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
    return BNNCL_OK;
}
