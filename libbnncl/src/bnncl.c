/* libbnncl glue: the frozen forward of one image on the C core's kernels, in a caller-provided arena.
 *
 * Per image, the stages of bnncl.device.frozen.FrozenEngine (per-layer path), each one a call of the
 * same C core function the Python extension runs, on the scalar kernel path:
 *   stem   bnncl_stem_pad_u8 + bnncl_stem_lines (float32, fixed order), then per pixel the stem
 *          epilogue (bnncl_epi_pixel: * mul + addmap, RPReLU, packed signs of + next input bias);
 *   block  bnncl_im2col_rows + bnncl_panel_scalar (y = scale * dot + bias), then per pixel the block
 *          epilogue (bnncl_epi_pixel: + shortcut, RPReLU, packed signs for the next block);
 *   head   bnncl_tail_gap (average pool, summed in order) + bnncl_matmul_f32 (fixed order).
 * No allocation: every buffer is a slice of the arena laid out by bnncl_init.
 */
#include <string.h>

#include "bnncl.h"
#include "bnncl_core.h"

/* tail_elementwise.c (C core; loaded with ctypes by the Python side, so not in bnncl_core.h) */
int bnncl_tail_gap(const float *x, int64_t b, int64_t hw, int64_t c, int quantize, float lo, float s, float *f,
                   int path);

#define CTX_MAGIC 0x58544342u    /* "BCTX" */
#define CTX_RESERVE 512u         /* arena bytes reserved for struct bnncl_ctx on every target */
#define ROWS 12                  /* output pixels per im2col block */
#define MAX_BLOCKS 64

struct bnncl_ctx {
    uint32_t magic;
    const bnncl_model *m;
    float *stem_w;      /* float32 stem weights (converted from int8, or the model's) */
    float *xpad;        /* zero-padded float copy of the image */
    float *act[2];      /* activations, ping-pong */
    uint64_t *bits[2];  /* packed signs of the next block's input, ping-pong */
    uint64_t *cols;     /* im2col rows: ROWS x max kk words */
    float *shortcut;    /* max in_channels floats */
    float *acc;         /* stem_channels floats */
    float *feat;        /* features floats */
    float *logits;      /* num_classes floats */
};

typedef char ctx_fits_reserve[sizeof(struct bnncl_ctx) <= CTX_RESERVE ? 1 : -1];

