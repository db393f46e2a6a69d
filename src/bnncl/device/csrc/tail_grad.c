/* Backward kernels of the device tail's binary 3x3 convolutions ("method of four Russians").
 *
 * Weight gradient, exact integers (bnncl_tail_wgrad):
 *   S[g*8 + j][o] = sum over positions p whose input bit (group g, bit j) is 1 (i.e. x = -1) of c[p][o]
 * for integer gradient codes c.  The 8 input bits of one byte group g at position p form a pattern;
 * instead of one add per (p, bit), each position adds its code row once into a 256-entry table
 * T_g[pattern] (int32, 16 output lanes per table row), and each bit's sum is read off the table at
 * the end (~510 row adds per table).  Only additions, exact in any order, so every ISA variant
 * gives the same integers.  Tables are flushed into int64 every `chunk` positions (no int32 overflow).
 * Speed (the update is one load + add + store of a table row): four groups share each code-row
 * load; rows are 2 x 256-bit (measured faster than one 512-bit row on Zen 4); pattern 0 (it sets no
 * bit, so it feeds no sum) is sent to one of 8 dummy rows by position, which breaks the
 * store-to-load-forwarding chains that runs of zero patterns (padding, background) otherwise form:
 * 11.4 -> 5.6 ms per fmnist 7x7x128 block at batch 128 (benchmarks/learning.md).
 *
 * Input gradient, float (bnncl_tail_dgrad): D[k][p] = sum_o d[o][p] * s[o][k], s = +-1 from the
 * sign bits of W (bit 1 = -1).  Per 8 output channels (group g) and 16 positions, the 256 signed
 * sums T_g[q] = (((0 +- d[o0]) +- d[o1]) ... +- d[o7]) are built (bit j of q set = subtract), then
 * D[k] = ((T_0[w(k,0)] + T_1[w(k,1)]) + ...) + T_G-1[w(k,G-1)].  (4-bit tables, which all stay in L1,
 * were tried: twice the lookups, measured 35% slower.)  Lanes are positions, every lane
 * does the same float32 operations in the same order (no FMA), so every variant and the NumPy
 * oracle (kernels/tailgrad.py) agree bit for bit.
 *
 * bnncl_tail_dgrad_col2im: both fused, bit for bit the same: each block of 16 positions goes to a small
 * per-image staging area and an image's col2im runs when its last position is done (no (9 c) x P buffer).
 *
 * bnncl_tail_patterns: the byte patterns of the implicit 3x3 im2col of packed +-1 bits (padding +1 =
 * pattern 0), laid out [tap * wb + byte][p]; bnncl_tail_col2im: the tap-ordered scatter-add adjoint.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnncl_core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16

#if defined(__x86_64__)
#include <immintrin.h>
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define T256 __attribute__((target("avx2")))
#endif

/* ---------------- weight gradient: table updates and the per-bit reduction ---------------- */

/* Four groups (four tables, four pattern rows) share each code-row load.  Pattern 0 (no bit set)
 * contributes to no sum; those updates go to one of 8 dummy rows (256 + p % 8) so that runs of
 * zero patterns (padding, background) do not form a store-to-load-forwarding chain on row 0.
 * TROWS rows per table. */
#define TROWS 264
#define QUAD 4

static inline int64_t row_of(uint8_t q, int64_t p) { return q ? (int64_t)q : 256 + (p & 7); }

static void upd_scalar(int32_t *tab, const uint8_t *const *pat, int ng, const int32_t *c, int64_t n) {
    for (int64_t p = 0; p < n; ++p) {
        const int32_t *v = c + p * LANES;
        for (int g = 0; g < ng; ++g) {
            int32_t *t = tab + (g * TROWS + row_of(pat[g][p], p)) * LANES;
            for (int l = 0; l < LANES; ++l) t[l] += v[l];
        }
    }
}

