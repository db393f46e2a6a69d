/* Dispatch, weight panels, packed im2col and the threaded drivers of the bnncl C core. */
#ifndef BNNCL_NO_PYTHON /* defined by the cross-architecture check (tests/native), which has no Python */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bnncl_core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int bnncl_supported_paths(void) {
    int mask = 1 << BNNCL_PATH_SCALAR;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
        mask |= 1 << BNNCL_PATH_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vpopcntdq"))
        mask |= 1 << BNNCL_PATH_AVX512;
#endif
#if defined(__aarch64__)
    mask |= 1 << BNNCL_PATH_NEON;
#endif
    return mask;
}

bnncl_panel_fn bnncl_panel_for(int path) {
    if (path < 0 || !(bnncl_supported_paths() & (1 << path))) return NULL;
    switch (path) {
    case BNNCL_PATH_SCALAR: return bnncl_panel_scalar;
#if defined(__x86_64__)
    case BNNCL_PATH_AVX2: return bnncl_panel_avx2;
    case BNNCL_PATH_AVX512: return bnncl_panel_avx512;
#endif
#if defined(__aarch64__)
    case BNNCL_PATH_NEON: return bnncl_panel_neon;
#endif
    default: return NULL;
    }
}

/* OR `nbits` bits of the words `src` into the bit stream `dst` starting at bit `off`. */
static void put_bits(uint64_t *dst, int64_t off, const uint64_t *src, int64_t nbits) {
    if ((off & 63) == 0 && (nbits & 63) == 0) {
        memcpy(dst + (off >> 6), src, (size_t)(nbits >> 6) * 8);
        return;
    }
    for (int64_t j = 0; nbits > 0; ++j) {
        int64_t nb = nbits < 64 ? nbits : 64;
        uint64_t v = src[j];
        if (nb < 64) v &= (((uint64_t)1) << nb) - 1;
        int64_t s = off & 63;
        dst[off >> 6] |= v << s;
        if (s && s + nb > 64) dst[(off >> 6) + 1] |= v >> (64 - s);
        off += nb;
        nbits -= nb;
    }
}

/* Rearrange n rows of kk words (row-major) into panels of NB columns: panel[p][w][j]. */
static uint64_t *make_panels(const uint64_t *rows, int64_t n, int64_t kk, int64_t *npanels) {
    int64_t np = (n + BNNCL_NB - 1) / BNNCL_NB;
    uint64_t *p = (uint64_t *)aligned_alloc(64, (size_t)(np * kk * BNNCL_NB * 8 + 64));
    if (!p) return NULL;
    memset(p, 0, (size_t)(np * kk * BNNCL_NB * 8));
    for (int64_t c = 0; c < n; ++c) {
        uint64_t *dst = p + (c / BNNCL_NB) * kk * BNNCL_NB + (c % BNNCL_NB);
        for (int64_t w = 0; w < kk; ++w) dst[w * BNNCL_NB] = rows[c * kk + w];
    }
    *npanels = np;
    return p;
}

int64_t bnncl_block_rows(int64_t m, int threads) {
    int64_t per = (m + threads - 1) / threads;
    int64_t mb = ((per + 11) / 12) * 12;
    if (mb > 96) mb = 96;
    return mb < 12 ? 12 : mb;
}

static int clamp_threads(int threads) {
    if (threads < 1) threads = 1;
#ifndef _OPENMP
    threads = 1;
#endif
    return threads;
}

int bnncl_gemm(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t w, int64_t k,
               int32_t *out, int threads, int path) {
    bnncl_panel_fn fn = bnncl_panel_for(path);
    if (!fn) return 1;
    int64_t np;
    uint64_t *panels = make_panels(b, n, w, &np);
    if (!panels) return 2;
    bnncl_epi e = {BNNCL_OUT_INT32, k, n, NULL, NULL, NULL, NULL, out, n};
    threads = clamp_threads(threads);
    int64_t mb = bnncl_block_rows(m, threads);
    int64_t nblocks = (m + mb - 1) / mb;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        int64_t r0 = blk * mb, rows = m - r0 < mb ? m - r0 : mb;
        for (int64_t p = 0; p < np; ++p)
            fn(a + r0 * w, rows, w, panels + p * w * BNNCL_NB, p * BNNCL_NB, r0, &e);
    }
    free(panels);
    return 0;
}

typedef bnncl_conv_geom conv_geom;

/* Zero-padded copy of the input in 32-bit units (cin % 32 == 0): padded taps become plain
 * reads of zero pixels and each kernel row of a receptive field is one contiguous run. */
