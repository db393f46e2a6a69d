/* libbnncl glue: the frozen forward of one image on the C core's kernels, in a caller-provided arena.
 *
 * Per image, the stages of bnncl.device.frozen.FrozenEngine (per-layer path), each one a call of the
 * same C core function the Python extension runs, on the kernel path in use (bit-identical on every path):
 *   stem   bnncl_stem_pad_u8 + bnncl_stem_lines (float32, fixed order), then per pixel the stem
 *          epilogue (bnncl_epi_pixel: * mul + addmap, RPReLU, packed signs of + next input bias); on the
 *          AVX-512 path the stem tiles with that epilogue in their registers, as the Python engine's;
 *   block  bnncl_im2col_rows (or bnncl_im2col_rows32 from the zero-padded 32-bit layout where it fits) +
 *          the panel kernel (y = scale * dot + bias), then per pixel the block epilogue (bnncl_epi_pixel:
 *          + shortcut, RPReLU, packed signs for the next block; its AVX-512 variant on that path);
 *   head   bnncl_tail_gap (average pool, summed in order) + bnncl_matmul_f32 (fixed order).
 * Learning: streaming LDA on the pooled features, the formulas of bnncl.cl.slda.StreamingLDA (update:
 * exact merge of class means and the pooled within-class scatter in float64; the leave-one-out tally of the
 * shrinkage grid on the features of rare classes; classifier: Cholesky of (1 - eps) Sigma + eps I,
 * W = mu Lambda, b = -0.5 (mu.W - tr(Lambda Sigma) / (n + n0)), eps chosen as effective_shrinkage does).
 * No allocation: every buffer is a slice of the arena laid out by bnncl_init.
 */
#include <math.h>
#include <string.h>

#include "bnncl.h"
#include "bnncl_core.h"
#include "ctx_cwr.h"
#include "state_bytes.h"

/* tail_elementwise.c (C core; loaded with ctypes by the Python side, so not in bnncl_core.h) */
int bnncl_tail_gap(const float *x, int64_t b, int64_t hw, int64_t c, int quantize, float lo, float s, float *f,
                   int path);

#define CTX_MAGIC 0x58544342u    /* "BCTX" */
#define CTX_RESERVE 512u         /* arena bytes reserved for struct bnncl_ctx on every target */
#define ROWS 12                  /* output pixels per im2col block */
#define MAX_BLOCKS 64
#define SMALL_SAMPLE_PRIOR 2.0   /* bnncl.cl.slda: n0 of the small-sample bias correction */
#define RARE_CLASS_SHRINKAGE 0.05
#define RARE_CLASS_COUNT 5
#define LOO_MAX_COUNT 100        /* bnncl.cl.slda: classes of at most this many features are tallied */
#define LOO_GROUP 8              /* held images taken into the reduced basis together, where the hold has room */
#define GRID BNNCL_SHRINKAGE_GRID
static const double shrinkage_grid[GRID] = {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 4e-2, 8e-2, 0.15, 0.3, 0.5};
#define STRATEGY_SLDA 1u
#define STATE_HEADER 32u

struct bnncl_ctx {
    uint32_t magic;
    uint32_t cwr_at;    /* head-only CWR* (src/ctx_cwr.c): its context at this many bytes from this one; 0: none */
    const bnncl_model *m;
    bnncl_panel_fn panel; /* the binary conv kernel: the best path this CPU runs, or the one set */
    int path;
    signed char epi512; /* the AVX-512 epilogue (path AVX-512, as the Python engine's) */
    signed char stem512; /* the AVX-512 stem tiles (path AVX-512, stem_channels % 16 == 0 and <= 64) */
    signed char stem_fused; /* ... with the stem epilogue in their registers (stem_channels % 32 == 0, and an
                             * addmap row at hand: the model's full map, or for ADDMAP_NINE a row built in fbuf[1],
                             * which is free until block 1 writes it) */
    signed char amrow_ry; /* the border class (0 top, 1 middle, 2 bottom) of the addmap row in fbuf[1]; -1: none */
    uint64_t padded;    /* bit i: block i's input signs in the zero-padded 32-bit layout (bits_sink) */
    float *stem_w;      /* float32 stem weights (converted from int8, or the model's) */
    float *xpad;        /* zero-padded float copy of the image */
    float *fbuf[2];     /* real-valued block outputs (full or 2x2-pooled maps); a block may write in place */
    float *line;        /* the stem's output rows that block 0's shortcut reads (recomputed, stride lines) */
    float *ybuf;        /* a block's conv output for ROWS pixels, before its epilogue */
    float *ptmp;        /* the pair sum (s10 + s11) of a 2x2 pool being written */
    uint64_t *bits[2];  /* packed signs of the block inputs: bits[i % 2] for block i */
    uint64_t *cols;     /* im2col rows: ROWS x max kk words */
    float *shortcut;    /* max in_channels floats */
    float *acc;         /* stem_channels floats */
    float *feat;        /* features floats */
    float *logits;      /* num_classes floats */
    /* streaming LDA (K = slda_classes rows of D = features; P = D (D + 1) / 2); all NULL when K = 0 */
    int32_t K, D;
    int64_t P, B;       /* B: images learned per chunk (their features kept as float32 across forwards) */
    float *means;       /* state: K x D */
    int64_t *counts;    /* state: K */
    float *cov;         /* state: P, upper triangle row by row */
    double *W, *b;      /* classifier: K x D, K */
    /* scratch in the work area, each live only while no forward runs (the memory plan, below) */
    unsigned char *work; /* the work area: the forward's buffers, or the fold's, the factor's, a loaded state */
    float *chunk;       /* the features of a chunk of up to B images: from the end of the forward's buffers on,
                         * running into W (bnncl_learn overwrites W, which refresh solves again on every way out) */
    double *bsum;       /* fold: per-class sum of the chunk's shifted features, K x D, then their means */
    int64_t *bcount;    /* fold: per-class chunk count, K */
    double *row;        /* fold: one row of the scatter, D */
    double *factor;     /* refresh: the Cholesky factor, P (lower triangle row by row); leave-one-out: Sigma in
                         * tridiagonal form and the Householder reflectors (tridiagonalize) */
    double *tmp;        /* refresh: D; leave-one-out: the reflectors' tau */
    double *lvec;       /* leave-one-out: 3 vectors of D (Q^T x, the LDL^T pivots of M, a solution) */
    double *qtab;       /* leave-one-out: mu~_k . M^-1 mu~_k per grid value and class, GRID x K */
    double *mt;         /* leave-one-out: the class means in the basis of the tridiagonal form, K x D */
    float *hold;        /* leave-one-out: the features of up to BL images, past the forward's buffers and the
                         * reduced covariance (and tmp, lvec, qtab, mt), running into W like chunk */
    int64_t BL;
    int64_t loo[GRID];  /* state: right answers of the leave-one-out test per grid value (loo_correct) */
    double loo_spread[GRID]; /* leave-one-out: tr(Lambda Sigma) per grid value (NaN: M not positive definite) */
    double eps;         /* the shrinkage of the classifier solved last (effective_shrinkage) */
    float *slogits;     /* K */
    signed char seen;   /* some class has a count: predict uses the SLDA classifier */
    signed char ready;  /* W and b are solved for the current state */
    signed char stem_ring; /* > 0: block 0 computes the stem rows as it goes, keeping their real values in a ring
                            * of that many rows in fbuf[1] (past the addmap row; free until block 1), each row
                            * once; 0: the stem's signs first, then block 0 computes the rows it reads again */
    uint32_t direct_at; /* > 0: the blocks' weights in the AVX-512 direct kernel's layout at this many bytes from
                         * the context (the end of a larger arena, bnncl_arena_size_learn); 0: none */
};

typedef char ctx_fits_reserve[sizeof(struct bnncl_ctx) <= CTX_RESERVE ? 1 : -1];

static ctx_cwr *cwr_of(const bnncl_ctx *c) { return c->cwr_at ? (ctx_cwr *)(void *)((char *)c + c->cwr_at) : NULL; }

const char *bnncl_strerror(int code) {
    switch (code) {
    case BNNCL_OK: return "ok";
    case BNNCL_E_NULL: return "a required pointer is NULL";
    case BNNCL_E_MODEL: return "invalid or foreign model description";
    case BNNCL_E_ARENA_SMALL: return "arena smaller than bnncl_arena_size()";
    case BNNCL_E_ALIGN: return "arena not 8-byte aligned";
    case BNNCL_E_CTX: return "context not initialised by bnncl_init";
    case BNNCL_E_SIZE: return "wrong image size or scores buffer too short";
    case BNNCL_E_IO: return "state read or write callback failed";
    case BNNCL_E_STATE_CORRUPT: return "state damaged or not a libbnncl state of a known version";
    case BNNCL_E_STATE_FOREIGN: return "state of another model or configuration";
    case BNNCL_E_NO_LEARNING: return "model exported without learning";
    case BNNCL_E_LABEL: return "label outside the learner's classes";
    case BNNCL_E_NUMERIC: return "non-finite features or covariance not positive definite";
    case BNNCL_E_UNSUPPORTED: return "kernel path not supported by this CPU or build";
    default: return "unknown error code";
    }
}

static int64_t words_for(int64_t bits) { return (bits + 63) / 64; }

/* Whether the description is one this library runs (geometry chained, pointers present). */
static int model_ok(const bnncl_model *m) {
    if (!m || m->magic != BNNCL_MODEL_MAGIC || m->version != BNNCL_MODEL_VERSION) return 0;
    if (m->in_h < 1 || m->in_w < 1 || m->in_c < 1 || m->stem_channels < 1) return 0;
    if (!m->stem_weight_i8 && !m->stem_weight_f32) return 0;
    if (!m->stem_mul || !m->stem_addmap || !m->stem_shift_in || !m->stem_slope || !m->stem_shift_out) return 0;
    if (m->addmap_kind != BNNCL_ADDMAP_FULL && (m->addmap_kind != BNNCL_ADDMAP_NINE || m->in_h < 3 || m->in_w < 3))
        return 0;
    if (m->num_blocks < 1 || m->num_blocks > MAX_BLOCKS || !m->blocks) return 0;
    int64_t h = m->in_h, w = m->in_w, c = m->stem_channels;
    for (int32_t i = 0; i < m->num_blocks; ++i) {
        const bnncl_block_desc *b = &m->blocks[i];
        if (b->in_channels != c || b->in_h != h || b->in_w != w || b->out_channels < 1) return 0;
        if (b->out_channels % b->in_channels || (b->stride != 1 && b->stride != 2)) return 0;
        if (b->stride == 2 && (h % 2 || w % 2)) return 0;
        if (!b->panels || !b->scale || !b->bias || !b->input_bias || !b->shift_in || !b->slope || !b->shift_out)
            return 0;
        h = (h - 1) / b->stride + 1, w = (w - 1) / b->stride + 1, c = b->out_channels;
    }
    if (m->features != c || m->num_classes < 1 || !m->head || !m->class_ids) return 0;
    if (m->slda_classes < 0 || m->slda_classes > 1 << 20 || m->features > 1 << 14) return 0;
    if (m->slda_classes > 0) {
        if (!(m->slda_shrinkage >= 0.0 && m->slda_shrinkage < 1.0)) return 0;
        int given = (m->slda_means != NULL) + (m->slda_counts != NULL) + (m->slda_cov != NULL);
        if (given != 0 && given != 3) return 0;
        for (int j = 0; m->slda_means && m->slda_loo && j < GRID; ++j)
            if (m->slda_loo[j] < 0) return 0;
    }
    if (m->strategy != (m->cwr ? BNNCL_STRATEGY_CWR_STAR : (m->slda_classes ? BNNCL_STRATEGY_SLDA : BNNCL_STRATEGY_NONE)))
        return 0;
    if (m->cwr && (m->slda_classes || !m->cwr->impl || CWR_IMPL(m)->magic != BNNCL_CWR_IMPL_MAGIC ||
                   !CWR_IMPL(m)->model_ok(m)))
        return 0;
    return 1;
}

