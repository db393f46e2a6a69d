/* AArch64 NEON panel kernel: vcntq_u8 popcounts, 2 rows x 32 channels per tile. */
#include "bnncl_core.h"

#if defined(__aarch64__)
#include <arm_neon.h>

void bnncl_panel_neon(const uint64_t *a, int64_t rows, int64_t kk, const uint64_t *panel,
                      int64_t col0, int64_t row0, const bnncl_epi *e) {
    int64_t ncols = e->ncols - col0 < BNNCL_NB ? e->ncols - col0 : BNNCL_NB;
    for (int64_t r = 0; r < rows; ++r) {
        const uint64_t *ar = a + r * kk;
        for (int64_t j = 0; j < BNNCL_NB; j += 8) {
            uint64x2_t acc[4];
            for (int v = 0; v < 4; ++v) acc[v] = vdupq_n_u64(0);
            for (int64_t w = 0; w < kk; ++w) {
                uint64x2_t av = vdupq_n_u64(ar[w]);
                const uint64_t *b = panel + w * BNNCL_NB + j;
                for (int v = 0; v < 4; ++v) {
                    uint8x16_t x = vreinterpretq_u8_u64(veorq_u64(av, vld1q_u64(b + 2 * v)));
                    acc[v] = vpadalq_u32(acc[v], vpaddlq_u16(vpaddlq_u8(vcntq_u8(x))));
                }
            }
            for (int v = 0; v < 4; ++v) {
                for (int l = 0; l < 2; ++l) {
                    int64_t col = j + 2 * v + l;
                    uint64_t pop = l ? vgetq_lane_u64(acc[v], 1) : vgetq_lane_u64(acc[v], 0);
                    if (col < ncols) bnncl_store_one(e, row0 + r, col0 + col, (int64_t)pop);
                }
            }
        }
    }
}
#endif
