/* AVX-512 panel kernel: VPOPCNTQ on 512-bit vectors, 6 rows x 32 channels register tiles
 * (24 zmm accumulators); each A word is broadcast against 8 channels' words at once.
 * The epilogue is specialised per output mode and works on 16 int32 lanes. */
#include "bnncl_core.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
#define INL __attribute__((always_inline)) inline

/* low dwords of two vectors of 8 qwords -> 16 int32 (popcounts are small) */
static INL TGT __m512i narrow(__m512i lo, __m512i hi) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_epi32(lo, idx, hi);
}

static INL TGT void epilogue(int R, int MODE, __m512i acc[6][4], int64_t row, int64_t col0,
                             int64_t ncols, const bnncl_epi *e) {
    const __m512i kv = _mm512_set1_epi32((int32_t)e->k);
    __mmask16 m0 = ncols >= 16 ? 0xFFFF : (__mmask16)((1u << ncols) - 1);
    __mmask16 m1 = ncols >= 32 ? 0xFFFF : (ncols <= 16 ? 0 : (__mmask16)((1u << (ncols - 16)) - 1));
    __m512 s0, s1, b0, b1;
    __m512i g0, g1, t0, t1;
    if (MODE == BNNCL_OUT_FLOAT) {
        s0 = _mm512_loadu_ps(e->scale + col0), s1 = _mm512_loadu_ps(e->scale + col0 + 16);
        b0 = _mm512_loadu_ps(e->bias + col0), b1 = _mm512_loadu_ps(e->bias + col0 + 16);
    }
    if (MODE == BNNCL_OUT_BITS) {
        g0 = _mm512_loadu_si512(e->sgn + col0), g1 = _mm512_loadu_si512(e->sgn + col0 + 16);
        t0 = _mm512_loadu_si512(e->thr + col0), t1 = _mm512_loadu_si512(e->thr + col0 + 16);
    }
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
        __m512i p0 = narrow(acc[i][0], acc[i][1]), p1 = narrow(acc[i][2], acc[i][3]);
        int64_t off = (row + i) * e->out_stride;
        if (MODE == BNNCL_OUT_BITS) {
            __mmask16 k0 = _mm512_cmpgt_epi32_mask(_mm512_sub_epi32(_mm512_xor_si512(p0, g0), g0), t0);
            __mmask16 k1 = _mm512_cmpgt_epi32_mask(_mm512_sub_epi32(_mm512_xor_si512(p1, g1), g1), t1);
            ((uint32_t *)e->out)[off + (col0 >> 5)] = (uint32_t)k0 | ((uint32_t)k1 << 16);
            continue;
        }
        __m512i d0 = _mm512_sub_epi32(kv, _mm512_add_epi32(p0, p0));
        __m512i d1 = _mm512_sub_epi32(kv, _mm512_add_epi32(p1, p1));
        if (MODE == BNNCL_OUT_INT32) {
            int32_t *o = (int32_t *)e->out + off + col0;
            _mm512_mask_storeu_epi32(o, m0, d0);
            _mm512_mask_storeu_epi32(o + 16, m1, d1);
        } else {
            float *o = (float *)e->out + off + col0;
            __m512 y0 = _mm512_add_ps(_mm512_mul_ps(s0, _mm512_cvtepi32_ps(d0)), b0);
            __m512 y1 = _mm512_add_ps(_mm512_mul_ps(s1, _mm512_cvtepi32_ps(d1)), b1);
            _mm512_mask_storeu_ps(o, m0, y0);
            _mm512_mask_storeu_ps(o + 16, m1, y1);
        }
    }
}

static INL TGT void tile(int R, int MODE, const uint64_t *a, int64_t kk, const uint64_t *panel,
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
    epilogue(R, MODE, acc, row, col0, ncols, e);
}