static size_t up16(size_t n) { return (n + 15) & ~(size_t)15; }

/* The memory plan of the real-valued maps.  A block's output is read only by the next block's shortcut
 * (pixel by pixel at stride 1, as 2x2 averages at stride 2) and by the pooling of the last one, so it is
 * kept as what that reader takes: the 2x2 averages when the next block has stride 2 (a quarter of the map,
 * computed as the output is written, in the epilogue's order and operations; of the signs when that block's
 * shortcut is binarized), else the full map.  The stem's output is not kept: block 0 recomputes the stem
 * rows its shortcut reads.  A stride-1 block with as many outputs as inputs writes over its input (pixel p's
 * output goes where input pixel p was, once its shortcut is read; the conv reads the packed bits), else it
 * writes the other buffer.  Block i writes fbuf[dst[i]]; fl[k]: floats of fbuf[k]. */
static int pooled_out(const bnncl_model *m, int32_t i) {
    return i + 1 < m->num_blocks && m->blocks[i + 1].stride == 2;
}

static void float_plan(const bnncl_model *m, int64_t fl[2], int dst[MAX_BLOCKS]) {
    int cur = -1; /* buffer holding the current block's input map; -1: the stem (recomputed) */
    fl[0] = fl[1] = 0;
    for (int32_t i = 0; i < m->num_blocks; ++i) {
        const bnncl_block_desc *b = &m->blocks[i];
        const int64_t ho = (b->in_h - 1) / b->stride + 1, wo = (b->in_w - 1) / b->stride + 1;
        const int64_t n = pooled_out(m, i) ? (ho / 2) * (wo / 2) * b->out_channels : ho * wo * b->out_channels;
        const int in_place = cur >= 0 && b->stride == 1 && b->out_channels == b->in_channels;
        const int d = in_place ? cur : (cur == 0 ? 1 : 0);
        if (n > fl[d]) fl[d] = n;
        dst[i] = cur = d;
    }
}

/* Arena layout (the memory plan).  After the context: the float stem weights (int8 stems), then the work
 * area, a union of what is live in turn, at its start:
 *   forward   the forward's buffers (xpad .. logits, below), during a prediction and each image learned;
 *   fold      the per-class chunk sums and counts and one scatter row, while a chunk is merged;
 *   refresh   the Cholesky factor (P doubles) and a vector, while the classifier is solved;
 *   load      the payload of a state being read, until it is checked;
 * and from chunk_off (past the forward's and the fold's buffers) the features of the chunk being learned,
 * live across its forwards, which run on into W, right after the work area (W is solved again after every
 * learn); B = the feature vectors that fit there, at least MIN_CHUNK (the work area grows for that).
 * The leave-one-out pass holds features from loo_off (past the forward's buffers, the fold's, and its own:
 * Sigma reduced to tridiagonal form in the factor's place, tmp, 3 vectors, q per grid value and class and the
 * K class means in the reduced basis) on into W the same way: BL = the vectors that fit, at least MIN_CHUNK
 * (the work area grows for that).
 * Then the classifier (W, b), the state (means, counts, covariance) and the SLDA logits. */
#define MIN_CHUNK 16
typedef struct {
    size_t stem_w, xpad, fbuf[2], line, ybuf, ptmp, bits[2], cols, shortcut, acc, feat, logits; /* forward */
    size_t bsum, bcount, row, factor, tmp, lvec, qtab, mt, chunk_off, work, chunk_rows, loo_off,
        loo_rows; /* learning (0 without) */
    size_t W, b, means, counts, cov, slogits;
    size_t cwr; /* head-only CWR*: the region after the work area (src/ctx_cwr.c) */
} layout;

/* payload bytes of a saved state: version 2, or 1 (without the leave-one-out counts) */
static size_t state_payload_v(int64_t K, int64_t D, uint32_t version) {
    return (size_t)(8 * K + 4 * K * D + 4 * (D * (D + 1) / 2)) + (version >= 2 ? 8u * GRID : 0u);
}
static size_t state_payload(int64_t K, int64_t D) { return state_payload_v(K, D, BNNCL_STATE_VERSION); }

static void plan(const bnncl_model *m, layout *L) {
    int64_t bits[2] = {0, 0}, kk = 0, cin = 0, o = 0, fl[2];
    int dst[MAX_BLOCKS];
    for (int32_t i = 0; i < m->num_blocks; ++i) {
        const bnncl_block_desc *b = &m->blocks[i];
        int64_t in_words = (int64_t)b->in_h * b->in_w * words_for(b->in_channels);
        if (in_words > bits[i % 2]) bits[i % 2] = in_words;
        if (words_for(9 * (int64_t)b->in_channels) > kk) kk = words_for(9 * (int64_t)b->in_channels);
        if (b->in_channels > cin) cin = b->in_channels;
        if (b->out_channels > o) o = b->out_channels;
    }
    float_plan(m, fl, dst);
    L->stem_w = m->stem_weight_i8 ? up16((size_t)(9 * m->in_c * m->stem_channels) * sizeof(float)) : 0;
    L->xpad = up16((size_t)((m->in_h + 2) * (m->in_w + 2) * m->in_c) * sizeof(float));
    L->fbuf[0] = up16((size_t)fl[0] * sizeof(float));
    L->fbuf[1] = up16((size_t)fl[1] * sizeof(float));
    L->line = up16((size_t)(m->blocks[0].stride * m->in_w * m->stem_channels) * sizeof(float));
    L->ybuf = up16((size_t)(ROWS * o) * sizeof(float));
    L->ptmp = up16((size_t)o * sizeof(float));
    L->bits[0] = up16((size_t)bits[0] * sizeof(uint64_t));
    L->bits[1] = up16((size_t)bits[1] * sizeof(uint64_t));
    L->cols = up16((size_t)(ROWS * kk) * sizeof(uint64_t));
    L->shortcut = up16((size_t)cin * sizeof(float));
    L->acc = up16((size_t)m->stem_channels * sizeof(float));
    L->feat = up16((size_t)m->features * sizeof(float));
    L->logits = up16((size_t)m->num_classes * sizeof(float));
    const size_t fwd = L->xpad + L->fbuf[0] + L->fbuf[1] + L->line + L->ybuf + L->ptmp + L->bits[0] + L->bits[1] +
                       L->cols + L->shortcut + L->acc + L->feat + L->logits;
    const int64_t K = m->slda_classes, D = m->features, P = D * (D + 1) / 2;
    L->bsum = L->bcount = L->row = L->factor = L->tmp = L->chunk_off = L->chunk_rows = L->loo_off = L->loo_rows = 0;
    L->lvec = L->qtab = L->mt = 0;
    L->W = L->b = L->means = L->counts = L->cov = L->slogits = 0;
    L->work = fwd;
    L->cwr = 0;
    if (m->cwr) { /* its scratch shares the work area; its features, context and state follow it */
        if (CWR_IMPL(m)->work_bytes(m) > L->work) L->work = CWR_IMPL(m)->work_bytes(m);
        L->cwr = CWR_IMPL(m)->region_bytes(m);
    }
    if (!K) return;
    L->bsum = up16((size_t)(K * D) * sizeof(double));
    L->bcount = up16((size_t)K * sizeof(int64_t));
    L->row = up16((size_t)D * sizeof(double));
    L->factor = up16((size_t)P * sizeof(double));
    L->tmp = up16((size_t)D * sizeof(double));
    L->lvec = up16((size_t)(3 * D) * sizeof(double));
    L->qtab = up16((size_t)(GRID * K) * sizeof(double));
    L->mt = up16((size_t)(K * D) * sizeof(double));
    L->W = up16((size_t)(K * D) * sizeof(double));
    L->b = up16((size_t)K * sizeof(double));
    L->means = up16((size_t)(K * D) * sizeof(float));
    L->counts = up16((size_t)K * sizeof(int64_t));
    L->cov = up16((size_t)P * sizeof(float));
    L->slogits = up16((size_t)K * sizeof(float));
    const size_t fold = L->bsum + L->bcount + L->row, vec = (size_t)D * sizeof(float);
    size_t work = L->factor + L->tmp;
    if (up16(state_payload(K, D)) > work) work = up16(state_payload(K, D));
    L->chunk_off = fwd > fold ? fwd : fold;
    if (L->chunk_off > work) work = L->chunk_off;
    if (work - L->chunk_off + L->W < MIN_CHUNK * vec) work = up16(L->chunk_off + MIN_CHUNK * vec - L->W);
    const size_t loo_scratch = L->factor + L->tmp + L->lvec + L->qtab + L->mt;
    L->loo_off = L->chunk_off > loo_scratch ? L->chunk_off : loo_scratch;
    if (work + L->W < L->loo_off + MIN_CHUNK * vec) work = up16(L->loo_off + MIN_CHUNK * vec - L->W); /* unsigned */
    L->work = work;
    L->chunk_rows = (work - L->chunk_off + L->W) / vec;
    L->loo_rows = (work - L->loo_off + L->W) / vec;
}

static int ctx_ok(const bnncl_ctx *c);

/* A caller's arena larger than the plan: extra bytes (a multiple of 16) lengthen the work area, whose end the
 * chunk and the hold run into, so both hold more feature vectors (learning only). */
static void plan_extra(const bnncl_model *m, layout *L, size_t extra) {
    if (!m->slda_classes) return;
    const size_t vec = (size_t)m->features * sizeof(float);
    L->work += extra;
    L->chunk_rows = (L->work - L->chunk_off + L->W) / vec;
    L->loo_rows = (L->work - L->loo_off + L->W) / vec;
}

static size_t plan_total(const layout *L) {
    return CTX_RESERVE + L->stem_w + L->work + L->W + L->b + L->means + L->counts + L->cov + L->slogits + L->cwr;
}

size_t bnncl_arena_size(const bnncl_model *m) {
    if (!model_ok(m)) return 0;
    layout L;
    plan(m, &L);
    return plan_total(&L);
}

size_t bnncl_learn_chunk(const bnncl_model *m) {
    if (!model_ok(m)) return 0;
    layout L;
    plan(m, &L);
    return L.chunk_rows;
}

/* The AVX-512 direct kernel (csrc, the Python engine's on that path) reads a block's weights as [panel][q][32]
 * uint32, q = the 32-bit units of the 9 taps; it runs the blocks whose input and output channels are multiples
 * of 32, from the zero-padded input, with the block epilogue in its registers.  Bytes of one block's copy (0:
 * not such a block), and of all (64-byte aligned each). */
