/* Cross-architecture check of the bnncl C core: framework, main() and the binary-kernel cases
 * (GEMM, the fixed-order float matmul, convolution in its three output modes, prepacked convolution, sign packing, the one-call
 * frozen forward).  See crosscheck.h; built and compared by tests/device/test_cross_arch.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crosscheck.h"

/* ---- framework ---------------------------------------------------------------------------- */

static const char *const PATH_NAMES[] = {"scalar", "avx2", "avx512", "neon"};

int cc_paths(int ids[4]) {
    int mask = bnncl_supported_paths(), n = 0;
    for (int id = 0; id < 4; ++id)
        if (mask & (1 << id)) ids[n++] = id;
    return n;
}

const char *cc_path_name(int id) { return id >= 0 && id < 4 ? PATH_NAMES[id] : "?"; }

static uint64_t rng_state = 1;

void cc_seed(uint64_t seed) { rng_state = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull; }

uint64_t cc_u64(void) {
    uint64_t x = rng_state;
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

int64_t cc_int(int64_t lo, int64_t hi) { return lo + (int64_t)(cc_u64() % (uint64_t)(hi - lo + 1)); }

float cc_float(float lo, float hi) {
    int64_t steps = (int64_t)((double)(hi - lo) * 4096.0);
    return lo + (float)cc_int(0, steps > 0 ? steps - 1 : 0) / 4096.0f;
}

#define CC_MAX_ALLOCS 4096
static void *allocs[CC_MAX_ALLOCS];
static int nallocs;

void *cc_alloc(size_t bytes) {
    if (nallocs == CC_MAX_ALLOCS) {
        fprintf(stderr, "crosscheck: too many buffers\n");
        exit(2);
    }
    size_t size = ((bytes + 63) / 64) * 64 + 64;
    void *p = aligned_alloc(64, size);
    if (!p) {
        fprintf(stderr, "crosscheck: out of memory\n");
        exit(2);
    }
    memset(p, 0, size);
    return allocs[nallocs++] = p;
}

void cc_free_all(void) {
    while (nallocs) free(allocs[--nallocs]);
}

uint64_t *cc_packed(int64_t rows, int64_t bits) {
    int64_t words = (bits + 63) / 64;
    uint64_t *p = (uint64_t *)cc_alloc((size_t)(rows * words) * 8);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < words; ++j) {
            int64_t valid = bits - 64 * j;
            uint64_t v = cc_u64();
            p[r * words + j] = valid >= 64 ? v : v & ((1ull << valid) - 1);
        }
    return p;
}

float *cc_floats(int64_t n, float lo, float hi) {
    float *p = (float *)cc_alloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; ++i) p[i] = cc_float(lo, hi);
    return p;
}

void cc_emit(const char *name, int path, int rc, const void *data, size_t bytes) {
    if (rc != 0) {
        printf("%s %s rc=%d\n", name, cc_path_name(path), rc);
        return;
    }
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *b = (const unsigned char *)data;
    for (size_t i = 0; i < bytes; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
    printf("%s %s %016llx %zu\n", name, cc_path_name(path), (unsigned long long)h, bytes);
}

/* ---- binary kernels ----------------------------------------------------------------------- */

static void gemm_cases(void) {
    static const int64_t shapes[][4] = {  /* m, n, k, threads */
        {1, 1, 1, 1}, {3, 5, 64, 1}, {7, 33, 100, 1}, {17, 40, 129, 2}, {32, 64, 576, 1}, {5, 3, 1000, 2}};
    int ids[4], np = cc_paths(ids);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; ++s) {
        int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        cc_seed(100 + s);
        uint64_t *a = cc_packed(m, k), *b = cc_packed(n, k);
        char name[64];
        snprintf(name, sizeof name, "gemm_%lldx%lldx%lld_t%lld", (long long)m, (long long)n, (long long)k,
                 (long long)shapes[s][3]);
        for (int p = 0; p < np; ++p) {
            int32_t *out = (int32_t *)cc_alloc((size_t)(m * n) * 4);
            int rc = bnncl_gemm(a, b, m, n, (k + 63) / 64, k, out, (int)shapes[s][3], ids[p]);
            cc_emit(name, ids[p], rc, out, (size_t)(m * n) * 4);
        }
        cc_free_all();
    }
}

typedef struct {
    int64_t batch, h, w, cin, o, kh, kw, stride, pad, threads;
} conv_case;

