/* One-call frozen forward: the stem epilogue and the whole binary block loop of the frozen engine
 * (bnncl.device.frozen.FrozenEngine) in a single C call per forward pass.
 *
 * Per stage, the same operations as the per-layer path (bnncl_conv2d_prepacked + bnncl_block_epilogue):
 *   stem:   y = acc * mul + addmap; RPReLU; bits of y + b[0]                (acc: the stem GEMM output)
 *   block:  y = scale * dot(bits, W) + bias   (binary conv: the same panel / direct kernels)
 *           y += shortcut(x or sign(x + b)); RPReLU; bits of y + b[i + 1]
 * so the results are bit-identical to the per-layer path on every kernel path.  The difference is
 * where the data lives: the epilogue of a row block runs right after its conv (the conv output is
 * still in cache), the next block's packed input is written straight into a zero-padded buffer
 * (no padded copy per call), weights, scale tables and scratch are prepared once per plan, and a
 * single OpenMP team runs all stages.
 */
#include <stdlib.h>
#include <string.h>

#include "bnncl_core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    int64_t cin, o, stride, h, w, ho, wo, k, kk, wc, nw;
    int padded;       /* input in the zero-padded 32-bit layout (cin % 32 == 0) */
    int64_t hp, wp, u; /* padded input geometry */
    int binary_input; /* shortcut of sign(x + input_bias) */
    uint64_t *panels; /* owned */
    uint32_t *direct; /* owned, padded inputs only */
    int64_t *toff;    /* owned, padded inputs only */
    float *scale, *bias; /* owned, padded to a multiple of NB */
    const float *input_bias, *shift_in, *slope, *shift_out; /* borrowed (the engine keeps them) */
} fwd_block;

typedef struct {
    int64_t nblocks;
    fwd_block *blk;
    int64_t sh, sw, sc, ic; /* stem output geometry, input channels */
    const float *stem_w;    /* (9 * ic, sc), borrowed */
    const float *stem_mul, *stem_addmap, *stem_act[3];
    float *xpad;            /* zero-padded float copy of the images */
    /* scratch, grown on demand */
    int64_t cap;          /* images */
    int64_t act_len;      /* floats per image, max over block outputs */
    int64_t in_len;       /* uint32 units per image, max over block inputs */
    float *act[2];
    uint32_t *in[2];
    int nthr;             /* per-thread scratch sets */
    uint64_t **cols;      /* im2col rows (96 * max kk words) */
    float **shortcut;     /* max cin floats */
    uint64_t **tmpbits;   /* max nw words */
    int64_t cols_len, sc_len, bits_len;
} fwd_plan;

/* Where a stage writes the packed signs of its output. */
typedef struct {
    int kind;        /* 0 none, 1 words (N, H, W, nw), 2 zero-padded 32-bit units */
    uint64_t *words;
    uint32_t *img;
    int64_t h, w, nw, hp, wp, u;
} bits_dst;

static void free_scratch(fwd_plan *p) {
    free(p->act[0]);
    free(p->act[1]);
    free(p->in[0]);
    free(p->in[1]);
    free(p->xpad);
    p->xpad = NULL;
    p->act[0] = p->act[1] = NULL;
    p->in[0] = p->in[1] = NULL;
    p->cap = 0;
    for (int t = 0; t < p->nthr; ++t) {
        free(p->cols[t]);
        free(p->shortcut[t]);
        free(p->tmpbits[t]);
    }
    free(p->cols);
    free(p->shortcut);
    free(p->tmpbits);
    p->cols = NULL;
    p->shortcut = NULL;
    p->tmpbits = NULL;
    p->nthr = 0;
}

void bnncl_fwd_free(void *handle) {
    fwd_plan *p = (fwd_plan *)handle;
    if (!p) return;
    free_scratch(p);
    for (int64_t i = 0; i < p->nblocks && p->blk; ++i) {
        free(p->blk[i].panels);
        free(p->blk[i].direct);
        free(p->blk[i].toff);
        free(p->blk[i].scale);
    }
    free(p->blk);
    free(p);
}

static void *aligned(size_t bytes) { return aligned_alloc(64, ((bytes + 63) / 64) * 64 + 64); }