static size_t direct_block_bytes(const bnncl_block_desc *b) {
    if (b->in_channels % 32 || b->out_channels % 32) return 0;
    return (size_t)(b->out_channels / BNNCL_NB) * (size_t)(9 * (b->in_channels / 32)) * BNNCL_NB * 4;
}
static size_t direct_bytes(const bnncl_model *m) {
    size_t n = 0;
    for (int32_t i = 0; i < m->num_blocks; ++i) n += (direct_block_bytes(&m->blocks[i]) + 63) & ~(size_t)63;
    return n ? n + 64 : 0; /* + the alignment of the first */
}

size_t bnncl_arena_size_learn(const bnncl_model *m, size_t images) {
    if (!model_ok(m)) return 0;
    layout L;
    plan(m, &L);
    const size_t need = plan_total(&L) + direct_bytes(m), vec = (size_t)m->features * sizeof(float);
    if (!m->slda_classes) return need;
    if (images > SIZE_MAX / 4 / vec) return 0;
    images += 4 * GRID + 2 * LOO_GROUP + 1; /* and past them the tally's solve factors of each grid value and a
                                             * group of images in the reduced basis (2 GRID + LOO_GROUP vectors of
                                             * D doubles) */
    if (images <= L.loo_rows) return need; /* loo_rows <= chunk_rows */
    if (images - L.loo_rows > (SIZE_MAX - need - 16) / vec) return 0;
    return need + up16((images - L.loo_rows) * vec);
}

size_t bnncl_ctx_learn_chunk(const bnncl_ctx *c) {
    if (!c || !ctx_ok(c)) return 0;
    return (size_t)c->B;
}

static int refresh(bnncl_ctx *c);
static int padded_fits(const bnncl_model *m, int32_t i, const layout *L);

/* The fastest kernel path of this CPU (runtime detection; every path is bit-identical to the scalar one). */
static int best_path(void) {
    const int mask = bnncl_supported_paths();
    if (mask & (1 << BNNCL_PATH_AVX512)) return BNNCL_PATH_AVX512;
    if (mask & (1 << BNNCL_PATH_AVX2)) return BNNCL_PATH_AVX2;
    if (mask & (1 << BNNCL_PATH_NEON)) return BNNCL_PATH_NEON;
    return BNNCL_PATH_SCALAR;
}

/* The kernels of a path: the conv panels, and on the AVX-512 path the AVX-512 epilogue and stem tiles, as the
 * Python engine runs them there (bnncl_fwd_run); all bit-identical to the scalar code. */
static void use_path(bnncl_ctx *c, int path, bnncl_panel_fn fn, size_t fbuf1_bytes) {
    const bnncl_model *m = c->m;
    c->path = path, c->panel = fn;
    c->epi512 = (signed char)bnncl_epi_use_avx512(path == BNNCL_PATH_AVX512);
    c->stem512 = (signed char)(path == BNNCL_PATH_AVX512 && bnncl_stem_avx512_ok(m->stem_channels));
    const size_t row = (size_t)m->in_w * (size_t)m->stem_channels * sizeof(float);
    c->stem_fused = (signed char)(c->stem512 && m->stem_channels % 32 == 0 &&
                                  (m->addmap_kind == BNNCL_ADDMAP_FULL || fbuf1_bytes >= row));
    c->amrow_ry = -1;
}

int bnncl_set_kernel_path(bnncl_ctx *c, int path) {
    if (!c) return BNNCL_E_NULL;
    if (!ctx_ok(c)) return BNNCL_E_CTX;
    if (path == BNNCL_KERNEL_AUTO) path = best_path();
    bnncl_panel_fn fn = bnncl_panel_for(path);
    if (!fn) return BNNCL_E_UNSUPPORTED;
    layout L;
    plan(c->m, &L);
    use_path(c, path, fn, L.fbuf[1]);
    return BNNCL_OK;
}

int bnncl_kernel_path(const bnncl_ctx *c) { return c && ctx_ok(c) ? c->path : BNNCL_E_CTX; }

int bnncl_init(const bnncl_model *m, void *arena, size_t arena_bytes, bnncl_ctx **out) {
    if (!m || !arena || !out) return BNNCL_E_NULL;
    *out = NULL;
    size_t need = bnncl_arena_size(m);
    if (!need) return BNNCL_E_MODEL;
    if ((uintptr_t)arena % 8) return BNNCL_E_ALIGN;
    if (arena_bytes < need) return BNNCL_E_ARENA_SMALL;
    layout L;
    plan(m, &L);
    /* a larger arena: the direct kernel's weights at its end when it holds them (x86-64 with AVX-512), the rest
     * to longer chunks and holds */
    size_t direct = 0;
#if defined(__GNUC__) && defined(__x86_64__)
    if (direct_bytes(m) && arena_bytes - need >= direct_bytes(m) && (bnncl_supported_paths() & (1 << BNNCL_PATH_AVX512)))
        direct = direct_bytes(m);
#endif
    plan_extra(m, &L, (arena_bytes - need - direct) & ~(size_t)15); /* the whole arena: longer chunks and holds */
    unsigned char *p = (unsigned char *)arena;
    bnncl_ctx *c = (bnncl_ctx *)p;
    memset(c, 0, sizeof *c);
    p += CTX_RESERVE;
#define TAKE(field, type, bytes) (c->field = (type *)p, p += (bytes))
    TAKE(stem_w, float, L.stem_w);
    c->work = p;
    TAKE(xpad, float, L.xpad); /* the forward's buffers, from the start of the work area */
    TAKE(fbuf[0], float, L.fbuf[0]);
    TAKE(fbuf[1], float, L.fbuf[1]);
    TAKE(line, float, L.line);
    TAKE(ybuf, float, L.ybuf);
    TAKE(ptmp, float, L.ptmp);
    TAKE(bits[0], uint64_t, L.bits[0]);
    TAKE(bits[1], uint64_t, L.bits[1]);
    TAKE(cols, uint64_t, L.cols);
    TAKE(shortcut, float, L.shortcut);
    TAKE(acc, float, L.acc);
    TAKE(feat, float, L.feat);
    TAKE(logits, float, L.logits);
    p = c->work; /* the fold's buffers */
    TAKE(bsum, double, L.bsum);
    TAKE(bcount, int64_t, L.bcount);
    TAKE(row, double, L.row);
    p = c->work; /* the refresh's */
    TAKE(factor, double, L.factor);
    TAKE(tmp, double, L.tmp);
    TAKE(lvec, double, L.lvec); /* the leave-one-out pass's, past the factor and tmp */
    TAKE(qtab, double, L.qtab);
    TAKE(mt, double, L.mt);
    c->chunk = (float *)(c->work + L.chunk_off);
    c->B = (int64_t)L.chunk_rows;
    c->hold = (float *)(c->work + L.loo_off);
    c->BL = (int64_t)L.loo_rows;
    p = c->work + L.work;
    TAKE(W, double, L.W);
    TAKE(b, double, L.b);
    TAKE(means, float, L.means);
    TAKE(counts, int64_t, L.counts);
    TAKE(cov, float, L.cov);
    TAKE(slogits, float, L.slogits);
#undef TAKE
    if (m->stem_weight_i8) {
        for (int64_t i = 0; i < 9 * (int64_t)m->in_c * m->stem_channels; ++i) c->stem_w[i] = (float)m->stem_weight_i8[i];
    } else {
        c->stem_w = (float *)m->stem_weight_f32; /* read only */
    }
    c->m = m;
    if (direct && arena_bytes - direct <= UINT32_MAX) {
        unsigned char *at = (unsigned char *)arena + arena_bytes - direct;
        at += (64 - (uintptr_t)at % 64) % 64;
        c->direct_at = (uint32_t)(at - (unsigned char *)arena);
        for (int32_t i = 0; i < m->num_blocks; ++i) { /* unit q of the 9 taps: half q % 2 of panel word q / 2 */
            const bnncl_block_desc *b = &m->blocks[i];
            const size_t bytes = direct_block_bytes(b);
            if (!bytes) continue;
            const int64_t nq = 9 * (b->in_channels / 32), kk = words_for(9 * (int64_t)b->in_channels);
            uint32_t *wd = (uint32_t *)(void *)at;
            for (int64_t p = 0; p < b->out_channels / BNNCL_NB; ++p)
                for (int64_t q = 0; q < nq; ++q)
                    for (int64_t j = 0; j < BNNCL_NB; ++j)
                        wd[(p * nq + q) * BNNCL_NB + j] =
                            (uint32_t)(b->panels[(p * kk + q / 2) * BNNCL_NB + j] >> (32 * (q % 2)));
            at += (bytes + 63) & ~(size_t)63;
        }
    }
    for (int32_t i = 0; i < m->num_blocks; ++i)
        if (padded_fits(m, i, &L)) c->padded |= (uint64_t)1 << i;
    { /* the ring: block 0's row of ROWS pixels spans `span` output rows; 2 more rows of stride s for its conv */
        const int64_t s0 = m->blocks[0].stride, wo0 = (m->in_w - 1) / s0 + 1, span = (ROWS - 1) / wo0 + 1;
        const int64_t ring = s0 * (span + 2), row = (int64_t)m->in_w * m->stem_channels;
        if (ring < 100 && (size_t)((ring + 1) * row) * sizeof(float) <= L.fbuf[1]) c->stem_ring = (signed char)ring;
    }
    use_path(c, best_path(), bnncl_panel_for(best_path()), L.fbuf[1]);
    c->K = m->slda_classes, c->D = m->features, c->P = (int64_t)c->D * (c->D + 1) / 2;
    if (c->K) {
        if (m->slda_means) {
            memcpy(c->means, m->slda_means, (size_t)c->K * c->D * sizeof(float));
            memcpy(c->counts, m->slda_counts, (size_t)c->K * sizeof(int64_t));
            memcpy(c->cov, m->slda_cov, (size_t)c->P * sizeof(float));
            if (m->slda_loo) memcpy(c->loo, m->slda_loo, sizeof c->loo);
        } else {
            memset(c->means, 0, (size_t)c->K * c->D * sizeof(float));
            memset(c->counts, 0, (size_t)c->K * sizeof(int64_t));
            memset(c->cov, 0, (size_t)c->P * sizeof(float));
        }
        int rc = refresh(c);
        if (rc != BNNCL_OK) return rc;
    }
    if (m->cwr) { /* its region follows the work area (W .. slogits are empty without SLDA) */
        ctx_cwr *w;
        int rc = CWR_IMPL(m)->init(m, c->work, L.work, &w);
        if (rc != BNNCL_OK) return rc;
        if ((size_t)((unsigned char *)(void *)w - (unsigned char *)arena) > UINT32_MAX) return BNNCL_E_MODEL;
        c->cwr_at = (uint32_t)((unsigned char *)(void *)w - (unsigned char *)arena);
    }
    c->magic = CTX_MAGIC;
    *out = c;
    return BNNCL_OK;
}

/* The stem addmap of row y as a full row (w x stem_channels): the model's, or for ADDMAP_NINE the row of its
 * border class built in fbuf[1] (kept while the class does not change). */
