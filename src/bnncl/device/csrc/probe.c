/* Micro-probes for the benchmark: the popcount instruction rate and the core clock. */
#include "bnncl_core.h"

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f,avx512vpopcntdq"))) static int64_t probe_vpopcntq(int64_t iters) {
    __m512i v0 = _mm512_set1_epi64(1), v1 = v0, v2 = v0, v3 = v0, v4 = v0, v5 = v0, v6 = v0, v7 = v0;
    for (int64_t i = 0; i < iters; ++i) {
        __asm__ volatile("vpopcntq %0, %0\n\tvpopcntq %1, %1\n\tvpopcntq %2, %2\n\tvpopcntq %3, %3\n\t"
                         "vpopcntq %4, %4\n\tvpopcntq %5, %5\n\tvpopcntq %6, %6\n\tvpopcntq %7, %7"
                         : "+v"(v0), "+v"(v1), "+v"(v2), "+v"(v3), "+v"(v4), "+v"(v5), "+v"(v6), "+v"(v7));
    }
    return 8 * iters;
}

__attribute__((target("popcnt"))) static int64_t probe_popcnt(int64_t iters) {
    uint64_t a = 1, b = 2, c = 3, d = 4;
    for (int64_t i = 0; i < iters; ++i) {
        __asm__ volatile("popcnt %0, %0\n\tpopcnt %1, %1\n\tpopcnt %2, %2\n\tpopcnt %3, %3"
                         : "+r"(a), "+r"(b), "+r"(c), "+r"(d));
    }
    return 4 * iters;
}
#endif

/* Run `iters` loop trips of independent popcount instructions of the best kind this CPU
 * has; returns the instruction count and writes their width in bits (0 if none). */
int64_t bnncl_popcnt_probe(int64_t iters, int *bits) {
#if defined(__x86_64__)
    if (bnncl_supported_paths() & (1 << BNNCL_PATH_AVX512)) {
        *bits = 512;
        return probe_vpopcntq(iters);
    }
    if (bnncl_supported_paths() & (1 << BNNCL_PATH_AVX2)) {
        *bits = 64;
        return probe_popcnt(iters);
    }
#endif
    (void)iters;
    *bits = 0;
    return 0;
}

/* A chain of dependent 1-cycle integer adds: returns the number of adds (= cycles). */
int64_t bnncl_clock_probe(int64_t iters) {
    int64_t x = 0;
    for (int64_t i = 0; i < iters; ++i) {
#if defined(__x86_64__)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
#elif defined(__aarch64__)
        __asm__ volatile("add %0, %0, #1\n\tadd %0, %0, #1\n\tadd %0, %0, #1\n\tadd %0, %0, #1" : "+r"(x));
#else
        x += 4;
#endif
    }
    return 4 * iters;
}