static uint32_t *padded_image(const conv_geom *g, int64_t batch) {
    int64_t n = batch * g->hp * g->wp * g->u;
    uint32_t *img = (uint32_t *)calloc((size_t)n + 1, 4);
    if (!img) return NULL;
    const uint32_t *x32 = (const uint32_t *)g->x;
    const int64_t u = g->u, step = 2 * g->wc;
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t y = 0; y < g->h; ++y) {
            uint32_t *dst = img + ((b * g->hp + y + g->pad) * g->wp + g->pad) * u;
            const uint32_t *src = x32 + (b * g->h + y) * g->wd * step;
            if (u == step) { /* whole words: one run per image row */
                memcpy(dst, src, (size_t)(g->wd * u) * 4);
            } else if (u == 1) { /* (a per-pixel loop would become a memcpy call per pixel) */
                for (int64_t xx = 0; xx < g->wd; ++xx) dst[xx] = src[xx * step];
            } else {
                for (int64_t xx = 0; xx < g->wd; ++xx) memcpy(dst + xx * u, src + xx * step, (size_t)u * 4);
            }
        }
    return img;
}

/* Fast im2col from the padded image: KH contiguous runs of KW*u 32-bit units per row. */
void bnncl_im2col_rows32(const conv_geom *g, int64_t r0, int64_t rows, uint64_t *buf) {
    /* the geometry in locals: with -fno-strict-aliasing every store below could otherwise change *g */
    const int64_t kh = g->kh, u = g->u, wo = g->wo, ho = g->ho, hp = g->hp, wp = g->wp, st = g->stride, kk = g->kk;
    const uint32_t *const img = g->img;
    const int64_t run = g->kw * u, len32 = kh * run, line = wp * u;
    int64_t ox = r0 % wo, oy = (r0 / wo) % ho, bi = r0 / (wo * ho); /* then counted, no division */
    for (int64_t r = 0; r < rows; ++r) {
        uint32_t *dst = (uint32_t *)(buf + r * kk);
        const uint32_t *src = img + ((bi * hp + oy * st) * wp + ox * st) * u;
        if (run == 3 && kh == 3) { /* 3x3 taps of 32 channels */
            dst[0] = src[0], dst[1] = src[1], dst[2] = src[2];
            dst[3] = src[line], dst[4] = src[line + 1], dst[5] = src[line + 2];
            dst[6] = src[2 * line], dst[7] = src[2 * line + 1], dst[8] = src[2 * line + 2];
            dst += 9;
        } else {
            for (int64_t ky = 0; ky < kh; ++ky, dst += run, src += line)
                for (int64_t i = 0; i < run; ++i) dst[i] = src[i];
        }
        if (len32 & 1) *dst = 0;
        if (++ox == wo) {
            ox = 0;
            if (++oy == ho) oy = 0, ++bi;
        }
    }
}

/* Packed im2col of output pixels [r0, r0 + rows): each row is the bit stream of the
 * KH*KW*cin input bits of the receptive field; out-of-image taps stay 0 (= +1). */
void bnncl_im2col_rows(const conv_geom *g, int64_t r0, int64_t rows, uint64_t *buf) {
    memset(buf, 0, (size_t)(rows * g->kk * 8));
    for (int64_t r = 0; r < rows; ++r) {
        int64_t pix = r0 + r;
        int64_t ox = pix % g->wo, oy = (pix / g->wo) % g->ho, bi = pix / (g->wo * g->ho);
        uint64_t *dst = buf + r * g->kk;
        for (int64_t ky = 0; ky < g->kh; ++ky) {
            int64_t iy = oy * g->stride - g->pad + ky;
            if (iy < 0 || iy >= g->h) continue;
            for (int64_t kx = 0; kx < g->kw; ++kx) {
                int64_t ix = ox * g->stride - g->pad + kx;
                if (ix < 0 || ix >= g->wd) continue;
                const uint64_t *src = g->x + ((bi * g->h + iy) * g->wd + ix) * g->wc;
                put_bits(dst, (ky * g->kw + kx) * g->cin, src, g->cin);
            }
        }
    }
}

/* Per-channel popcount thresholds for BITS output: bit = dot < thr (flip 0) or dot > thr
 * (flip 1), rewritten on pop = (k - dot) / 2 as ((pop ^ sgn) - sgn) > t. */