static const float *addmap_row(bnncl_ctx *c, int64_t y) {
    const bnncl_model *m = c->m;
    const int64_t h = m->in_h, w = m->in_w, oc = m->stem_channels;
    if (m->addmap_kind != BNNCL_ADDMAP_NINE) return m->stem_addmap + y * w * oc;
    const int64_t ry = y == 0 ? 0 : (y == h - 1 ? 2 : 1);
    float *row = c->fbuf[1];
    if (c->amrow_ry != ry) {
        const float *nine = m->stem_addmap + ry * 3 * oc;
        for (int64_t x = 0; x < w; ++x)
            memcpy(row + x * oc, nine + (x == 0 ? 0 : (x == w - 1 ? 2 : 1)) * oc, (size_t)oc * sizeof(float));
        c->amrow_ry = (signed char)ry;
    }
    return row;
}

/* Where the packed signs of block i's input go (the writer: the stem or block i - 1) and how block i reads them:
 * words, nw = words_for(in_channels) per pixel (bnncl_im2col_rows), or, where c->padded has bit i, the zero-padded
 * 32-bit layout of the Python engine, in_channels / 32 units per pixel with a zero border (bnncl_im2col_rows32,
 * a plain copy; the same bits): in_channels % 32 == 0 and the padded map fits in bits[i % 2] (no arena grows).
 * Pixel (y, x) at base + ((y + off) * wp + x + off) * bu uint32 units. */
typedef struct {
    uint32_t *base;
    int64_t wp, bu, off;
    int padded;
} bits_sink;

#define TB_WORDS 8 /* words of the signs of one pixel a padded writer builds on the stack (channels <= 512) */

static int padded_fits(const bnncl_model *m, int32_t i, const layout *L) {
    const bnncl_block_desc *b = &m->blocks[i];
    const size_t units = (size_t)(b->in_h + 2) * (size_t)(b->in_w + 2) * (size_t)(b->in_channels / 32);
    return b->in_channels % 32 == 0 && words_for(b->in_channels) <= TB_WORDS && units * 4 <= L->bits[i % 2];
}

/* The sink of block i's input (i = num_blocks: none); a padded one is cleared (its border must read 0). */
static bits_sink sink_for(bnncl_ctx *c, int32_t i) {
    bits_sink k = {NULL, 0, 0, 0, 0};
    if (i >= c->m->num_blocks) return k;
    const bnncl_block_desc *b = &c->m->blocks[i];
    k.base = (uint32_t *)c->bits[i % 2];
    if (c->padded >> i & 1u) {
        k.wp = b->in_w + 2, k.bu = b->in_channels / 32, k.off = 1, k.padded = 1;
        memset(k.base, 0, (size_t)((b->in_h + 2) * k.wp * k.bu) * sizeof(uint32_t));
    } else {
        k.wp = b->in_w, k.bu = 2 * words_for(b->in_channels);
    }
    return k;
}

static uint32_t *sink_at(const bits_sink *k, int64_t y, int64_t x) {
    return k->base + ((y + k->off) * k->wp + x + k->off) * k->bu;
}

/* Stem row y: the conv of that row into out (w x stem_channels floats), then per pixel * mul + addmap,
 * RPReLU and (k not NULL) the packed signs of + blocks[0].input_bias into k.  A row of the stem conv is the
 * same function of the padded image whichever rows are computed with it (bnncl_stem_lines).  On the AVX-512
 * path the stem tiles run the conv, with the epilogue in their registers (stem_fused; the same operations). */
static void stem_row(bnncl_ctx *c, int64_t y, float *out, const bits_sink *k) {
    const bnncl_model *m = c->m;
    const int64_t h = m->in_h, w = m->in_w, oc = m->stem_channels, nw = words_for(oc);
    const float *xp = c->xpad + y * (w + 2) * m->in_c; /* the padded rows y .. y + 2 as an image of height 1 */
    if (c->stem_fused) { /* signs at unit x * bu of the row (units oc / 32 .. bu - 1 zeroed) */
        const bnncl_stem_epi se = {w, m->stem_mul, addmap_row(c, y), m->stem_shift_in, m->stem_slope,
                                   m->stem_shift_out, m->blocks[0].input_bias, k ? sink_at(k, y, 0) : NULL,
                                   1, w, k ? k->bu : 0, 0};
        bnncl_stem_lines(xp, 1, w, m->in_c, c->stem_w, oc, 0, 1, out, c->acc, 1, &se);
        return;
    }
    bnncl_stem_lines(xp, 1, w, m->in_c, c->stem_w, oc, 0, 1, out, c->acc, c->stem512, NULL);
    /* the addmap row is passed per pixel at (0, 0): the stem epilogue reads no other pixel */
    bnncl_epi_args a = {1, 1, oc, h, w, oc, 1, nw, m->stem_mul, NULL, NULL, NULL,
                        m->stem_shift_in, m->stem_slope, m->stem_shift_out, m->blocks[0].input_bias};
    uint64_t tb[TB_WORDS];
    for (int64_t x = 0; x < w; ++x) {
        if (m->addmap_kind == BNNCL_ADDMAP_NINE) {
            int64_t ry = y == 0 ? 0 : (y == h - 1 ? 2 : 1), rx = x == 0 ? 0 : (x == w - 1 ? 2 : 1);
            a.addmap = m->stem_addmap + (ry * 3 + rx) * oc;
        } else {
            a.addmap = m->stem_addmap + (y * w + x) * oc;
        }
        uint32_t *at = k ? sink_at(k, y, x) : NULL;
        bnncl_epi_pixel(&a, 0, 0, 0, out + x * oc, c->shortcut, k ? (k->padded ? tb : (uint64_t *)(void *)at) : NULL,
                        c->epi512);
        if (k && k->padded) memcpy(at, tb, (size_t)k->bu * sizeof(uint32_t));
    }
}

/* Stem: the packed signs of its output (block 0's input) into bits[0]; its real values are not kept. */
static void run_stem(bnncl_ctx *c) {
    const bnncl_model *m = c->m;
    const bits_sink k = sink_for(c, 0);
    for (int64_t y = 0; y < m->in_h; ++y) stem_row(c, y, c->line, &k);
}

/* One pixel y of a 2x2-pooled output, at its corner (0 top left, 1 top right, 2 bottom left, 3 bottom right) of
 * the pool q: ((s00 + s01) + (s10 + s11)) * 0.25, as the next block's epilogue computes it (of the signs of
 * y + sign_bias when given), the pair sum s10 + s11 in t. */
static void pool_corner(float *restrict q, float *restrict t, const float *restrict y, const float *restrict sb,
                        int64_t o, int corner) {
#define POOL_V(ch) (sb ? (y[ch] + sb[ch] < 0.0f ? -1.0f : 1.0f) : y[ch])
    switch (corner) {
    case 0:
        for (int64_t ch = 0; ch < o; ++ch) q[ch] = POOL_V(ch);
        break;
    case 1:
        for (int64_t ch = 0; ch < o; ++ch) q[ch] = q[ch] + POOL_V(ch);
        break;
    case 2:
        for (int64_t ch = 0; ch < o; ++ch) t[ch] = POOL_V(ch);
        break;
    default:
        for (int64_t ch = 0; ch < o; ++ch) q[ch] = (q[ch] + (t[ch] + POOL_V(ch))) * 0.25f;
        break;
    }
#undef POOL_V
}

/* Block i: binary conv from bits[i % 2], ROWS output pixels at a time into ybuf, then per pixel the epilogue
 * (shortcut from fbuf[src], or from the recomputed stem rows when src < 0) and the packed signs into
 * bits[(i + 1) % 2]; the output is stored into fbuf[dst] as the memory plan says (full or 2x2-pooled). */