#if defined(__x86_64__)
static T256 void upd_avx2(int32_t *tab, const uint8_t *const *pat, int ng, const int32_t *c, int64_t n) {
    if (ng != QUAD) {
        for (int64_t p = 0; p < n; ++p) {
            const __m256i v0 = _mm256_load_si256((const __m256i *)(c + p * LANES));
            const __m256i v1 = _mm256_load_si256((const __m256i *)(c + p * LANES + 8));
            for (int g = 0; g < ng; ++g) {
                __m256i *t = (__m256i *)(tab + (g * TROWS + row_of(pat[g][p], p)) * LANES);
                _mm256_store_si256(t, _mm256_add_epi32(_mm256_load_si256(t), v0));
                _mm256_store_si256(t + 1, _mm256_add_epi32(_mm256_load_si256(t + 1), v1));
            }
        }
        return;
    }
    const uint8_t *pa = pat[0], *pb = pat[1], *pc = pat[2], *pd = pat[3];
    int32_t *t1 = tab + TROWS * LANES, *t2 = tab + 2 * TROWS * LANES, *t3 = tab + 3 * TROWS * LANES;
    for (int64_t p = 0; p < n; ++p) {
        const __m256i v0 = _mm256_load_si256((const __m256i *)(c + p * LANES));
        const __m256i v1 = _mm256_load_si256((const __m256i *)(c + p * LANES + 8));
        __m256i *a = (__m256i *)(tab + row_of(pa[p], p) * LANES);
        __m256i *b = (__m256i *)(t1 + row_of(pb[p], p) * LANES);
        __m256i *e = (__m256i *)(t2 + row_of(pc[p], p) * LANES);
        __m256i *f = (__m256i *)(t3 + row_of(pd[p], p) * LANES);
        _mm256_store_si256(a, _mm256_add_epi32(_mm256_load_si256(a), v0));
        _mm256_store_si256(a + 1, _mm256_add_epi32(_mm256_load_si256(a + 1), v1));
        _mm256_store_si256(b, _mm256_add_epi32(_mm256_load_si256(b), v0));
        _mm256_store_si256(b + 1, _mm256_add_epi32(_mm256_load_si256(b + 1), v1));
        _mm256_store_si256(e, _mm256_add_epi32(_mm256_load_si256(e), v0));
        _mm256_store_si256(e + 1, _mm256_add_epi32(_mm256_load_si256(e + 1), v1));
        _mm256_store_si256(f, _mm256_add_epi32(_mm256_load_si256(f), v0));
        _mm256_store_si256(f + 1, _mm256_add_epi32(_mm256_load_si256(f + 1), v1));
    }
}

/* reduce_table with 16-lane int32 vectors (exact: every partial sum is bounded by the table total,
 * which the chunking keeps <= INT32_MAX) */
static T512 void reduce_avx512(int32_t *tab, int64_t *out, int64_t out_stride, int lanes) {
    const __mmask16 m = (__mmask16)((1u << lanes) - 1u);
    for (int j = 7; j >= 0; --j) {
        const int half = 1 << j;
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
        for (int q = half; q < 2 * half; q += 2) {
            s0 = _mm512_add_epi32(s0, _mm512_load_si512(tab + q * LANES));
            if (q + 1 < 2 * half) s1 = _mm512_add_epi32(s1, _mm512_load_si512(tab + (q + 1) * LANES));
        }
        const __m512i s = _mm512_add_epi32(s0, s1);
        int64_t *d = out + j * out_stride;
        const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(s));
        const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(s, 1));
        _mm512_mask_storeu_epi64(d, (__mmask8)(m & 0xff),
                                 _mm512_add_epi64(_mm512_maskz_loadu_epi64((__mmask8)(m & 0xff), d), lo));
        _mm512_mask_storeu_epi64(d + 8, (__mmask8)(m >> 8),
                                 _mm512_add_epi64(_mm512_maskz_loadu_epi64((__mmask8)(m >> 8), d + 8), hi));
        for (int q = 0; q < half; ++q)
            _mm512_store_si512(tab + q * LANES, _mm512_add_epi32(_mm512_load_si512(tab + q * LANES),
                                                                 _mm512_load_si512(tab + (q + half) * LANES)));
    }
}
#endif