/* A plan for nblocks blocks.  geom: per block (cin, o, stride, h, w, binary_input); weights: per block
 * the packed (o, 3, 3, words) weights; vecs: per block (scale, bias, input_bias, shift_in, slope,
 * shift_out) float32 pointers, borrowed for the plan's lifetime except scale and bias (copied);
 * stem: (weights (9 * ic, sc) in im2col column order, mul, addmap, shift_in, slope, shift_out) for
 * uint8 images (sh, sw, ic) and the stem output (sh, sw, sc), borrowed.  NULL when out of memory or
 * when a block's shortcut geometry is invalid (out channels not a multiple of in channels, odd size at
 * stride 2). */
void *bnncl_fwd_new(int64_t nblocks, const int64_t *geom, const uint64_t *const *weights,
                    const float *const *vecs, int64_t sh, int64_t sw, int64_t sc, int64_t ic,
                    const float *const *stem) {
    fwd_plan *p = (fwd_plan *)calloc(1, sizeof(fwd_plan));
    if (!p) return NULL;
    p->nblocks = nblocks;
    p->blk = (fwd_block *)calloc((size_t)(nblocks > 0 ? nblocks : 1), sizeof(fwd_block));
    if (!p->blk) goto fail;
    p->sh = sh, p->sw = sw, p->sc = sc, p->ic = ic;
    p->stem_w = stem[0], p->stem_mul = stem[1], p->stem_addmap = stem[2];
    p->stem_act[0] = stem[3], p->stem_act[1] = stem[4], p->stem_act[2] = stem[5];
    p->sc_len = sc;
    p->act_len = sh * sw * sc;
    for (int64_t i = 0; i < nblocks; ++i) {
        fwd_block *b = &p->blk[i];
        const int64_t *g = geom + 6 * i;
        b->cin = g[0], b->o = g[1], b->stride = g[2], b->h = g[3], b->w = g[4], b->binary_input = (int)g[5];
        /* the shortcut's geometry (the caller validates it too): reads stay inside the input */
        if (b->cin < 1 || b->o % b->cin || (b->stride != 1 && b->stride != 2) ||
            (b->stride == 2 && (b->h % 2 || b->w % 2)))
            goto fail;
        b->ho = (b->h + 2 - 3) / b->stride + 1;
        b->wo = (b->w + 2 - 3) / b->stride + 1;
        b->k = 9 * b->cin;
        b->kk = (b->k + 63) / 64;
        b->wc = (b->cin + 63) / 64;
        b->nw = (b->o + 63) / 64;
        b->padded = b->cin % 32 == 0;
        b->hp = b->h + 2, b->wp = b->w + 2, b->u = b->cin / 32;
        const float *const *v = vecs + 6 * i;
        b->input_bias = v[2], b->shift_in = v[3], b->slope = v[4], b->shift_out = v[5];
        int64_t np = (b->o + BNNCL_NB - 1) / BNNCL_NB, padded = np * BNNCL_NB;
        b->scale = (float *)calloc((size_t)padded * 2, sizeof(float));
        if (!b->scale) goto fail;
        b->bias = b->scale + padded;
        memcpy(b->scale, v[0], (size_t)b->o * sizeof(float));
        memcpy(b->bias, v[1], (size_t)b->o * sizeof(float));
        bnncl_prepacked *pp = (bnncl_prepacked *)bnncl_weights_prepack(weights[i], b->o, 3, 3, b->cin);
        if (!pp) goto fail;
        b->panels = pp->panels, b->direct = pp->direct; /* the plan owns both layouts now */
        free(pp);
        if (b->padded) {
            b->toff = (int64_t *)malloc((size_t)(9 * b->u) * sizeof(int64_t));
            if (!b->toff) goto fail;
            bnncl_direct_offsets(3, 3, b->wp, b->u, b->toff);
        }
        int64_t in_units = b->padded ? b->hp * b->wp * b->u : b->h * b->w * b->wc * 2;
        if (in_units > p->in_len) p->in_len = in_units;
        if (b->ho * b->wo * b->o > p->act_len) p->act_len = b->ho * b->wo * b->o;
        if (96 * b->kk > p->cols_len) p->cols_len = 96 * b->kk;
        if (b->cin > p->sc_len) p->sc_len = b->cin;
        if (b->nw > p->bits_len) p->bits_len = b->nw;
    }
    if (p->bits_len < 1) p->bits_len = 1;
    if (p->sc_len < 1) p->sc_len = 1;
    return p;
fail:
    bnncl_fwd_free(p);
    return NULL;
}

