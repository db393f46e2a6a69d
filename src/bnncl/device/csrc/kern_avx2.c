/* AVX2 panel kernel: nibble-table (vpshufb) popcount into byte counters, flushed with
 * vpsadbw every 31 words; 4 rows x 8 channels register tiles. */
#include "bnncl_core.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,popcnt")))
#define INL __attribute__((always_inline)) inline

static INL TGT __m256i pc8(__m256i x, __m256i lut, __m256i low) {
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
    return _mm256_add_epi8(lo, hi);
}

/* two vectors of 4 int64 -> 8 int32 (values are small) */
static INL TGT __m256i narrow(__m256i p0, __m256i p1) {
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m128i l = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(p0, idx));
    __m128i h = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(p1, idx));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(l), h, 1);
}

static INL TGT void epilogue(int R, __m256i s[4][2], int64_t row, int64_t col, int64_t ncols,
                             const bnncl_epi *e) {
    for (int i = 0; i < R; ++i) {
        int64_t r = row + i;
        __m256i pop = narrow(s[i][0], s[i][1]);
        if (e->mode == BNNCL_OUT_BITS) {
            __m256i sg = _mm256_loadu_si256((const __m256i *)(e->sgn + col));
            __m256i t = _mm256_loadu_si256((const __m256i *)(e->thr + col));
            __m256i x = _mm256_sub_epi32(_mm256_xor_si256(pop, sg), sg);
            uint32_t bits = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(x, t)));
            uint32_t *o = (uint32_t *)e->out + r * e->out_stride + (col >> 5);
            *o = (*o & ~(0xFFu << (col & 31))) | (bits << (col & 31));
            continue;
        }
        __m256i dot = _mm256_sub_epi32(_mm256_set1_epi32((int32_t)e->k), _mm256_slli_epi32(pop, 1));
        if (ncols >= 8) {
            if (e->mode == BNNCL_OUT_INT32) {
                _mm256_storeu_si256((__m256i *)((int32_t *)e->out + r * e->out_stride + col), dot);
            } else {
                __m256 y = _mm256_mul_ps(_mm256_loadu_ps(e->scale + col), _mm256_cvtepi32_ps(dot));
                y = _mm256_add_ps(y, _mm256_loadu_ps(e->bias + col));
                _mm256_storeu_ps((float *)e->out + r * e->out_stride + col, y);
            }
        } else {
            int32_t tmp[8];
            _mm256_storeu_si256((__m256i *)tmp, pop);
            for (int64_t c = 0; c < ncols; ++c) bnncl_store_one(e, r, col + c, tmp[c]);
        }
    }
}

static INL TGT void tile(int R, const uint64_t *a, int64_t kk, const uint64_t *panel, int64_t row,
                         int64_t col, int64_t ncols, const bnncl_epi *e) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                         1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i s[4][2];
    for (int i = 0; i < R; ++i) s[i][0] = s[i][1] = _mm256_setzero_si256();
    for (int64_t w0 = 0; w0 < kk; w0 += 31) {
        int64_t w1 = kk - w0 < 31 ? kk : w0 + 31;
        __m256i acc[4][2];
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
        for (int64_t w = w0; w < w1; ++w) {
            const uint64_t *b = panel + w * BNNCL_NB;
            __m256i b0 = _mm256_load_si256((const __m256i *)b);
            __m256i b1 = _mm256_load_si256((const __m256i *)(b + 4));
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) {
                __m256i av = _mm256_set1_epi64x((long long)a[i * kk + w]);
                acc[i][0] = _mm256_add_epi8(acc[i][0], pc8(_mm256_xor_si256(av, b0), lut, low));
                acc[i][1] = _mm256_add_epi8(acc[i][1], pc8(_mm256_xor_si256(av, b1), lut, low));
            }
        }
        const __m256i z = _mm256_setzero_si256();
        for (int i = 0; i < R; ++i) {
            s[i][0] = _mm256_add_epi64(s[i][0], _mm256_sad_epu8(acc[i][0], z));
            s[i][1] = _mm256_add_epi64(s[i][1], _mm256_sad_epu8(acc[i][1], z));
        }
    }
    epilogue(R, s, row, col, ncols, e);
}

TGT void bnncl_panel_avx2(const uint64_t *a, int64_t rows, int64_t kk, const uint64_t *panel,
                          int64_t col0, int64_t row0, const bnncl_epi *e) {
    int64_t ncols = e->ncols - col0 < BNNCL_NB ? e->ncols - col0 : BNNCL_NB;
    for (int64_t q = 0; q < BNNCL_NB && q < ncols; q += 8) {
        const uint64_t *pq = panel + q;
        int64_t nq = ncols - q < 8 ? ncols - q : 8, r = 0;
        for (; r + 4 <= rows; r += 4) tile(4, a + r * kk, kk, pq, row0 + r, col0 + q, nq, e);
        switch (rows - r) {
        case 3: tile(3, a + r * kk, kk, pq, row0 + r, col0 + q, nq, e); break;
        case 2: tile(2, a + r * kk, kk, pq, row0 + r, col0 + q, nq, e); break;
        case 1: tile(1, a + r * kk, kk, pq, row0 + r, col0 + q, nq, e); break;
        default: break;
        }
    }
}
#endif
