/* Cross-architecture cases of the tail training kernels (csrc/tail_elementwise.c, csrc/tail_grad.c).
 *
 * Every public bnncl_tail_* entry point on the shapes tests/device/test_tail_elementwise.py and test_tailgrad.py
 * cover (odd channel counts, channel counts that are and are not multiples of 32/64, stride 1 and 2,
 * batch 1 and > 1, quantizer on/off/constant, thread counts), with inputs drawn in the ranges the tail
 * (bnncl.device.tail) produces them.  Each case seeds the stream, draws its inputs once, then runs the
 * entry point once per path (the pathless ones too) on fresh output buffers and emits one hash of all
 * its outputs.  The output buffers are filled with a byte that differs per path and architecture
 * before the call, so a byte the function leaves undefined cannot go unnoticed: it would make the
 * hashes disagree. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "crosscheck.h"

/* ---- the entry points (not declared in bnncl_core.h): tail_elementwise.c ---- */
int bnncl_tail_minmax(const float *x, int64_t n, float *mm, int path);
int bnncl_tail_fwd_input(float *x, int64_t rows, int64_t c, int quantize, float lo, float s, const float *bias,
                         uint64_t *packed, uint64_t *ste, int path);
int bnncl_tail_fwd_out(const int32_t *dot, int64_t b, int64_t ho, int64_t wo, int64_t o, const float *xs,
                       const uint64_t *xbits, int64_t h, int64_t w, int64_t cin, int64_t stride, const float *scale,
                       const float *a, const float *c, const float *shift_in, const float *slope,
                       const float *shift_out, float *out, uint64_t *pos, float *mm, int path);
int bnncl_tail_gap(const float *x, int64_t b, int64_t hw, int64_t c, int quantize, float lo, float s, float *f,
                   int path);
int bnncl_tail_bwd_v(const float *dout, int64_t bcast, int quantize, float qlo, float qs, const uint64_t *pos,
                     const float *slope, int64_t npos, int64_t o, const float *a, float *v, float *mm, int path);
int bnncl_tail_bwd_codes(const float *v, int64_t npos, int64_t o, int constant, float lo, float s, int32_t *ctile,
                         int64_t *colsum, const float *scale, float *dT, int64_t dt_rows, int64_t dt_stride,
                         int path);
int bnncl_tail_bwd_dx(const float *dxb, const float *dout, int64_t bcast, int quantize, float qlo, float qs,
                      const uint64_t *pos, const float *slope, int64_t b, int64_t h, int64_t w, int64_t cin, int64_t o,
                      int64_t stride, const uint64_t *ste, int binary_input, float *dx, float *mm, int path);
int bnncl_tail_weight_g(const int64_t *s_minus, const int64_t *ones, const int64_t *colsum, int64_t npos,
                        int64_t cin, int64_t nb, int64_t o, float lo, float s, int constant, float *g, int path);
int bnncl_tail_latent_grad(const float *g, const float *w, const float *wscale, int64_t o, int64_t kk, float *dw,
                           int path);
/* ---- tail_grad.c ---- */
int bnncl_tail_wgrad_tiled(const uint8_t *pat, int64_t ngroups, int64_t npos, const int32_t *ctile_in, int64_t o,
                           int64_t maxcode, int64_t *out, int64_t *ones, int threads, int path);
int bnncl_tail_wgrad(const uint8_t *pat, int64_t ngroups, int64_t npos, const int32_t *codes, int64_t o,
                     int64_t maxcode, int64_t *out, int64_t *ones, int threads, int path);
int bnncl_tail_dgrad(const float *dT, int64_t npos, int64_t ngroups, const uint8_t *wpat, int64_t k, float *out,
                     int threads, int path);
int bnncl_tail_dgrad_col2im(const float *dT, int64_t npos, int64_t ngroups, const uint8_t *wpat, int64_t k,
                            int64_t b, int64_t h, int64_t w, int64_t c, int64_t stride, float *dx, int threads,
                            int path);
void bnncl_tail_patterns(const uint8_t *x, int64_t b, int64_t h, int64_t w, int64_t wb, int64_t stride,
                         uint8_t *pat);
void bnncl_tail_col2im(const float *cols, int64_t npos_stride, int64_t b, int64_t h, int64_t w, int64_t c,
                       int64_t stride, float *dx);

#define TL 16 /* LANES of the tail kernels: code tiles and dgrad position blocks */

static int n_paths, paths[4];

/* ------------------------------------------------------------------------------------------------ */
/* helpers                                                                                          */

/* a fresh output buffer filled with a byte that differs per path and per architecture */
static void *out_buf(size_t bytes, int path) {
#if defined(__aarch64__)
    const int base = 0xC3;
#else
    const int base = 0x5A;
#endif
    void *p = cc_alloc(bytes ? bytes : 1);
    memset(p, (base ^ (0x11 * (path + 1))) & 0xff, bytes ? bytes : 1);
    return p;
}

typedef struct {
    const void *p;
    size_t n;
} part;

/* one line for all the outputs of a call, concatenated */
static void emit_parts(const char *name, int path, int rc, const part *parts, size_t nparts) {
    size_t tot = 0;
    for (size_t i = 0; i < nparts; ++i) tot += parts[i].p ? parts[i].n : 0;
    unsigned char *buf = cc_alloc(tot ? tot : 1), *d = buf;
    for (size_t i = 0; i < nparts; ++i)
        if (parts[i].p && parts[i].n) {
            memcpy(d, parts[i].p, parts[i].n);
            d += parts[i].n;
        }
    cc_emit(name, path, rc, buf, tot);
}

#define EMIT(name, path, rc, ...) \
    emit_parts(name, path, rc, (const part[]){__VA_ARGS__}, sizeof((const part[]){__VA_ARGS__}) / sizeof(part))

