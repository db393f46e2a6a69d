/* Fused block epilogue of the frozen engine (one pass over a block's output, in place):
 *
 *   y = y * mul[c] + addmap[p, c]                (optional: the stem's affine + border map)
 *   y = y + shortcut(src)                        (optional: 2x2 average pool if stride 2, channel
 *                                                 repeat; of sign(src + src_bias) when src_bias)
 *   t = y - shift_in; t = t < 0 ? t * slope : t; y = t + shift_out          (RPReLU)
 *   bits = pack(y + next_bias < 0)               (optional: the next block's binarized input)
 *
 * Same float32 operations, in the same order, as the NumPy reference
 * (bnncl.device.kernels.epilogue.reference_block_epilogue); built with -ffp-contract=off.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnncl_core.h"

#if defined(__x86_64__)
#include <emmintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

/* Shortcut value of input channel c: the activation, or sign(x + bias) as +-1. */
static inline float src_at(const float *s, const float *sb, int64_t c) {
    if (!sb) return s[c];
    return (s[c] + sb[c] < 0.0f) ? -1.0f : 1.0f;
}

/* Bits of (v[i] + nb[i] < 0) for i < o, into nw words (padding bits 0). */
static void pack_row(const float *v, const float *nb, int64_t o, uint64_t *out) {
    int64_t nw = (o + 63) / 64;
    for (int64_t j = 0; j < nw; ++j) {
        uint64_t word = 0;
        int64_t m = o - 64 * j < 64 ? o - 64 * j : 64, i = 0;
        const float *vj = v + 64 * j, *bj = nb + 64 * j;
#if defined(__x86_64__)
        const __m128 zero = _mm_setzero_ps();
        for (; i + 4 <= m; i += 4) {
            __m128 x = _mm_add_ps(_mm_loadu_ps(vj + i), _mm_loadu_ps(bj + i));
            word |= (uint64_t)_mm_movemask_ps(_mm_cmplt_ps(x, zero)) << i;
        }
#endif
        for (; i < m; ++i) word |= (uint64_t)(vj[i] + bj[i] < 0.0f) << i;
        out[j] = word;
    }
}

typedef bnncl_epi_args epi_args;

/* One output pixel (row r). Local restrict pointers: with -fno-strict-aliasing the compiler
 * would otherwise reload every pointer after each float store and not vectorize. */
static inline __attribute__((always_inline)) void epi_affine_shortcut(
    const epi_args *a, int64_t b, int64_t oy, int64_t ox, float *restrict yr, float *restrict sc) {
    const int64_t o = a->o, cin = a->cin;
    if (a->mul) {
        const float *restrict mul = a->mul, *restrict am = a->addmap + (oy * a->wo + ox) * o;
        for (int64_t c = 0; c < o; ++c) yr[c] = yr[c] * mul[c] + am[c];
    }
    if (a->src) {
        const float *restrict sb = a->src_bias;
        if (a->stride == 2) {
            const float *restrict s00 = a->src + ((b * a->h + 2 * oy) * a->w + 2 * ox) * cin;
            const float *restrict s01 = s00 + cin, *restrict s10 = s00 + a->w * cin, *restrict s11 = s10 + cin;
            if (sb) {
                for (int64_t c = 0; c < cin; ++c)
                    sc[c] = ((src_at(s00, sb, c) + src_at(s01, sb, c)) + (src_at(s10, sb, c) + src_at(s11, sb, c))) * 0.25f;
            } else {
                for (int64_t c = 0; c < cin; ++c) sc[c] = ((s00[c] + s01[c]) + (s10[c] + s11[c])) * 0.25f;
            }
        } else {
            const float *restrict s = a->src + ((b * a->h + oy) * a->w + ox) * cin;
            if (!sb) { /* the activation itself: added straight from the source (the same sums, no copy) */
                for (int64_t c0 = 0; c0 < o; c0 += cin) {
                    float *restrict yc = yr + c0;
                    for (int64_t c = 0; c < cin; ++c) yc[c] = yc[c] + s[c];
                }
                return;
            }
            for (int64_t c = 0; c < cin; ++c) sc[c] = src_at(s, sb, c);
        }
        for (int64_t c0 = 0; c0 < o; c0 += cin) {
            float *restrict yc = yr + c0;
            for (int64_t c = 0; c < cin; ++c) yc[c] = yc[c] + sc[c];
        }
    }
}

static void epi_row(const epi_args *a, int64_t b, int64_t oy, int64_t ox, float *restrict yr,
                    float *restrict sc, uint64_t *bits) {
    const int64_t o = a->o;
    const float *restrict si = a->shift_in, *restrict sl = a->slope, *restrict so = a->shift_out;
    epi_affine_shortcut(a, b, oy, ox, yr, sc);
    int64_t c = 0;
#if defined(__x86_64__)
    /* branch-free select (random signs would mispredict a branch per element) */
    const __m128 zero = _mm_setzero_ps();
    for (; c + 4 <= o; c += 4) {
        __m128 t = _mm_sub_ps(_mm_loadu_ps(yr + c), _mm_loadu_ps(si + c));
        __m128 neg = _mm_cmplt_ps(t, zero);
        __m128 r = _mm_or_ps(_mm_and_ps(neg, _mm_mul_ps(t, _mm_loadu_ps(sl + c))), _mm_andnot_ps(neg, t));
        _mm_storeu_ps(yr + c, _mm_add_ps(r, _mm_loadu_ps(so + c)));
    }
#endif
    for (; c < o; ++c) {
        float t = yr[c] - si[c];
        float neg = t * sl[c];
        yr[c] = (t < 0.0f ? neg : t) + so[c];
    }
    if (bits) pack_row(yr, a->next_bias, o, bits);
}