static void bits_thresholds(const float *thr, const uint8_t *flip, int64_t o, int64_t k,
                            int32_t *sgn, int32_t *t) {
    const int32_t never = BNNCL_NEVER;
    for (int64_t c = 0; c < o; ++c) {
        double x = ((double)k - (double)thr[c]) / 2.0;
        if (isnan(x)) {
            sgn[c] = 0; t[c] = never;
        } else if (!flip[c]) { /* pop > x */
            sgn[c] = 0;
            t[c] = x < -1.0 ? -1 : (x > (double)k + 1 ? never : (int32_t)floor(x));
        } else { /* pop < x  <=>  -pop > -x */
            double y = -x;
            sgn[c] = -1;
            t[c] = y < -(double)k - 2 ? (int32_t)(-k - 2) : (y > 1.0 ? never : (int32_t)floor(y));
        }
    }
}

/* Weights -> compact bit-stream rows -> panels (done once by bnncl_weights_prepack, or per call). */
static uint64_t *conv_panels(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t cin,
                             int64_t *np) {
    int64_t wc = (cin + 63) / 64, kk = (kh * kw * cin + 63) / 64;
    uint64_t *wrows = (uint64_t *)calloc((size_t)(o * kk), 8);
    if (!wrows) return NULL;
    for (int64_t c = 0; c < o; ++c)
        for (int64_t t = 0; t < kh * kw; ++t)
            put_bits(wrows + c * kk, t * cin, wt + (c * kh * kw + t) * wc, cin);
    uint64_t *panels = make_panels(wrows, o, kk, np);
    free(wrows);
    return panels;
}

/* Weights of the direct kernel (cin % 32 == 0): wd[p][(t * u + j)][c] = unit j of tap t of channel
 * p * NB + c (zero for padding channels), 64-byte aligned. */
uint32_t *bnncl_direct_weights(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t cin) {
    int64_t u = cin / 32, wc = (cin + 63) / 64, nq = kh * kw * u, np = (o + BNNCL_NB - 1) / BNNCL_NB;
    size_t bytes = (size_t)(np * nq * BNNCL_NB * 4);
    uint32_t *wd = (uint32_t *)aligned_alloc(64, ((bytes + 63) / 64) * 64 + 64);
    if (!wd) return NULL;
    memset(wd, 0, bytes);
    for (int64_t c = 0; c < o; ++c)
        for (int64_t t = 0; t < kh * kw; ++t) {
            const uint32_t *src = (const uint32_t *)(wt + (c * kh * kw + t) * wc);
            for (int64_t j = 0; j < u; ++j)
                wd[((c / BNNCL_NB) * nq + t * u + j) * BNNCL_NB + c % BNNCL_NB] = src[j];
        }
    return wd;
}

void bnncl_direct_offsets(int64_t kh, int64_t kw, int64_t wp, int64_t u, int64_t *toff) {
    for (int64_t ky = 0; ky < kh; ++ky)
        for (int64_t kx = 0; kx < kw; ++kx)
            for (int64_t j = 0; j < u; ++j) toff[(ky * kw + kx) * u + j] = (ky * wp + kx) * u + j;
}

/* The AVX-512 direct kernel applies (path, cin, output mode). */
static int use_direct(int path, int64_t cin, int mode) {
#if defined(__x86_64__)
    return path == BNNCL_PATH_AVX512 && cin % 32 == 0 && cin > 0 && mode != BNNCL_OUT_BITS;
#else
    (void)path; (void)cin; (void)mode;
    return 0;
#endif
}

typedef bnncl_prepacked prepacked;