static int reserve(fwd_plan *p, int64_t n, int threads) {
    if (n > p->cap) {
        for (int j = 0; j < 2; ++j) {
            free(p->act[j]);
            free(p->in[j]);
            p->act[j] = (float *)aligned((size_t)(n * p->act_len) * sizeof(float));
            p->in[j] = (uint32_t *)aligned((size_t)(n * p->in_len + 2) * sizeof(uint32_t));
            if (j == 0) {
                free(p->xpad);
                p->xpad = (float *)aligned((size_t)(n * (p->sh + 2) * (p->sw + 2) * p->ic) * sizeof(float));
            }
            if (!p->act[j] || !p->in[j] || !p->xpad) {
                free_scratch(p);
                return 2;
            }
        }
        p->cap = n;
    }
    if (threads > p->nthr) {
        uint64_t **cols = (uint64_t **)realloc(p->cols, (size_t)threads * sizeof(void *));
        if (cols) p->cols = cols;
        float **sc = (float **)realloc(p->shortcut, (size_t)threads * sizeof(void *));
        if (sc) p->shortcut = sc;
        uint64_t **tb = (uint64_t **)realloc(p->tmpbits, (size_t)threads * sizeof(void *));
        if (tb) p->tmpbits = tb;
        if (!cols || !sc || !tb) return 2;
        for (int t = p->nthr; t < threads; ++t) {
            p->cols[t] = (uint64_t *)aligned((size_t)(p->cols_len > 0 ? p->cols_len : 1) * 8);
            p->shortcut[t] = (float *)aligned((size_t)p->sc_len * sizeof(float));
            p->tmpbits[t] = (uint64_t *)aligned((size_t)p->bits_len * 8);
            p->nthr = t + 1;
            if (!p->cols[t] || !p->shortcut[t] || !p->tmpbits[t]) return 2;
        }
    }
    return 0;
}

/* In the padded layout, zero the border units that belong to pixel (b, y, x): the left / right border
 * pixel of its row, and the top / bottom border rows with the row's first pixel; so a reused buffer
 * never needs a full clear. */
static inline void zero_border(const bits_dst *d, int64_t b, int64_t y, int64_t x) {
    const int64_t u = d->u, wp = d->wp;
    uint32_t *img = d->img + b * d->hp * wp * u;
    if (x == 0) {
        memset(img + (y + 1) * wp * u, 0, (size_t)u * 4);
        if (y == 0) memset(img, 0, (size_t)(wp * u) * 4);
        if (y == d->h - 1) memset(img + (d->hp - 1) * wp * u, 0, (size_t)(wp * u) * 4);
    }
    if (x == d->w - 1) memset(img + ((y + 1) * wp + wp - 1) * u, 0, (size_t)u * 4);
}

/* Store the packed signs of pixel (b, y, x) (row r). */
static inline void store_bits(const bits_dst *d, int64_t b, int64_t y, int64_t x, int64_t r, const uint64_t *bits) {
    if (d->kind == 1) {
        memcpy(d->words + r * d->nw, bits, (size_t)d->nw * 8);
    } else if (d->kind == 2) {
        memcpy(d->img + ((b * d->hp + y + 1) * d->wp + x + 1) * d->u, bits, (size_t)d->u * 4);
        zero_border(d, b, y, x);
    }
}