const char *bnncl_strerror(int code) {
    switch (code) {
    case BNNCL_OK: return "ok";
    case BNNCL_E_NULL: return "a required pointer is NULL";
    case BNNCL_E_MODEL: return "invalid or foreign model description";
    case BNNCL_E_ARENA_SMALL: return "arena smaller than bnncl_arena_size()";
    case BNNCL_E_ALIGN: return "arena not 8-byte aligned";
    case BNNCL_E_CTX: return "context not initialised by bnncl_init";
    case BNNCL_E_SIZE: return "wrong image size or scores buffer too short";
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
    return m->features == c && m->num_classes >= 1 && m->head && m->class_ids;
}

static size_t up16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Arena layout: sizes of the regions in the order bnncl_init lays them out. */
typedef struct {
    size_t stem_w, xpad, act, bits, cols, shortcut, acc, feat, logits;
} layout;

static void plan(const bnncl_model *m, layout *L) {
    int64_t act = (int64_t)m->in_h * m->in_w * m->stem_channels, bits = 0, kk = 0, cin = 0;
    for (int32_t i = 0; i < m->num_blocks; ++i) {
        const bnncl_block_desc *b = &m->blocks[i];
        int64_t ho = (b->in_h - 1) / b->stride + 1, wo = (b->in_w - 1) / b->stride + 1;
        int64_t in_words = (int64_t)b->in_h * b->in_w * words_for(b->in_channels);
        if (ho * wo * b->out_channels > act) act = ho * wo * b->out_channels;
        if (in_words > bits) bits = in_words;
        if (words_for(9 * (int64_t)b->in_channels) > kk) kk = words_for(9 * (int64_t)b->in_channels);
        if (b->in_channels > cin) cin = b->in_channels;
    }
    L->stem_w = m->stem_weight_i8 ? up16((size_t)(9 * m->in_c * m->stem_channels) * sizeof(float)) : 0;
    L->xpad = up16((size_t)((m->in_h + 2) * (m->in_w + 2) * m->in_c) * sizeof(float));
    L->act = up16((size_t)act * sizeof(float));
    L->bits = up16((size_t)bits * sizeof(uint64_t));
    L->cols = up16((size_t)(ROWS * kk) * sizeof(uint64_t));
    L->shortcut = up16((size_t)cin * sizeof(float));
    L->acc = up16((size_t)m->stem_channels * sizeof(float));
    L->feat = up16((size_t)m->features * sizeof(float));
    L->logits = up16((size_t)m->num_classes * sizeof(float));
}

size_t bnncl_arena_size(const bnncl_model *m) {
    if (!model_ok(m)) return 0;
    layout L;
    plan(m, &L);
    return CTX_RESERVE + L.stem_w + L.xpad + 2 * L.act + 2 * L.bits + L.cols + L.shortcut + L.acc + L.feat +
           L.logits;
}

int bnncl_init(const bnncl_model *m, void *arena, size_t arena_bytes, bnncl_ctx **out) {
    if (!m || !arena || !out) return BNNCL_E_NULL;
    *out = NULL;
    size_t need = bnncl_arena_size(m);
    if (!need) return BNNCL_E_MODEL;
    if ((uintptr_t)arena % 8) return BNNCL_E_ALIGN;
    if (arena_bytes < need) return BNNCL_E_ARENA_SMALL;
    layout L;
    plan(m, &L);
    unsigned char *p = (unsigned char *)arena;
    bnncl_ctx *c = (bnncl_ctx *)p;
    memset(c, 0, sizeof *c);
    p += CTX_RESERVE;
#define TAKE(field, type, bytes) (c->field = (type *)p, p += (bytes))
    TAKE(stem_w, float, L.stem_w);
    TAKE(xpad, float, L.xpad);
    TAKE(act[0], float, L.act);
    TAKE(act[1], float, L.act);
    TAKE(bits[0], uint64_t, L.bits);
    TAKE(bits[1], uint64_t, L.bits);
    TAKE(cols, uint64_t, L.cols);
    TAKE(shortcut, float, L.shortcut);
    TAKE(acc, float, L.acc);
    TAKE(feat, float, L.feat);
    TAKE(logits, float, L.logits);
#undef TAKE
    if (m->stem_weight_i8) {
        for (int64_t i = 0; i < 9 * (int64_t)m->in_c * m->stem_channels; ++i) c->stem_w[i] = (float)m->stem_weight_i8[i];
    } else {
        c->stem_w = (float *)m->stem_weight_f32; /* read only */
    }
    c->m = m;
    c->magic = CTX_MAGIC;
    *out = c;
    return BNNCL_OK;
}

/* Stem: conv, then per pixel * mul + addmap, RPReLU and the packed signs of + blocks[0].input_bias. */
static void run_stem(bnncl_ctx *c, const uint8_t *image) {
    const bnncl_model *m = c->m;
    const int64_t h = m->in_h, w = m->in_w, oc = m->stem_channels, nw = words_for(oc);
    bnncl_stem_pad_u8(image, 1, h, w, m->in_c, c->xpad);
    bnncl_stem_lines(c->xpad, h, w, m->in_c, c->stem_w, oc, 0, h, c->act[0], c->acc, 0, NULL);
    /* the addmap row is passed per pixel at (0, 0): the stem epilogue reads no other pixel */
    bnncl_epi_args a = {1, 1, oc, h, w, oc, 1, nw, m->stem_mul, NULL, NULL, NULL,
                        m->stem_shift_in, m->stem_slope, m->stem_shift_out, m->blocks[0].input_bias};
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
            int64_t pix = y * w + x;
            if (m->addmap_kind == BNNCL_ADDMAP_NINE) {
                int64_t ry = y == 0 ? 0 : (y == h - 1 ? 2 : 1), rx = x == 0 ? 0 : (x == w - 1 ? 2 : 1);
                a.addmap = m->stem_addmap + (ry * 3 + rx) * oc;
            } else {
                a.addmap = m->stem_addmap + pix * oc;
            }
            bnncl_epi_pixel(&a, 0, 0, 0, c->act[0] + pix * oc, c->shortcut, c->bits[0] + pix * nw, 0);
        }
}