typedef void (*upd_fn)(int32_t *, const uint8_t *const *, int, const int32_t *, int64_t);
typedef void (*red_fn)(int32_t *, int64_t *, int64_t, int);

/* out[j][l] += sum over q with bit j of tab[q][l] (rows 0..255); folds the table in place. */
static void reduce_table(int32_t *tab, int64_t *out, int64_t out_stride, int lanes) {
    for (int j = 7; j >= 0; --j) {
        const int half = 1 << j;
        int32_t s[LANES] = {0};
        for (int q = half; q < 2 * half; ++q)
            for (int l = 0; l < LANES; ++l) s[l] += tab[q * LANES + l];
        for (int l = 0; l < lanes; ++l) out[j * out_stride + l] += s[l];
        for (int q = 0; q < half; ++q)
            for (int l = 0; l < LANES; ++l) tab[q * LANES + l] += tab[(q + half) * LANES + l];
    }
}

static upd_fn wgrad_fn(int path, red_fn *red) {
    *red = reduce_table;
    if (path < 0 || !(bnncl_supported_paths() & (1 << path))) return NULL;
#if defined(__x86_64__)
    if (path == BNNCL_PATH_AVX512) { /* 256-bit table rows measured faster than 512-bit (Zen 4) */
        *red = reduce_avx512;
        return upd_avx2;
    }
    if (path == BNNCL_PATH_AVX2) return upd_avx2;
#endif
    return upd_scalar;
}

/* Weight gradient with the codes given tile-major: ctile [ceil(o / 16)][npos][16] int32, lanes past o
 * zero (as bnncl_tail_bwd_codes writes them).  The row loads are aligned: a ctile not 64-byte aligned
 * is copied first. */
int bnncl_tail_wgrad_tiled(const uint8_t *pat, int64_t ngroups, int64_t npos, const int32_t *ctile_in, int64_t o,
                           int64_t maxcode, int64_t *out, int64_t *ones, int threads, int path) {
    red_fn red;
    upd_fn upd = wgrad_fn(path, &red);
    if (!upd) return 1;
    if (threads < 1) threads = 1;
    const int64_t ntiles = (o + LANES - 1) / LANES;
    int64_t chunk = maxcode > 0 ? (int64_t)INT32_MAX / maxcode : npos;
    if (chunk < 1) chunk = 1;
    if (chunk > npos) chunk = npos > 0 ? npos : 1;
    memset(out, 0, (size_t)(ngroups * 8 * o) * sizeof(int64_t));
    const int32_t *ctile = ctile_in;
    int32_t *copy = NULL;
    if (((uintptr_t)ctile_in & 63) != 0) {
        copy = aligned_alloc(64, (size_t)(ntiles * (npos > 0 ? npos : 1) * LANES) * sizeof(int32_t));
        if (!copy) return 2;
        memcpy(copy, ctile_in, (size_t)(ntiles * npos * LANES) * sizeof(int32_t));
        ctile = copy;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int32_t *tab = aligned_alloc(64, QUAD * TROWS * LANES * sizeof(int32_t));
        if (!tab) {
#pragma omp atomic write
            failed = 1;
        }
        const int64_t nsteps = (ngroups + QUAD - 1) / QUAD;
#pragma omp for schedule(dynamic, 4) collapse(2)
        for (int64_t t = 0; t < ntiles; ++t) {
            for (int64_t gs = 0; gs < nsteps; ++gs) {
                if (!tab) continue;
                const int64_t g = gs * QUAD, o0 = t * LANES, lanes = o - o0 < LANES ? o - o0 : LANES;
                const int ng = (int)(ngroups - g < QUAD ? ngroups - g : QUAD);
                const int32_t *ct = ctile + t * npos * LANES;
                for (int64_t p0 = 0; p0 < npos; p0 += chunk) {
                    const int64_t n = npos - p0 < chunk ? npos - p0 : chunk;
                    const uint8_t *pg[QUAD];
                    for (int i = 0; i < ng; ++i) pg[i] = pat + (g + i) * npos + p0;
                    memset(tab, 0, (size_t)ng * TROWS * LANES * sizeof(int32_t));
                    upd(tab, pg, ng, ct + p0 * LANES, n);
                    for (int i = 0; i < ng; ++i) red(tab + i * TROWS * LANES, out + (g + i) * 8 * o + o0, o, (int)lanes);
                }
            }
        }
#pragma omp for schedule(static)
        for (int64_t g = 0; g < ngroups; ++g) { /* ones[g*8 + j]: positions whose bit j is 1 */
            int64_t hist[256] = {0};
            const uint8_t *pg = pat + g * npos;
            for (int64_t p = 0; p < npos; ++p) hist[pg[p]]++;
            for (int j = 0; j < 8; ++j) {
                int64_t s = 0;
                for (int q = 0; q < 256; ++q) s += (q >> j & 1) ? hist[q] : 0;
                ones[g * 8 + j] = s;
            }
        }
        free(tab);
    }
    free(copy);
    return failed ? 2 : 0;
}