static const conv_case CONVS[] = {
    {1, 5, 5, 3, 7, 3, 3, 1, 1, 1},     {2, 6, 7, 32, 32, 3, 3, 1, 1, 1},   {1, 8, 8, 64, 40, 3, 3, 2, 1, 2},
    {3, 4, 4, 100, 65, 3, 3, 1, 1, 1},  {1, 9, 9, 48, 33, 1, 1, 2, 0, 1},   {2, 7, 7, 128, 64, 3, 3, 2, 1, 2},
    {1, 3, 3, 256, 32, 3, 3, 1, 0, 1},  {2, 10, 10, 32, 64, 3, 3, 2, 1, 1}, {1, 4, 4, 256, 256, 3, 3, 1, 1, 2},
};

static void conv_cases(void) {
    int ids[4], np = cc_paths(ids);
    for (size_t s = 0; s < sizeof CONVS / sizeof CONVS[0]; ++s) {
        const conv_case *c = &CONVS[s];
        int64_t ho = (c->h + 2 * c->pad - c->kh) / c->stride + 1, wo = (c->w + 2 * c->pad - c->kw) / c->stride + 1;
        int64_t wc = (c->cin + 63) / 64, k = c->kh * c->kw * c->cin, m = c->batch * ho * wo;
        cc_seed(200 + s);
        uint64_t *x = cc_packed(c->batch * c->h * c->w, c->cin);
        uint64_t *wt = cc_packed(c->o * c->kh * c->kw, c->cin);
        float *scale = cc_floats(c->o, -2.0f, 2.0f), *bias = cc_floats(c->o, -8.0f, 8.0f);
        float *thr = cc_floats(c->o, -(float)k, (float)k);
        uint8_t *flip = (uint8_t *)cc_alloc((size_t)c->o);
        for (int64_t i = 0; i < c->o; ++i) flip[i] = (uint8_t)cc_int(0, 1);
        void *prepacked = bnncl_weights_prepack(wt, c->o, c->kh, c->kw, c->cin);
        char base[96], name[128];
        snprintf(base, sizeof base, "conv_b%lld_%lldx%lld_%lld-%lld_k%lld_s%lld_p%lld_t%lld", (long long)c->batch,
                 (long long)c->h, (long long)c->w, (long long)c->cin, (long long)c->o, (long long)c->kh,
                 (long long)c->stride, (long long)c->pad, (long long)c->threads);
        for (int p = 0; p < np; ++p) {
            size_t nout = (size_t)(m * c->o), nbits = (size_t)(m * ((c->o + 63) / 64)) * 8;
            int32_t *o32 = (int32_t *)cc_alloc(nout * 4);
            float *of = (float *)cc_alloc(nout * 4), *opf = (float *)cc_alloc(nout * 4);
            uint64_t *ob = (uint64_t *)cc_alloc(nbits), *opb = (uint64_t *)cc_alloc(nbits);
            int rc;
            rc = bnncl_conv2d(x, c->batch, c->h, c->w, wc, wt, c->o, c->kh, c->kw, c->cin, c->stride, c->pad,
                              BNNCL_OUT_INT32, NULL, NULL, NULL, NULL, o32, (int)c->threads, ids[p]);
            snprintf(name, sizeof name, "%s_int32", base);
            cc_emit(name, ids[p], rc, o32, nout * 4);
            rc = bnncl_conv2d(x, c->batch, c->h, c->w, wc, wt, c->o, c->kh, c->kw, c->cin, c->stride, c->pad,
                              BNNCL_OUT_FLOAT, scale, bias, NULL, NULL, of, (int)c->threads, ids[p]);
            snprintf(name, sizeof name, "%s_float", base);
            cc_emit(name, ids[p], rc, of, nout * 4);
            rc = bnncl_conv2d(x, c->batch, c->h, c->w, wc, wt, c->o, c->kh, c->kw, c->cin, c->stride, c->pad,
                              BNNCL_OUT_BITS, NULL, NULL, thr, flip, ob, (int)c->threads, ids[p]);
            snprintf(name, sizeof name, "%s_bits", base);
            cc_emit(name, ids[p], rc, ob, nbits);
            rc = prepacked ? bnncl_conv2d_prepacked(x, c->batch, c->h, c->w, wc, prepacked, c->o, c->kh, c->kw,
                                                    c->cin, c->stride, c->pad, BNNCL_OUT_FLOAT, scale, bias, NULL,
                                                    NULL, opf, (int)c->threads, ids[p])
                           : 2;
            snprintf(name, sizeof name, "%s_prepacked_float", base);
            cc_emit(name, ids[p], rc, opf, nout * 4);
            rc = prepacked ? bnncl_conv2d_prepacked(x, c->batch, c->h, c->w, wc, prepacked, c->o, c->kh, c->kw,
                                                    c->cin, c->stride, c->pad, BNNCL_OUT_BITS, NULL, NULL, thr,
                                                    flip, opb, (int)c->threads, ids[p])
                           : 2;
            snprintf(name, sizeof name, "%s_prepacked_bits", base);
            cc_emit(name, ids[p], rc, opb, nbits);
        }
        bnncl_weights_free(prepacked);
        cc_free_all();
    }
}