static void run_block(bnncl_ctx *c, int32_t i, int src, int dst) {
    const bnncl_model *m = c->m;
    const bnncl_block_desc *b = &m->blocks[i];
    const int64_t cin = b->in_channels, o = b->out_channels, s = b->stride;
    bnncl_conv_geom g = {c->bits[i % 2], b->in_h, b->in_w, words_for(cin), 3, 3, cin, s, 1, 0, 0, 0,
                         c->padded >> i & 1u ? (const uint32_t *)c->bits[i % 2] : NULL, b->in_h + 2, b->in_w + 2,
                         cin / 32};
    g.ho = (b->in_h - 1) / s + 1, g.wo = (b->in_w - 1) / s + 1, g.kk = words_for(9 * cin);
    const bnncl_epi e = {BNNCL_OUT_FLOAT, 9 * cin, o, b->scale, b->bias, NULL, NULL, c->ybuf, o};
    const int64_t pixels = g.ho * g.wo, npanels = (o + BNNCL_NB - 1) / BNNCL_NB;
    const int last = i + 1 == m->num_blocks, pool = pooled_out(m, i);
    const float *sign_bias = pool && m->blocks[i + 1].binary_input ? m->blocks[i + 1].input_bias : NULL;
    const int64_t nw = words_for(o), pw = g.wo / 2;
    const bits_sink k = sink_for(c, i + 1);
    uint64_t tb[TB_WORDS];
    float *out = c->fbuf[dst], *t = c->ptmp;
    /* the shortcut's source: the stem rows (recomputed), the full input map, or its 2x2 averages (stride 2;
     * the signs already taken when binarized) read as a stride-1 map */
    bnncl_epi_args a = {g.ho, g.wo, o, b->in_h, b->in_w, cin, s, nw, NULL, NULL, NULL,
                        b->binary_input ? b->input_bias : NULL, b->shift_in, b->slope, b->shift_out,
                        last ? NULL : m->blocks[i + 1].input_bias};
    if (src < 0) {
        a.src = c->line, a.h = s;
    } else {
        a.src = c->fbuf[src];
        if (s == 2) a.h = g.ho, a.w = g.wo, a.stride = 1, a.src_bias = NULL;
    }
#if defined(__GNUC__) && defined(__x86_64__)
    /* the AVX-512 direct kernel with the block epilogue in its registers, as the Python engine runs this block
     * there (bit-identical): its weights copied into the arena, the padded input, a full output map (a pooled
     * one is the glue's; an in-place block reads each pixel's shortcut before it writes that pixel) */
    if (c->direct_at && c->path == BNNCL_PATH_AVX512 && g.img && direct_block_bytes(b) && !pool && src >= 0) {
        const unsigned char *wd = (const unsigned char *)c + c->direct_at;
        for (int32_t j = 0; j < i; ++j) wd += (direct_block_bytes(&m->blocks[j]) + 63) & ~(size_t)63;
        int64_t toff[9 * 2 * TB_WORDS];
        bnncl_direct_offsets(3, 3, g.wp, g.u, toff);
        bnncl_block_epi be = {a.src, a.h, a.w, cin, a.stride, a.src_bias, b->shift_in, b->slope, b->shift_out,
                              a.next_bias, NULL, 0, 0, 0, 0};
        if (!last) be.bits = k.base, be.bhp = g.ho + 2 * k.off, be.bwp = k.wp, be.bu = k.bu, be.boff = k.off;
        const bnncl_direct d = {g.img, g.hp, g.wp, g.u, s, g.ho, g.wo, 9 * g.u, toff, (const uint32_t *)(const void *)wd,
                                &be};
        const bnncl_epi eb = {BNNCL_OUT_BLOCK, 9 * cin, o, b->scale, b->bias, NULL, NULL, out, o};
        bnncl_direct_avx512(&d, 0, pixels, &eb);
        return;
    }
#endif
    /* the AVX-512 kernel reads the panels with aligned loads */
    const bnncl_panel_fn panel = (uintptr_t)b->panels % 64 ? bnncl_panel_scalar : c->panel;
    int64_t stem_oy = -1;
    /* block 0 with the stem ring: the stem rows (signs and real values) computed as the conv needs them */
    const int64_t ring = src < 0 ? c->stem_ring : 0, row = b->in_w * cin;
    float *rows_at = c->fbuf[1] + row; /* past the addmap row */
    int64_t stem_done = 0;
    bits_sink k0 = {NULL, 0, 0, 0, 0};
    if (ring) k0 = sink_for(c, 0);
    for (int64_t r0 = 0; r0 < pixels; r0 += ROWS) {
        int64_t rows = pixels - r0 < ROWS ? pixels - r0 : ROWS;
        if (ring) { /* input rows up to s * oy + 1 of the last pixel (3 x 3, padding 1) */
            int64_t need = s * ((r0 + rows - 1) / g.wo) + 2;
            if (need > b->in_h) need = b->in_h;
            for (; stem_done < need; ++stem_done) stem_row(c, stem_done, rows_at + (stem_done % ring) * row, &k0);
        }
        if (g.img)
            bnncl_im2col_rows32(&g, r0, rows, c->cols);
        else
            bnncl_im2col_rows(&g, r0, rows, c->cols);
        for (int64_t p = 0; p < npanels; ++p)
            panel(c->cols, rows, g.kk, b->panels + p * g.kk * BNNCL_NB, p * BNNCL_NB, 0, &e);
        /* the epilogue by runs of pixels within one output row (bnncl_epi_run); their signs straight into the
         * sink where it takes whole words per pixel, else into cols (read by now) and copied unit by unit */
        int64_t oy = r0 / g.wo, ox = r0 % g.wo;
        for (int64_t r = 0; r < rows;) {
            const int64_t n = rows - r < g.wo - ox ? rows - r : g.wo - ox;
            float *y = c->ybuf + r * o;
            if (src < 0 && oy != stem_oy) { /* the s stem rows of this output row, contiguous (ring % s == 0) */
                if (ring)
                    a.src = rows_at + (s * oy % ring) * row;
                else
                    for (int64_t q = 0; q < s; ++q) stem_row(c, s * oy + q, c->line + q * row, NULL);
                stem_oy = oy;
            }
            const int via_cols = !last && k.padded && k.bu % 2;
            uint64_t *bw = last ? NULL : (via_cols ? (nw <= g.kk ? c->cols : tb) : (uint64_t *)(void *)sink_at(&k, oy, ox));
            for (int64_t i = 0; i < n; i += bw == tb ? 1 : n) { /* tb: one pixel at a time (nw > kk) */
                const int64_t m = bw == tb ? 1 : n;
                bnncl_epi_run(&a, 0, src < 0 ? 0 : oy, ox + i, m, y + i * o, c->shortcut,
                              bw == NULL ? NULL : (bw == tb ? tb : bw + (via_cols ? 0 : i * nw)), nw, c->epi512);
                for (int64_t p = 0; via_cols && p < m; ++p)
                    memcpy(sink_at(&k, oy, ox + i + p), (bw == tb ? tb : bw + p * nw), (size_t)k.bu * sizeof(uint32_t));
            }
            for (int64_t p = 0; pool && p < n; ++p)
                pool_corner(out + ((oy / 2) * pw + (ox + p) / 2) * o, t, y + p * o, sign_bias, o,
                            (int)(oy % 2) * 2 + (int)((ox + p) % 2));
            r += n, ox += n;
            if (ox == g.wo) ox = 0, ++oy;
        }
        /* the full map: the rows at once (an in-place block has read their shortcuts by now) */
        if (!pool) memcpy(out + r0 * o, c->ybuf, (size_t)(rows * o) * sizeof(float));
    }
}

/* The frozen forward of one image: the pooled features in c->feat. */
static void forward(bnncl_ctx *c, const uint8_t *image) {
    const bnncl_model *m = c->m;
    int64_t fl[2];
    int dst[MAX_BLOCKS], cur = -1;
    float_plan(m, fl, dst);
    c->amrow_ry = -1; /* block 1 writes over the addmap row in fbuf[1] */
    bnncl_stem_pad_u8(image, 1, m->in_h, m->in_w, m->in_c, c->xpad);
    if (!c->stem_ring) run_stem(c);
    for (int32_t i = 0; i < m->num_blocks; ++i) {
        run_block(c, i, cur, dst[i]);
        cur = dst[i];
    }
    const bnncl_block_desc *b = &m->blocks[m->num_blocks - 1];
    const int64_t h = (b->in_h - 1) / b->stride + 1, w = (b->in_w - 1) / b->stride + 1;
    bnncl_tail_gap(c->fbuf[cur], 1, h * w, m->features, 0, 0.0f, 0.0f, c->feat, BNNCL_PATH_SCALAR);
}

static int ctx_ok(const bnncl_ctx *c) { return c->magic == CTX_MAGIC && c->m; }

size_t bnncl_num_scores(const bnncl_ctx *c) {
    if (!c || !ctx_ok(c)) return 0;
    if (cwr_of(c) && CWR_IMPL(c->m)->seen(cwr_of(c))) return CWR_IMPL(c->m)->classes(cwr_of(c));
    return c->seen ? (size_t)c->K : (size_t)c->m->num_classes;
}

int bnncl_features(bnncl_ctx *c, const uint8_t *image, size_t image_bytes, float *features, size_t nfeatures) {
    if (!c || !image || !features) return BNNCL_E_NULL;
    if (!ctx_ok(c)) return BNNCL_E_CTX;
    const bnncl_model *m = c->m;
    if (image_bytes != (size_t)m->in_h * m->in_w * m->in_c || nfeatures < (size_t)m->features) return BNNCL_E_SIZE;
    forward(c, image);
    memcpy(features, c->feat, (size_t)m->features * sizeof(float));
    return BNNCL_OK;
}

int bnncl_predict(bnncl_ctx *c, const uint8_t *image, size_t image_bytes, int32_t *cls, float *scores,
                  size_t nscores) {
    if (!c || !image || !cls) return BNNCL_E_NULL;
    if (!ctx_ok(c)) return BNNCL_E_CTX;
    const bnncl_model *m = c->m;
    if (image_bytes != (size_t)m->in_h * m->in_w * m->in_c) return BNNCL_E_SIZE;
    if (scores && nscores < bnncl_num_scores(c)) return BNNCL_E_SIZE;
    if (c->seen && !c->ready) return BNNCL_E_NUMERIC;
    forward(c, image);
    if (cwr_of(c) && CWR_IMPL(m)->seen(cwr_of(c))) return CWR_IMPL(m)->predict(cwr_of(c), c->feat, cls, scores);
    if (c->seen) { /* SLDA: logits = x . W[k] + b[k] in float64 (StreamingLDA.logits), argmax over seen classes */
        const int64_t D = c->D;
        int32_t best = -1;
        for (int32_t k = 0; k < c->K; ++k) {
            const double *w = c->W + k * D;
            double s = 0.0;
            for (int64_t d = 0; d < D; ++d) s += (double)c->feat[d] * w[d];
            c->slogits[k] = (float)(s + c->b[k]);
            if (c->counts[k] > 0 && (best < 0 || c->slogits[k] > c->slogits[best])) best = k;
        }
        *cls = best;
        if (scores) memcpy(scores, c->slogits, (size_t)c->K * sizeof(float));
        return BNNCL_OK;
    }
    bnncl_matmul_f32(c->feat, m->head, 1, m->features, m->num_classes, c->logits, BNNCL_PATH_SCALAR);
    int32_t best = 0;
    for (int32_t j = 1; j < m->num_classes; ++j)
        if (c->logits[j] > c->logits[best]) best = j;
    *cls = m->class_ids[best];
    if (scores) memcpy(scores, c->logits, (size_t)m->num_classes * sizeof(float));
    return BNNCL_OK;
}

/* ---- streaming LDA ---------------------------------------------------------------------------- */

/* index of (i, j), i <= j, in the upper triangle packed row by row (numpy.triu_indices order) */
static int64_t up_index(int64_t D, int64_t i, int64_t j) { return i * D - i * (i - 1) / 2 + (j - i); }
/* index of (i, j), j <= i, in the lower triangle packed row by row */
static int64_t lo_index(int64_t i, int64_t j) { return i * (i + 1) / 2 + j; }

/* a . b in 8 interleaved partial sums s[l] (elements i = l mod 8), added ((s0 + s1) + (s2 + s3)) + ((s4 + s5) +
 * (s6 + s7)): a shorter dependency chain than one running sum.  On x86-64 CPUs with AVX-512 the 8 sums are the
 * lanes of one register (the same operations on each: the same result). */
static double dot8_portable(const double *a, const double *b, int64_t n) {
    double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) s[l] += a[i + l] * b[i + l];
    for (; i < n; ++i) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static double dot8_avx512(const double *a, const double *b, int64_t n) {
    __m512d v = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) v = _mm512_add_pd(v, _mm512_mul_pd(_mm512_loadu_pd(a + i), _mm512_loadu_pd(b + i)));
    double s[8];
    _mm512_storeu_pd(s, v);
    for (; i < n; ++i) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}
#endif

static double dot4(const double *a, const double *b, int64_t n) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (n >= 16 && __builtin_cpu_supports("avx512f")) return dot8_avx512(a, b, n);
#endif
    return dot8_portable(a, b, n);
}

/* L L^T = (1 - eps) Sigma + eps I into c->factor (lower triangle row by row; Cholesky-Banachiewicz). */
static int factorize(bnncl_ctx *c, double eps) {
    const int64_t D = c->D;
    double *L = c->factor;
    for (int64_t i = 0; i < D; ++i)
        for (int64_t j = 0; j <= i; ++j)
            L[lo_index(i, j)] = (1.0 - eps) * (double)c->cov[up_index(D, j, i)] + (i == j ? eps : 0.0);
    for (int64_t i = 0; i < D; ++i) {
        double *li = L + lo_index(i, 0);
        for (int64_t j = 0; j <= i; ++j) {
            const double *lj = L + lo_index(j, 0);
            const double s = li[j] - dot4(li, lj, j);
            if (i == j) {
                if (!(s > 0.0) || !isfinite(s)) return BNNCL_E_NUMERIC;
                li[i] = sqrt(s);
            } else {
                li[j] = s / lj[j];
            }
        }
    }
    return BNNCL_OK;
}

/* tr(Lambda Sigma) = (D - eps tr(Lambda)) / (1 - eps) of the factor of eps, tr(Lambda) = |L^-1|_F^2 column by
 * column (c->tmp). */