static int conv_run(const uint64_t *x, int64_t batch, int64_t h, int64_t wd, int64_t wc,
                    const uint64_t *panels, const uint32_t *direct, int64_t o, int64_t kh, int64_t kw,
                    int64_t cin, int64_t stride, int64_t pad, int mode, const float *scale, const float *bias,
                    const float *thr, const uint8_t *flip, void *out, int threads, bnncl_panel_fn fn) {
    conv_geom g = {x, h, wd, wc, kh, kw, cin, stride, pad, 0, 0, 0, NULL, h + 2 * pad, wd + 2 * pad, cin / 32};
    g.ho = (h + 2 * pad - kh) / stride + 1;
    g.wo = (wd + 2 * pad - kw) / stride + 1;
    int64_t k = kh * kw * cin;
    g.kk = (k + 63) / 64;
    int64_t m = batch * g.ho * g.wo;
    if (m <= 0 || o <= 0) return 0;

    int64_t np = (o + BNNCL_NB - 1) / BNNCL_NB, padded = np * BNNCL_NB;
    float *sc = (float *)calloc((size_t)padded * 2, sizeof(float));
    int32_t *st = (int32_t *)calloc((size_t)padded * 2, sizeof(int32_t));
    int64_t *toff = NULL;
    uint32_t *img = NULL;
    int rc = 2;
    if (!sc || !st) goto done;
    if (cin % 32 == 0) {
        img = padded_image(&g, batch);
        if (!img) goto done;
        g.img = img;
    }
    bnncl_direct dd = {img, g.hp, g.wp, g.u, stride, g.ho, g.wo, kh * kw * g.u, NULL, direct, NULL};
    if (direct) {
        toff = (int64_t *)malloc((size_t)dd.nq * sizeof(int64_t));
        if (!toff) goto done;
        bnncl_direct_offsets(kh, kw, g.wp, g.u, toff);
        dd.toff = toff;
    }

    bnncl_epi e = {mode, k, o, sc, sc + padded, st, st + padded, out, o};
    if (mode == BNNCL_OUT_FLOAT) {
        memcpy(sc, scale, (size_t)o * sizeof(float));
        memcpy(sc + padded, bias, (size_t)o * sizeof(float));
    } else if (mode == BNNCL_OUT_BITS) {
        for (int64_t c = o; c < padded; ++c) st[padded + c] = BNNCL_NEVER;
        bits_thresholds(thr, flip, o, k, st, st + padded);
        e.out_stride = 2 * ((o + 63) / 64);
    }

    threads = clamp_threads(threads);
    int64_t mb = bnncl_block_rows(m, threads);
    int64_t nblocks = (m + mb - 1) / mb;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        uint64_t *buf = direct ? NULL : (uint64_t *)aligned_alloc(64, (size_t)(((mb * g.kk * 8) / 64 + 1) * 64));
        if (!buf && !direct) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblocks; ++blk) {
            int64_t r0 = blk * mb, rows = m - r0 < mb ? m - r0 : mb;
#if defined(__x86_64__)
            if (direct) {
                bnncl_direct_avx512(&dd, r0, rows, &e);
                continue;
            }
#endif
            if (!buf) continue;
            if (g.img)
                bnncl_im2col_rows32(&g, r0, rows, buf);
            else
                bnncl_im2col_rows(&g, r0, rows, buf);
            for (int64_t p = 0; p < np; ++p)
                fn(buf, rows, g.kk, panels + p * g.kk * BNNCL_NB, p * BNNCL_NB, r0, &e);
        }
        free(buf);
    }
    rc = failed ? 2 : 0;
done:
    free(toff);
    free(img);
    free(sc);
    free(st);
    return rc;
}

int bnncl_conv2d(const uint64_t *x, int64_t batch, int64_t h, int64_t wd, int64_t wc,
                 const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t cin, int64_t stride,
                 int64_t pad, int mode, const float *scale, const float *bias, const float *thr,
                 const uint8_t *flip, void *out, int threads, int path) {
    bnncl_panel_fn fn = bnncl_panel_for(path);
    if (!fn) return 1;
    if (batch * ((h + 2 * pad - kh) / stride + 1) * ((wd + 2 * pad - kw) / stride + 1) <= 0 || o <= 0) return 0;
    int64_t np;
    uint64_t *panels = NULL;
    uint32_t *direct = NULL;
    if (use_direct(path, cin, mode)) {
        direct = bnncl_direct_weights(wt, o, kh, kw, cin);
        if (!direct) return 2;
    } else {
        panels = conv_panels(wt, o, kh, kw, cin, &np);
        if (!panels) return 2;
    }
    int rc = conv_run(x, batch, h, wd, wc, panels, direct, o, kh, kw, cin, stride, pad, mode, scale, bias, thr,
                      flip, out, threads, fn);
    free(panels);
    free(direct);
    return rc;
}

/* Pre-packed weights: the panels of bnncl_conv2d (and the direct kernel's layout when cin % 32 == 0)
 * built once (free with bnncl_weights_free). */
void *bnncl_weights_prepack(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t cin) {
    int64_t np;
    prepacked *pp = (prepacked *)calloc(1, sizeof(prepacked));
    if (!pp) return NULL;
    pp->panels = conv_panels(wt, o, kh, kw, cin, &np);
    if (pp->panels && cin % 32 == 0) pp->direct = bnncl_direct_weights(wt, o, kh, kw, cin);
    if (!pp->panels || (cin % 32 == 0 && !pp->direct)) {
        bnncl_weights_free(pp);
        return NULL;
    }
    return pp;
}

void bnncl_weights_free(void *handle) {
    prepacked *pp = (prepacked *)handle;
    if (!pp) return;
    free(pp->panels);
    free(pp->direct);
    free(pp);
}

