/* Element-wise passes of the device tail (forward chain and backward prologue/epilogue), fused.
 *
 * The tail's binary block (bnncl.device.tail) is, per element, a chain of float32 operations around
 * the binary conv and the tail_grad.c kernels.  Each function here is one pass over a block's
 * activations that does what NumPy did in 5-10 passes; the NumPy oracles are in
 * bnncl.device.kernels.tail_elementwise and the float32 operations are the same, in the same order, with no
 * FMA contraction (-ffp-contract=off) and no reassociation, so every path (scalar, avx2, avx512: the
 * same C source compiled for each target) and the oracle agree bit for bit.  Min/max are exact in any
 * order.
 *
 * Layouts: activations channels-last (rows = B*H*W, C) float32; bit maps (signs, masks) packed per
 * row in uint64 words like bitpack.py (bit i of word j = channel 64 j + i, padding bits 0).
 * Quantizer Q (docs/design.md §1.5) with lo = min, s = (2^b - 1) / (max - min) given by the caller:
 * q(x) = rint((x - lo) * s) / s + lo (half to even), the same float32 steps as quantize.py.
 *
 *   bnncl_tail_minmax      min and max of a float array
 *   bnncl_tail_fwd_input   [x <- Q(x) in place], t = x (+ bias), sign bits of t, STE bits |t| <= 1
 *   bnncl_tail_fwd_out     int32 dots -> out = RPReLU(dot * scale * a + c + shortcut), RPReLU bits, min/max
 *   bnncl_tail_gap         features = sum over H*W (in order) of Q(x), / (H*W)
 *   bnncl_tail_bwd_v       v = dz * a with dz = d or d * slope (RPReLU bits), d = Q(dout) (optionally a
 *                          per-image vector broadcast over H*W); min/max
 *   bnncl_tail_bwd_codes   q_b codes of v, tile-major for the weight-gradient kernel, their column sums,
 *                          and the input-gradient operand (code / s + lo) * scale[o], transposed
 *   bnncl_tail_bwd_dx      dx = (dxb + dxs) * ste  or  dxb * ste + dxs, dxs = shortcut adjoint of dz; min/max
 *   bnncl_tail_weight_g    the conv's weight gradient G (float32) from the exact integer sums of tail_grad.c
 *   bnncl_tail_latent_grad the latent weight gradient s G + (sum_k sign(W) G) / K sgn(W), the row sums in
 *                          NumPy's own pairwise order (bit for bit what the NumPy expression gives)
 *   bnncl_softmax_expf     exp of the head's softmax: float32 range reduction and a degree-7 polynomial, the
 *                          same bits on every target (the one copy: libbnncl's bnncl_cwr_expf calls it, the
 *                          Python engine with the portable RNG calls bnncl_softmax_exp_f32 through ctypes)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnncl_core.h"

#define LANES 16

#if defined(__x86_64__)
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define T256 __attribute__((target("avx2,fma")))
#endif
#define INL static inline __attribute__((always_inline))

/* rint under round-to-nearest-even, written so that every target vectorizes it the same way:
 * for 0 <= v < 2^23, (v + 2^23) - 2^23 is v rounded half-to-even; larger values are integers. */

/* c ? a : b with both sides already computed, as integer bit operations: the AVX2 and baseline
 * vectorizers, which have no masked float arithmetic, then keep it branch-free */
INL float sel(int c, float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    const uint32_t m = 0u - (uint32_t)(c != 0), r = (ua & m) | (ub & ~m);
    float f;
    memcpy(&f, &r, 4);
    return f;
}

INL float rint_pos(float v) {
    const float m = 8388608.0f, r = (v + m) - m;
    return sel(v < m, r, v);
}

INL float quant(float x, float lo, float s) { return rint_pos((x - lo) * s) / s + lo; }

static int path_ok(int path) { return path >= 0 && (bnncl_supported_paths() & (1 << path)); }

/* ------------------------------------------------------------------------------------------------ */
/* helpers written so that each target's auto-vectorizer handles them                               */

/* 64 bytes of 0/1 -> a word (bit k = b[k]); n < 64: the rest of b must be 0 */
INL uint64_t pack_bytes(const uint8_t *b) {
    uint64_t w = 0;
    for (int i = 0; i < 8; ++i) {
        uint64_t x;
        memcpy(&x, b + 8 * i, 8);
        w |= ((x * 0x0102040810204080ull) >> 56) << (8 * i);
    }
    return w;
}