static int64_t up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
static int64_t nwords(int64_t bits) { return (bits + 63) / 64; }
static int64_t out_size(int64_t h, int64_t stride) { return (h - 1) / stride + 1; }

/* QParams.of(min, max, bits) (kernels/tail_elementwise.py, quantize.grid_scale): off for 32 bits, a constant
 * tensor or a range below float32 resolution; s = (1 / (hi - lo)) * (2^b - 1) in float32 */
typedef struct {
    int on;
    float lo, s;
} qpar;

static qpar q_of(float lo, float hi, int bits) {
    qpar q = {0, lo, 0.0f};
    if (bits == 32 || !(hi > lo)) return q;
    const float r = 1.0f / (hi - lo), s = r * (float)((1u << bits) - 1u);
    if (!isfinite(s)) return q;
    q.on = 1;
    q.s = s;
    return q;
}

static void min_max(const float *x, int64_t n, float *lo, float *hi) {
    float a = n ? x[0] : 0.0f, b = a;
    for (int64_t i = 1; i < n; ++i) {
        a = x[i] < a ? x[i] : a;
        b = x[i] > b ? x[i] : b;
    }
    *lo = a;
    *hi = b;
}

static qpar q_data(const float *x, int64_t n, int bits) {
    float lo, hi;
    min_max(x, n, &lo, &hi);
    return q_of(lo, hi, bits);
}

/* n floats in [lo, hi) times mul (a power of two: still exact) */
static float *floats_x(int64_t n, float lo, float hi, float mul) {
    float *f = cc_floats(n, lo, hi);
    for (int64_t i = 0; i < n; ++i) f[i] *= mul;
    return f;
}

/* channels 0, 1, 2 of every row set to 0, 1, -1 (ties and exact edges, as the tests' _x) */
static void plant_edges(float *x, int64_t rows, int64_t c) {
    for (int64_t r = 0; r < rows; ++r) {
        if (c > 0) x[r * c] = 0.0f;
        if (c > 1) x[r * c + 1] = 1.0f;
        if (c > 2) x[r * c + 2] = -1.0f;
    }
}

/* sign bits of x (bit 1 = x < 0), rows of ceil(c / 64) words, padding bits 0 (bitpack.pack_signs) */
static uint64_t *pack_signs(const float *x, int64_t rows, int64_t c) {
    const int64_t nw = nwords(c);
    uint64_t *w = cc_alloc((size_t)(rows * nw) * 8);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t ci = 0; ci < c; ++ci)
            if (x[r * c + ci] < 0.0f) w[r * nw + ci / 64] |= 1ull << (ci % 64);
    return w;
}

static uint8_t *rand_bytes(int64_t n) {
    uint8_t *b = cc_alloc((size_t)n);
    for (int64_t i = 0; i < n; ++i) b[i] = (uint8_t)cc_int(0, 255);
    return b;
}

/* codes (npos, o) int32 in [0, maxcode] -> tile-major [ceil(o / 16)][npos][16], lanes past o zero */
static int32_t *tile_codes(const int32_t *codes, int64_t npos, int64_t o, int32_t *dst) {
    const int64_t ntiles = (o + TL - 1) / TL;
    for (int64_t t = 0; t < ntiles; ++t)
        for (int64_t p = 0; p < npos; ++p)
            for (int64_t l = 0; l < TL; ++l)
                dst[(t * npos + p) * TL + l] = t * TL + l < o ? codes[p * o + t * TL + l] : 0;
    return dst;
}

/* weight_patterns: random sign bits of (o, k) weights -> (k, ceil(o / 8)) bytes, bits of channels >= o zero */
static uint8_t *weight_pats(int64_t o, int64_t k) {
    const int64_t g = (o + 7) / 8;
    uint8_t *w = cc_alloc((size_t)(k * g));
    for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t gi = 0; gi < g; ++gi) {
            const int64_t valid = o - 8 * gi < 8 ? o - 8 * gi : 8;
            w[kk * g + gi] = (uint8_t)(cc_int(0, 255) & ((1 << valid) - 1));
        }
    return w;
}

/* dgrad_operand: (8 ceil(o / 8), npos rounded up to 16) float32, d in the first o rows / npos columns */
static float *dgrad_operand(int64_t npos, int64_t o, int64_t *stride) {
    const int64_t rows = up(o, 8), cols = up(npos, TL);
    float *dt = cc_alloc((size_t)(rows * cols) * 4);
    for (int64_t q = 0; q < o; ++q)
        for (int64_t p = 0; p < npos; ++p) dt[q * cols + p] = cc_float(-3.0f, 3.0f);
    *stride = cols;
    return dt;
}

/* ------------------------------------------------------------------------------------------------ */
/* tail_elementwise.c                                                                                       */

static void case_minmax(uint64_t seed, const char *variant, int64_t n, int zeros) {
    char name[96];
    snprintf(name, sizeof name, "tail_minmax_%s", variant);
    cc_seed(seed);
    float *x = cc_floats(n > 0 ? n : 1, zeros ? 0.0f : -8.0f, 8.0f);
    if (zeros) /* the extremes are zeros of both signs: the first one seen wins, in a fixed lane order */
        for (int64_t i = 0; i < n; i += 3) x[i] = (i / 3) % 2 ? 0.0f : -0.0f;
    for (int i = 0; i < n_paths; ++i) {
        float *mm = out_buf(8, paths[i]);
        const int rc = bnncl_tail_minmax(x, n, mm, paths[i]);
        EMIT(name, paths[i], rc, {mm, 8});
    }
    cc_free_all();
}

/* rows x c activations, Q at `bits` (32: off; 0: the hand-picked grid lo = -2, s = 4 with values on
 * multiples of 1/8, so (x - lo) * s hits exact halves: the half-to-even ties); constant: a constant
 * tensor (Q off, as QParams.of makes it) */