#if defined(__x86_64__)
#include <immintrin.h>
/* AVX-512 row: the same float32 operations (the affine/shortcut loops compiled for AVX-512,
 * RPReLU with a masked multiply, signs by compare-to-mask), hence the same results. */
__attribute__((target("avx512f"), always_inline)) static inline void epi_row_avx512(const epi_args *a, int64_t b, int64_t oy,
                                                              int64_t ox, float *restrict yr,
                                                              float *restrict sc, uint64_t *bits) {
    const int64_t o = a->o;
    const float *restrict si = a->shift_in, *restrict sl = a->slope, *restrict so = a->shift_out;
    const float *restrict nb = a->next_bias;
    epi_affine_shortcut(a, b, oy, ox, yr, sc);
    if (bits) memset(bits, 0, (size_t)a->nw * 8);
    const __m512 zero = _mm512_setzero_ps();
    int64_t c = 0;
    uint64_t word = 0; /* the signs of the current 64 channels, stored once complete (no read-modify-write) */
    for (; c + 16 <= o; c += 16) {
        __m512 t = _mm512_sub_ps(_mm512_loadu_ps(yr + c), _mm512_loadu_ps(si + c));
        __mmask16 neg = _mm512_cmp_ps_mask(t, zero, _CMP_LT_OQ);
        t = _mm512_mask_mul_ps(t, neg, t, _mm512_loadu_ps(sl + c));
        __m512 v = _mm512_add_ps(t, _mm512_loadu_ps(so + c));
        _mm512_storeu_ps(yr + c, v);
        if (bits) {
            __mmask16 m = _mm512_cmp_ps_mask(_mm512_add_ps(v, _mm512_loadu_ps(nb + c)), zero, _CMP_LT_OQ);
            word |= (uint64_t)m << (c & 63);
            if ((c & 63) == 48) bits[c >> 6] = word, word = 0;
        }
    }
    if (bits && (c & 63)) bits[c >> 6] = word; /* a partial word; the channels after c are ORed in below */
    for (; c < o; ++c) {
        float t = yr[c] - si[c];
        float negv = t * sl[c];
        yr[c] = (t < 0.0f ? negv : t) + so[c];
        if (bits && yr[c] + nb[c] < 0.0f) bits[c >> 6] |= (uint64_t)1 << (c & 63);
    }
}

/* n consecutive pixels (b, oy, ox .. ox + n - 1) of one output row, their rows y + i * o, their signs (bits not
 * NULL) at bits + i * bits_step words: bnncl_epi_pixel on each, in one call (AVX-512: the row inlined). */
__attribute__((target("avx512f"))) static void epi_run_avx512(const epi_args *a, int64_t b, int64_t oy, int64_t ox,
                                                              int64_t n, float *y, float *sc, uint64_t *bits,
                                                              int64_t bits_step) {
    for (int64_t i = 0; i < n; ++i)
        epi_row_avx512(a, b, oy, ox + i, y + i * a->o, sc, bits ? bits + i * bits_step : NULL);
}
#endif

void bnncl_epi_run(const bnncl_epi_args *a, int64_t b, int64_t oy, int64_t ox, int64_t n, float *y, float *sc,
                   uint64_t *bits, int64_t bits_step, int use_avx512) {
#if defined(__x86_64__)
    if (use_avx512) {
        epi_run_avx512(a, b, oy, ox, n, y, sc, bits, bits_step);
        return;
    }
#endif
    (void)use_avx512;
    for (int64_t i = 0; i < n; ++i) epi_row(a, b, oy, ox + i, y + i * a->o, sc, bits ? bits + i * bits_step : NULL);
}

int bnncl_epi_use_avx512(int requested) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return requested && __builtin_cpu_supports("avx512f");
#else
    (void)requested;
    return 0;
#endif
}

/* One pixel (for the one-call forward, forward.c); use_avx512 from bnncl_epi_use_avx512. */
void bnncl_epi_pixel(const bnncl_epi_args *a, int64_t b, int64_t oy, int64_t ox, float *y, float *sc,
                     uint64_t *bits, int use_avx512) {
#if defined(__x86_64__)
    if (use_avx512) {
        epi_run_avx512(a, b, oy, ox, 1, y, sc, bits, 0);
        return;
    }
#endif
    (void)use_avx512;
    epi_row(a, b, oy, ox, y, sc, bits);
}

void bnncl_block_epilogue(float *y, int64_t n, int64_t ho, int64_t wo, int64_t o, const float *mul,
                          const float *addmap, const float *src, int64_t h, int64_t w, int64_t cin,
                          int64_t stride, const float *src_bias, const float *shift_in,
                          const float *slope, const float *shift_out, const float *next_bias,
                          uint64_t *bits, int threads, int use_avx512) {
    const epi_args a = {ho, wo, o, h, w, cin, stride, (o + 63) / 64, mul, addmap, src, src_bias,
                        shift_in, slope, shift_out, next_bias};
    const int64_t lines = n * ho; /* image rows; pixel index r = line * wo + ox (no division per pixel) */
    if (threads < 1) threads = 1;
    use_avx512 = bnncl_epi_use_avx512(use_avx512);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *sc = (float *)malloc((size_t)(cin > 0 ? cin : 1) * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t line = 0; line < lines; ++line) {
            int64_t b = line / ho, oy = line % ho;
            for (int64_t ox = 0; ox < wo && sc; ++ox) {
                int64_t r = line * wo + ox;
            {
#if defined(__x86_64__)
                if (use_avx512)
                    epi_run_avx512(&a, b, oy, ox, 1, y + r * o, sc, bits ? bits + r * a.nw : NULL, 0);
                else
#endif
                    epi_row(&a, b, oy, ox, y + r * o, sc, bits ? bits + r * a.nw : NULL);
            }
            }
        }
        free(sc);
    }
}