/* m[k] = bit k of w ? one : zero, k < 64 */
INL void expand_bits(uint64_t w, float *m, float one, float zero) {
    const uint32_t lo = (uint32_t)w, hi = (uint32_t)(w >> 32);
    for (int k = 0; k < 32; ++k) m[k] = (lo >> k) & 1u ? one : zero;
    for (int k = 0; k < 32; ++k) m[32 + k] = (hi >> k) & 1u ? one : zero;
}

typedef struct {
    float lo[LANES], hi[LANES];
} mm_acc;

INL void mm_init(mm_acc *m) {
    for (int l = 0; l < LANES; ++l) {
        m->lo[l] = INFINITY;
        m->hi[l] = -INFINITY;
    }
}

/* n values; the lanes see values in a fixed pattern, min/max are exact in any order */
INL void mm_add(mm_acc *m, const float *restrict v, int64_t n) {
    float lo[LANES], hi[LANES];
    memcpy(lo, m->lo, sizeof lo);
    memcpy(hi, m->hi, sizeof hi);
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; ++l) {
            const float x = v[i + l];
            lo[l] = x < lo[l] ? x : lo[l];
            hi[l] = x > hi[l] ? x : hi[l];
        }
    for (; i < n; ++i) {
        lo[0] = v[i] < lo[0] ? v[i] : lo[0];
        hi[0] = v[i] > hi[0] ? v[i] : hi[0];
    }
    memcpy(m->lo, lo, sizeof lo);
    memcpy(m->hi, hi, sizeof hi);
}

INL void mm_out(const mm_acc *m, float *mm) {
    float a = m->lo[0], b = m->hi[0];
    for (int l = 1; l < LANES; ++l) {
        a = m->lo[l] < a ? m->lo[l] : a;
        b = m->hi[l] > b ? m->hi[l] : b;
    }
    mm[0] = a;
    mm[1] = b;
}

/* ------------------------------------------------------------------------------------------------ */
/* min / max                                                                                        */

INL void minmax_body(const float *x, int64_t n, float *mm) {
    mm_acc m;
    mm_init(&m);
    mm_add(&m, x, n);
    mm_out(&m, mm);
}

/* ------------------------------------------------------------------------------------------------ */
/* forward: block input                                                                             */