static INL TGT void panel_rows(int MODE, const uint64_t *a, int64_t rows, int64_t kk,
                               const uint64_t *panel, int64_t col0, int64_t row0, const bnncl_epi *e) {
    int64_t ncols = e->ncols - col0 < BNNCL_NB ? e->ncols - col0 : BNNCL_NB;
    int64_t r = 0;
    for (; r + 6 <= rows; r += 6) tile(6, MODE, a + r * kk, kk, panel, row0 + r, col0, ncols, e);
    const uint64_t *ar = a + r * kk;
    switch (rows - r) {
    case 5: tile(5, MODE, ar, kk, panel, row0 + r, col0, ncols, e); break;
    case 4: tile(4, MODE, ar, kk, panel, row0 + r, col0, ncols, e); break;
    case 3: tile(3, MODE, ar, kk, panel, row0 + r, col0, ncols, e); break;
    case 2: tile(2, MODE, ar, kk, panel, row0 + r, col0, ncols, e); break;
    case 1: tile(1, MODE, ar, kk, panel, row0 + r, col0, ncols, e); break;
    default: break;
    }
}

TGT void bnncl_panel_avx512(const uint64_t *a, int64_t rows, int64_t kk, const uint64_t *panel,
                            int64_t col0, int64_t row0, const bnncl_epi *e) {
    if (e->mode == BNNCL_OUT_FLOAT)
        panel_rows(BNNCL_OUT_FLOAT, a, rows, kk, panel, col0, row0, e);
    else if (e->mode == BNNCL_OUT_BITS)
        panel_rows(BNNCL_OUT_BITS, a, rows, kk, panel, col0, row0, e);
    else
        panel_rows(BNNCL_OUT_INT32, a, rows, kk, panel, col0, row0, e);
}
/* ---- direct kernel (cin % 32 == 0): VPOPCNTD on 32-bit taps read from the padded input ----
 * R rows (output pixels) x 16*NC channels, NC zmm accumulators of 16 int32 popcounts per row; each
 * 32-bit input unit is broadcast against 16 * NC channels' units at once.  Weights [panel][q][NB]:
 * NC = 4 spans two adjacent panels. */
#ifndef BNNCL_DIRECT_R2
#define BNNCL_DIRECT_R2 6 /* rows per tile, 32-channel tiles (measured: 8 and 12 spill) */
#endif
#ifndef BNNCL_DIRECT_R4
#define BNNCL_DIRECT_R4 4 /* rows per tile, 64-channel tiles (measured: 5 and 6 spill) */
#endif

static INL TGT void dtile(int R, int NC, int MODE, const uint32_t *const *bp, const int64_t *toff, int64_t nq,
                          const uint32_t *w, int64_t row, int64_t col0, int64_t ncols, const bnncl_epi *e) {
    __m512i acc[12][4];
    const uint32_t *w2 = w + nq * BNNCL_NB; /* second panel (NC == 4) */
#pragma GCC unroll 12
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NC; ++v) acc[i][v] = _mm512_setzero_si512();
    for (int64_t q = 0; q < nq; ++q) {
        const int64_t off = toff[q];
        __m512i w0 = _mm512_load_si512(w + q * BNNCL_NB), w1 = _mm512_load_si512(w + q * BNNCL_NB + 16);
        __m512i w2v, w3v;
        if (NC == 4) w2v = _mm512_load_si512(w2 + q * BNNCL_NB), w3v = _mm512_load_si512(w2 + q * BNNCL_NB + 16);
#pragma GCC unroll 12
        for (int i = 0; i < R; ++i) {
            __m512i av = _mm512_set1_epi32((int)bp[i][off]);
            acc[i][0] = _mm512_add_epi32(acc[i][0], _mm512_popcnt_epi32(_mm512_xor_si512(av, w0)));
            acc[i][1] = _mm512_add_epi32(acc[i][1], _mm512_popcnt_epi32(_mm512_xor_si512(av, w1)));
            if (NC == 4) {
                acc[i][2] = _mm512_add_epi32(acc[i][2], _mm512_popcnt_epi32(_mm512_xor_si512(av, w2v)));
                acc[i][3] = _mm512_add_epi32(acc[i][3], _mm512_popcnt_epi32(_mm512_xor_si512(av, w3v)));
            }
        }
    }
    const __m512i kv = _mm512_set1_epi32((int32_t)e->k);