/* bnncl_conv2d with weights from bnncl_weights_prepack (same o, kh, kw, cin). */
int bnncl_conv2d_prepacked(const uint64_t *x, int64_t batch, int64_t h, int64_t wd, int64_t wc,
                           const void *handle, int64_t o, int64_t kh, int64_t kw, int64_t cin, int64_t stride,
                           int64_t pad, int mode, const float *scale, const float *bias, const float *thr,
                           const uint8_t *flip, void *out, int threads, int path) {
    bnncl_panel_fn fn = bnncl_panel_for(path);
    if (!fn) return 1;
    const prepacked *pp = (const prepacked *)handle;
    const uint32_t *direct = use_direct(path, cin, mode) ? pp->direct : NULL;
    return conv_run(x, batch, h, wd, wc, pp->panels, direct, o, kh, kw, cin, stride, pad, mode, scale, bias,
                    thr, flip, out, threads, fn);
}

/* Pack signs of a float32 (rows, c) array: bit set where x < 0 (NaN counts as +1). */
void bnncl_pack_signs_f32(const float *x, int64_t rows, int64_t c, uint64_t *out, int threads) {
    int64_t nw = (c + 63) / 64;
    threads = clamp_threads(threads);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float *src = x + r * c;
        for (int64_t j = 0; j < nw; ++j) {
            uint64_t word = 0;
            int64_t n = c - 64 * j < 64 ? c - 64 * j : 64;
            for (int64_t i = 0; i < n; ++i) word |= (uint64_t)(src[64 * j + i] < 0.0f) << i;
            out[r * nw + j] = word;
        }
    }
}

#ifndef BNNCL_NO_PYTHON
/* The kernels are plain C functions loaded with ctypes.  One entry point is also a Python function:
 * conv2d_prepacked, the per-layer call of a prepacked binary conv (PackedBinaryConv), where a batch-1
 * call on a small map is a few microseconds of work and ctypes' argument conversion (17 arguments,
 * two array addresses) cost as much again.  Arguments: handle, x (C-contiguous uint64 buffer), out
 * (writable C-contiguous float32 buffer), then batch, h, w, words, o, kh, kw, cin, stride, pad, the
 * scale and bias addresses, threads, path.  Returns the C return code; the GIL is released while the
 * kernel runs. */
static PyObject *py_conv2d_prepacked(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 17) {
        PyErr_SetString(PyExc_TypeError, "conv2d_prepacked: expected 17 arguments");
        return NULL;
    }
    void *handle = PyLong_AsVoidPtr(args[0]);
    int64_t v[10];
    for (int i = 0; i < 10; ++i) v[i] = PyLong_AsLongLong(args[3 + i]);
    const float *scale = (const float *)PyLong_AsVoidPtr(args[13]), *bias = (const float *)PyLong_AsVoidPtr(args[14]);
    long threads = PyLong_AsLong(args[15]), path = PyLong_AsLong(args[16]);
    if (PyErr_Occurred()) return NULL;
    const int64_t batch = v[0], h = v[1], wd = v[2], wc = v[3], o = v[4], kh = v[5], kw = v[6], cin = v[7],
                  stride = v[8], pad = v[9];
    if (!handle || batch < 0 || h < 1 || wd < 1 || wc < 1 || o < 1 || kh < 1 || kw < 1 || stride < 1 || pad < 0 ||
        h + 2 * pad < kh || wd + 2 * pad < kw) {
        PyErr_SetString(PyExc_ValueError, "conv2d_prepacked: bad geometry");
        return NULL;
    }
    const int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (wd + 2 * pad - kw) / stride + 1;
    Py_buffer xb, ob;
    if (PyObject_GetBuffer(args[1], &xb, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(args[2], &ob, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    int rc = 3;
    if (xb.len >= batch * h * wd * wc * 8 && ob.len >= batch * ho * wo * o * 4) {
        Py_BEGIN_ALLOW_THREADS
        rc = bnncl_conv2d_prepacked((const uint64_t *)xb.buf, batch, h, wd, wc, handle, o, kh, kw, cin, stride, pad,
                                    BNNCL_OUT_FLOAT, scale, bias, NULL, NULL, ob.buf, (int)threads, (int)path);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&ob);
    PyBuffer_Release(&xb);
    return PyLong_FromLong(rc);
}

static PyMethodDef bnncl_core_methods[] = {
    {"conv2d_prepacked", (PyCFunction)(void (*)(void))py_conv2d_prepacked, METH_FASTCALL,
     "Prepacked binary conv with float output (see PackedBinaryConv); returns the C return code."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef bnncl_core_module = {
    PyModuleDef_HEAD_INIT, "_bnncl_core",
    "bnncl C core: plain C kernels, loaded with ctypes (see bnncl.device.kernels.native).", -1,
    bnncl_core_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bnncl_core(void) { return PyModule_Create(&bnncl_core_module); }
#endif