static void case_fwd_input(uint64_t seed, int64_t rows, int64_t c, int bits, int bias, int ste, int constant) {
    char name[96];
    snprintf(name, sizeof name, "tail_fwd_input_r%lldc%lld_%s%d%s%s", (long long)rows, (long long)c,
             constant ? "const" : bits ? "q" : "ties", bits, bias ? "_bias" : "", ste ? "_ste" : "");
    cc_seed(seed);
    const int64_t n = rows * c, nw = nwords(c);
    float *x0;
    qpar q;
    if (constant) {
        x0 = cc_alloc((size_t)n * 4);
        const float v = cc_float(-1.5f, 1.5f);
        for (int64_t i = 0; i < n; ++i) x0[i] = v;
        q = q_data(x0, n, bits);
    } else if (bits == 0) {
        x0 = cc_alloc((size_t)n * 4);
        for (int64_t i = 0; i < n; ++i) x0[i] = (float)cc_int(-16, 15) * 0.125f;
        x0[0] = -2.0f;
        q = (qpar){1, -2.0f, 4.0f};
    } else {
        x0 = floats_x(n, -4.0f, 4.0f, 1.0f);
        plant_edges(x0, rows, c);
        q = q_data(x0, n, bits);
    }
    const float *b = bias ? cc_floats(c, -0.5f, 0.5f) : NULL;
    for (int i = 0; i < n_paths; ++i) {
        const int path = paths[i];
        float *x = cc_alloc((size_t)n * 4);
        memcpy(x, x0, (size_t)n * 4);
        uint64_t *pk = out_buf((size_t)(rows * nw) * 8, path), *st = ste ? out_buf((size_t)(rows * nw) * 8, path) : NULL;
        const int rc = bnncl_tail_fwd_input(x, rows, c, q.on, q.lo, q.s, b, pk, st, path);
        EMIT(name, path, rc, {x, (size_t)n * 4}, {pk, (size_t)(rows * nw) * 8}, {st, (size_t)(rows * nw) * 8});
    }
    cc_free_all();
}

static void case_fwd_out(uint64_t seed, int64_t b, int64_t h, int64_t w, int64_t cin, int64_t o, int64_t stride,
                         int binary) {
    char name[96];
    snprintf(name, sizeof name, "tail_fwd_out_b%lldh%lldw%lldc%lldo%llds%lld_%s", (long long)b, (long long)h,
             (long long)w, (long long)cin, (long long)o, (long long)stride, binary ? "binary" : "real");
    cc_seed(seed);
    const int64_t ho = out_size(h, stride), wo = out_size(w, stride), npos = b * ho * wo, nwo = nwords(o);
    float *x = floats_x(b * h * w * cin, -3.0f, 3.0f, 1.0f);
    plant_edges(x, b * h * w, cin);
    const uint64_t *xbits = pack_signs(x, b * h * w, cin);
    int32_t *dot = cc_alloc((size_t)(npos * o) * 4);
    for (int64_t i = 0; i < npos * o; ++i) dot[i] = (int32_t)cc_int(-9 * cin, 9 * cin);
    const float *scale = floats_x(o, 0.0f, 2.0f, 1.0f / 128.0f), *a = cc_floats(o, -2.0f, 2.0f);
    const float *c = cc_floats(o, -2.0f, 2.0f), *shift_in = cc_floats(o, -1.0f, 1.0f);
    const float *slope = cc_floats(o, -0.5f, 0.5f), *shift_out = cc_floats(o, -1.0f, 1.0f);
    for (int i = 0; i < n_paths; ++i) {
        const int path = paths[i];
        float *out = out_buf((size_t)(npos * o) * 4, path), *mm = out_buf(8, path);
        uint64_t *pos = out_buf((size_t)(npos * nwo) * 8, path);
        const int rc = bnncl_tail_fwd_out(dot, b, ho, wo, o, binary ? NULL : x, binary ? xbits : NULL, h, w, cin,
                                          stride, scale, a, c, shift_in, slope, shift_out, out, pos, mm, path);
        EMIT(name, path, rc, {out, (size_t)(npos * o) * 4}, {pos, (size_t)(npos * nwo) * 8}, {mm, 8});
    }
    cc_free_all();
}

static void case_gap(uint64_t seed, int64_t b, int64_t hw, int64_t c, int bits, int constant) {
    char name[96];
    snprintf(name, sizeof name, "tail_gap_b%lldhw%lldc%lld_%s%d", (long long)b, (long long)hw, (long long)c,
             constant ? "const" : "q", bits);
    cc_seed(seed);
    const int64_t n = b * hw * c;
    float *x = floats_x(n, -4.0f, 4.0f, 1.0f);
    if (constant)
        for (int64_t i = 1; i < n; ++i) x[i] = x[0];
    else
        plant_edges(x, b * hw, c);
    const qpar q = q_data(x, n, bits);
    for (int i = 0; i < n_paths; ++i) {
        float *f = out_buf((size_t)(b * c) * 4, paths[i]);
        const int rc = bnncl_tail_gap(x, b, hw, c, q.on, q.lo, q.s, f, paths[i]);
        EMIT(name, paths[i], rc, {f, (size_t)(b * c) * 4});
    }
    cc_free_all();
}

/* dout (npos, o), or (npos / bcast, o) broadcast over bcast positions, Q_b at `bits` */
static void case_bwd_v(uint64_t seed, int64_t npos, int64_t o, int64_t bcast, int bits, int constant) {
    char name[96];
    snprintf(name, sizeof name, "tail_bwd_v_p%lldo%lld_bc%lld_%s%d", (long long)npos, (long long)o,
             (long long)bcast, constant ? "const" : "q", bits);
    cc_seed(seed);
    const int64_t nd = (bcast ? npos / bcast : npos) * o;
    float *dout = floats_x(nd, -1.0f, 1.0f, 1.0f / 256.0f);
    if (constant)
        for (int64_t i = 1; i < nd; ++i) dout[i] = dout[0];
    const qpar q = q_data(dout, nd, bits);
    const uint64_t *pos = cc_packed(npos, o);
    const float *slope = cc_floats(o, -0.5f, 0.5f), *a = cc_floats(o, -2.0f, 2.0f);
    for (int i = 0; i < n_paths; ++i) {
        const int path = paths[i];
        float *v = out_buf((size_t)(npos * o) * 4, path), *mm = out_buf(8, path);
        const int rc = bnncl_tail_bwd_v(dout, bcast, q.on, q.lo, q.s, pos, slope, npos, o, a, v, mm, path);
        EMIT(name, path, rc, {v, (size_t)(npos * o) * 4}, {mm, 8});
    }
    cc_free_all();
}

