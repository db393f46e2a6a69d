/* The real-valued 3x3 stem conv of uint8 NHWC images (stride 1, zero padding 1).
 *
 * bnncl_im2col3x3_u8: cols[(b*h + y)*w + x][(ky*3 + kx)*c + ci] = float(x[b, y+ky-1, x+kx-1, ci]) or 0
 * outside (for a GEMM).  bnncl_stem_conv3x3_u8 (below): the conv itself, with a fixed summation order. */
#include <stdint.h>
#include <string.h>

#include "bnncl_core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

void bnncl_im2col3x3_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, float *cols,
                        int threads) {
    const int64_t k = 9 * c, lines = n * h;
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t line = 0; line < lines; ++line) {
        const int64_t b = line / h, y = line % h;
        for (int64_t xx = 0; xx < w; ++xx) {
            float *restrict dst = cols + (line * w + xx) * k;
            const int interior_x = xx >= 1 && xx + 1 < w;
            for (int64_t ky = 0; ky < 3; ++ky, dst += 3 * c) {
                const int64_t iy = y + ky - 1;
                if (iy < 0 || iy >= h) {
                    memset(dst, 0, (size_t)(3 * c) * sizeof(float));
                } else if (interior_x) { /* the 3 taps of a kernel row: one run of 3c bytes */
                    const uint8_t *restrict src = x + ((b * h + iy) * w + xx - 1) * c;
                    for (int64_t i = 0; i < 3 * c; ++i) dst[i] = (float)src[i];
                } else {
                    for (int64_t kx = 0; kx < 3; ++kx) {
                        const int64_t ix = xx + kx - 1;
                        float *restrict d = dst + kx * c;
                        if (ix < 0 || ix >= w) {
                            memset(d, 0, (size_t)c * sizeof(float));
                        } else {
                            const uint8_t *restrict src = x + ((b * h + iy) * w + ix) * c;
                            for (int64_t ci = 0; ci < c; ++ci) d[ci] = (float)src[ci];
                        }
                    }
                }
            }
        }
    }
}

/* ---- the stem conv itself (3x3, stride 1, zero padding 1, float32 weights (9c, oc) in the im2col
 * column order (ky, kx, ci)):  out[p][o] = (((0 + x_0 * w_0[o]) + x_1 * w_1[o]) + ...) over the 9c taps in
 * column order, every product and sum rounded to float32 (no FMA: -ffp-contract=off).  Out-of-image
 * taps add a zero product, which leaves the sum unchanged (it is never -0), so the generic and the
 * AVX-512 variants, which read a zero-padded float copy, give identical results. ---- */
#include <stdlib.h>

/* Zero-padded float32 copy (n, h + 2, w + 2, c) of the uint8 images x (n, h, w, c). */
static void pad_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, float *xp) {
    const int64_t wp = w + 2, row = wp * c;
    for (int64_t b = 0; b < n; ++b) {
        float *img = xp + b * (h + 2) * row;
        memset(img, 0, (size_t)row * sizeof(float));
        memset(img + (h + 1) * row, 0, (size_t)row * sizeof(float));
        for (int64_t y = 0; y < h; ++y) {
            float *d = img + (y + 1) * row;
            const uint8_t *s = x + (b * h + y) * w * c;
            for (int64_t i = 0; i < c; ++i) d[i] = 0.0f, d[row - c + i] = 0.0f;
            for (int64_t i = 0; i < w * c; ++i) d[c + i] = (float)s[i];
        }
    }
}