/* Destination of the bits that feed block `next` (or the caller's words at the last stage). */
static bits_dst dst_for(const fwd_plan *p, int64_t next, int64_t stop, int pack_last, uint64_t *out_bits,
                        uint32_t *buf, int64_t h, int64_t w, int64_t o) {
    bits_dst d = {0, NULL, NULL, h, w, (o + 63) / 64, 0, 0, 0};
    if (next < stop) {
        const fwd_block *nb = &p->blk[next];
        if (nb->padded) {
            d.kind = 2, d.img = buf, d.hp = h + 2, d.wp = w + 2, d.u = nb->u;
        } else {
            d.kind = 1, d.words = (uint64_t *)buf;
        }
    } else if (pack_last) {
        d.kind = 1, d.words = out_bits;
    }
    return d;
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Run the stem (conv of the uint8 images (n, sh, sw, ic) + its epilogue) and blocks [0, stop).  The
 * activations at split stop (the stem output when stop == 0) are written to out_x; with pack_last,
 * the packed signs of output + input_bias[stop] go to out_bits (n, ho, wo, words).  path:
 * BNNCL_PATH_*.  Returns 0, 1 (path unsupported), 2 (out of memory), 3 (bad stop). */
int bnncl_fwd_run(void *handle, const uint8_t *images, int64_t n, int64_t stop, int pack_last, float *out_x,
                  uint64_t *out_bits, int threads, int path) {
    fwd_plan *p = (fwd_plan *)handle;
    bnncl_panel_fn fn = bnncl_panel_for(path);
    if (!fn) return 1;
    if (stop < 0 || stop > p->nblocks) return 3;
    if (n <= 0) return 0;
    if (threads < 1) threads = 1;
#ifndef _OPENMP
    threads = 1;
#endif
    if (reserve(p, n, threads)) return 2;
    const int epi512 = bnncl_epi_use_avx512(path == BNNCL_PATH_AVX512);
#if defined(__x86_64__)
    const int direct_ok = path == BNNCL_PATH_AVX512;
#else
    const int direct_ok = 0;
#endif
    const int pack_stem = stop > 0 || pack_last;
    const int stem512 = path == BNNCL_PATH_AVX512 && bnncl_stem_avx512_ok(p->sc);
    float *acc = stop == 0 ? out_x : p->act[1]; /* the stem output */

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = thread_id();
        float *sc = p->shortcut[tid];
        uint64_t *tb = p->tmpbits[tid];
        /* stem epilogue */
        {
            const float *nb0 = pack_stem && p->nblocks > 0 ? p->blk[0].input_bias : NULL;
            bnncl_epi_args a = {p->sh, p->sw, p->sc, 0, 0, 0, 1, (p->sc + 63) / 64,
                                p->stem_mul, p->stem_addmap, NULL, NULL,
                                p->stem_act[0], p->stem_act[1], p->stem_act[2], nb0};
            bits_dst d = dst_for(p, 0, stop, pack_last, out_bits, p->in[0], p->sh, p->sw, p->sc);
            if (!nb0) d.kind = 0;
            const int64_t lines = n * p->sh, img = p->sh * p->sw * p->ic;
            const int64_t pimg = (p->sh + 2) * (p->sw + 2) * p->ic;
#pragma omp for schedule(static)
            for (int64_t b = 0; b < n; ++b) bnncl_stem_pad_u8(images + b * img, 1, p->sh, p->sw, p->ic, p->xpad + b * pimg);
            /* the AVX-512 stem lines run the epilogue in their registers when sc % 32 == 0 */
            const int fused_epi = stem512 && p->sc % 32 == 0;
            bnncl_stem_epi se = {p->sw, p->stem_mul, p->stem_addmap, p->stem_act[0], p->stem_act[1], p->stem_act[2],
                                 nb0, NULL, 0, 0, 0, 0};
            if (d.kind == 1) {
                se.bits = (uint32_t *)d.words, se.bhp = p->sh, se.bwp = p->sw, se.bu = 2 * d.nw, se.boff = 0;
            } else if (d.kind == 2) {
                se.bits = d.img, se.bhp = d.hp, se.bwp = d.wp, se.bu = d.u, se.boff = 1;
            }
#pragma omp for schedule(static)
            for (int64_t line = 0; line < lines; ++line) {
                int64_t b = line / p->sh, y = line % p->sh;
                bnncl_stem_lines(p->xpad, p->sh, p->sw, p->ic, p->stem_w, p->sc, line, line + 1, acc, sc, stem512,
                                 fused_epi ? &se : NULL);
                if (fused_epi) {
                    if (d.kind == 2) zero_border(&d, b, y, 0), zero_border(&d, b, y, p->sw - 1);
                    continue;
                }
                for (int64_t x = 0; x < p->sw; ++x) {
                    int64_t r = line * p->sw + x;
                    bnncl_epi_pixel(&a, b, y, x, acc + r * p->sc, sc, d.kind ? tb : NULL, epi512);
                    if (d.kind) store_bits(&d, b, y, x, r, tb);
                }
            }
        }
        /* binary blocks (the implicit barrier of each omp for separates the stages) */
        const float *xprev = acc;
        for (int64_t i = 0; i < stop; ++i) {
            const fwd_block *bk = &p->blk[i];
            float *y = i == stop - 1 ? out_x : p->act[i & 1];
            const uint32_t *in = p->in[i & 1];
            const int packs = i + 1 < stop || pack_last;
            bnncl_epi_args a = {bk->ho, bk->wo, bk->o, bk->h, bk->w, bk->cin, bk->stride, bk->nw,
                                NULL, NULL, xprev, bk->binary_input ? bk->input_bias : NULL,
                                bk->shift_in, bk->slope, bk->shift_out,
                                packs && i + 1 < p->nblocks ? p->blk[i + 1].input_bias : NULL};
            bits_dst d = dst_for(p, i + 1, stop, pack_last, out_bits, p->in[(i + 1) & 1], bk->ho, bk->wo, bk->o);
            if (!a.next_bias) d.kind = 0;
            bnncl_conv_geom g = {(const uint64_t *)in, bk->h, bk->w, bk->wc, 3, 3, bk->cin, bk->stride, 1,
                                 bk->ho, bk->wo, bk->kk, bk->padded ? in : NULL, bk->hp, bk->wp, bk->u};
            bnncl_epi e = {BNNCL_OUT_FLOAT, bk->k, bk->o, bk->scale, bk->bias, NULL, NULL, y, bk->o};
            bnncl_direct dd = {in, bk->hp, bk->wp, bk->u, bk->stride, bk->ho, bk->wo, 9 * bk->u, bk->toff,
                               bk->direct, NULL};
            const int use_direct = direct_ok && bk->direct != NULL;
            /* the direct kernel runs the whole block epilogue in its registers when o % 32 == 0 */
            const int fused_epi = use_direct && bk->o % 32 == 0;
            bnncl_block_epi be = {xprev, bk->h, bk->w, bk->cin, bk->stride, a.src_bias, bk->shift_in, bk->slope,
                                  bk->shift_out, a.next_bias, NULL, 0, 0, 0, 0};
            if (d.kind == 1) {
                be.bits = (uint32_t *)d.words, be.bhp = bk->ho, be.bwp = bk->wo, be.bu = 2 * bk->nw, be.boff = 0;
            } else if (d.kind == 2) {
                be.bits = d.img, be.bhp = d.hp, be.bwp = d.wp, be.bu = d.u, be.boff = 1;
            }
            if (fused_epi) e.mode = BNNCL_OUT_BLOCK, dd.be = &be;
            (void)dd; /* read by the AVX-512 direct kernel only (x86-64 builds) */
            const int64_t m = n * bk->ho * bk->wo, np = (bk->o + BNNCL_NB - 1) / BNNCL_NB;
            const int64_t mb = bnncl_block_rows(m, threads), nblk = (m + mb - 1) / mb;
#pragma omp for schedule(static)
            for (int64_t blk = 0; blk < nblk; ++blk) {
                int64_t r0 = blk * mb, rows = m - r0 < mb ? m - r0 : mb;
#if defined(__x86_64__)
                if (use_direct) {
                    bnncl_direct_avx512(&dd, r0, rows, &e);
                } else
#endif
                {
                    uint64_t *cols = p->cols[tid];
                    if (g.img)
                        bnncl_im2col_rows32(&g, r0, rows, cols);
                    else
                        bnncl_im2col_rows(&g, r0, rows, cols);
                    for (int64_t q = 0; q < np; ++q)
                        fn(cols, rows, bk->kk, bk->panels + q * bk->kk * BNNCL_NB, q * BNNCL_NB, r0, &e);
                }
                int64_t ox = r0 % bk->wo, oy = (r0 / bk->wo) % bk->ho, b = r0 / (bk->wo * bk->ho);
                for (int64_t r = r0; r < r0 + rows; ++r) {
                    if (fused_epi) {
                        if (d.kind == 2 && (ox == 0 || ox == bk->wo - 1)) zero_border(&d, b, oy, ox);
                    } else {
                        bnncl_epi_pixel(&a, b, oy, ox, y + r * bk->o, sc, d.kind ? tb : NULL, epi512);
                        if (d.kind) store_bits(&d, b, oy, ox, r, tb);
                    }
                    if (++ox == bk->wo) {
                        ox = 0;
                        if (++oy == bk->ho) oy = 0, ++b;
                    }
                }
            }
            xprev = y;
        }
    }
    return 0;
}