static double spread_of(bnncl_ctx *c, double eps) {
    const int64_t D = c->D;
    const double *L = c->factor;
    double *z = c->tmp, tr_inv = 0.0;
    for (int64_t i = 0; i < D; ++i) {
        z[i] = 1.0 / L[lo_index(i, i)];
        double col = z[i] * z[i];
        for (int64_t r = i + 1; r < D; ++r) {
            const double *lr = L + lo_index(r, 0);
            z[r] = -dot4(lr + i, z + i, r - i) / lr[r];
            col += z[r] * z[r];
        }
        tr_inv += col;
    }
    return ((double)D - eps * tr_inv) / (1.0 - eps);
}

/* z = L^-1 v (forward substitution, in place: z may be v) with the factor in c->factor. */
static void solve_lower(const bnncl_ctx *c, double *z) {
    const double *L = c->factor;
    for (int64_t i = 0; i < c->D; ++i) {
        const double *li = L + lo_index(i, 0);
        z[i] = (z[i] - dot4(li, z, i)) / li[i];
    }
}

/* StreamingLDA.effective_shrinkage: the setting, raised while the rarest seen class (nmin features) is small:
 * while nmin <= LOO_MAX_COUNT and some leave-one-out count is nonzero, the grid value with the most right
 * answers (ties: the one nearest to the fallback rule on a log scale, the first of equals), else the rule
 * RARE_CLASS_SHRINKAGE * RARE_CLASS_COUNT / (nmin + RARE_CLASS_COUNT). */
static double effective_shrinkage(const bnncl_ctx *c, int64_t nmin) {
    double rule = RARE_CLASS_SHRINKAGE * RARE_CLASS_COUNT / (double)(nmin + RARE_CLASS_COUNT);
    int64_t most = 0;
    for (int j = 0; j < GRID; ++j)
        if (c->loo[j] > most) most = c->loo[j];
    if (nmin <= LOO_MAX_COUNT && most > 0) {
        const double target = log(rule);
        int best = -1;
        double dist = 0.0;
        for (int j = 0; j < GRID; ++j) {
            if (c->loo[j] != most) continue;
            const double d = fabs(log(shrinkage_grid[j]) - target);
            if (best < 0 || d < dist) best = j, dist = d;
        }
        rule = shrinkage_grid[best];
    }
    return rule > c->m->slda_shrinkage ? rule : c->m->slda_shrinkage;
}

/* StreamingLDA.classifier: eps = effective_shrinkage, L L^T = (1 - eps) Sigma + eps I (in c->factor),
 * W[k] = L^-T L^-1 mu[k], spread = tr(Lambda Sigma) = (D - eps tr(Lambda)) / (1 - eps),
 * b[k] = -0.5 (mu[k] . W[k] - spread / (n[k] + n0)). */
static int refresh(bnncl_ctx *c) {
    const int64_t K = c->K, D = c->D;
    int64_t nmin = -1;
    for (int64_t k = 0; k < K; ++k)
        if (c->counts[k] > 0 && (nmin < 0 || c->counts[k] < nmin)) nmin = c->counts[k];
    c->seen = nmin > 0;
    c->ready = 0;
    c->eps = c->m->slda_shrinkage;
    if (!c->seen) return BNNCL_OK;
    const double eps = c->eps = effective_shrinkage(c, nmin);
    int rc = factorize(c, eps);
    if (rc != BNNCL_OK) return rc;
    const double *L = c->factor;
    const double spread = spread_of(c, eps);
    double *z = c->tmp;
    for (int64_t k = 0; k < K; ++k) {
        const float *mu = c->means + k * D;
        double *w = c->W + k * D;
        for (int64_t i = 0; i < D; ++i) z[i] = (double)mu[i];
        solve_lower(c, z); /* L z = mu */
        for (int64_t i = D - 1; i >= 0; --i) { /* L^T w = z, by rows of L (contiguous): z[0 .. i) -= w[i] L[i] */
            const double *li = L + lo_index(i, 0);
            const double wi = w[i] = z[i] / li[i];
            for (int64_t r = 0; r < i; ++r) z[r] -= wi * li[r];
        }
        double dot = 0.0;
        for (int64_t i = 0; i < D; ++i) dot += (double)mu[i] * w[i];
        c->b[k] = -0.5 * (dot - spread / ((double)c->counts[k] + SMALL_SAMPLE_PRIOR));
    }
    c->ready = 1;
    return BNNCL_OK;
}

/* Whether a feature of class y is tallied: its class holds 2 .. LOO_MAX_COUNT features now. */
static int tallied(const bnncl_ctx *c, int32_t y) { return c->counts[y] >= 2 && c->counts[y] <= LOO_MAX_COUNT; }

/* StreamingLDA._count_leave_one_out on the state after a whole learn call: each image of the call whose class
 * c now holds n = 2 .. LOO_MAX_COUNT features is scored against every seen class k, with
 *     score_k = mu_k . u - q_k / 2 + spread / (2 (n_k + n0)),   u = A^-1 x,  q_k = mu_k . A^-1 mu_k,
 * for A = (1 - eps) Sigma + eps I, eps each grid value; its own class with the mean taken without it,
 * mu' = (n mu_c - x) / (n - 1):  mu' . u = (n mu_c . u - x . u) / (n - 1),
 * mu' . A^-1 mu' = (n^2 q_c - 2 n mu_c . u + x . u) / (n - 1)^2, and n - 1 for n_k.  A right answer (own score
 * >= every other seen class's) adds one to loo[eps].  Python works in the eigenbasis of Sigma (eigenvalues
 * clipped at 0); here Sigma is reduced once (per hold, below) to tridiagonal form T = Q^T Sigma Q by Householder
 * reflections (float64, as an eigensolver begins), so A = Q M Q^T with M = (1 - eps) T + eps I tridiagonal:
 * the means and each image are taken into that basis once (mu~ = Q^T mu, x~ = Q^T x; O(D^2) each) and per grid
 * value everything is O(D): the LDL^T pivots of M, u~ = M^-1 x~, mu . A^-1 x = mu~ . u~, q_k = mu~_k . M^-1 mu~_k,
 * and spread = tr(A^-1 Sigma) = (D - eps tr(M^-1)) / (1 - eps), tr(M^-1) from the forward and backward pivots:
 * the same scores up to rounding.  The features are held in c->hold, which the reduction does not reach, up to
 * BL at a time: moved there from c->chunk when the call was one chunk (in_chunk) and they fit, else their
 * forwards run again (and Sigma is reduced again for each hold: the same T, bit for bit).  Where the hold has room
 * past the held features (an arena of bnncl_arena_size_learn bytes), each grid value's solve factors (the forward
 * multipliers and reciprocal pivots) are computed once per hold instead of per image, the images are taken into
 * the reduced basis LOO_GROUP at a time and two grid values are solved at once: the same values either way.  A grid
 * value whose M has a pivot <= 0 counts nothing (Python clips negative eigenvalues at 0 instead; only a Sigma with
 * an eigenvalue below -eps / (1 - eps) in rounding differs). */

/* T = Q^T Sigma Q into c->factor (lower triangle packed row by row): d_i = T[i][i] at (i, i), e_i = T[i + 1][i] at
 * (i + 1, i); Q = H_0 H_1 ... H_{D-3}, H_k = I - tau_k v_k v_k^T, v_k zero above k + 1, v_k[k + 1] = 1 and
 * v_k[r] at (r, k) for r >= k + 2; tau_k in c->tmp (0: H_k = I).  Scratch: the first two vectors of c->lvec. */
static void tridiagonalize(bnncl_ctx *c) {
    const int64_t D = c->D;
    double *A = c->factor, *tau = c->tmp, *p = c->lvec, *v = c->lvec + D;
    for (int64_t i = 0; i < D; ++i)
        for (int64_t j = 0; j <= i; ++j) A[lo_index(i, j)] = (double)c->cov[up_index(D, j, i)];
    for (int64_t k = 0; k + 2 < D; ++k) {
        const double alpha = A[lo_index(k + 1, k)];
        double xn = 0.0;
        for (int64_t r = k + 2; r < D; ++r) xn += A[lo_index(r, k)] * A[lo_index(r, k)];
        tau[k] = 0.0;
        if (xn == 0.0) continue; /* the column is reduced already: e_k = alpha */
        const double beta = alpha >= 0.0 ? -sqrt(alpha * alpha + xn) : sqrt(alpha * alpha + xn);
        const double t = tau[k] = (beta - alpha) / beta, scale = 1.0 / (alpha - beta);
        A[lo_index(k + 1, k)] = beta;
        v[k + 1] = 1.0;
        for (int64_t r = k + 2; r < D; ++r) v[r] = A[lo_index(r, k)] *= scale;
        /* the trailing block B (rows and columns k + 1 ..) <- H B H: p = tau B v, w = p - (tau / 2) (p . v) v,
         * B -= v w^T + w v^T */
        for (int64_t r = k + 1; r < D; ++r) p[r] = 0.0;
        for (int64_t r = k + 1; r < D; ++r) {
            const double *ar = A + lo_index(r, 0), vr = v[r];
            double s = 0.0;
            for (int64_t j = k + 1; j < r; ++j) {
                s += ar[j] * v[j];
                p[j] += ar[j] * vr;
            }
            p[r] += s + ar[r] * vr;
        }
        double pv = 0.0;
        for (int64_t r = k + 1; r < D; ++r) pv += (p[r] *= t) * v[r];
        const double h = 0.5 * t * pv;
        for (int64_t r = k + 1; r < D; ++r) p[r] -= h * v[r];
        for (int64_t r = k + 1; r < D; ++r) {
            double *ar = A + lo_index(r, 0);
            const double vr = v[r], wr = p[r];
            for (int64_t j = k + 1; j <= r; ++j) ar[j] -= vr * p[j] + wr * v[j];
        }
    }
}

/* Y <- Q^T Y (H_0 first) with the reflectors of tridiagonalize, for the n vectors of D doubles in Y: each
 * reflector's column (strided in the packed factor) gathered once into col (D doubles of scratch), then applied
 * to every vector with contiguous loops. */
static void to_tridiagonal_basis(const bnncl_ctx *c, double *Y, int64_t n, double *col) {
    const int64_t D = c->D;
    const double *A = c->factor, *tau = c->tmp;
    for (int64_t k = 0; k + 2 < D; ++k) {
        if (tau[k] == 0.0) continue;
        int64_t at = lo_index(k + 2, k);
        for (int64_t r = k + 2; r < D; at += ++r) col[r] = A[at];
        const double *v = col + k + 2;
        const int64_t len = D - k - 2;
        for (int64_t q = 0; q < n; ++q) {
            double *y = Y + q * D;
            const double s = (y[k + 1] + dot4(v, y + k + 2, len)) * tau[k];
            y[k + 1] -= s;
            for (int64_t r = 0; r < len; ++r) y[k + 2 + r] -= s * v[r];
        }
    }
}

/* The LDL^T pivots of M = (1 - eps) T + eps I into piv; 0 when one is not > 0 (M not positive definite). */
static int tridiagonal_pivots(const bnncl_ctx *c, double eps, double *piv) {
    const double *A = c->factor, g = 1.0 - eps;
    double prev = 0.0;
    for (int64_t i = 0; i < c->D; ++i) {
        double dv = g * A[lo_index(i, i)] + eps;
        if (i) {
            const double b = g * A[lo_index(i, i - 1)];
            dv -= b * b / prev;
        }
        if (!(dv > 0.0) || !isfinite(dv)) return 0;
        piv[i] = prev = dv;
    }
    return 1;
}