/* v (npos, o) -> codes at `bits`; constant: v all one value (every code 0, dT = lo * scale) */
static void case_bwd_codes(uint64_t seed, int64_t npos, int64_t o, int bits, int constant, int want_dt) {
    char name[96];
    snprintf(name, sizeof name, "tail_bwd_codes_p%lldo%lld_%s%d%s", (long long)npos, (long long)o,
             constant ? "const" : "q", bits, want_dt ? "_dt" : "");
    cc_seed(seed);
    const int64_t n = npos * o, ntiles = (o + TL - 1) / TL, dt_rows = up(o, 8), dt_cols = up(npos, TL);
    float *v = floats_x(n, -1.0f, 1.0f, 1.0f / 1024.0f);
    float *scale = floats_x(o, 0.0f, 2.0f, 1.0f);
    if (constant) {
        for (int64_t i = 0; i < n; ++i) v[i] = 0.25f;
        for (int64_t q = 0; q < o; ++q) scale[q] = (float)(q + 1);
    }
    float lo, hi;
    min_max(v, n, &lo, &hi);
    const qpar q = q_of(lo, hi, bits); /* bwd_codes: constant = grid_scale is None, s = 0 then */
    const size_t ct_bytes = (size_t)(ntiles * npos * TL) * 4, dt_bytes = (size_t)(dt_rows * dt_cols) * 4;
    for (int i = 0; i < n_paths; ++i) {
        const int path = paths[i];
        int32_t *ct = out_buf(ct_bytes, path);
        int64_t *cs = out_buf((size_t)o * 8, path);
        float *dt = want_dt ? out_buf(dt_bytes, path) : NULL;
        const int rc = bnncl_tail_bwd_codes(v, npos, o, !q.on, lo, q.s, ct, cs, scale, dt, dt_rows, dt_cols, path);
        EMIT(name, path, rc, {ct, ct_bytes}, {cs, (size_t)o * 8}, {dt, dt_bytes});
    }
    cc_free_all();
}

/* bcast: dout one row per image (the last block's gradient from the pooled features) */
static void case_bwd_dx(uint64_t seed, int64_t b, int64_t h, int64_t w, int64_t cin, int64_t o, int64_t stride,
                        int binary, int bits, int bcast) {
    char name[112];
    snprintf(name, sizeof name, "tail_bwd_dx_b%lldh%lldw%lldc%lldo%llds%lld_%s_q%d%s", (long long)b, (long long)h,
             (long long)w, (long long)cin, (long long)o, (long long)stride, binary ? "binary" : "real", bits,
             bcast ? "_bcast" : "");
    cc_seed(seed);
    const int64_t ho = out_size(h, stride), wo = out_size(w, stride), npos = b * ho * wo, nx = b * h * w * cin;
    const int64_t bc = bcast ? ho * wo : 0, nd = (bcast ? b : npos) * o;
    const float *dout = floats_x(nd, -1.0f, 1.0f, 1.0f / 128.0f);
    const qpar q = q_data(dout, nd, bits);
    const uint64_t *pos = cc_packed(npos, o), *ste = cc_packed(b * h * w, cin);
    const float *slope = cc_floats(o, -0.5f, 0.5f), *dxb = floats_x(nx, -1.0f, 1.0f, 1.0f / 128.0f);
    for (int i = 0; i < n_paths; ++i) {
        const int path = paths[i];
        float *dx = out_buf((size_t)nx * 4, path), *mm = out_buf(8, path);
        const int rc = bnncl_tail_bwd_dx(dxb, dout, bc, q.on, q.lo, q.s, pos, slope, b, h, w, cin, o, stride, ste,
                                         binary, dx, mm, path);
        EMIT(name, path, rc, {dx, (size_t)nx * 4}, {mm, 8});
    }
    cc_free_all();
}

/* the integer sums of the weight-gradient kernel for npos positions, codes below 2^bits */
static void case_weight_g(uint64_t seed, int64_t npos, int64_t cin, int64_t o, int bits, int constant) {
    char name[96];
    snprintf(name, sizeof name, "tail_weight_g_p%lldc%lldo%lld_%s%d", (long long)npos, (long long)cin, (long long)o,
             constant ? "const" : "q", bits);
    cc_seed(seed);
    const int64_t nb = 64 * nwords(cin), kk = 9 * cin, maxcode = ((int64_t)1 << bits) - 1;
    int64_t *colsum = cc_alloc((size_t)o * 8), *ones = cc_alloc((size_t)(9 * nb) * 8);
    int64_t *s_minus = cc_alloc((size_t)(9 * nb * o) * 8);
    for (int64_t q = 0; q < o; ++q) colsum[q] = constant ? 0 : cc_int(0, npos * maxcode);
    for (int64_t r = 0; r < 9 * nb; ++r) {
        ones[r] = cc_int(0, npos);
        for (int64_t q = 0; q < o; ++q) s_minus[r * o + q] = constant ? 0 : cc_int(0, colsum[q]);
    }
    const float lo = -12.0f / 4096.0f, hi = constant ? lo : 20.0f / 4096.0f;
    const qpar qp = q_of(lo, hi, bits);
    for (int i = 0; i < n_paths; ++i) {
        float *g = out_buf((size_t)(o * kk) * 4, paths[i]);
        const int rc = bnncl_tail_weight_g(s_minus, ones, colsum, npos, cin, nb, o, lo, qp.s, !qp.on, g, paths[i]);
        EMIT(name, paths[i], rc, {g, (size_t)(o * kk) * 4});
    }
    cc_free_all();
}