/* pat: [ngroups][npos] bytes; codes: [npos][o] int32 (each in [0, maxcode]);
 * out: [ngroups * 8][o] int64 (overwritten); ones: [ngroups * 8] int64, positions with the bit set.
 * Returns 0, 1 (path unsupported) or 2 (no memory). */
int bnncl_tail_wgrad(const uint8_t *pat, int64_t ngroups, int64_t npos, const int32_t *codes, int64_t o,
                     int64_t maxcode, int64_t *out, int64_t *ones, int threads, int path) {
    red_fn red;
    if (!wgrad_fn(path, &red)) return 1;
    const int64_t ntiles = (o + LANES - 1) / LANES;
    int32_t *ctile = aligned_alloc(64, (size_t)(ntiles * (npos > 0 ? npos : 1) * LANES) * sizeof(int32_t));
    if (!ctile) return 2;
    for (int64_t t = 0; t < ntiles; ++t) { /* codes, tile-major [tile][p][16], zero-padded lanes */
        const int64_t o0 = t * LANES, lanes = o - o0 < LANES ? o - o0 : LANES;
        int32_t *dst = ctile + t * npos * LANES;
        for (int64_t p = 0; p < npos; ++p) {
            for (int64_t l = 0; l < lanes; ++l) dst[p * LANES + l] = codes[p * o + o0 + l];
            for (int64_t l = lanes; l < LANES; ++l) dst[p * LANES + l] = 0;
        }
    }
    const int rc = bnncl_tail_wgrad_tiled(pat, ngroups, npos, ctile, o, maxcode, out, ones, threads, path);
    free(ctile);
    return rc;
}

/* ---------------- input gradient: signed-subset tables over 8 output channels ---------------- */

static void dgrad_block_scalar(const float *dT, int64_t npos, int64_t p0, int64_t ngroups, const uint8_t *wpat,
                               int64_t k, float *tab, float *out, int64_t ostride) {
    for (int64_t g = 0; g < ngroups; ++g) {
        float *t = tab + g * 256 * LANES;
        for (int l = 0; l < LANES; ++l) t[l] = 0.0f;
        for (int j = 0; j < 8; ++j) {
            const float *d = dT + (g * 8 + j) * npos + p0;
            const int n = 1 << j;
            for (int q = 0; q < n; ++q)
                for (int l = 0; l < LANES; ++l) {
                    float a = t[q * LANES + l];
                    t[(q + n) * LANES + l] = a - d[l];
                    t[q * LANES + l] = a + d[l];
                }
        }
    }
    for (int64_t kk = 0; kk < k; ++kk) {
        const uint8_t *w = wpat + kk * ngroups;
        float acc[LANES];
        for (int l = 0; l < LANES; ++l) acc[l] = tab[(int64_t)w[0] * LANES + l];
        for (int64_t g = 1; g < ngroups; ++g) {
            const float *t = tab + (g * 256 + w[g]) * LANES;
            for (int l = 0; l < LANES; ++l) acc[l] += t[l];
        }
        float *dst = out + kk * ostride;
        for (int l = 0; l < LANES; ++l) dst[l] = acc[l];
    }
}

