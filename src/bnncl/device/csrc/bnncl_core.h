/* bnncl C core: binary (XNOR-popcount) GEMM and convolution kernels.
 *
 * Bit convention (see bitpack.py): uint64 little-endian words, bit 1 = -1, bit 0 = +1,
 * packed along channels, padding bits 0.  dot = K - 2 * popcount(a XOR b).
 *
 * Every ISA variant implements one "panel kernel": for `rows` packed rows of A (row stride kk
 * words) and one weight panel of BNNCL_NB output channels (layout panel[w * NB + j]), it
 * computes the popcounts and applies the epilogue (int32 dot, float affine, or sign bits).
 */
#ifndef BNNCL_CORE_H
#define BNNCL_CORE_H

#include <stdint.h>

#define BNNCL_NB 32 /* output channels per weight panel */
#define BNNCL_NEVER (INT32_MAX / 2) /* BITS threshold that never fires */

enum { BNNCL_OUT_INT32 = 0, BNNCL_OUT_FLOAT = 1, BNNCL_OUT_BITS = 2 };
enum { BNNCL_PATH_SCALAR = 0, BNNCL_PATH_AVX2 = 1, BNNCL_PATH_AVX512 = 2, BNNCL_PATH_NEON = 3 };

typedef struct {
    int mode;             /* BNNCL_OUT_* */
    int64_t k;            /* number of +-1 terms in each dot product */
    int64_t ncols;        /* real number of output channels */
    const float *scale;   /* FLOAT: per channel, padded to a multiple of NB */
    const float *bias;    /* FLOAT: per channel, padded */
    const int32_t *sgn;   /* BITS: 0 (bit = pop > thr) or -1 (bit = -pop > thr), padded */
    const int32_t *thr;   /* BITS: popcount threshold, padded (padding channels never fire) */
    void *out;            /* int32 / float32 (rows x out_stride) or uint32 halves of words */
    int64_t out_stride;   /* elements per output row (uint32 units for BITS) */
} bnncl_epi;

typedef void (*bnncl_panel_fn)(const uint64_t *a, int64_t rows, int64_t kk, const uint64_t *panel,
                               int64_t col0, int64_t row0, const bnncl_epi *e);

void bnncl_panel_scalar(const uint64_t *, int64_t, int64_t, const uint64_t *, int64_t, int64_t,
                        const bnncl_epi *);
#if defined(__x86_64__)
void bnncl_panel_avx2(const uint64_t *, int64_t, int64_t, const uint64_t *, int64_t, int64_t,
                      const bnncl_epi *);
void bnncl_panel_avx512(const uint64_t *, int64_t, int64_t, const uint64_t *, int64_t, int64_t,
                        const bnncl_epi *);
#endif
#if defined(__aarch64__)
void bnncl_panel_neon(const uint64_t *, int64_t, int64_t, const uint64_t *, int64_t, int64_t,
                      const bnncl_epi *);
#endif

/* Scalar epilogue for one output (shared by every variant for ragged edges). */
static inline void bnncl_store_one(const bnncl_epi *e, int64_t row, int64_t col, int64_t pop) {
    int64_t dot = e->k - 2 * pop;
    if (e->mode == BNNCL_OUT_INT32) {
        ((int32_t *)e->out)[row * e->out_stride + col] = (int32_t)dot;
    } else if (e->mode == BNNCL_OUT_FLOAT) {
        float prod = e->scale[col] * (float)dot;
        ((float *)e->out)[row * e->out_stride + col] = prod + e->bias[col];
    } else {
        int64_t v = (pop ^ (int64_t)e->sgn[col]) - (int64_t)e->sgn[col];
        if (v > e->thr[col]) {
            uint32_t *w = (uint32_t *)e->out + row * e->out_stride + (col >> 5);
            *w |= (uint32_t)1u << (col & 31);
        }
    }
}

/* Public entry points (loaded from Python with ctypes). Return 0 on success. */
int bnncl_supported_paths(void); /* bit mask of (1 << BNNCL_PATH_*) */
int bnncl_gemm(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t w, int64_t k,
               int32_t *out, int threads, int path);
int bnncl_conv2d(const uint64_t *x, int64_t batch, int64_t h, int64_t wd, int64_t wc,
                 const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t cin, int64_t stride,
                 int64_t pad, int mode, const float *scale, const float *bias, const float *thr,
                 const uint8_t *flip, void *out, int threads, int path);
void *bnncl_weights_prepack(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t cin);
void bnncl_weights_free(void *panels);
int bnncl_conv2d_prepacked(const uint64_t *x, int64_t batch, int64_t h, int64_t wd, int64_t wc,
                           const void *panels, int64_t o, int64_t kh, int64_t kw, int64_t cin, int64_t stride,
                           int64_t pad, int mode, const float *scale, const float *bias, const float *thr,
                           const uint8_t *flip, void *out, int threads, int path);
int64_t bnncl_popcnt_probe(int64_t iters, int *bits);
int64_t bnncl_clock_probe(int64_t iters);
void bnncl_pack_signs_f32(const float *x, int64_t rows, int64_t c, uint64_t *out, int threads);
/* out = a @ b in float32, summed over k in order (linear.c) */
int bnncl_matmul_f32(const float *a, const float *b, int64_t n, int64_t k, int64_t m, float *out, int path);

/* ---- internals shared by core.c, epilogue.c, kern_avx512.c and forward.c (not loaded from Python) ---- */