#pragma GCC unroll 4
    for (int v = 0; v < NC; ++v) {
        int64_t c = col0 + 16 * v, left = e->ncols - c;
        __mmask16 m = left >= 16 ? 0xFFFF : (left <= 0 ? 0 : (__mmask16)((1u << left) - 1));
        if (!m) break;
        __m512 sv, bv;
        if (MODE == BNNCL_OUT_FLOAT) sv = _mm512_loadu_ps(e->scale + c), bv = _mm512_loadu_ps(e->bias + c);
#pragma GCC unroll 12
        for (int i = 0; i < R; ++i) {
            __m512i d = _mm512_sub_epi32(kv, _mm512_add_epi32(acc[i][v], acc[i][v]));
            int64_t off = (row + i) * e->out_stride + c;
            if (MODE == BNNCL_OUT_INT32)
                _mm512_mask_storeu_epi32((int32_t *)e->out + off, m, d);
            else
                _mm512_mask_storeu_ps((float *)e->out + off, m,
                                      _mm512_add_ps(_mm512_mul_ps(sv, _mm512_cvtepi32_ps(d)), bv));
        }
    }
    (void)ncols;
}

#define DTILES(NC, RMAX)                                                                          \
    do {                                                                                          \
        int64_t r = 0;                                                                            \
        for (; r + RMAX <= rows; r += RMAX) dtile(RMAX, NC, MODE, bp + r, d->toff, d->nq, w, r0 + r, col0, ncols, e); \
        const uint32_t *const *br = bp + r;                                                       \
        switch (rows - r) {                                                                       \
        case 11: if (RMAX > 11) dtile(11 < RMAX ? 11 : 1, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break; \
        case 10: if (RMAX > 10) dtile(10 < RMAX ? 10 : 1, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break; \
        case 9: if (RMAX > 9) dtile(9 < RMAX ? 9 : 1, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break; \
        case 8: if (RMAX > 8) dtile(8 < RMAX ? 8 : 1, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break; \
        case 7: if (RMAX > 7) dtile(7 < RMAX ? 7 : 1, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break; \
        case 6: if (RMAX > 6) dtile(6 < RMAX ? 6 : 1, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break; \
        case 5: dtile(5, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break;         \
        case 4: dtile(4, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break;         \
        case 3: dtile(3, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break;         \
        case 2: dtile(2, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break;         \
        case 1: dtile(1, NC, MODE, br, d->toff, d->nq, w, r0 + r, col0, ncols, e); break;         \
        default: break;                                                                           \
        }                                                                                         \
    } while (0)

static INL TGT void direct_rows(int MODE, const bnncl_direct *d, const uint32_t *const *bp, int64_t r0,
                                int64_t rows, const bnncl_epi *e) {
    const int64_t np = (e->ncols + BNNCL_NB - 1) / BNNCL_NB;
    for (int64_t p = 0; p < np;) {
        const uint32_t *w = d->wd + p * d->nq * BNNCL_NB;
        int64_t col0 = p * BNNCL_NB, ncols = e->ncols - col0;
        if (p + 1 < np) {
            DTILES(4, BNNCL_DIRECT_R4);
            p += 2;
        } else {
            DTILES(2, BNNCL_DIRECT_R2);
            p += 1;
        }
    }
}

/* Output pixels [r0, r0 + rows) of a direct convolution (INT32 or FLOAT mode of e). */
TGT void bnncl_direct_avx512(const bnncl_direct *d, int64_t r0, int64_t rows, const bnncl_epi *e) {
    enum { CHUNK = 96 };
    const uint32_t *bp[CHUNK];
    for (int64_t c0 = 0; c0 < rows; c0 += CHUNK) {
        int64_t n = rows - c0 < CHUNK ? rows - c0 : CHUNK;
        int64_t pix = r0 + c0;
        int64_t ox = pix % d->wo, oy = (pix / d->wo) % d->ho, b = pix / (d->wo * d->ho);
        for (int64_t i = 0; i < n; ++i) {
            bp[i] = d->img + ((b * d->hp + oy * d->stride) * d->wp + ox * d->stride) * d->u;
            if (++ox == d->wo) {
                ox = 0;
                if (++oy == d->ho) oy = 0, ++b;
            }
        }
        if (e->mode == BNNCL_OUT_FLOAT)
            direct_rows(BNNCL_OUT_FLOAT, d, bp, r0 + c0, n, e);
        else
            direct_rows(BNNCL_OUT_INT32, d, bp, r0 + c0, n, e);
    }
}
#endif