#if defined(__x86_64__)
static T512 void dgrad_block_avx512(const float *dT, int64_t npos, int64_t p0, int64_t ngroups,
                                    const uint8_t *wpat, int64_t k, float *tab, float *out, int64_t ostride) {
    for (int64_t g = 0; g < ngroups; ++g) {
        float *t = tab + g * 256 * LANES;
        _mm512_store_ps(t, _mm512_setzero_ps());
        for (int j = 0; j < 8; ++j) {
            const __m512 d = _mm512_loadu_ps(dT + (g * 8 + j) * npos + p0);
            const int n = 1 << j;
            for (int q = 0; q < n; ++q) {
                __m512 a = _mm512_load_ps(t + q * LANES);
                _mm512_store_ps(t + (q + n) * LANES, _mm512_sub_ps(a, d));
                _mm512_store_ps(t + q * LANES, _mm512_add_ps(a, d));
            }
        }
    }
    int64_t kk = 0;
    for (; kk + 4 <= k; kk += 4) { /* 4 independent chains */
        const uint8_t *w0 = wpat + kk * ngroups, *w1 = w0 + ngroups, *w2 = w1 + ngroups, *w3 = w2 + ngroups;
        __m512 a0 = _mm512_load_ps(tab + (int64_t)w0[0] * LANES), a1 = _mm512_load_ps(tab + (int64_t)w1[0] * LANES);
        __m512 a2 = _mm512_load_ps(tab + (int64_t)w2[0] * LANES), a3 = _mm512_load_ps(tab + (int64_t)w3[0] * LANES);
        for (int64_t g = 1; g < ngroups; ++g) {
            const float *t = tab + g * 256 * LANES;
            a0 = _mm512_add_ps(a0, _mm512_load_ps(t + (int64_t)w0[g] * LANES));
            a1 = _mm512_add_ps(a1, _mm512_load_ps(t + (int64_t)w1[g] * LANES));
            a2 = _mm512_add_ps(a2, _mm512_load_ps(t + (int64_t)w2[g] * LANES));
            a3 = _mm512_add_ps(a3, _mm512_load_ps(t + (int64_t)w3[g] * LANES));
        }
        _mm512_storeu_ps(out + kk * ostride, a0);
        _mm512_storeu_ps(out + (kk + 1) * ostride, a1);
        _mm512_storeu_ps(out + (kk + 2) * ostride, a2);
        _mm512_storeu_ps(out + (kk + 3) * ostride, a3);
    }
    for (; kk < k; ++kk) {
        const uint8_t *w = wpat + kk * ngroups;
        __m512 a = _mm512_load_ps(tab + (int64_t)w[0] * LANES);
        for (int64_t g = 1; g < ngroups; ++g) a = _mm512_add_ps(a, _mm512_load_ps(tab + (g * 256 + w[g]) * LANES));
        _mm512_storeu_ps(out + kk * ostride, a);
    }
}