/* Geometry of one convolution call (core.c). */
typedef struct {
    const uint64_t *x;
    int64_t h, wd, wc, kh, kw, cin, stride, pad, ho, wo, kk;
    const uint32_t *img; /* cin % 32 == 0: zero-padded input in 32-bit units, else NULL */
    int64_t hp, wp, u;   /* padded height, width, 32-bit units per pixel */
} bnncl_conv_geom;

bnncl_panel_fn bnncl_panel_for(int path); /* NULL when the path is unsupported */
int64_t bnncl_block_rows(int64_t m, int threads);
void bnncl_im2col_rows32(const bnncl_conv_geom *g, int64_t r0, int64_t rows, uint64_t *buf);
void bnncl_im2col_rows(const bnncl_conv_geom *g, int64_t r0, int64_t rows, uint64_t *buf);

/* Direct convolution (AVX-512, cin % 32 == 0): no im2col; each output pixel's receptive field is
 * read from the zero-padded input in 32-bit units, the weights are [panel][q][NB] uint32 with
 * q = (ky * kw + kx) * u + j the j-th 32-bit unit of tap (ky, kx).  INT32 and FLOAT outputs, the same
 * integers and float operations as the panel kernels (bit-identical results). */
enum { BNNCL_OUT_BLOCK = 3 }; /* direct kernel only: FLOAT + the fused block epilogue below */

/* Block epilogue fused into the direct kernel (forward.c; o % 32 == 0): per output pixel, after
 * y = scale * dot + bias, the operations of the block epilogue (epilogue.c) in the same order:
 * y += shortcut(src) (2x2 average pool at stride 2, channels repeated; of sign(src + src_bias) when
 * src_bias), RPReLU, store y, and the signs of y + next_bias, one uint32 unit per 32 channels, at
 * unit ((b * bhp + y + boff) * bwp + x + boff) * bu + c / 32 of bits (units o / 32 .. bu - 1 zeroed). */
typedef struct {
    const float *src;
    int64_t h, w, cin, stride;
    const float *src_bias, *shift_in, *slope, *shift_out, *next_bias;
    uint32_t *bits; /* NULL: no signs */
    int64_t bhp, bwp, bu, boff;
} bnncl_block_epi;

typedef struct {
    const uint32_t *img;  /* (batch, hp, wp, u) */
    int64_t hp, wp, u, stride, ho, wo;
    int64_t nq;           /* kh * kw * u */
    const int64_t *toff;  /* offset of unit q from the receptive field's first unit */
    const uint32_t *wd;   /* [ceil(o / NB)][nq][NB], 64-byte aligned */
    const bnncl_block_epi *be; /* BNNCL_OUT_BLOCK mode of the epi */
} bnncl_direct;

uint32_t *bnncl_direct_weights(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t cin);
void bnncl_direct_offsets(int64_t kh, int64_t kw, int64_t wp, int64_t u, int64_t *toff);
#if defined(__x86_64__)
void bnncl_direct_avx512(const bnncl_direct *d, int64_t r0, int64_t rows, const bnncl_epi *e);
#endif

/* What bnncl_weights_prepack returns: both weight layouts, built once (free both and the struct). */
typedef struct {
    uint64_t *panels; /* panel kernels */
    uint32_t *direct; /* direct kernel, NULL unless cin % 32 == 0 */
} bnncl_prepacked;

/* One output pixel of the fused block epilogue (epilogue.c). */
typedef struct {
    int64_t ho, wo, o, h, w, cin, stride, nw;
    const float *mul, *addmap, *src, *src_bias, *shift_in, *slope, *shift_out, *next_bias;
} bnncl_epi_args;

void bnncl_epi_pixel(const bnncl_epi_args *a, int64_t b, int64_t oy, int64_t ox, float *y, float *sc,
                     uint64_t *bits, int use_avx512);
int bnncl_epi_use_avx512(int requested);
/* n consecutive pixels (b, oy, ox .. ox + n - 1) of one output row: bnncl_epi_pixel on each, their rows at
 * y + i * o, their signs (bits not NULL) at bits + i * bits_step words, in one call (libbnncl's forward). */
void bnncl_epi_run(const bnncl_epi_args *a, int64_t b, int64_t oy, int64_t ox, int64_t n, float *y, float *sc,
                   uint64_t *bits, int64_t bits_step, int use_avx512);

/* The float32 stem conv (im2col_u8.c): zero-padded float copy of uint8 images, and lines
 * [l0, l1) (line = b * h + y) of the conv from it; acc: oc floats of scratch (generic variant). */
void bnncl_stem_pad_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, float *xp);
/* The stem epilogue fused into the AVX-512 stem lines (forward.c; oc % 32 == 0): y = y * mul + addmap,
 * RPReLU, and the signs of y + next_bias as uint32 units at ((b * bhp + y + boff) * bwp + x + boff) * bu
 * (units oc / 32 .. bu - 1 zeroed), the operations of epilogue.c in the same order. */
typedef struct {
    int64_t w;
    const float *mul, *addmap, *shift_in, *slope, *shift_out, *next_bias;
    uint32_t *bits; /* NULL: no signs */
    int64_t bhp, bwp, bu, boff;
} bnncl_stem_epi;

void bnncl_stem_lines(const float *xp, int64_t h, int64_t w, int64_t c, const float *wt, int64_t oc,
                      int64_t l0, int64_t l1, float *out, float *acc, int use_avx512, const bnncl_stem_epi *se);
int bnncl_stem_avx512_ok(int64_t oc);

#endif
