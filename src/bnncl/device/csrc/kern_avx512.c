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
            if (ncols >= 32) { /* full panel: plain stores, which a following load of the row can forward */
                _mm512_storeu_ps(o, y0);
                _mm512_storeu_ps(o + 16, y1);
            } else {
                _mm512_mask_storeu_ps(o, m0, y0);
                _mm512_mask_storeu_ps(o + 16, m1, y1);
            }
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
#define BNNCL_DIRECT_R2 8 /* rows per tile, 32-channel tiles (measured: 12 spills; 4 and 6 slower) */
#endif
#ifndef BNNCL_DIRECT_R4
#define BNNCL_DIRECT_R4 4 /* rows per tile, 64-channel tiles (measured: 5 and 6 spill) */
#endif

/* Per-row pointers of a tile: input field, shortcut source, sign units (BLOCK mode). */
typedef struct {
    const uint32_t *const *bp;
    const float *const *sp;
    uint32_t *const *dp;
} drows;

static INL TGT __m512 sgn_ps(__m512 s, __m512 sb) {
    const __m512 one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(_mm512_add_ps(s, sb), _mm512_setzero_ps(), _CMP_LT_OQ), one, mone);
}

/* The fused block epilogue of R rows x 16 channels at c (vector v of the tile); returns nothing, stores
 * y and collects the sign masks in m[i]. */
static INL TGT void block_epi16(int R, const bnncl_epi *e, const bnncl_block_epi *be, const drows *rp,
                                __m512i acc[12][4], int v, int64_t row, int64_t c, __mmask16 m[12]) {
    const __m512i kv = _mm512_set1_epi32((int32_t)e->k);
    const __m512 zero = _mm512_setzero_ps();
    const __m512 sv = _mm512_loadu_ps(e->scale + c), bv = _mm512_loadu_ps(e->bias + c);
    const __m512 si = _mm512_loadu_ps(be->shift_in + c), sl = _mm512_loadu_ps(be->slope + c);
    const __m512 so = _mm512_loadu_ps(be->shift_out + c);
    const __m512 nb = be->bits ? _mm512_loadu_ps(be->next_bias + c) : zero;
    const int64_t cs = c % be->cin, cin = be->cin, wc = be->w * be->cin;
    const __m512 sbv = be->src_bias ? _mm512_loadu_ps(be->src_bias + cs) : zero;
#pragma GCC unroll 12
    for (int i = 0; i < R; ++i) {
        __m512i d = _mm512_sub_epi32(kv, _mm512_add_epi32(acc[i][v], acc[i][v]));
        __m512 y = _mm512_add_ps(_mm512_mul_ps(sv, _mm512_cvtepi32_ps(d)), bv);
        const float *s = rp->sp[i] + cs;
        __m512 sc;
        if (be->stride == 2) {
            __m512 a00 = _mm512_loadu_ps(s), a01 = _mm512_loadu_ps(s + cin);
            __m512 a10 = _mm512_loadu_ps(s + wc), a11 = _mm512_loadu_ps(s + wc + cin);
            if (be->src_bias) a00 = sgn_ps(a00, sbv), a01 = sgn_ps(a01, sbv), a10 = sgn_ps(a10, sbv), a11 = sgn_ps(a11, sbv);
            sc = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(a00, a01), _mm512_add_ps(a10, a11)), _mm512_set1_ps(0.25f));
        } else {
            sc = _mm512_loadu_ps(s);
            if (be->src_bias) sc = sgn_ps(sc, sbv);
        }
        y = _mm512_add_ps(y, sc);
        __m512 t = _mm512_sub_ps(y, si);
        t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_LT_OQ), t, sl);
        y = _mm512_add_ps(t, so);
        _mm512_storeu_ps((float *)e->out + (row + i) * e->out_stride + c, y);
        m[i] = _mm512_cmp_ps_mask(_mm512_add_ps(y, nb), zero, _CMP_LT_OQ);
    }
}