static T256 void dgrad_block_avx2(const float *dT, int64_t npos, int64_t p0, int64_t ngroups,
                                  const uint8_t *wpat, int64_t k, float *tab, float *out, int64_t ostride) {
    for (int64_t g = 0; g < ngroups; ++g) {
        float *t = tab + g * 256 * LANES;
        _mm256_store_ps(t, _mm256_setzero_ps());
        _mm256_store_ps(t + 8, _mm256_setzero_ps());
        for (int j = 0; j < 8; ++j) {
            const float *dp = dT + (g * 8 + j) * npos + p0;
            const __m256 d0 = _mm256_loadu_ps(dp), d1 = _mm256_loadu_ps(dp + 8);
            const int n = 1 << j;
            for (int q = 0; q < n; ++q) {
                __m256 a0 = _mm256_load_ps(t + q * LANES), a1 = _mm256_load_ps(t + q * LANES + 8);
                _mm256_store_ps(t + (q + n) * LANES, _mm256_sub_ps(a0, d0));
                _mm256_store_ps(t + (q + n) * LANES + 8, _mm256_sub_ps(a1, d1));
                _mm256_store_ps(t + q * LANES, _mm256_add_ps(a0, d0));
                _mm256_store_ps(t + q * LANES + 8, _mm256_add_ps(a1, d1));
            }
        }
    }
    for (int64_t kk = 0; kk < k; kk += 2) {
        const int two = kk + 1 < k;
        const uint8_t *w0 = wpat + kk * ngroups, *w1 = two ? w0 + ngroups : w0;
        __m256 a0 = _mm256_load_ps(tab + (int64_t)w0[0] * LANES), a1 = _mm256_load_ps(tab + (int64_t)w0[0] * LANES + 8);
        __m256 b0 = _mm256_load_ps(tab + (int64_t)w1[0] * LANES), b1 = _mm256_load_ps(tab + (int64_t)w1[0] * LANES + 8);
        for (int64_t g = 1; g < ngroups; ++g) {
            const float *t = tab + g * 256 * LANES;
            a0 = _mm256_add_ps(a0, _mm256_load_ps(t + (int64_t)w0[g] * LANES));
            a1 = _mm256_add_ps(a1, _mm256_load_ps(t + (int64_t)w0[g] * LANES + 8));
            b0 = _mm256_add_ps(b0, _mm256_load_ps(t + (int64_t)w1[g] * LANES));
            b1 = _mm256_add_ps(b1, _mm256_load_ps(t + (int64_t)w1[g] * LANES + 8));
        }
        _mm256_storeu_ps(out + kk * ostride, a0);
        _mm256_storeu_ps(out + kk * ostride + 8, a1);
        if (two) {
            _mm256_storeu_ps(out + (kk + 1) * ostride, b0);
            _mm256_storeu_ps(out + (kk + 1) * ostride + 8, b1);
        }
    }
}
#endif

typedef void (*dgrad_fn)(const float *, int64_t, int64_t, int64_t, const uint8_t *, int64_t, float *, float *,
                         int64_t);

/* dT: [ngroups*8][npos] float32 with npos a multiple of 16 (zero-padded); wpat: [k][ngroups] bytes;
 * out: [k][npos] float32. */
int bnncl_tail_dgrad(const float *dT, int64_t npos, int64_t ngroups, const uint8_t *wpat, int64_t k, float *out,
                     int threads, int path) {
    if (path < 0 || !(bnncl_supported_paths() & (1 << path))) return 1;
    if (npos % LANES) return 3;
    dgrad_fn fn = dgrad_block_scalar;
#if defined(__x86_64__)
    if (path == BNNCL_PATH_AVX512) fn = dgrad_block_avx512;
    if (path == BNNCL_PATH_AVX2) fn = dgrad_block_avx2;
#endif
    if (threads < 1) threads = 1;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *tab = aligned_alloc(64, (size_t)(ngroups * 256 * LANES) * sizeof(float));
        if (!tab) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p0 = 0; p0 < npos; p0 += LANES)
            if (tab) fn(dT, npos, p0, ngroups, wpat, k, tab, out + p0, npos);
        free(tab);
    }
    return failed ? 2 : 0;
}

/* ---------------- input gradient with the col2im fused ---------------- */

/* The sums of each block of 16 positions (buf [9 c][16], lane = position p0 + lane) are transposed into a
 * per-image staging area [9 taps][ho * wo][c] (a ring of a few images); as soon as an image's last
 * position is done, its col2im runs from the staging area, tap after tap from 0 — the same additions in
 * the same order as bnncl_tail_col2im on the full (9 c) x P buffer, which is never built (29 MB at
 * 128 x 7 x 7 x 128); the staging ring stays in L2. */
typedef struct {
    int64_t b, h, w, c, stride, ho, wo, nst;
} dx_geom;

static void stage_scalar(const float *buf, int64_t p0, int64_t plo, int64_t phi, const dx_geom *G, float *stage) {
    const int64_t c = G->c, howo = G->ho * G->wo;
    for (int l = 0; l < LANES; ++l) {
        const int64_t p = p0 + l;
        if (p < plo || p >= phi) continue;
        float *dst = stage + (p / howo % G->nst) * 9 * howo * c + (p % howo) * c;
        for (int64_t tap = 0; tap < 9; ++tap)
            for (int64_t ci = 0; ci < c; ++ci) dst[tap * howo * c + ci] = buf[(tap * c + ci) * LANES + l];
    }
}