static void pack_signs_cases(void) {
    static const int64_t shapes[][3] = {{1, 1, 1}, {3, 63, 1}, {5, 64, 2}, {7, 130, 1}, {4, 256, 2}};
    int ids[4], np = cc_paths(ids);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; ++s) {
        int64_t rows = shapes[s][0], c = shapes[s][1], words = (c + 63) / 64;
        cc_seed(300 + s);
        float *x = cc_floats(rows * c, -1.0f, 1.0f);
        for (int64_t i = 0; i < rows * c; i += 7) x[i] = (i / 7) % 2 ? 0.0f : -0.0f; /* sign(0) = +1, also -0 */
        char name[64];
        snprintf(name, sizeof name, "pack_signs_%lldx%lld_t%lld", (long long)rows, (long long)c, (long long)shapes[s][2]);
        for (int p = 0; p < np; ++p) { /* no path argument: the same code on every path */
            uint64_t *out = (uint64_t *)cc_alloc((size_t)(rows * words) * 8);
            bnncl_pack_signs_f32(x, rows, c, out, (int)shapes[s][2]);
            cc_emit(name, ids[p], 0, out, (size_t)(rows * words) * 8);
        }
        cc_free_all();
    }
}

/* ---- the one-call frozen forward (forward.c) ----------------------------------------------- */

void *bnncl_fwd_new(int64_t nblocks, const int64_t *geom, const uint64_t *const *weights,
                    const float *const *vecs, int64_t sh, int64_t sw, int64_t sc, int64_t ic,
                    const float *const *stem);
void bnncl_fwd_free(void *handle);
int bnncl_fwd_run(void *handle, const uint8_t *images, int64_t n, int64_t stop, int pack_last, float *out_x,
                  uint64_t *out_bits, int threads, int path);

typedef struct {
    int64_t h, w, ic, sc, nblocks;
    int64_t blocks[5][3]; /* out channels, stride, binary_input */
} net_case;

/* Valid architectures only (as the model file validator requires): out channels a multiple of in
 * channels (the shortcut repeats them), even input sizes at stride 2. */
static const net_case NETS[] = {
    {12, 12, 1, 32, 4, {{32, 1, 0}, {64, 2, 0}, {64, 1, 1}, {128, 2, 0}}}, /* channels % 32 == 0 */
    {10, 10, 3, 24, 3, {{24, 1, 0}, {48, 2, 1}, {48, 1, 0}}},              /* ragged channels */
};