INL void fwd_input_body(float *x, int64_t rows, int64_t c, int quantize, float lo, float s, const float *bias,
                        uint64_t *packed, uint64_t *ste) {
    const int64_t nw = (c + 63) / 64;
    float t[64];
    uint8_t sb[64], mb[64];
    for (int64_t r = 0; r < rows; ++r) {
        float *xr = x + r * c;
        for (int64_t w = 0; w < nw; ++w) {
            const int64_t c0 = 64 * w, n = c - c0 < 64 ? c - c0 : 64;
            float *xw = xr + c0;
            if (quantize)
                for (int64_t i = 0; i < n; ++i) xw[i] = quant(xw[i], lo, s);
            if (bias)
                for (int64_t i = 0; i < n; ++i) t[i] = xw[i] + bias[c0 + i];
            else
                for (int64_t i = 0; i < n; ++i) t[i] = xw[i];
            for (int64_t i = 0; i < n; ++i) sb[i] = t[i] < 0.0f;
            for (int64_t i = 0; i < n; ++i) mb[i] = fabsf(t[i]) <= 1.0f;
            for (int64_t i = n; i < 64; ++i) sb[i] = mb[i] = 0;
            packed[r * nw + w] = pack_bytes(sb);
            if (ste) ste[r * nw + w] = pack_bytes(mb);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* forward: block output                                                                            */

typedef struct {
    const int32_t *dot;     /* (b*ho*wo, o) */
    int64_t b, ho, wo, o;
    const float *xs;        /* real shortcut source (b, h, w, cin), or NULL */
    const uint64_t *xbits;  /* binary shortcut source (b, h, w, ceil(cin/64)) sign bits, or NULL */
    int64_t h, w, cin, stride;
    const float *scale, *a, *c, *shift_in, *slope, *shift_out;
    float *out;             /* (b*ho*wo, o) */
    uint64_t *pos;          /* (b*ho*wo, ceil(o/64)) bits pre > 0 */
} tail_fwd_out_args;

/* the shortcut source row (cin values) at input pixel (n, y, x) into buf (or a pointer into xs) */
INL const float *xs_row(const tail_fwd_out_args *A, int64_t n, int64_t y, int64_t x, float *buf) {
    const int64_t row = (n * A->h + y) * A->w + x;
    if (A->xs) return A->xs + row * A->cin;
    const int64_t nw = (A->cin + 63) / 64;
    float tmp[64];
    for (int64_t w = 0; w < nw; ++w) {
        const int64_t c0 = 64 * w, m = A->cin - c0 < 64 ? A->cin - c0 : 64;
        expand_bits(A->xbits[row * nw + w], tmp, -1.0f, 1.0f);
        for (int64_t k = 0; k < m; ++k) buf[c0 + k] = tmp[k];
    }
    return buf;
}

INL void fwd_out_body(const tail_fwd_out_args *A, float *mm, float *work) {
    /* work: 6 * cin + 2 * o floats */
    const int64_t o = A->o, cin = A->cin, nwo = (o + 63) / 64;
    float *r0 = work, *r1 = work + cin, *r2 = work + 2 * cin, *r3 = work + 3 * cin;
    float *restrict sc = work + 6 * cin, *restrict z = sc + o;
    const float *restrict scale = A->scale, *restrict ba = A->a, *restrict bc = A->c;
    const float *restrict shift_in = A->shift_in, *restrict slope = A->slope, *restrict shift_out = A->shift_out;
    uint8_t b[64];
    mm_acc acc;
    mm_init(&acc);
    for (int64_t n = 0; n < A->b; ++n)
        for (int64_t i = 0; i < A->ho; ++i)
            for (int64_t j = 0; j < A->wo; ++j) {
                const int64_t p = (n * A->ho + i) * A->wo + j;
                /* shortcut: 2x2 average ((x00 + x01) + x10) + x11, times 1/4, or identity; channels tiled */
                if (A->stride == 2) {
                    const float *x00 = xs_row(A, n, 2 * i, 2 * j, r0), *x01 = xs_row(A, n, 2 * i, 2 * j + 1, r1);
                    const float *x10 = xs_row(A, n, 2 * i + 1, 2 * j, r2), *x11 = xs_row(A, n, 2 * i + 1, 2 * j + 1, r3);
                    for (int64_t ci = 0; ci < cin; ++ci) sc[ci] = (((x00[ci] + x01[ci]) + x10[ci]) + x11[ci]) * 0.25f;
                } else {
                    const float *x0 = xs_row(A, n, i, j, r0);
                    memcpy(sc, x0, (size_t)cin * sizeof(float));
                }
                for (int64_t q0 = cin; q0 < o; q0 += cin) memcpy(sc + q0, sc, (size_t)cin * sizeof(float));
                const int32_t *restrict d = A->dot + p * o;
                float *restrict out = A->out + p * o;
                for (int64_t q = 0; q < o; ++q) {
                    const float y = (float)d[q] * scale[q];
                    z[q] = ((y * ba[q] + bc[q]) + sc[q]) - shift_in[q];
                }
                for (int64_t q = 0; q < o; ++q) {
                    const float pre = z[q], alt = pre * slope[q]; /* loads outside the select: AVX2 if-converts */
                    out[q] = sel(pre > 0.0f, pre, alt) + shift_out[q];
                }
                mm_add(&acc, out, o);
                for (int64_t w = 0; w < nwo; ++w) {
                    const int64_t c0 = 64 * w, m = o - c0 < 64 ? o - c0 : 64;
                    for (int64_t k = 0; k < m; ++k) b[k] = z[c0 + k] > 0.0f;
                    for (int64_t k = m; k < 64; ++k) b[k] = 0;
                    A->pos[p * nwo + w] = pack_bytes(b);
                }
            }
    mm_out(&acc, mm);
}

/* ------------------------------------------------------------------------------------------------ */
/* forward: global average pooling of the quantized last block output                               */

INL void gap_body(const float *x, int64_t b, int64_t hw, int64_t c, int quantize, float lo, float s, float *f) {
    const float inv = (float)hw;
    for (int64_t n = 0; n < b; ++n) {
        float *acc = f + n * c;
        const float *xn = x + n * hw * c;
        if (quantize) {
            for (int64_t ci = 0; ci < c; ++ci) acc[ci] = quant(xn[ci], lo, s);
            for (int64_t q = 1; q < hw; ++q)
                for (int64_t ci = 0; ci < c; ++ci) acc[ci] += quant(xn[q * c + ci], lo, s);
        } else {
            for (int64_t ci = 0; ci < c; ++ci) acc[ci] = xn[ci];
            for (int64_t q = 1; q < hw; ++q)
                for (int64_t ci = 0; ci < c; ++ci) acc[ci] += xn[q * c + ci];
        }
        for (int64_t ci = 0; ci < c; ++ci) acc[ci] = acc[ci] / inv;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* backward prologue: v = dz * a                                                                    */

typedef struct {
    const float *dout;     /* (npos, o), or (npos / bcast, o) when bcast > 0 */
    int64_t bcast;         /* 0 or H*W: dout row = p / bcast */
    int quantize;          /* dout values are Q(dout) with (lo, s) */
    float lo, s;
    const uint64_t *pos;   /* (npos, ceil(o/64)) */
    const float *slope;
} tail_dz_src;

/* dz row of position p (o values) into dz; m: work of 64 floats */
INL void dz_row(const tail_dz_src *S, int64_t p, int64_t o, float *restrict dz, float *restrict m) {
    const int64_t nwo = (o + 63) / 64;
    const float *restrict d = S->dout + (S->bcast ? p / S->bcast : p) * o;
    const float *restrict slope = S->slope;
    const float lo = S->lo, s = S->s;
    for (int64_t w = 0; w < nwo; ++w) {
        const int64_t c0 = 64 * w, n = o - c0 < 64 ? o - c0 : 64;
        expand_bits(S->pos[p * nwo + w], m, 1.0f, 0.0f);
        if (S->quantize) {
            for (int64_t k = 0; k < n; ++k) {
                const float v = quant(d[c0 + k], lo, s), alt = v * slope[c0 + k];
                dz[c0 + k] = sel(m[k] != 0.0f, v, alt);
            }
        } else {
            for (int64_t k = 0; k < n; ++k) {
                const float v = d[c0 + k], alt = v * slope[c0 + k];
                dz[c0 + k] = sel(m[k] != 0.0f, v, alt);
            }
        }
    }
}

INL void bwd_v_body(const tail_dz_src *S, int64_t npos, int64_t o, const float *restrict a, float *v, float *mm) {
    float m[64];
    mm_acc acc;
    mm_init(&acc);
    for (int64_t p = 0; p < npos; ++p) {
        float *restrict vp = v + p * o;
        dz_row(S, p, o, vp, m);
        for (int64_t q = 0; q < o; ++q) vp[q] = vp[q] * a[q];
        mm_add(&acc, vp, o);
    }
    mm_out(&acc, mm);
}

/* codes c = rint((v - lo) * s) (0 when constant), as int32 [tile][npos][16] (lanes past o are 0),
 * colsum[q] = sum_p c; when dT: dT[q][p] = (c / s + lo) * scale[q] (or lo * scale[q] when constant),
 * rows >= o and columns >= npos (up to dt_stride) zero. */
INL void bwd_codes_body(const float *v, int64_t npos, int64_t o, int constant, float lo, float s, int32_t *ctile,
                        int64_t *colsum, const float *scale, float *dT, int64_t dt_rows, int64_t dt_stride) {
    const int64_t ntiles = (o + LANES - 1) / LANES;
    if (dT) {
        for (int64_t q = o; q < dt_rows; ++q) memset(dT + q * dt_stride, 0, (size_t)dt_stride * sizeof(float));
        for (int64_t q = 0; q < o; ++q)
            for (int64_t p = npos; p < dt_stride; ++p) dT[q * dt_stride + p] = 0.0f;
    }
    float cf[LANES], db[LANES][LANES];
    for (int64_t t = 0; t < ntiles; ++t) {
        const int64_t o0 = t * LANES, lanes = o - o0 < LANES ? o - o0 : LANES;
        int32_t *dst = ctile + t * npos * LANES;
        int64_t cs[LANES] = {0};
        float sl[LANES], vl[LANES];
        for (int l = 0; l < LANES; ++l) sl[l] = l < lanes ? scale[o0 + l] : 0.0f;
        for (int64_t p0 = 0; p0 < npos; p0 += LANES) {
            const int64_t np = npos - p0 < LANES ? npos - p0 : LANES;
            for (int64_t pp = 0; pp < np; ++pp) {
                const int64_t p = p0 + pp;
                const float *vp = v + p * o + o0;
                for (int l = 0; l < LANES; ++l) vl[l] = l < lanes ? vp[l] : lo;
                if (constant) {
                    for (int l = 0; l < LANES; ++l) cf[l] = 0.0f;
                    for (int l = 0; l < LANES; ++l) db[pp][l] = lo * sl[l];
                } else {
                    for (int l = 0; l < LANES; ++l) cf[l] = rint_pos((vl[l] - lo) * s);
                    for (int l = 0; l < LANES; ++l) db[pp][l] = (cf[l] / s + lo) * sl[l];
                }
                for (int l = 0; l < LANES; ++l) {
                    const int32_t ci = (int32_t)cf[l];
                    dst[p * LANES + l] = ci;
                    cs[l] += ci;
                }
            }
            if (dT) /* transposed write of the (np x lanes) block */
                for (int64_t l = 0; l < lanes; ++l) {
                    float *row = dT + (o0 + l) * dt_stride + p0;
                    for (int64_t pp = 0; pp < np; ++pp) row[pp] = db[pp][l];
                }
        }
        for (int64_t l = 0; l < lanes; ++l) colsum[o0 + l] = cs[l];
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* backward epilogue: input gradient of the block                                                   */

typedef struct {
    const float *dxb;       /* (b, h, w, cin) gradient through the conv (col2im output) */
    tail_dz_src dz;         /* the block's dz, recomputed from dout and the RPReLU bits */
    int64_t b, h, w, cin, o, stride, ho, wo;
    const uint64_t *ste;    /* (b*h*w, ceil(cin/64)) bits |x + b| <= 1 */
    int binary_input;
    float *dx;              /* (b, h, w, cin) */
} tail_dx_args;

INL void bwd_dx_body(const tail_dx_args *A, float *mm, float *work) {
    /* work: o + cin floats */
    const int64_t cin = A->cin, o = A->o, rep = o / cin, nwi = (cin + 63) / 64;
    float *restrict dz = work, *restrict s = work + o, m[64], k64[64];
    mm_acc acc;
    mm_init(&acc);
    int64_t last_p = -1;
    for (int64_t n = 0; n < A->b; ++n)
        for (int64_t y = 0; y < A->h; ++y)
            for (int64_t x = 0; x < A->w; ++x) {
                const int64_t row = (n * A->h + y) * A->w + x;
                const int64_t p = A->stride == 2 ? (n * A->ho + y / 2) * A->wo + x / 2 : (n * A->ho + y) * A->wo + x;
                if (p != last_p) { /* dxs at this output position: copies summed in order, pool: a quarter */
                    dz_row(&A->dz, p, o, dz, k64);
                    for (int64_t ci = 0; ci < cin; ++ci) s[ci] = dz[ci];
                    for (int64_t r = 1; r < rep; ++r)
                        for (int64_t ci = 0; ci < cin; ++ci) s[ci] = s[ci] + dz[r * cin + ci];
                    if (A->stride == 2)
                        for (int64_t ci = 0; ci < cin; ++ci) s[ci] = s[ci] * 0.25f;
                    last_p = p;
                }
                const float *restrict db = A->dxb + row * cin;
                float *restrict out = A->dx + row * cin;
                for (int64_t w = 0; w < nwi; ++w) {
                    const int64_t c0 = 64 * w, nn = cin - c0 < 64 ? cin - c0 : 64;
                    expand_bits(A->ste[row * nwi + w], m, 1.0f, 0.0f);
                    if (A->binary_input)
                        for (int64_t k = 0; k < nn; ++k) out[c0 + k] = (db[c0 + k] + s[c0 + k]) * m[k];
                    else
                        for (int64_t k = 0; k < nn; ++k) out[c0 + k] = db[c0 + k] * m[k] + s[c0 + k];
                }
                mm_add(&acc, out, cin);
            }
    mm_out(&acc, mm);
}

/* ------------------------------------------------------------------------------------------------ */
/* the conv's weight gradient G from the exact integer sums                                          */

typedef struct {
    const int64_t *s_minus; /* (9 * nb, o): sum of codes where the input bit is set */
    const int64_t *ones;    /* (9 * nb): positions with the bit set */
    const int64_t *colsum;  /* (o): sum of codes */
    int64_t npos, cin, nb, o;
    float lo, s;            /* dy = lo + code / s */
    int constant;
    float *g;               /* (o, 9 * cin) */
} tail_g_args;

/* G[k][o] = (float)(lo * (P - 2 ones) + (colsum - 2 s_minus) / s), in double (exact integers below 2^53,
 * one rounding per operation as NumPy's float64 arithmetic) */
INL void weight_g_body(const tail_g_args *A) {
    const int64_t o = A->o, cin = A->cin, nb = A->nb, kk = 9 * cin;
    const double lo = (double)A->lo, s = (double)A->s;
    for (int64_t tap = 0; tap < 9; ++tap)
        for (int64_t ci = 0; ci < cin; ++ci) {
            const int64_t r = tap * nb + ci, k = tap * cin + ci;
            const double base = lo * (double)(A->npos - 2 * A->ones[r]);
            const int64_t *restrict sm = A->s_minus + r * o;
            float *restrict g = A->g + k;
            if (A->constant)
                for (int64_t q = 0; q < o; ++q) g[q * kk] = (float)base;
            else
                for (int64_t q = 0; q < o; ++q) g[q * kk] = (float)(base + (double)(A->colsum[q] - 2 * sm[q]) / s);
        }
}

/* ------------------------------------------------------------------------------------------------ */
/* latent weight gradient: NumPy's float32 sum, replicated                                           */

/* NumPy's pairwise summation of a contiguous float32 row (numpy/_core/src/umath/loops_utils.h.src):
 * blocks of <= 128 summed with 8 strided accumulators, larger rows split in two halves (a multiple of 8
 * first); np.add.reduce starts from the identity 0 (so an all -0.0 row sums to +0.0: add 0.0f to the
 * result, as np_row_sum does).  Also used by libbnncl's CWR* head step (libbnncl/src/cwr.c). */
float bnncl_np_pairwise_f32(const float *a, int64_t n) {
    if (n < 8) {
        float r = -0.0f;
        for (int64_t i = 0; i < n; ++i) r += a[i];
        return r;
    }
    if (n <= 128) {
        float r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        int64_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return bnncl_np_pairwise_f32(a, n2) + bnncl_np_pairwise_f32(a + n2, n - n2);
}

static float np_row_sum(const float *a, int64_t n) {
    /* recursion lives outside the always-inline bodies */
    return 0.0f + bnncl_np_pairwise_f32(a, n);
}

/* dW = s_o G + ((sum_k sign(W) G) / K) sgn(W): sign(W) = -1 where W < 0 else 1, sgn(W) = np.sign (0 at 0) */
INL void latent_grad_body(const float *g, const float *w, const float *wscale, int64_t o, int64_t kk, float *dw,
                          float *prod) {
    for (int64_t q = 0; q < o; ++q) {
        const float *restrict gq = g + q * kk, *restrict wq = w + q * kk;
        float *restrict dq = dw + q * kk;
        for (int64_t j = 0; j < kk; ++j) prod[j] = sel(wq[j] < 0.0f, -gq[j], gq[j]);
        const float f = np_row_sum(prod, kk) / (float)kk, sc = wscale[q];
        for (int64_t j = 0; j < kk; ++j) {
            const float sg = sel(wq[j] > 0.0f, 1.0f, sel(wq[j] < 0.0f, -1.0f, 0.0f));
            dq[j] = sc * gq[j] + f * sg;
        }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* the same bodies compiled for each target                                                         */

#define VARIANTS(name, params, call)                 \
    static void name##_scalar params { call; }       \
    VARIANTS_X86(name, params, call)

#if defined(__x86_64__)
#define VARIANTS_X86(name, params, call)             \
    static T256 void name##_avx2 params { call; }    \
    static T512 void name##_avx512 params { call; }
#define DISPATCH(name, path, args)                                   \
    do {                                                             \
        if ((path) == BNNCL_PATH_AVX512) name##_avx512 args;         \
        else if ((path) == BNNCL_PATH_AVX2) name##_avx2 args;        \
        else name##_scalar args;                                     \
    } while (0)
#else
#define VARIANTS_X86(name, params, call)
#define DISPATCH(name, path, args) name##_scalar args
#endif

VARIANTS(minmax, (const float *x, int64_t n, float *mm), minmax_body(x, n, mm))
VARIANTS(fwd_input,
         (float *x, int64_t rows, int64_t c, int q, float lo, float s, const float *bias, uint64_t *pk, uint64_t *ste),
         fwd_input_body(x, rows, c, q, lo, s, bias, pk, ste))
VARIANTS(fwd_out, (const tail_fwd_out_args *A, float *mm, float *wk), fwd_out_body(A, mm, wk))
VARIANTS(gap, (const float *x, int64_t b, int64_t hw, int64_t c, int q, float lo, float s, float *f),
         gap_body(x, b, hw, c, q, lo, s, f))
VARIANTS(bwd_v, (const tail_dz_src *S, int64_t npos, int64_t o, const float *a, float *v, float *mm),
         bwd_v_body(S, npos, o, a, v, mm))
VARIANTS(bwd_codes,
         (const float *v, int64_t npos, int64_t o, int cst, float lo, float s, int32_t *ct, int64_t *cs,
          const float *scale, float *dT, int64_t dr, int64_t ds),
         bwd_codes_body(v, npos, o, cst, lo, s, ct, cs, scale, dT, dr, ds))
VARIANTS(bwd_dx, (const tail_dx_args *A, float *mm, float *wk), bwd_dx_body(A, mm, wk))
VARIANTS(weight_g, (const tail_g_args *A), weight_g_body(A))
VARIANTS(latent_grad,
         (const float *g, const float *w, const float *ws, int64_t o, int64_t kk, float *dw, float *prod),
         latent_grad_body(g, w, ws, o, kk, dw, prod))

/* ------------------------------------------------------------------------------------------------ */
/* public entry points (ctypes); return 0, or 1 when the path is not supported                      */

int bnncl_tail_minmax(const float *x, int64_t n, float *mm, int path) {
    if (!path_ok(path)) return 1;
    DISPATCH(minmax, path, (x, n, mm));
    return 0;
}

int bnncl_tail_fwd_input(float *x, int64_t rows, int64_t c, int quantize, float lo, float s, const float *bias,
                         uint64_t *packed, uint64_t *ste, int path) {
    if (!path_ok(path)) return 1;
    DISPATCH(fwd_input, path, (x, rows, c, quantize, lo, s, bias, packed, ste));
    return 0;
}

int bnncl_tail_fwd_out(const int32_t *dot, int64_t b, int64_t ho, int64_t wo, int64_t o, const float *xs,
                       const uint64_t *xbits, int64_t h, int64_t w, int64_t cin, int64_t stride, const float *scale,
                       const float *a, const float *c, const float *shift_in, const float *slope,
                       const float *shift_out, float *out, uint64_t *pos, float *mm, int path) {
    if (!path_ok(path)) return 1;
    if (o % cin || (stride != 1 && stride != 2)) return 3;
    if (ho * stride > h || wo * stride > w) return 3; /* the shortcut reads input pixels up to stride * o{y,x} + stride - 1 */
    tail_fwd_out_args A = {dot, b, ho, wo, o, xs, xbits, h, w, cin, stride, scale, a, c, shift_in, slope,
                           shift_out, out, pos};
    float *wk = malloc((size_t)(6 * cin + 2 * o) * sizeof(float));
    if (!wk) return 2;
    DISPATCH(fwd_out, path, (&A, mm, wk));
    free(wk);
    return 0;
}

int bnncl_tail_gap(const float *x, int64_t b, int64_t hw, int64_t c, int quantize, float lo, float s, float *f,
                   int path) {
    if (!path_ok(path)) return 1;
    DISPATCH(gap, path, (x, b, hw, c, quantize, lo, s, f));
    return 0;
}

int bnncl_tail_bwd_v(const float *dout, int64_t bcast, int quantize, float qlo, float qs, const uint64_t *pos,
                     const float *slope, int64_t npos, int64_t o, const float *a, float *v, float *mm, int path) {
    if (!path_ok(path)) return 1;
    tail_dz_src S = {dout, bcast, quantize, qlo, qs, pos, slope};
    DISPATCH(bwd_v, path, (&S, npos, o, a, v, mm));
    return 0;
}

int bnncl_tail_bwd_codes(const float *v, int64_t npos, int64_t o, int constant, float lo, float s, int32_t *ctile,
                         int64_t *colsum, const float *scale, float *dT, int64_t dt_rows, int64_t dt_stride,
                         int path) {
    if (!path_ok(path)) return 1;
    DISPATCH(bwd_codes, path, (v, npos, o, constant, lo, s, ctile, colsum, scale, dT, dt_rows, dt_stride));
    return 0;
}

int bnncl_tail_bwd_dx(const float *dxb, const float *dout, int64_t bcast, int quantize, float qlo, float qs,
                      const uint64_t *pos, const float *slope, int64_t b, int64_t h, int64_t w, int64_t cin, int64_t o,
                      int64_t stride, const uint64_t *ste, int binary_input, float *dx, float *mm, int path) {
    if (!path_ok(path)) return 1;
    if (o % cin || (stride != 1 && stride != 2)) return 3;
    if (stride == 2 && (h % 2 || w % 2)) return 3; /* the shortcut adjoint would write past the input */
    const int64_t ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    tail_dx_args A = {dxb, {dout, bcast, quantize, qlo, qs, pos, slope}, b, h, w, cin, o, stride, ho, wo, ste,
                      binary_input, dx};
    float *wk = malloc((size_t)(o + cin) * sizeof(float));
    if (!wk) return 2;
    DISPATCH(bwd_dx, path, (&A, mm, wk));
    free(wk);
    return 0;
}

int bnncl_tail_weight_g(const int64_t *s_minus, const int64_t *ones, const int64_t *colsum, int64_t npos,
                        int64_t cin, int64_t nb, int64_t o, float lo, float s, int constant, float *g, int path) {
    if (!path_ok(path)) return 1;
    tail_g_args A = {s_minus, ones, colsum, npos, cin, nb, o, lo, s, constant, g};
    DISPATCH(weight_g, path, (&A));
    return 0;
}

int bnncl_tail_latent_grad(const float *g, const float *w, const float *wscale, int64_t o, int64_t kk, float *dw,
                           int path) {
    if (!path_ok(path)) return 1;
    float *prod = malloc((size_t)(kk > 0 ? kk : 1) * sizeof(float));
    if (!prod) return 2;
    DISPATCH(latent_grad, path, (g, w, wscale, o, kk, dw, prod));
    free(prod);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* exp of the softmax: the same bits on every target                                                  */

/* round to nearest even of a float32 of magnitude < 2^22 (1.5 * 2^23 trick; no libm, the same on every target) */
static float round_even_f32(float v) {
    const float m = 12582912.0f;
    volatile float t = v + m; /* volatile: the sum is rounded to float32 here */
    return t - m;
}

/* NumPy's float32 exp is its own SIMD code (up to 3 ULP from glibc's expf, and not the same on every CPU); this
 * one is float32 range reduction x = k ln2 + r (ln2 in two parts: ln2_hi has 16 significant bits, so k ln2_hi is
 * exact for |k| <= 128) and the degree-7 Taylor polynomial of e^r, |rel. error| < 4e-7 on [-87, 0]; below -87
 * it flushes to 0 (2^-125.5: the softmax never needs it), above 88.5 it is inf, NaN stays NaN. */
float bnncl_softmax_expf(float x) {
    if (x != x) return x;
    if (x > 88.5f) return INFINITY;
    if (x < -87.0f) return 0.0f;
    const float k = round_even_f32(x * 1.44269502f);
    const float r = (x - k * 0.693145751953125f) - k * 1.42860677e-6f;
    float p = 1.98412698e-4f; /* 1/5040 */
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t e = (int32_t)k + 127; /* 1 .. 255 on this range */
    uint32_t bits = (uint32_t)e << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* out[i] = bnncl_softmax_expf(x[i]) for n values (out may be x); 3 on bad arguments */
int bnncl_softmax_exp_f32(const float *x, int64_t n, float *out) {
    if (n < 0 || (n && (!x || !out))) return 3;
    for (int64_t i = 0; i < n; ++i) out[i] = bnncl_softmax_expf(x[i]);
    return 0;
}
