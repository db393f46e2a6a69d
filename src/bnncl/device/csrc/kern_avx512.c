/* AVX-512 panel kernel: VPOPCNTQ on 512-bit vectors, 6 rows x 32 channels register tiles
 * (24 zmm accumulators); each A word is broadcast against 8 channels' words at once. */
#include "bnncl_core.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
#define INL __attribute__((always_inline)) inline

static INL TGT void epilogue(int R, __m512i acc[6][4], int64_t row, int64_t col0,
                             int64_t ncols, const bnncl_epi *e) {
    const __m512i kv = _mm512_set1_epi64(e->k);
    const __mmask8 full = 0xFF;
    for (int i = 0; i < R; ++i) {
        if (e->mode == BNNCL_OUT_BITS) {
            uint32_t bits = 0;
            for (int v = 0; v < 4; ++v) {
                __m512i s = _mm512_loadu_si512(e->sgn + col0 + 8 * v);
                __m512i t = _mm512_loadu_si512(e->thr + col0 + 8 * v);
                __m512i x = _mm512_sub_epi64(_mm512_xor_si512(acc[i][v], s), s);
                bits |= (uint32_t)_mm512_cmpgt_epi64_mask(x, t) << (8 * v);
            }
            ((uint32_t *)e->out)[(row + i) * e->out_stride + (col0 >> 5)] = bits;
            continue;
        }
        for (int v = 0; v < 4; ++v) {
            int64_t left = ncols - 8 * v;
            if (left <= 0) break;
            __mmask8 m = left >= 8 ? full : (__mmask8)((1u << left) - 1);
            __m512i dot = _mm512_sub_epi64(kv, _mm512_slli_epi64(acc[i][v], 1));
            __m256i d32 = _mm512_cvtepi64_epi32(dot);
            int64_t off = (row + i) * e->out_stride + col0 + 8 * v;
            if (e->mode == BNNCL_OUT_INT32) {
                _mm256_mask_storeu_epi32((int32_t *)e->out + off, m, d32);
            } else {
                __m256 sc = _mm256_maskz_loadu_ps(m, e->scale + col0 + 8 * v);
                __m256 bi = _mm256_maskz_loadu_ps(m, e->bias + col0 + 8 * v);
                __m256 y = _mm256_add_ps(_mm256_mul_ps(sc, _mm256_cvtepi32_ps(d32)), bi);
                _mm256_mask_storeu_ps((float *)e->out + off, m, y);
            }
        }
    }
}

static INL TGT void tile(int R, const uint64_t *a, int64_t kk, const uint64_t *panel,
                         int64_t row, int64_t col0, int64_t ncols, const bnncl_epi *e) {
    __m512i acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_si512();
    for (int64_t w = 0; w < kk; ++w) {
        const uint64_t *b = panel + w * BNNCL_NB;
        __m512i b0 = _mm512_load_si512(b), b1 = _mm512_load_si512(b + 8);
        __m512i b2 = _mm512_load_si512(b + 16), b3 = _mm512_load_si512(b + 24);
#pragma GCC unroll 6
        for (int i = 0; i < R; ++i) {
            __m512i av = _mm512_set1_epi64((long long)a[i * kk + w]);
            acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(av, b0)));
            acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(av, b1)));
            acc[i][2] = _mm512_add_epi64(acc[i][2], _mm512_popcnt_epi64(_mm512_xor_si512(av, b2)));
            acc[i][3] = _mm512_add_epi64(acc[i][3], _mm512_popcnt_epi64(_mm512_xor_si512(av, b3)));
        }
    }
    epilogue(R, acc, row, col0, ncols, e);
}

TGT void bnncl_panel_avx512(const uint64_t *a, int64_t rows, int64_t kk, const uint64_t *panel,
                            int64_t col0, int64_t row0, const bnncl_epi *e) {
    int64_t ncols = e->ncols - col0 < BNNCL_NB ? e->ncols - col0 : BNNCL_NB;
    int64_t r = 0;
    for (; r + 6 <= rows; r += 6) tile(6, a + r * kk, kk, panel, row0 + r, col0, ncols, e);
    switch (rows - r) {
    case 5: tile(5, a + r * kk, kk, panel, row0 + r, col0, ncols, e); break;
    case 4: tile(4, a + r * kk, kk, panel, row0 + r, col0, ncols, e); break;
    case 3: tile(3, a + r * kk, kk, panel, row0 + r, col0, ncols, e); break;
    case 2: tile(2, a + r * kk, kk, panel, row0 + r, col0, ncols, e); break;
    case 1: tile(1, a + r * kk, kk, panel, row0 + r, col0, ncols, e); break;
    default: break;
    }
}
#endif