/* tr(Lambda Sigma) = (D - eps tr(M^-1)) / (1 - eps): (M^-1)_ii = 1 / (piv_i - b_i^2 / bpiv_{i+1}) with bpiv the
 * pivots of M eliminated from the last row up. */
static double tridiagonal_spread(const bnncl_ctx *c, double eps, const double *piv) {
    const int64_t D = c->D;
    const double *A = c->factor, g = 1.0 - eps;
    double tr = 1.0 / piv[D - 1], bpiv = g * A[lo_index(D - 1, D - 1)] + eps;
    for (int64_t i = D - 2; i >= 0; --i) {
        const double b = g * A[lo_index(i + 1, i)], t = b * b / bpiv;
        tr += 1.0 / (piv[i] - t);
        bpiv = g * A[lo_index(i, i)] + eps - t;
    }
    return ((double)D - eps * tr) / (1.0 - eps);
}

/* u = M^-1 y (u may not be y) and y . u, with the pivots of M: forward with the multipliers l_i = g e_{i-1} /
 * piv_{i-1}, backward times 1 / piv_i (divisions off the chain from one u to the next). */
static double tridiagonal_solve(const bnncl_ctx *c, double eps, const double *piv, const double *y, double *u) {
    const int64_t D = c->D;
    const double *A = c->factor, g = 1.0 - eps;
    u[0] = y[0];
    for (int64_t i = 1; i < D; ++i) u[i] = y[i] - g * A[lo_index(i, i - 1)] / piv[i - 1] * u[i - 1];
    u[D - 1] *= 1.0 / piv[D - 1];
    for (int64_t i = D - 2; i >= 0; --i) u[i] = (u[i] - g * A[lo_index(i + 1, i)] * u[i + 1]) * (1.0 / piv[i]);
    return dot4(y, u, D);
}

/* The multipliers and reciprocal pivots of tridiagonal_solve, computed once: pre[i] = l_i (pre[0] unused),
 * pre[D + i] = 1 / piv_i (2 D doubles). */
static void tridiagonal_prepare(const bnncl_ctx *c, double eps, const double *piv, double *pre) {
    const int64_t D = c->D;
    const double *A = c->factor, g = 1.0 - eps;
    pre[0] = 0.0;
    for (int64_t i = 1; i < D; ++i) pre[i] = g * A[lo_index(i, i - 1)] / piv[i - 1];
    for (int64_t i = 0; i < D; ++i) pre[D + i] = 1.0 / piv[i];
}

/* tridiagonal_solve with those (the same operations on the same values: the same u). */
static double tridiagonal_solve_pre(const bnncl_ctx *c, double eps, const double *pre, const double *y, double *u) {
    const int64_t D = c->D;
    const double *A = c->factor, *ip = pre + D, g = 1.0 - eps;
    u[0] = y[0];
    for (int64_t i = 1; i < D; ++i) u[i] = y[i] - pre[i] * u[i - 1];
    u[D - 1] *= ip[D - 1];
    for (int64_t i = D - 2; i >= 0; --i) u[i] = (u[i] - g * A[lo_index(i + 1, i)] * u[i + 1]) * ip[i];
    return dot4(y, u, D);
}

/* tridiagonal_solve_pre of two grid values at once (their chains interleaved; each the same operations). */
static void tridiagonal_solve_pre2(const bnncl_ctx *c, double eps_a, const double *pa, double eps_b, const double *pb,
                                   const double *y, double *ua, double *ub, double *xu) {
    const int64_t D = c->D;
    const double *A = c->factor, *ia = pa + D, *ib = pb + D, ga = 1.0 - eps_a, gb = 1.0 - eps_b;
    ua[0] = ub[0] = y[0];
    for (int64_t i = 1; i < D; ++i) ua[i] = y[i] - pa[i] * ua[i - 1], ub[i] = y[i] - pb[i] * ub[i - 1];
    ua[D - 1] *= ia[D - 1], ub[D - 1] *= ib[D - 1];
    for (int64_t i = D - 2; i >= 0; --i) {
        const double e = A[lo_index(i + 1, i)];
        ua[i] = (ua[i] - ga * e * ua[i + 1]) * ia[i];
        ub[i] = (ub[i] - gb * e * ub[i + 1]) * ib[i];
    }
    xu[0] = dot4(y, ua, D), xu[1] = dot4(y, ub, D);
}

/* The leave-one-out test of one image of class y for grid value j, u = M^-1 x~ and xu = x~ . u: its own class's
 * score with its mean taken without it against every other seen class's; a right answer adds one to loo[j]. */
static void loo_score(bnncl_ctx *c, int32_t y, int j, double xu, const double *u) {
    const int64_t K = c->K, D = c->D;
    const double spread = c->loo_spread[j], *qt = c->qtab + j * K;
    double own = 0.0, other = -INFINITY;
    for (int64_t k = 0; k < K; ++k) {
        if (c->counts[k] <= 0) continue;
        const double mu_u = dot4(c->mt + k * D, u, D);
        const double nk = (double)c->counts[k];
        if (k == y) {
            const double n1 = nk - 1.0;
            own = (nk * mu_u - xu) / n1 - 0.5 * (nk * nk * qt[k] - 2.0 * nk * mu_u + xu) / (n1 * n1) +
                  0.5 * spread / (n1 + SMALL_SAMPLE_PRIOR);
        } else {
            const double sk = mu_u - 0.5 * qt[k] + 0.5 * spread / (nk + SMALL_SAMPLE_PRIOR);
            if (sk > other) other = sk;
        }
    }
    if (own >= other) c->loo[j] += 1;
}

static void count_leave_one_out(bnncl_ctx *c, const uint8_t *images, size_t n, size_t image_bytes,
                                const int32_t *labels, int in_chunk) {
    const int64_t K = c->K, D = c->D;
    int64_t total = 0;
    for (size_t i = 0; i < n; ++i) total += tallied(c, labels[i]);
    if (!total) return;
    double *xt = c->lvec, *piv = c->lvec + D, *u = c->lvec + 2 * D;
    int first = 1;
    for (size_t at = 0; at < n;) {
        const size_t from = at;
        int64_t held = 0;
        if (in_chunk && total <= c->BL) { /* c->hold >= c->chunk: moved last first, none is overwritten unread */
            held = total;
            for (size_t i = n; i-- > 0;) {
                if (!tallied(c, labels[i])) continue;
                --total;
                memmove(c->hold + total * D, c->chunk + i * D, (size_t)D * sizeof(float));
            }
            at = n;
        }
        for (; at < n && held < c->BL; ++at) {
            if (!tallied(c, labels[at])) continue;
            forward(c, images + at * image_bytes);
            memcpy(c->hold + held * D, c->feat, (size_t)D * sizeof(float));
            ++held;
        }
        if (!held) break;
        /* the pivots of each grid value, kept past the held features when the hold has room for them (else each
         * image computes them again: the same values) */
        const size_t held_bytes = ((size_t)(held * D) * sizeof(float) + 7) & ~(size_t)7;
        double *pcache = (size_t)(c->BL * D) * sizeof(float) >= held_bytes + (size_t)(2 * GRID * D) * sizeof(double)
                             ? (double *)(void *)((unsigned char *)c->hold + held_bytes)
                             : NULL;
        /* and past them a group of up to LOO_GROUP images taken into the reduced basis together (else one, in xt) */
        double *group = xt;
        int64_t G = 1;
        if (pcache) {
            const size_t left =
                ((size_t)(c->BL * D) * sizeof(float) - held_bytes) / sizeof(double) - (size_t)(2 * GRID * D);
            const int64_t g = (int64_t)(left / (size_t)D) < LOO_GROUP ? (int64_t)(left / (size_t)D) : LOO_GROUP;
            if (g > 1) group = pcache + 2 * GRID * D, G = g;
        }
        tridiagonalize(c); /* again for each hold: the forwards between holds run over it */
        for (int64_t k = 0; k < K; ++k) /* mu~_k (0 for a class not seen), and q_k per grid value below */
            for (int64_t i = 0; i < D; ++i) c->mt[k * D + i] = c->counts[k] > 0 ? (double)c->means[k * D + i] : 0.0;
        to_tridiagonal_basis(c, c->mt, K, u);
        for (int j = 0; j < GRID; ++j) {
            const double eps = shrinkage_grid[j];
            if (!first && isnan(c->loo_spread[j])) continue;
            if (!tridiagonal_pivots(c, eps, piv)) {
                c->loo_spread[j] = NAN;
                continue;
            }
            if (first) c->loo_spread[j] = tridiagonal_spread(c, eps, piv);
            if (pcache) tridiagonal_prepare(c, eps, piv, pcache + 2 * j * D);
            for (int64_t k = 0; k < K; ++k)
                if (c->counts[k] > 0) c->qtab[j * K + k] = tridiagonal_solve(c, eps, piv, c->mt + k * D, u);
        }
        size_t i = from;
        for (int64_t h = 0; h < held; ++h, ++i) {
            const int64_t q = h % G;
            if (!q) { /* the next group of held images into the reduced basis */
                const int64_t gn = held - h < G ? held - h : G;
                for (int64_t g = 0; g < gn; ++g)
                    for (int64_t r = 0; r < D; ++r) group[g * D + r] = (double)c->hold[(h + g) * D + r];
                to_tridiagonal_basis(c, group, gn, u);
            }
            while (!tallied(c, labels[i])) ++i; /* the image of hold row h */
            const int32_t y = labels[i];
            const double *xtq = group + q * D;
            if (pcache) { /* grid values in pairs, the second solution in piv (free here) */
                int pend = -1;
                for (int j = 0; j < GRID; ++j) {
                    if (isnan(c->loo_spread[j])) continue;
                    if (pend < 0) {
                        pend = j;
                        continue;
                    }
                    double xu[2];
                    tridiagonal_solve_pre2(c, shrinkage_grid[pend], pcache + 2 * pend * D, shrinkage_grid[j],
                                           pcache + 2 * j * D, xtq, u, piv, xu);
                    loo_score(c, y, pend, xu[0], u);
                    loo_score(c, y, j, xu[1], piv);
                    pend = -1;
                }
                if (pend >= 0)
                    loo_score(c, y, pend, tridiagonal_solve_pre(c, shrinkage_grid[pend], pcache + 2 * pend * D, xtq, u),
                              u);
                continue;
            }
            for (int j = 0; j < GRID; ++j) {
                if (isnan(c->loo_spread[j])) continue;
                tridiagonal_pivots(c, shrinkage_grid[j], piv); /* positive definite: checked above */
                loo_score(c, y, j, tridiagonal_solve(c, shrinkage_grid[j], piv, xtq, u), u);
            }
        }
        first = 0;
    }
}