/* Block i: binary conv from bits[cur] into act[1 - cur], then the epilogue (shortcut from act[cur]). */
static void run_block(bnncl_ctx *c, int32_t i, int cur) {
    const bnncl_model *m = c->m;
    const bnncl_block_desc *b = &m->blocks[i];
    const int64_t cin = b->in_channels, o = b->out_channels, s = b->stride;
    bnncl_conv_geom g = {c->bits[cur], b->in_h, b->in_w, words_for(cin), 3, 3, cin, s, 1, 0, 0, 0, NULL,
                         b->in_h + 2, b->in_w + 2, cin / 32};
    g.ho = (b->in_h - 1) / s + 1, g.wo = (b->in_w - 1) / s + 1, g.kk = words_for(9 * cin);
    float *y = c->act[1 - cur];
    const bnncl_epi e = {BNNCL_OUT_FLOAT, 9 * cin, o, b->scale, b->bias, NULL, NULL, y, o};
    const int64_t pixels = g.ho * g.wo, npanels = (o + BNNCL_NB - 1) / BNNCL_NB;
    for (int64_t r0 = 0; r0 < pixels; r0 += ROWS) {
        int64_t rows = pixels - r0 < ROWS ? pixels - r0 : ROWS;
        bnncl_im2col_rows(&g, r0, rows, c->cols);
        for (int64_t p = 0; p < npanels; ++p)
            bnncl_panel_scalar(c->cols, rows, g.kk, b->panels + p * g.kk * BNNCL_NB, p * BNNCL_NB, r0, &e);
    }
    const int last = i + 1 == m->num_blocks;
    const int64_t nw = words_for(o);
    bnncl_epi_args a = {g.ho, g.wo, o, b->in_h, b->in_w, cin, s, nw, NULL, NULL, c->act[cur],
                        b->binary_input ? b->input_bias : NULL, b->shift_in, b->slope, b->shift_out,
                        last ? NULL : m->blocks[i + 1].input_bias};
    for (int64_t oy = 0; oy < g.ho; ++oy)
        for (int64_t ox = 0; ox < g.wo; ++ox) {
            int64_t pix = oy * g.wo + ox;
            bnncl_epi_pixel(&a, 0, oy, ox, y + pix * o, c->shortcut, last ? NULL : c->bits[1 - cur] + pix * nw, 0);
        }
}

int bnncl_predict(bnncl_ctx *c, const uint8_t *image, size_t image_bytes, int32_t *cls, float *scores,
                  size_t nscores) {
    if (!c || !image || !cls) return BNNCL_E_NULL;
    if (c->magic != CTX_MAGIC || !c->m) return BNNCL_E_CTX;
    const bnncl_model *m = c->m;
    if (image_bytes != (size_t)m->in_h * m->in_w * m->in_c) return BNNCL_E_SIZE;
    if (scores && nscores < (size_t)m->num_classes) return BNNCL_E_SIZE;
    run_stem(c, image);
    int cur = 0;
    int64_t h = m->in_h, w = m->in_w;
    for (int32_t i = 0; i < m->num_blocks; ++i, cur = 1 - cur) {
        run_block(c, i, cur);
        h = (h - 1) / m->blocks[i].stride + 1, w = (w - 1) / m->blocks[i].stride + 1;
    }
    bnncl_tail_gap(c->act[cur], 1, h * w, m->features, 0, 0.0f, 0.0f, c->feat, BNNCL_PATH_SCALAR);
    bnncl_matmul_f32(c->feat, m->head, 1, m->features, m->num_classes, c->logits, BNNCL_PATH_SCALAR);
    int32_t best = 0;
    for (int32_t j = 1; j < m->num_classes; ++j)
        if (c->logits[j] > c->logits[best]) best = j;
    *cls = m->class_ids[best];
    if (scores) memcpy(scores, c->logits, (size_t)m->num_classes * sizeof(float));
    return BNNCL_OK;
}