/* Generic: one output pixel at a time, accumulators in a local array. */
static void stem_line_generic(const float *xp, int64_t h, int64_t w, int64_t c, const float *wt, int64_t oc,
                              int64_t b, int64_t y, float *out, float *acc) {
    const int64_t wp = w + 2;
    for (int64_t x = 0; x < w; ++x) {
        for (int64_t j = 0; j < oc; ++j) acc[j] = 0.0f;
        for (int64_t ky = 0; ky < 3; ++ky) {
            const float *src = xp + ((b * (h + 2) + y + ky) * wp + x) * c;
            const float *wk = wt + ky * 3 * c * oc;
            for (int64_t i = 0; i < 3 * c; ++i) {
                const float v = src[i];
                const float *wr = wk + i * oc;
                for (int64_t j = 0; j < oc; ++j) acc[j] = acc[j] + v * wr[j];
            }
        }
        memcpy(out + ((b * h + y) * w + x) * oc, acc, (size_t)oc * sizeof(float));
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define STEM_TGT __attribute__((target("avx512f")))
#define STEM_P 8 /* pixels per tile */

/* AVX-512 (oc % 16 == 0, oc <= 64): tiles of up to 8 pixels of a line x oc channels in registers. */
static inline __attribute__((always_inline)) STEM_TGT void stem_tile(int P, int NV, const float *xp, int64_t c,
                                                                     int64_t wp, const float *wt, int64_t oc,
                                                                     float *out, const bnncl_stem_epi *se,
                                                                     int64_t b, int64_t y, int64_t x0) {
    __m512 acc[STEM_P][4];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
    for (int64_t ky = 0; ky < 3; ++ky) {
        const float *src = xp + ky * wp * c;
        const float *wk = wt + ky * 3 * c * oc;
        for (int64_t i = 0; i < 3 * c; ++i) {
            const float *wr = wk + i * oc;
            __m512 w0 = _mm512_loadu_ps(wr), w1, w2, w3;
            if (NV > 1) w1 = _mm512_loadu_ps(wr + 16);
            if (NV > 2) w2 = _mm512_loadu_ps(wr + 32);
            if (NV > 3) w3 = _mm512_loadu_ps(wr + 48);
#pragma GCC unroll 8
            for (int p = 0; p < P; ++p) {
                __m512 v = _mm512_set1_ps(src[p * c + i]);
                acc[p][0] = _mm512_add_ps(acc[p][0], _mm512_mul_ps(v, w0));
                if (NV > 1) acc[p][1] = _mm512_add_ps(acc[p][1], _mm512_mul_ps(v, w1));
                if (NV > 2) acc[p][2] = _mm512_add_ps(acc[p][2], _mm512_mul_ps(v, w2));
                if (NV > 3) acc[p][3] = _mm512_add_ps(acc[p][3], _mm512_mul_ps(v, w3));
            }
        }
    }
    if (se) { /* the stem epilogue in registers: the operations of epilogue.c, same order */
        const __m512 zero = _mm512_setzero_ps();
        const float *am = se->addmap + (y * se->w + x0) * oc;
        __mmask16 m[STEM_P][4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const __m512 mul = _mm512_loadu_ps(se->mul + 16 * v), si = _mm512_loadu_ps(se->shift_in + 16 * v);
            const __m512 sl = _mm512_loadu_ps(se->slope + 16 * v), so = _mm512_loadu_ps(se->shift_out + 16 * v);
            const __m512 nb = se->bits ? _mm512_loadu_ps(se->next_bias + 16 * v) : zero;
#pragma GCC unroll 8
            for (int p = 0; p < P; ++p) {
                __m512 t = _mm512_add_ps(_mm512_mul_ps(acc[p][v], mul), _mm512_loadu_ps(am + p * oc + 16 * v));
                t = _mm512_sub_ps(t, si);
                t = _mm512_mask_mul_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_LT_OQ), t, sl);
                acc[p][v] = _mm512_add_ps(t, so);
                m[p][v] = _mm512_cmp_ps_mask(_mm512_add_ps(acc[p][v], nb), zero, _CMP_LT_OQ);
            }
        }
        if (se->bits) { /* oc % 32 == 0: one uint32 unit per 32 channels */
#pragma GCC unroll 8
            for (int p = 0; p < P; ++p) {
                uint32_t *d = se->bits + ((b * se->bhp + y + se->boff) * se->bwp + x0 + p + se->boff) * se->bu;
                int64_t unit = 0;
#pragma GCC unroll 2
                for (int v = 0; v + 1 < NV; v += 2) d[unit++] = (uint32_t)m[p][v] | ((uint32_t)m[p][v + 1] << 16);
                for (; unit < se->bu; ++unit) d[unit] = 0;
            }
        }
    }
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + p * oc + 16 * v, acc[p][v]);
}