static void case_latent_grad(uint64_t seed, int64_t o, int64_t k) {
    char name[96];
    snprintf(name, sizeof name, "tail_latent_grad_o%lldk%lld", (long long)o, (long long)k);
    cc_seed(seed);
    float *g = floats_x(o * k, -1.0f, 1.0f, 1.0f / 1024.0f), *w = cc_floats(o * k, -2.0f, 2.0f);
    float *ws = cc_alloc((size_t)o * 4);
    /* zeros and signed zeros in W and G (sign(W) = 1 at 0 in the sum, sgn(0) = 0) */
    for (int64_t j = 0; j < k / 2; ++j) w[j] = 0.0f;
    for (int64_t j = 0; j < 3 && j < k && o > 1; ++j) w[k + j] = -0.0f;
    for (int64_t j = 0; j < k && o > 2; ++j) g[2 * k + j] = -0.0f;
    for (int64_t j = 0; j < k && o > 3; j += 2) g[3 * k + j] = 0.0f;
    for (int64_t q = 0; q < o; ++q) { /* mean |W| */
        float s = 0.0f;
        for (int64_t j = 0; j < k; ++j) s += fabsf(w[q * k + j]);
        ws[q] = s / (float)k;
    }
    for (int i = 0; i < n_paths; ++i) {
        float *dw = out_buf((size_t)(o * k) * 4, paths[i]);
        const int rc = bnncl_tail_latent_grad(g, w, ws, o, k, dw, paths[i]);
        EMIT(name, paths[i], rc, {dw, (size_t)(o * k) * 4});
    }
    cc_free_all();
}

/* ------------------------------------------------------------------------------------------------ */
/* tail_grad.c                                                                                      */

static void case_patterns(uint64_t seed, int64_t b, int64_t h, int64_t w, int64_t cin, int64_t stride) {
    char name[96];
    snprintf(name, sizeof name, "tail_patterns_b%lldh%lldw%lldc%llds%lld", (long long)b, (long long)h, (long long)w,
             (long long)cin, (long long)stride);
    cc_seed(seed);
    const int64_t wb = 8 * nwords(cin), npos = b * out_size(h, stride) * out_size(w, stride);
    const uint8_t *x = (const uint8_t *)cc_packed(b * h * w, cin);
    const size_t bytes = (size_t)(9 * wb * npos);
    for (int i = 0; i < n_paths; ++i) { /* no path argument: the same call on every path */
        uint8_t *pat = out_buf(bytes, paths[i]);
        bnncl_tail_patterns(x, b, h, w, wb, stride, pat);
        EMIT(name, paths[i], 0, {pat, bytes});
    }
    cc_free_all();
}

/* the patterns of packed +-1 maps (b, h, w, cin) at `stride`: [9 * wb][npos] bytes; *ngroups = 9 wb */
static uint8_t *map_patterns(int64_t b, int64_t h, int64_t w, int64_t cin, int64_t stride, int64_t *ngroups,
                             int64_t *npos) {
    const int64_t wb = 8 * nwords(cin);
    *npos = b * out_size(h, stride) * out_size(w, stride);
    *ngroups = 9 * wb;
    const uint8_t *x = (const uint8_t *)cc_packed(b * h * w, cin);
    uint8_t *pat = cc_alloc((size_t)(*ngroups * *npos));
    bnncl_tail_patterns(x, b, h, w, wb, stride, pat);
    return pat;
}

static int32_t *rand_codes(int64_t npos, int64_t o, int64_t maxcode) {
    int32_t *c = cc_alloc((size_t)(npos * o) * 4);
    for (int64_t i = 0; i < npos * o; ++i) c[i] = (int32_t)cc_int(0, maxcode);
    return c;
}

/* tiled: through bnncl_tail_wgrad_tiled (codes tile-major, `misalign` int32s past a 64-byte boundary:
 * the kernel copies them to an aligned buffer), else bnncl_tail_wgrad */
static void run_wgrad(const char *name, const uint8_t *pat, int64_t ngroups, int64_t npos, const int32_t *codes,
                      int64_t o, int64_t maxcode, int threads, int tiled, int misalign) {
    const int64_t ntiles = (o + TL - 1) / TL;
    const int32_t *ct = NULL;
    if (tiled) {
        int32_t *buf = cc_alloc((size_t)(ntiles * npos * TL + misalign) * 4);
        ct = tile_codes(codes, npos, o, buf + misalign);
    }
    const size_t sb = (size_t)(8 * ngroups * o) * 8, ob = (size_t)(8 * ngroups) * 8;
    for (int i = 0; i < n_paths; ++i) {
        const int path = paths[i];
        int64_t *s = out_buf(sb, path), *ones = out_buf(ob, path);
        const int rc = tiled ? bnncl_tail_wgrad_tiled(pat, ngroups, npos, ct, o, maxcode, s, ones, threads, path)
                             : bnncl_tail_wgrad(pat, ngroups, npos, codes, o, maxcode, s, ones, threads, path);
        EMIT(name, path, rc, {s, sb}, {ones, ob});
    }
}