#if defined(__x86_64__)
/* 16 x 16 float transpose: r[i] lane j -> r[j] lane i */
static inline T512 void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; ++j) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; ++j) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
        r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
    }
}

/* c % 16 == 0: 16 channels x 16 positions transposed in registers, one 16-channel store per position */
static T512 void stage_avx512(const float *buf, int64_t p0, int64_t plo, int64_t phi, const dx_geom *G, float *stage) {
    const int64_t c = G->c, howo = G->ho * G->wo;
    float *dst[LANES];
    for (int l = 0; l < LANES; ++l) {
        const int64_t p = p0 + l;
        dst[l] = p >= plo && p < phi ? stage + (p / howo % G->nst) * 9 * howo * c + (p % howo) * c : NULL;
    }
    for (int64_t tap = 0; tap < 9; ++tap)
        for (int64_t c0 = 0; c0 < c; c0 += 16) {
            __m512 r[16];
            const float *src = buf + (tap * c + c0) * LANES;
            for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(src + i * LANES);
            transpose16(r);
            for (int l = 0; l < LANES; ++l)
                if (dst[l]) _mm512_storeu_ps(dst[l] + tap * howo * c + c0, r[l]);
        }
}
#endif

/* col2im of one image from its staging area: dx (h, w, c) = sum over taps in (ky, kx) order, from 0 */
static void col2im_image(const float *st, const dx_geom *G, float *dx) {
    const int64_t c = G->c, howo = G->ho * G->wo;
    memset(dx, 0, (size_t)(G->h * G->w * c) * sizeof(float));
    for (int64_t tap = 0; tap < 9; ++tap) {
        const int64_t ky = tap / 3, kx = tap % 3;
        for (int64_t i = 0; i < G->ho; ++i) {
            const int64_t iy = i * G->stride + ky - 1;
            if (iy < 0 || iy >= G->h) continue;
            for (int64_t j = 0; j < G->wo; ++j) {
                const int64_t ix = j * G->stride + kx - 1;
                if (ix < 0 || ix >= G->w) continue;
                float *restrict d = dx + (iy * G->w + ix) * c;
                const float *restrict s = st + (tap * howo + i * G->wo + j) * c;
                for (int64_t ci = 0; ci < c; ++ci) d[ci] += s[ci];
            }
        }
    }
}

/* dT, ngroups, wpat, k = 9 * c as bnncl_tail_dgrad (npos = dT's row length, a multiple of 16, >= b*ho*wo);
 * dx (b, h, w, c) float32 = bnncl_tail_col2im of bnncl_tail_dgrad's output, bit for bit. */
int bnncl_tail_dgrad_col2im(const float *dT, int64_t npos, int64_t ngroups, const uint8_t *wpat, int64_t k,
                            int64_t b, int64_t h, int64_t w, int64_t c, int64_t stride, float *dx, int threads,
                            int path) {
    if (path < 0 || !(bnncl_supported_paths() & (1 << path))) return 1;
    if (npos % LANES || k != 9 * c) return 3;
    dgrad_fn fn = dgrad_block_scalar;
    void (*stage_fn)(const float *, int64_t, int64_t, int64_t, const dx_geom *, float *) = stage_scalar;
#if defined(__x86_64__)
    if (path == BNNCL_PATH_AVX512) {
        fn = dgrad_block_avx512;
        if (c % 16 == 0) stage_fn = stage_avx512;
    }
    if (path == BNNCL_PATH_AVX2) fn = dgrad_block_avx2;
#endif
    const int64_t ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1, howo = ho * wo;
    /* images with a position in one block of 16: at most 16 / howo + 2 (ring size) */
    const dx_geom G = {b, h, w, c, stride, ho, wo, LANES / (howo > 0 ? howo : 1) + 2};
    if (b * howo > npos) return 3;
    if (threads < 1) threads = 1;
    if (threads > b) threads = b > 0 ? (int)b : 1;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        /* this thread's images [n0, n1) */
        const int64_t n0 = b * tid / nt, n1 = b * (tid + 1) / nt, plo = n0 * howo, phi = n1 * howo;
        float *tab = aligned_alloc(64, (size_t)(ngroups * 256 * LANES) * sizeof(float));
        float *buf = aligned_alloc(64, (size_t)(k * LANES) * sizeof(float));
        float *stage = malloc((size_t)(G.nst * 9 * howo * c) * sizeof(float));
        if (!tab || !buf || !stage) {
#pragma omp atomic write
            failed = 1;
        } else {
            int64_t next = n0; /* next image to finish */
            for (int64_t p0 = plo / LANES * LANES; p0 < phi; p0 += LANES) {
                fn(dT, npos, p0, ngroups, wpat, k, tab, buf, LANES);
                stage_fn(buf, p0, plo, phi, &G, stage);
                const int64_t done = p0 + LANES < phi ? p0 + LANES : phi;
                for (; next < n1 && (next + 1) * howo <= done; ++next)
                    col2im_image(stage + next % G.nst * 9 * howo * c, &G, dx + next * h * w * c);
            }
        }
        free(tab);
        free(buf);
        free(stage);
    }
    return failed ? 2 : 0;
}