#define STEM_TILES(NV)                                                                            \
    do {                                                                                          \
        int64_t x = 0;                                                                            \
        for (; x + STEM_P <= w; x += STEM_P) stem_tile(STEM_P, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); \
        switch (w - x) {                                                                          \
        case 7: stem_tile(7, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); break;                \
        case 6: stem_tile(6, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); break;                \
        case 5: stem_tile(5, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); break;                \
        case 4: stem_tile(4, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); break;                \
        case 3: stem_tile(3, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); break;                \
        case 2: stem_tile(2, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); break;                \
        case 1: stem_tile(1, NV, src + x * c, c, wp, wt, oc, dst + x * oc, se, b, y, x); break;                \
        default: break;                                                                           \
        }                                                                                         \
    } while (0)

static STEM_TGT void stem_line_avx512(const float *xp, int64_t h, int64_t w, int64_t c, const float *wt,
                                      int64_t oc, int64_t b, int64_t y, float *out, const bnncl_stem_epi *se) {
    const int64_t wp = w + 2;
    const float *src = xp + (b * (h + 2) + y) * wp * c;
    float *dst = out + (b * h + y) * w * oc;
    switch (oc / 16) {
    case 1: STEM_TILES(1); break;
    case 2: STEM_TILES(2); break;
    case 3: STEM_TILES(3); break;
    default: STEM_TILES(4); break;
    }
}
#endif

int bnncl_stem_avx512_ok(int64_t oc) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && oc % 16 == 0 && oc > 0 && oc <= 64;
#else
    (void)oc;
    return 0;
#endif
}

/* The stem conv of lines [l0, l1) (line = b * h + y) from the padded copy xp; acc: oc floats of scratch. */
void bnncl_stem_lines(const float *xp, int64_t h, int64_t w, int64_t c, const float *wt, int64_t oc,
                      int64_t l0, int64_t l1, float *out, float *acc, int use_avx512, const bnncl_stem_epi *se) {
    for (int64_t line = l0; line < l1; ++line) {
        int64_t b = line / h, y = line % h;
#if defined(__x86_64__)
        if (use_avx512) {
            stem_line_avx512(xp, h, w, c, wt, oc, b, y, out, se);
            continue;
        }
#endif
        (void)use_avx512;
        stem_line_generic(xp, h, w, c, wt, oc, b, y, out, acc);
    }
}

void bnncl_stem_pad_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, float *xp) {
    pad_u8(x, n, h, w, c, xp);
}

/* out (n, h, w, oc) float32 = the stem conv of the uint8 images x (n, h, w, c); path: BNNCL path id
 * (2 = avx512 uses the AVX-512 tiles when the CPU has them).  0, or 2 when out of memory. */
int bnncl_stem_conv3x3_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, const float *wt,
                          int64_t oc, float *out, int threads, int path) {
    if (n <= 0) return 0;
    float *xp = (float *)malloc((size_t)(n * (h + 2) * (w + 2) * c) * sizeof(float));
    if (!xp) return 2;
    pad_u8(x, n, h, w, c, xp);
    const int use512 = path == 2 && bnncl_stem_avx512_ok(oc);
    const int64_t lines = n * h;
    if (threads < 1) threads = 1;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *acc = (float *)malloc((size_t)oc * sizeof(float));
        if (!acc) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t line = 0; line < lines; ++line)
            if (acc) bnncl_stem_lines(xp, h, w, c, wt, oc, line, line + 1, out, acc, use512, NULL);
        free(acc);
    }
    free(xp);
    return failed ? 2 : 0;
}