static void forward_cases(void) {
    int ids[4], np = cc_paths(ids);
    for (size_t s = 0; s < sizeof NETS / sizeof NETS[0]; ++s) {
        const net_case *nc = &NETS[s];
        cc_seed(400 + s);
        int64_t geom[5 * 6], shapes[6][3];
        const uint64_t *weights[5];
        const float *vecs[5 * 6];
        int64_t h = nc->h, w = nc->w, c = nc->sc;
        shapes[0][0] = h, shapes[0][1] = w, shapes[0][2] = c;
        for (int64_t i = 0; i < nc->nblocks; ++i) {
            int64_t o = nc->blocks[i][0], stride = nc->blocks[i][1];
            int64_t *g = geom + 6 * i;
            g[0] = c, g[1] = o, g[2] = stride, g[3] = h, g[4] = w, g[5] = nc->blocks[i][2];
            weights[i] = cc_packed(o * 9, c);
            vecs[6 * i + 0] = cc_floats(o, 0.01f, 0.5f);   /* scale */
            vecs[6 * i + 1] = cc_floats(o, -4.0f, 4.0f);   /* bias */
            vecs[6 * i + 2] = cc_floats(c, -0.5f, 0.5f);   /* input_bias (input channels) */
            vecs[6 * i + 3] = cc_floats(o, -0.5f, 0.5f);   /* RPReLU shift_in */
            vecs[6 * i + 4] = cc_floats(o, 0.0f, 0.5f);    /* slope */
            vecs[6 * i + 5] = cc_floats(o, -0.5f, 0.5f);   /* shift_out */
            h = (h + 2 - 3) / stride + 1, w = (w + 2 - 3) / stride + 1, c = o;
            shapes[i + 1][0] = h, shapes[i + 1][1] = w, shapes[i + 1][2] = c;
        }
        const float *stem[6] = {cc_floats(9 * nc->ic * nc->sc, -0.02f, 0.02f), cc_floats(nc->sc, 0.5f, 2.0f),
                                cc_floats(nc->h * nc->w * nc->sc, -2.0f, 2.0f), cc_floats(nc->sc, -0.5f, 0.5f),
                                cc_floats(nc->sc, 0.0f, 0.5f), cc_floats(nc->sc, -0.5f, 0.5f)};
        int64_t n = 3;
        uint8_t *images = (uint8_t *)cc_alloc((size_t)(n * nc->h * nc->w * nc->ic));
        for (int64_t i = 0; i < n * nc->h * nc->w * nc->ic; ++i) images[i] = (uint8_t)cc_int(0, 255);
        void *plan = bnncl_fwd_new(nc->nblocks, geom, weights, vecs, nc->h, nc->w, nc->sc, nc->ic, stem);
        for (int64_t stop = 0; stop <= nc->nblocks; ++stop) {
            int pack = stop < nc->nblocks;
            int64_t px = n * shapes[stop][0] * shapes[stop][1], nx = px * shapes[stop][2];
            int64_t nbits = pack ? px * ((shapes[stop][2] + 63) / 64) : 0;
            for (int t = 1; t <= 2; ++t) {
                char name[96];
                for (int p = 0; p < np; ++p) {
                    float *x = (float *)cc_alloc((size_t)nx * 4);
                    uint64_t *bits = pack ? (uint64_t *)cc_alloc((size_t)nbits * 8) : NULL;
                    int rc = plan ? bnncl_fwd_run(plan, images, n, stop, pack, x, bits, t, ids[p]) : 2;
                    snprintf(name, sizeof name, "forward_net%zu_stop%lld_t%d_x", s, (long long)stop, t);
                    cc_emit(name, ids[p], rc, x, (size_t)nx * 4);
                    if (pack) {
                        snprintf(name, sizeof name, "forward_net%zu_stop%lld_t%d_bits", s, (long long)stop, t);
                        cc_emit(name, ids[p], rc, bits, (size_t)nbits * 8);
                    }
                }
            }
        }
        if (plan) bnncl_fwd_free(plan);
        cc_free_all();
    }
}

static void matmul_cases(void) {
    static const int64_t shapes[][3] = {{1, 1, 1}, {1, 256, 10}, {37, 256, 10}, {5, 7, 33}, {128, 10, 256}};
    int ids[4], np = cc_paths(ids);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; ++s) {
        int64_t n = shapes[s][0], k = shapes[s][1], m = shapes[s][2];
        cc_seed(900 + s);
        float *a = cc_floats(n * k, -8.0f, 8.0f), *b = cc_floats(k * m, -1.0f, 1.0f);
        char name[64];
        snprintf(name, sizeof name, "matmul_%lldx%lldx%lld", (long long)n, (long long)k, (long long)m);
        for (int p = 0; p < np; ++p) {
            float *out = (float *)cc_alloc((size_t)(n * m) * 4);
            int rc = bnncl_matmul_f32(a, b, n, k, m, out, ids[p]);
            cc_emit(name, ids[p], rc, out, (size_t)(n * m) * 4);
        }
        cc_free_all();
    }
}

void cc_kernel_cases(void) {
    gemm_cases();
    matmul_cases();
    conv_cases();
    pack_signs_cases();
    forward_cases();
}

int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : "all";
    int ids[4], np = cc_paths(ids);
    printf("# paths:");
    for (int p = 0; p < np; ++p) printf(" %s", cc_path_name(ids[p]));
    printf("\n");
    if (!strcmp(only, "all") || !strcmp(only, "kernels")) cc_kernel_cases();
    if (!strcmp(only, "all") || !strcmp(only, "tail")) cc_tail_cases();
    return 0;
}