static INL TGT void dtile(int R, int NC, int MODE, const drows *rp, const int64_t *toff, int64_t nq,
                          const uint32_t *w, int64_t row, int64_t col0, int64_t ncols, const bnncl_epi *e,
                          const bnncl_block_epi *be) {
    const uint32_t *const *bp = rp->bp;
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
    if (MODE == BNNCL_OUT_BLOCK) {
        /* ncols % 32 == 0 here: full vectors */
#pragma GCC unroll 2
        for (int h = 0; h < NC / 2; ++h) {
            __mmask16 lo[12], hi[12];
            block_epi16(R, e, be, rp, acc, 2 * h, row, col0 + 32 * h, lo);
            block_epi16(R, e, be, rp, acc, 2 * h + 1, row, col0 + 32 * h + 16, hi);
            if (be->bits) {
                const int64_t unit = col0 / 32 + h, last = (col0 + 32 * h + 32) == e->ncols;
#pragma GCC unroll 12
                for (int i = 0; i < R; ++i) {
                    rp->dp[i][unit] = (uint32_t)lo[i] | ((uint32_t)hi[i] << 16);
                    if (last)
                        for (int64_t z = unit + 1; z < be->bu; ++z) rp->dp[i][z] = 0;
                }
            }
        }
        (void)ncols;
        return;
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

#define DTILE_AT(RR, NC, r)                                                                       \
    do {                                                                                          \
        drows sub = {rp->bp + (r), rp->sp ? rp->sp + (r) : NULL, rp->dp ? rp->dp + (r) : NULL};   \
        dtile(RR, NC, MODE, &sub, d->toff, d->nq, w, r0 + (r), col0, ncols, e, d->be);            \
    } while (0)

#define DTILES(NC, RMAX)                                                                          \
    do {                                                                                          \
        int64_t r = 0;                                                                            \
        for (; r + RMAX <= rows; r += RMAX) DTILE_AT(RMAX, NC, r);                                \
        switch (rows - r) {                                                                       \
        case 11: if (RMAX > 11) DTILE_AT(11 < RMAX ? 11 : 1, NC, r); break;                       \
        case 10: if (RMAX > 10) DTILE_AT(10 < RMAX ? 10 : 1, NC, r); break;                       \
        case 9: if (RMAX > 9) DTILE_AT(9 < RMAX ? 9 : 1, NC, r); break;                           \
        case 8: if (RMAX > 8) DTILE_AT(8 < RMAX ? 8 : 1, NC, r); break;                           \
        case 7: if (RMAX > 7) DTILE_AT(7 < RMAX ? 7 : 1, NC, r); break;                           \
        case 6: if (RMAX > 6) DTILE_AT(6 < RMAX ? 6 : 1, NC, r); break;                           \
        case 5: if (RMAX > 5) DTILE_AT(5 < RMAX ? 5 : 1, NC, r); break;                           \
        case 4: if (RMAX > 4) DTILE_AT(4 < RMAX ? 4 : 1, NC, r); break;                           \
        case 3: DTILE_AT(3, NC, r); break;                                                        \
        case 2: DTILE_AT(2, NC, r); break;                                                        \
        case 1: DTILE_AT(1, NC, r); break;                                                        \
        default: break;                                                                           \
        }                                                                                         \
    } while (0)

static INL TGT void direct_rows(int MODE, const bnncl_direct *d, const drows *rp, int64_t r0,
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

/* Output pixels [r0, r0 + rows) of a direct convolution (INT32, FLOAT or BLOCK mode of e). */
TGT void bnncl_direct_avx512(const bnncl_direct *d, int64_t r0, int64_t rows, const bnncl_epi *e) {
    enum { CHUNK = 96 };
    const uint32_t *bp[CHUNK];
    const float *sp[CHUNK];
    uint32_t *dp[CHUNK];
    const bnncl_block_epi *be = e->mode == BNNCL_OUT_BLOCK ? d->be : NULL;
    for (int64_t c0 = 0; c0 < rows; c0 += CHUNK) {
        int64_t n = rows - c0 < CHUNK ? rows - c0 : CHUNK;
        int64_t pix = r0 + c0;
        int64_t ox = pix % d->wo, oy = (pix / d->wo) % d->ho, b = pix / (d->wo * d->ho);
        /* pointers advance by one output pixel along a line, recomputed at line starts */
        const int64_t bstep = d->stride * d->u;
        const uint32_t *bq = d->img + ((b * d->hp + oy * d->stride) * d->wp + ox * d->stride) * d->u;
        const float *sq = NULL;
        uint32_t *dq = NULL;
        int64_t sstep = 0, dstep = 0;
        if (be) {
            sstep = be->stride * be->cin, dstep = be->bits ? be->bu : 0;
            sq = be->src + ((b * be->h + oy * be->stride) * be->w + ox * be->stride) * be->cin;
            dq = be->bits ? be->bits + ((b * be->bhp + oy + be->boff) * be->bwp + ox + be->boff) * be->bu : NULL;
        }
        for (int64_t i = 0; i < n; ++i) {
            bp[i] = bq, sp[i] = sq, dp[i] = dq;
            bq += bstep;
            if (sq) sq += sstep;
            if (dq) dq += dstep;
            if (++ox == d->wo) {
                ox = 0;
                if (++oy == d->ho) oy = 0, ++b;
                bq = d->img + (b * d->hp + oy * d->stride) * d->wp * d->u;
                if (be) {
                    sq = be->src + (b * be->h + oy * be->stride) * be->w * be->cin;
                    dq = be->bits ? be->bits + ((b * be->bhp + oy + be->boff) * be->bwp + be->boff) * be->bu : NULL;
                }
            }
        }
        drows rp = {bp, be ? sp : NULL, be ? dp : NULL};
        if (e->mode == BNNCL_OUT_BLOCK)
            direct_rows(BNNCL_OUT_BLOCK, d, &rp, r0 + c0, n, e);
        else if (e->mode == BNNCL_OUT_FLOAT)
            direct_rows(BNNCL_OUT_FLOAT, d, &rp, r0 + c0, n, e);
        else
            direct_rows(BNNCL_OUT_INT32, d, &rp, r0 + c0, n, e);
    }
}
#endif