/* StreamingLDA.update on the features of m <= B images, the chunk's features in c->chunk.  Per class,
 * features are taken shifted by the class's stored mean (0 for a new class): their sum and, over all classes
 * together, the sum of outer products; then scatter = Sigma n_old + sum (x - s)(x - s)^T - nb m m^T (m: the
 * batch mean of x - s) + delta delta^T na nb / (na + nb) per class seen before, all in float64.  The scatter
 * is formed one row of the upper triangle at a time (its elements in the order above: the images in turn,
 * then the classes) and rounded into the stored covariance at once, so no P-double accumulator is kept. */
static void fold_chunk(bnncl_ctx *c, int64_t m, const int32_t *labels) {
    const int64_t K = c->K, D = c->D;
    const float *F = c->chunk;
    int64_t n_old = 0;
    for (int64_t k = 0; k < K; ++k) n_old += c->counts[k];
    memset(c->bsum, 0, (size_t)(K * D) * sizeof(double));
    memset(c->bcount, 0, (size_t)K * sizeof(int64_t));
    for (int64_t i = 0; i < m; ++i) {
        const int64_t y = labels[i];
        const float *x = F + i * D, *s = c->means + y * D;
        double *sum = c->bsum + y * D;
        if (c->counts[y] > 0) {
            for (int64_t j = 0; j < D; ++j) sum[j] += (double)x[j] - (double)s[j];
        } else {
            for (int64_t j = 0; j < D; ++j) sum[j] += (double)x[j];
        }
        c->bcount[y] += 1;
    }
    for (int64_t k = 0; k < K; ++k) /* -> the batch mean of x - s */
        for (int64_t j = 0; c->bcount[k] && j < D; ++j) c->bsum[k * D + j] /= (double)c->bcount[k];
    const double total = (double)(n_old + m);
    double *row = c->row;
    for (int64_t a = 0; a < D; ++a) {
        float *cv = c->cov + up_index(D, a, a) - a; /* cv[e]: element (a, e), e >= a */
        for (int64_t e = a; e < D; ++e) row[e] = (double)cv[e] * (double)n_old;
        for (int64_t i = 0; i < m; ++i) {
            const int64_t y = labels[i];
            const float *x = F + i * D, *s = c->means + y * D;
            if (c->counts[y] > 0) {
                const double da = (double)x[a] - (double)s[a];
                for (int64_t e = a; e < D; ++e) row[e] += da * ((double)x[e] - (double)s[e]);
            } else {
                const double da = (double)x[a];
                for (int64_t e = a; e < D; ++e) row[e] += da * (double)x[e];
            }
        }
        for (int64_t k = 0; k < K; ++k) {
            const int64_t nb = c->bcount[k], na = c->counts[k];
            if (!nb) continue;
            const double *mb = c->bsum + k * D;
            for (int64_t e = a; e < D; ++e) row[e] -= mb[a] * mb[e] * (double)nb; /* within-class: - nb m m^T */
            if (na) { /* delta = batch mean - old mean = mb exactly (the shift is the old mean) */
                const double f = (double)na * (double)nb / (double)(na + nb);
                for (int64_t e = a; e < D; ++e) row[e] += mb[a] * mb[e] * f;
            }
        }
        for (int64_t e = a; e < D; ++e) cv[e] = (float)(row[e] / total);
    }
    for (int64_t k = 0; k < K; ++k) {
        const int64_t nb = c->bcount[k], na = c->counts[k];
        if (!nb) continue;
        const double *mb = c->bsum + k * D;
        float *mu = c->means + k * D;
        if (na) {
            const double g = (double)nb / (double)(na + nb);
            for (int64_t j = 0; j < D; ++j) mu[j] = (float)((double)mu[j] + mb[j] * g);
        } else {
            for (int64_t j = 0; j < D; ++j) mu[j] = (float)mb[j];
        }
        c->counts[k] = na + nb;
    }
}

/* One experience: chunks of B images in turn, each its forwards (features kept in c->chunk) then its fold;
 * then the classifier refresh.  A call of n <= B images is one exact merge (the float32 state is rounded
 * once); a longer one rounds the state between chunks (exact in exact arithmetic). */
int bnncl_learn(bnncl_ctx *c, const uint8_t *images, size_t n, size_t image_bytes, const int32_t *labels) {
    if (!c) return BNNCL_E_NULL;
    if (!ctx_ok(c)) return BNNCL_E_CTX;
    if (cwr_of(c)) return CWR_IMPL(c->m)->learn(c, cwr_of(c), images, n, image_bytes, labels);
    const bnncl_model *m = c->m;
    if (!c->K) return BNNCL_E_NO_LEARNING;
    if (image_bytes != (size_t)m->in_h * m->in_w * m->in_c) return BNNCL_E_SIZE;
    if (!n) return BNNCL_OK;
    if (!images || !labels) return BNNCL_E_NULL;
    for (size_t i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= c->K) return BNNCL_E_LABEL;
    const int64_t D = c->D;
    for (size_t at = 0; at < n; at += (size_t)c->B) {
        const int64_t cn = n - at < (size_t)c->B ? (int64_t)(n - at) : c->B;
        for (int64_t i = 0; i < cn; ++i) {
            forward(c, images + (at + (size_t)i) * image_bytes);
            for (int64_t j = 0; j < D; ++j) {
                if (!isfinite(c->feat[j])) {
                    refresh(c); /* the chunk overwrote W: solve again (the chunks before are learned) */
                    return BNNCL_E_NUMERIC;
                }
            }
            memcpy(c->chunk + i * D, c->feat, (size_t)D * sizeof(float));
        }
        fold_chunk(c, cn, labels + at);
    }
    count_leave_one_out(c, images, n, image_bytes, labels, n <= (size_t)c->B);
    return refresh(c);
}

int bnncl_slda_selection(const bnncl_ctx *c, double *shrinkage, int64_t *loo_correct) {
    if (!c || !shrinkage) return BNNCL_E_NULL;
    if (!ctx_ok(c)) return BNNCL_E_CTX;
    if (!c->K) return BNNCL_E_NO_LEARNING;
    *shrinkage = c->eps;
    if (loo_correct) memcpy(loo_correct, c->loo, sizeof c->loo);
    return BNNCL_OK;
}

/* ---- state ------------------------------------------------------------------------------------ */

static void state_header(const bnncl_ctx *c, uint8_t *h, uint32_t version) {
    put32(h, BNNCL_STATE_MAGIC), put32(h + 4, version), put32(h + 8, c->m->fingerprint);
    put32(h + 12, STRATEGY_SLDA), put32(h + 16, (uint32_t)c->K), put32(h + 20, (uint32_t)c->D);
    put32(h + 24, (uint32_t)state_payload_v(c->K, c->D, version));
    put32(h + 28, crc32_update(0, h, 28));
}

/* a signed count of the payload */
static int64_t get_i64(const uint8_t *p) { return (int64_t)get64(p); }

size_t bnncl_state_size(const bnncl_ctx *c) {
    if (c && ctx_ok(c) && cwr_of(c)) return CWR_IMPL(c->m)->state_size(cwr_of(c));
    if (!c || !ctx_ok(c) || !c->K) return 0;
    return STATE_HEADER + state_payload(c->K, c->D) + 4;
}

int bnncl_state_save(const bnncl_ctx *c, bnncl_write_fn write, void *user) {
    if (!c || !write) return BNNCL_E_NULL;
    if (!ctx_ok(c)) return BNNCL_E_CTX;
    if (cwr_of(c)) return CWR_IMPL(c->m)->state_save(cwr_of(c), c->m->fingerprint, write, user);
    if (!c->K) return BNNCL_E_NO_LEARNING;
    uint8_t h[STATE_HEADER];
    state_header(c, h, BNNCL_STATE_VERSION);
    if (write(user, h, sizeof h) != 0) return BNNCL_E_IO;
    wstream s;
    memset(&s, 0, sizeof s);
    s.fn = write, s.user = user;
    for (int64_t k = 0; k < c->K; ++k) {
        uint64_t v = (uint64_t)c->counts[k];
        w_u32(&s, (uint32_t)v), w_u32(&s, (uint32_t)(v >> 32));
    }
    for (int64_t i = 0; i < c->K * c->D; ++i) w_f32(&s, c->means[i]);
    for (int64_t i = 0; i < c->P; ++i) w_f32(&s, c->cov[i]);
    for (int j = 0; j < GRID; ++j) {
        uint64_t v = (uint64_t)c->loo[j];
        w_u32(&s, (uint32_t)v), w_u32(&s, (uint32_t)(v >> 32));
    }
    w_flush(&s);
    uint8_t t[4];
    put32(t, s.crc);
    if (s.err || write(user, t, 4) != 0) return BNNCL_E_IO;
    return BNNCL_OK;
}

int bnncl_state_load(bnncl_ctx *c, bnncl_read_fn read, void *user) {
    if (!c || !read) return BNNCL_E_NULL;
    if (!ctx_ok(c)) return BNNCL_E_CTX;
    if (cwr_of(c)) return CWR_IMPL(c->m)->state_load(cwr_of(c), c->m->fingerprint, read, user);
    if (!c->K) return BNNCL_E_NO_LEARNING;
    uint8_t h[STATE_HEADER], want[STATE_HEADER], t[4];
    if (read(user, h, sizeof h) != 0) return BNNCL_E_IO;
    const uint32_t version = get32(h + 4);
    if (get32(h) != BNNCL_STATE_MAGIC || (version != 1 && version != BNNCL_STATE_VERSION) ||
        get32(h + 28) != crc32_update(0, h, 28))
        return BNNCL_E_STATE_CORRUPT;
    state_header(c, want, version);
    if (memcmp(h, want, 28) != 0) return BNNCL_E_STATE_FOREIGN;
    const size_t payload = state_payload_v(c->K, c->D, version);
    const size_t floats_end = (size_t)(8 * c->K + 4 * c->K * c->D + 4 * c->P);
    uint8_t *buf = c->work; /* the work area holds the payload until it is checked (W and b are apart) */
    if (read(user, buf, payload) != 0 || read(user, t, 4) != 0) return BNNCL_E_IO;
    int ok = get32(t) == crc32_update(0, buf, payload);
    for (int64_t k = 0; ok && k < c->K; ++k) ok = get_i64(buf + 8 * k) >= 0;
    for (const uint8_t *q = buf + 8 * c->K; ok && q < buf + floats_end; q += 4) {
        uint32_t v = get32(q);
        float f;
        memcpy(&f, &v, 4);
        ok = isfinite(f);
    }
    for (const uint8_t *q = buf + floats_end; ok && q < buf + payload; q += 8) ok = get_i64(q) >= 0;
    if (!ok) return BNNCL_E_STATE_CORRUPT;
    for (int64_t k = 0; k < c->K; ++k) c->counts[k] = get_i64(buf + 8 * k);
    const uint8_t *p = buf + 8 * c->K;
    for (int64_t i = 0; i < c->K * c->D; ++i, p += 4) {
        uint32_t v = get32(p);
        memcpy(&c->means[i], &v, 4);
    }
    for (int64_t i = 0; i < c->P; ++i, p += 4) {
        uint32_t v = get32(p);
        memcpy(&c->cov[i], &v, 4);
    }
    for (int j = 0; j < GRID; ++j, p += 8) c->loo[j] = version >= 2 ? get_i64(p) : 0; /* version 1: none counted */
    return refresh(c);
}