/* patterns of random maps (the test_wgrad_exact shapes); codes below 2^bits, channel 3 at the maximum */
static void case_wgrad_maps(uint64_t seed, int64_t b, int64_t h, int64_t w, int64_t cin, int64_t stride, int bits,
                            int64_t o, int tiled, int threads) {
    char name[112];
    snprintf(name, sizeof name, "tail_wgrad%s_b%lldh%lldw%lldc%llds%lld_o%lld_q%d_t%d", tiled ? "_tiled" : "",
             (long long)b, (long long)h, (long long)w, (long long)cin, (long long)stride, (long long)o, bits, threads);
    cc_seed(seed);
    int64_t ngroups, npos;
    const uint8_t *pat = map_patterns(b, h, w, cin, stride, &ngroups, &npos);
    const int64_t maxcode = ((int64_t)1 << bits) - 1;
    int32_t *codes = rand_codes(npos, o, maxcode);
    for (int64_t p = 0; p < npos && o > 3; ++p) codes[p * o + 3] = (int32_t)maxcode;
    run_wgrad(name, pat, ngroups, npos, codes, o, maxcode, threads, tiled, 0);
    cc_free_all();
}

/* all codes at the 24-bit maximum: the int32 tables are flushed every 128 positions */
static void case_wgrad_chunks(uint64_t seed, int tiled) {
    char name[96];
    snprintf(name, sizeof name, "tail_wgrad%s_chunks_b4h9w9c16_o16_q24", tiled ? "_tiled" : "");
    cc_seed(seed);
    int64_t ngroups, npos;
    const uint8_t *pat = map_patterns(4, 9, 9, 16, 1, &ngroups, &npos);
    const int64_t maxcode = (1 << 24) - 1;
    int32_t *codes = rand_codes(npos, 16, 0);
    for (int64_t i = 0; i < npos * 16; ++i) codes[i] = (int32_t)maxcode;
    run_wgrad(name, pat, ngroups, npos, codes, 16, maxcode, 1, tiled, 0);
    cc_free_all();
}

/* random patterns of `groups` groups (not a multiple of the kernel's 4), with a run of pattern 0 (the
 * dummy rows) and one of 255 */
static void case_wgrad_groups(uint64_t seed, int64_t groups, int64_t npos, int64_t o, int bits, int tiled,
                              int threads, int misalign) {
    char name[112];
    snprintf(name, sizeof name, "tail_wgrad%s_g%lldp%lldo%lld_q%d_t%d%s", tiled ? "_tiled" : "", (long long)groups,
             (long long)npos, (long long)o, bits, threads, misalign ? "_unaligned" : "");
    cc_seed(seed);
    uint8_t *pat = rand_bytes(groups * npos);
    for (int64_t g = 0; g < groups; ++g)
        for (int64_t p = 0; p < npos; ++p) {
            if (p >= npos / 15 && p < npos * 3 / 10) pat[g * npos + p] = 0;
            if (p >= npos / 2 && p < npos * 2 / 3) pat[g * npos + p] = 255;
        }
    const int64_t maxcode = ((int64_t)1 << bits) - 1;
    const int32_t *codes = rand_codes(npos, o, maxcode);
    run_wgrad(name, pat, groups, npos, codes, o, maxcode, threads, tiled, misalign);
    cc_free_all();
}

/* the input-gradient operand of (b, h, w, c) at stride, o output channels: dT, weight patterns */
typedef struct {
    float *dt;
    uint8_t *wpat;
    int64_t npos, nstride, ngroups, k;
} dgrad_in;

static dgrad_in dgrad_inputs(int64_t b, int64_t h, int64_t w, int64_t c, int64_t o, int64_t stride) {
    dgrad_in d;
    d.npos = b * out_size(h, stride) * out_size(w, stride);
    d.dt = dgrad_operand(d.npos, o, &d.nstride);
    d.k = 9 * c;
    d.ngroups = (o + 7) / 8;
    d.wpat = weight_pats(o, d.k);
    return d;
}

static void case_dgrad(uint64_t seed, int64_t b, int64_t h, int64_t w, int64_t c, int64_t stride, int64_t o,
                       int threads) {
    char name[96];
    snprintf(name, sizeof name, "tail_dgrad_b%lldh%lldw%lldc%llds%lld_o%lld_t%d", (long long)b, (long long)h,
             (long long)w, (long long)c, (long long)stride, (long long)o, threads);
    cc_seed(seed);
    const dgrad_in d = dgrad_inputs(b, h, w, c, o, stride);
    const size_t bytes = (size_t)(d.k * d.nstride) * 4;
    for (int i = 0; i < n_paths; ++i) {
        float *out = out_buf(bytes, paths[i]);
        const int rc = bnncl_tail_dgrad(d.dt, d.nstride, d.ngroups, d.wpat, d.k, out, threads, paths[i]);
        EMIT(name, paths[i], rc, {out, bytes});
    }
    cc_free_all();
}

/* npos not a multiple of 16: every path refuses it (rc 3) */
static void case_dgrad_bad(uint64_t seed) {
    cc_seed(seed);
    const float *dt = cc_floats(8 * 20, -1.0f, 1.0f);
    const uint8_t *wpat = rand_bytes(9);
    for (int i = 0; i < n_paths; ++i) {
        float *out = out_buf((size_t)(9 * 20) * 4, paths[i]);
        const int rc = bnncl_tail_dgrad(dt, 20, 1, wpat, 9, out, 1, paths[i]);
        EMIT("tail_dgrad_npos20_rejected", paths[i], rc, {out, (size_t)(9 * 20) * 4});
    }
    cc_free_all();
}

static void case_dgrad_col2im(uint64_t seed, int64_t b, int64_t h, int64_t w, int64_t c, int64_t stride, int64_t o,
                              int threads) {
    char name[96];
    snprintf(name, sizeof name, "tail_dgrad_col2im_b%lldh%lldw%lldc%llds%lld_o%lld_t%d", (long long)b, (long long)h,
             (long long)w, (long long)c, (long long)stride, (long long)o, threads);
    cc_seed(seed);
    const dgrad_in d = dgrad_inputs(b, h, w, c, o, stride);
    const size_t bytes = (size_t)(b * h * w * c) * 4;
    for (int i = 0; i < n_paths; ++i) {
        float *dx = out_buf(bytes, paths[i]);
        const int rc = bnncl_tail_dgrad_col2im(d.dt, d.nstride, d.ngroups, d.wpat, d.k, b, h, w, c, stride, dx,
                                               threads, paths[i]);
        EMIT(name, paths[i], rc, {dx, bytes});
    }
    cc_free_all();
}