/* ---------------- patterns (implicit im2col of packed bits) and col2im ---------------- */

/* x: (b, h, w, wb) bytes of packed signs; pat: [9 * wb][b * ho * wo], +1 padding = byte 0. */
void bnncl_tail_patterns(const uint8_t *x, int64_t b, int64_t h, int64_t w, int64_t wb, int64_t stride,
                         uint8_t *pat) {
    const int64_t ho = (h + 2 - 3) / stride + 1, wo = (w + 2 - 3) / stride + 1, npos = b * ho * wo;
    for (int64_t tap = 0; tap < 9; ++tap) {
        const int64_t ky = tap / 3, kx = tap % 3;
        uint8_t *dst = pat + tap * wb * npos;
        for (int64_t n = 0; n < b; ++n)
            for (int64_t i = 0; i < ho; ++i) {
                const int64_t iy = i * stride + ky - 1;
                for (int64_t j = 0; j < wo; ++j) {
                    const int64_t ix = j * stride + kx - 1, p = (n * ho + i) * wo + j;
                    if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
                        for (int64_t q = 0; q < wb; ++q) dst[q * npos + p] = 0;
                    } else {
                        const uint8_t *src = x + ((n * h + iy) * w + ix) * wb;
                        for (int64_t q = 0; q < wb; ++q) dst[q * npos + p] = src[q];
                    }
                }
            }
    }
}

/* cols: [9 * c][npos] (tap-major, as bnncl_tail_dgrad writes them, npos_stride >= b*ho*wo);
 * dx: (b, h, w, c) float32 = sum over taps in order (ky, kx) of the scattered columns, from 0. */
void bnncl_tail_col2im(const float *cols, int64_t npos_stride, int64_t b, int64_t h, int64_t w, int64_t c,
                       int64_t stride, float *dx) {
    const int64_t ho = (h + 2 - 3) / stride + 1, wo = (w + 2 - 3) / stride + 1;
    memset(dx, 0, (size_t)(b * h * w * c) * sizeof(float));
    for (int64_t tap = 0; tap < 9; ++tap) {
        const int64_t ky = tap / 3, kx = tap % 3;
        const float *src = cols + tap * c * npos_stride;
        for (int64_t n = 0; n < b; ++n)
            for (int64_t i = 0; i < ho; ++i) {
                const int64_t iy = i * stride + ky - 1;
                if (iy < 0 || iy >= h) continue;
                for (int64_t j = 0; j < wo; ++j) {
                    const int64_t ix = j * stride + kx - 1, p = (n * ho + i) * wo + j;
                    if (ix < 0 || ix >= w) continue;
                    float *d = dx + ((n * h + iy) * w + ix) * c;
                    for (int64_t ci = 0; ci < c; ++ci) d[ci] += src[ci * npos_stride + p];
                }
            }
    }
}
