/* Portable scalar panel kernel (any compiler target): 4 rows x 4 channels register tiles. */
#include "bnncl_core.h"

static inline uint64_t popcnt64(uint64_t v) {
#if defined(__x86_64__) && !defined(__POPCNT__)
    /* baseline x86-64 has no POPCNT: SWAR instead of a libgcc call */
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (v * 0x0101010101010101ULL) >> 56;
#else
    return (uint64_t)__builtin_popcountll(v);
#endif
}

void bnncl_panel_scalar(const uint64_t *a, int64_t rows, int64_t kk, const uint64_t *panel,
                        int64_t col0, int64_t row0, const bnncl_epi *e) {
    int64_t ncols = e->ncols - col0 < BNNCL_NB ? e->ncols - col0 : BNNCL_NB;
    for (int64_t r = 0; r < rows; r += 4) {
        int64_t nr = rows - r < 4 ? rows - r : 4;
        for (int64_t j = 0; j < ncols; j += 4) {
            uint64_t acc[4][4] = {{0}};
            for (int64_t w = 0; w < kk; ++w) {
                const uint64_t *b = panel + w * BNNCL_NB + j;
                for (int64_t i = 0; i < nr; ++i) {
                    uint64_t av = a[(r + i) * kk + w];
                    for (int c = 0; c < 4; ++c) acc[i][c] += popcnt64(av ^ b[c]);
                }
            }
            for (int64_t i = 0; i < nr; ++i)
                for (int64_t c = 0; c < 4 && j + c < ncols; ++c)
                    bnncl_store_one(e, row0 + r + i, col0 + j + c, (int64_t)acc[i][c]);
        }
    }
}