/* cols (9 c, npos rounded up to 16); the padding columns hold values too (they must not be read) */
static void case_col2im(uint64_t seed, int64_t b, int64_t h, int64_t w, int64_t c, int64_t stride) {
    char name[96];
    snprintf(name, sizeof name, "tail_col2im_b%lldh%lldw%lldc%llds%lld", (long long)b, (long long)h, (long long)w,
             (long long)c, (long long)stride);
    cc_seed(seed);
    const int64_t npos = b * out_size(h, stride) * out_size(w, stride), ns = up(npos, TL);
    const float *cols = cc_floats(9 * c * ns, -3.0f, 3.0f);
    const size_t bytes = (size_t)(b * h * w * c) * 4;
    for (int i = 0; i < n_paths; ++i) { /* no path argument: the same call on every path */
        float *dx = out_buf(bytes, paths[i]);
        bnncl_tail_col2im(cols, ns, b, h, w, c, stride, dx);
        EMIT(name, paths[i], 0, {dx, bytes});
    }
    cc_free_all();
}

/* ------------------------------------------------------------------------------------------------ */

/* the shapes of test_tail_elementwise.py (b, h, w, cin, o, stride) and a few more: batch 1, odd cin, o = 3 cin */
static const int64_t FWD_SHAPES[][6] = {
    {2, 5, 5, 8, 8, 1},  {3, 6, 6, 70, 140, 2}, {2, 4, 3, 128, 128, 1}, {2, 4, 4, 64, 128, 2},
    {1, 3, 3, 3, 9, 1},  {1, 4, 2, 33, 33, 2},  {2, 2, 2, 32, 96, 2},
};
/* test_tailgrad.py's (b, h, w, c, stride) and the fused-dgrad extras (small images, several per block
 * of 16 positions), an odd channel count and an odd size at stride 2 */
static const int64_t GRAD_SHAPES[][5] = {
    {2, 5, 5, 8, 1},  {3, 6, 6, 70, 2}, {2, 4, 3, 128, 1}, {3, 4, 4, 32, 2}, {5, 7, 7, 16, 1},
    {9, 2, 2, 16, 2}, {4, 3, 3, 48, 1}, {1, 5, 5, 3, 2},   {1, 1, 1, 5, 1},
};
#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

void cc_tail_cases(void) {
    n_paths = cc_paths(paths);
    uint64_t seed = 0x7a11000000ull;

    /* minmax: ragged tails of the 16 lanes, empty, signed zeros */
    case_minmax(seed + 0x101, "n1001", 1001, 0);
    case_minmax(seed + 0x102, "n16", 16, 0);
    case_minmax(seed + 0x103, "n5", 5, 0);
    case_minmax(seed + 0x104, "n0", 0, 0);
    case_minmax(seed + 0x105, "n77_signed_zeros", 77, 1);

    /* fwd_input: Q at 8/16/24 bits (24: codes past 2^23, the other branch of rint_pos), off (32),
     * exact ties, constant tensors; with and without bias and STE bits */
    case_fwd_input(seed + 0x201, 50, 8, 8, 1, 1, 0);
    case_fwd_input(seed + 0x202, 36, 70, 8, 1, 1, 0);
    case_fwd_input(seed + 0x203, 24, 128, 16, 1, 1, 0);
    case_fwd_input(seed + 0x204, 32, 64, 32, 1, 1, 0);
    case_fwd_input(seed + 0x205, 9, 3, 8, 0, 0, 0);
    case_fwd_input(seed + 0x206, 20, 200, 24, 1, 1, 0);
    case_fwd_input(seed + 0x207, 16, 33, 0, 1, 1, 0);
    case_fwd_input(seed + 0x208, 12, 70, 8, 1, 1, 1);
    case_fwd_input(seed + 0x209, 12, 96, 16, 0, 1, 1);
    case_fwd_input(seed + 0x20a, 18, 40, 16, 0, 0, 0);

    /* fwd_out: real and binary shortcut sources */
    for (int i = 0; i < COUNT(FWD_SHAPES); ++i)
        for (int bin = 0; bin < 2; ++bin) {
            const int64_t *s = FWD_SHAPES[i];
            case_fwd_out(seed + 0x300 + 2 * (uint64_t)i + (uint64_t)bin, s[0], s[1], s[2], s[3], s[4], s[5], bin);
        }

    /* gap */
    case_gap(seed + 0x401, 5, 49, 70, 8, 0);
    case_gap(seed + 0x402, 5, 49, 70, 32, 0);
    case_gap(seed + 0x403, 1, 16, 128, 16, 0);
    case_gap(seed + 0x404, 2, 1, 3, 8, 0);
    case_gap(seed + 0x405, 3, 9, 64, 24, 0);
    case_gap(seed + 0x406, 2, 4, 33, 8, 1);

    /* bwd_v: Q_b at 16 bits or off, dense or per-image dout */
    case_bwd_v(seed + 0x501, 36, 140, 0, 16, 0);
    case_bwd_v(seed + 0x502, 36, 140, 12, 16, 0);
    case_bwd_v(seed + 0x503, 36, 140, 0, 32, 0);
    case_bwd_v(seed + 0x504, 36, 140, 12, 32, 0);
    case_bwd_v(seed + 0x505, 8, 7, 0, 8, 0);
    case_bwd_v(seed + 0x506, 49, 64, 49, 16, 0);
    case_bwd_v(seed + 0x507, 20, 33, 0, 16, 1);

    /* bwd_codes: with and without the dgrad operand, constant v, 8/16/24-bit codes */
    case_bwd_codes(seed + 0x601, 36, 140, 16, 0, 1);
    case_bwd_codes(seed + 0x602, 36, 140, 16, 0, 0);
    case_bwd_codes(seed + 0x603, 20, 19, 16, 1, 1);
    case_bwd_codes(seed + 0x604, 16, 16, 8, 0, 1);
    case_bwd_codes(seed + 0x605, 45, 33, 24, 0, 1);
    case_bwd_codes(seed + 0x606, 3, 5, 16, 0, 1);
    case_bwd_codes(seed + 0x607, 49, 64, 16, 1, 0);

    /* bwd_dx: the fwd_out shapes, real and binary input, Q_b at 16 bits; the last block's per-image dout
     * (Q off) */
    for (int i = 0; i < COUNT(FWD_SHAPES); ++i)
        for (int bin = 0; bin < 2; ++bin) {
            const int64_t *s = FWD_SHAPES[i];
            case_bwd_dx(seed + 0x700 + 2 * (uint64_t)i + (uint64_t)bin, s[0], s[1], s[2], s[3], s[4], s[5], bin, 16, 0);
        }
    case_bwd_dx(seed + 0x781, 2, 4, 4, 64, 128, 2, 0, 32, 1);
    case_bwd_dx(seed + 0x782, 1, 3, 3, 3, 9, 1, 1, 32, 1);
    case_bwd_dx(seed + 0x783, 3, 6, 6, 70, 140, 2, 1, 8, 0);

    /* weight_g */
    {
        const int64_t cins[] = {8, 70, 128, 3};
        for (int i = 0; i < 4; ++i)
            for (int cst = 0; cst < 2; ++cst)
                case_weight_g(seed + 0x801 + 2 * (uint64_t)i + (uint64_t)cst, 40, cins[i], cins[i] == 3 ? 9 : 24, 16,
                              cst);
        case_weight_g(seed + 0x811, 27, 70, 21, 24, 0);
    }

    /* latent_grad: NumPy's pairwise sum below 8, up to 128, and split (130, 630, 1152) */
    {
        const int64_t ks[] = {5, 72, 130, 630, 1152};
        for (int i = 0; i < 5; ++i) case_latent_grad(seed + 0x901 + (uint64_t)i, 9, ks[i]);
        case_latent_grad(seed + 0x90a, 1, 8);
    }

    /* patterns */
    for (int i = 0; i < COUNT(GRAD_SHAPES); ++i) {
        const int64_t *s = GRAD_SHAPES[i];
        case_patterns(seed + 0xa00 + (uint64_t)i, s[0], s[1], s[2], s[3], s[4]);
    }
    case_patterns(seed + 0xa20, 2, 7, 7, 130, 2);

    /* wgrad, wgrad_tiled: exact integer sums */
    for (int i = 0; i < 3; ++i) {
        const int64_t *s = GRAD_SHAPES[i];
        const int bits[] = {8, 16, 24};
        for (int j = 0; j < 3; ++j)
            case_wgrad_maps(seed + 0xb00 + 4 * (uint64_t)i + (uint64_t)j, s[0], s[1], s[2], s[3], s[4], bits[j], 21, 0,
                            1);
    }
    case_wgrad_maps(seed + 0xb20, 3, 4, 4, 32, 2, 16, 40, 1, 1);
    case_wgrad_maps(seed + 0xb21, 1, 5, 5, 3, 2, 16, 16, 1, 2);
    case_wgrad_chunks(seed + 0xb30, 0);
    case_wgrad_chunks(seed + 0xb31, 1);
    {
        const int64_t groups[] = {1, 3, 4, 7};
        for (int i = 0; i < 4; ++i) case_wgrad_groups(seed + 0xb40 + (uint64_t)i, groups[i], 301, 19, 16, 0, 1, 0);
        for (int t = 1; t <= 3; ++t) case_wgrad_groups(seed + 0xb50 + (uint64_t)t, 9, 500, 40, 16, 1, t, 0);
        case_wgrad_groups(seed + 0xb60, 5, 77, 19, 16, 1, 1, 1);
        case_wgrad_groups(seed + 0xb61, 4, 5, 16, 8, 1, 2, 3);
        case_wgrad_groups(seed + 0xb62, 2, 40, 1, 16, 0, 1, 0);
    }

    /* dgrad: output channels 8, 13, 128 (ragged byte groups) */
    for (int i = 0; i < 3; ++i) {
        const int64_t *s = GRAD_SHAPES[i], os[] = {8, 13, 128};
        for (int j = 0; j < 3; ++j)
            case_dgrad(seed + 0xc00 + 4 * (uint64_t)i + (uint64_t)j, s[0], s[1], s[2], s[3], s[4], os[j], 1);
    }
    case_dgrad(seed + 0xc20, 3, 4, 4, 32, 2, 24, 3);
    case_dgrad(seed + 0xc21, 1, 5, 5, 3, 2, 5, 2);
    case_dgrad_bad(seed + 0xc30);

    /* dgrad_col2im: every shape, 1-3 threads */
    for (int i = 0; i < COUNT(GRAD_SHAPES); ++i)
        for (int t = 1; t <= 3; ++t) {
            const int64_t *s = GRAD_SHAPES[i];
            case_dgrad_col2im(seed + 0xd00 + 4 * (uint64_t)i + (uint64_t)t, s[0], s[1], s[2], s[3], s[4], 24, t);
        }
    case_dgrad_col2im(seed + 0xd80, 2, 4, 3, 128, 1, 128, 1);
    case_dgrad_col2im(seed + 0xd81, 3, 6, 6, 70, 2, 13, 2);

    /* col2im */
    for (int i = 0; i < COUNT(GRAD_SHAPES); ++i) {
        const int64_t *s = GRAD_SHAPES[i];
        case_col2im(seed + 0xe00 + (uint64_t)i, s[0], s[1], s[2], s[3], s[4]);
    }
}
