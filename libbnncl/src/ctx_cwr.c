/* libbnncl: head-only CWR* with latent replay inside the context (strategy BNNCL_STRATEGY_CWR_STAR).
 *
 * bnncl_init lays the state out with bnncl_cwr_state_init and copies the model's embedded state over it (the
 * Python learner's state after deployment); bnncl_learn runs the frozen forward of each image (bnncl_features)
 * into the features area, then one bnncl_cwr_learn (one experience, the context's experience counter as its
 * index); bnncl_predict runs bnncl_cwr_predict on the one image's features.  The state format (strategy 2):
 *
 *   header  8 x uint32 as for SLDA (magic "BLST", version 2, model fingerprint, strategy 2, classes K, features D,
 *           payload bytes, CRC32 of the 28 bytes before it)
 *   payload uint32 CRC32 of the CWR* configuration (cfg_crc below: another configuration's state is foreign),
 *           uint32 flags (1: has_range, 2: fitted), int64 count, int64 next experience index, float64 lo, hi,
 *           uint64 learner stream state, inc, buffer stream state, inc,
 *           int64 past x K, int64 seen x K, float32 cw x K*D, float32 shift x D, float32 scale x D,
 *           int32 labels x capacity, int32 experience x capacity, the buffer rows x capacity (uint8 codes or
 *           float32; the rows from count on written as zeros)
 *   trailer CRC32 of the payload
 * all little-endian, the same on every target.
 */
#include <math.h>
#include <string.h>

#include "ctx_cwr.h"
#include "state_bytes.h"

#define CWR_RESERVE 384u /* region bytes reserved for struct ctx_cwr on every target */
#define STATE_HEADER 32u
#define STRATEGY_CWR 2u
#define FIXED_PAYLOAD 72u /* the scalars of the payload */

struct ctx_cwr {
    bnncl_cwr_config cfg;
    bnncl_cwr_state st;
    int32_t n_max, next;  /* images per call; the next experience index */
    int64_t classes, features;
    float *x;             /* n_max x D features of a call */
    unsigned char *work;  /* the learn / predict scratch (the context's work area) */
    size_t work_bytes, load_bytes; /* load_bytes: the work area and the features' place, for a state being read */
    size_t image_bytes;
};

typedef char ctx_cwr_fits_reserve[sizeof(struct ctx_cwr) <= CWR_RESERVE ? 1 : -1];

static size_t up16(size_t n) { return (n + 15) & ~(size_t)15; }

static size_t row_bytes(const bnncl_cwr_config *cfg) {
    return (size_t)cfg->features * (cfg->lr_bits == 8 ? 1u : sizeof(float));
}

static size_t feat_bytes(const bnncl_cwr_model *cm) {
    return up16((size_t)cm->max_images * (size_t)cm->cfg.features * sizeof(float));
}

static size_t payload_bytes(const bnncl_cwr_config *cfg) {
    const size_t K = (size_t)cfg->classes, D = (size_t)cfg->features, C = (size_t)cfg->capacity;
    return FIXED_PAYLOAD + 16 * K + 4 * K * D + 8 * D + 8 * C + C * row_bytes(cfg);
}

static int odd(uint64_t v) { return (int)(v & 1u); }

static int cwr_model_ok(const bnncl_model *m) {
    const bnncl_cwr_model *cm = m->cwr;
    if (!cm) return 0;
    const bnncl_cwr_config *cfg = &cm->cfg;
    if (cfg->features != m->features || !bnncl_cwr_state_bytes(cfg)) return 0;
    if (cm->max_images < 1 || cm->next_experience < 0) return 0;
    if ((size_t)cm->max_images > (SIZE_MAX / 8) / ((size_t)cfg->features * sizeof(float))) return 0;
    if (!bnncl_cwr_learn_scratch_bytes(cfg, cm->max_images) || !bnncl_cwr_predict_scratch_bytes(cfg, 1)) return 0;
    if ((size_t)cfg->capacity > (SIZE_MAX / 8) / (row_bytes(cfg) + 8)) return 0;
    if (!cm->cw) return 1;
    if (!cm->past || !cm->shift || !cm->scale || !cm->seen) return 0;
    if (cm->count < 0 || cm->count > cfg->capacity) return 0;
    if (cm->count > 0 && (!cm->store || !cm->labels || !cm->experience)) return 0;
    if (!odd(cm->rng_inc) || !odd(cm->buffer_rng_inc)) return 0;
    return 1;
}

static size_t cwr_work_bytes(const bnncl_model *m) {
    const bnncl_cwr_model *cm = m->cwr;
    size_t need = bnncl_cwr_learn_scratch_bytes(&cm->cfg, cm->max_images);
    const size_t pred = bnncl_cwr_predict_scratch_bytes(&cm->cfg, 1);
    const size_t load = payload_bytes(&cm->cfg), feat = feat_bytes(cm);
    if (pred > need) need = pred;
    if (load > feat && load - feat > need) need = load - feat;
    return up16(need);
}

static size_t cwr_region_bytes(const bnncl_model *m) {
    return feat_bytes(m->cwr) + up16(CWR_RESERVE) + up16(bnncl_cwr_state_bytes(&m->cwr->cfg));
}

static int cwr_init(const bnncl_model *m, unsigned char *work, size_t work_bytes, ctx_cwr **out) {
    const bnncl_cwr_model *cm = m->cwr;
    const bnncl_cwr_config *cfg = &cm->cfg;
    unsigned char *region = work + work_bytes;
    ctx_cwr *w = (ctx_cwr *)(void *)(region + feat_bytes(cm));
    memset(w, 0, sizeof *w);
    w->cfg = *cfg;
    w->n_max = cm->max_images, w->next = cm->next_experience;
    w->classes = cfg->classes, w->features = cfg->features;
    w->x = (float *)(void *)region;
    w->work = work, w->work_bytes = work_bytes, w->load_bytes = work_bytes + feat_bytes(cm);
    w->image_bytes = (size_t)m->in_h * (size_t)m->in_w * (size_t)m->in_c;
    const size_t sbytes = bnncl_cwr_state_bytes(cfg);
    int rc = bnncl_cwr_state_init(cfg, cm->seed, region + feat_bytes(cm) + up16(CWR_RESERVE), up16(sbytes), &w->st);
    if (rc) return rc;
    if (cm->cw) {
        const size_t K = (size_t)cfg->classes, D = (size_t)cfg->features, n = (size_t)cm->count;
        bnncl_cwr_state *st = &w->st;
        memcpy(st->cw, cm->cw, K * D * sizeof(float));
        memcpy(st->past, cm->past, K * sizeof(int64_t));
        memcpy(st->shift, cm->shift, D * sizeof(float));
        memcpy(st->scale, cm->scale, D * sizeof(float));
        memcpy(st->seen, cm->seen, K * sizeof(int64_t));
        if (n) {
            memcpy(st->store, cm->store, n * row_bytes(cfg));
            memcpy(st->labels, cm->labels, n * sizeof(int32_t));
            memcpy(st->experience, cm->experience, n * sizeof(int32_t));
        }
        st->count = cm->count, st->lo = cm->lo, st->hi = cm->hi;
        st->has_range = cm->has_range != 0, st->fitted = cm->fitted != 0;
        st->rng.state = cm->rng_state, st->rng.inc = cm->rng_inc;
        st->buffer_rng.state = cm->buffer_rng_state, st->buffer_rng.inc = cm->buffer_rng_inc;
    }
    *out = w;
    return BNNCL_OK;
}

static int cwr_seen(const ctx_cwr *w) {
    for (int64_t k = 0; k < w->classes; ++k)
        if (w->st.past[k] > 0) return 1;
    return 0;
}

static size_t cwr_classes(const ctx_cwr *w) { return (size_t)w->classes; }

static int cwr_learn(bnncl_ctx *c, ctx_cwr *w, const uint8_t *images, size_t n, size_t image_bytes,
                        const int32_t *labels) {
    if (image_bytes != w->image_bytes) return BNNCL_E_SIZE;
    if (!n) return BNNCL_OK;
    if (!images || !labels) return BNNCL_E_NULL;
    if (n > (size_t)w->n_max) return BNNCL_E_SIZE;
    for (size_t i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= w->classes) return BNNCL_E_LABEL;
    if (w->next == INT32_MAX) return BNNCL_E_SIZE;
    const int64_t D = w->features;
    for (size_t i = 0; i < n; ++i) {
        const int rc = bnncl_features(c, images + i * image_bytes, image_bytes, w->x + (int64_t)i * D, (size_t)D);
        if (rc) return rc;
    }
    const int rc = bnncl_cwr_learn(&w->cfg, &w->st, w->x, labels, (int64_t)n, w->next, w->work, w->work_bytes);
    if (rc) return rc;
    w->next += 1;
    return BNNCL_OK;
}

static int cwr_predict(ctx_cwr *w, const float *feat, int32_t *cls, float *scores) {
    memcpy(w->x, feat, (size_t)w->features * sizeof(float));
    return bnncl_cwr_predict(&w->cfg, &w->st, w->x, 1, cls, scores, w->work, w->work_bytes);
}

/* ---- state ------------------------------------------------------------------------------------------ */

static uint64_t f64_bits(double v) {
    uint64_t b;
    memcpy(&b, &v, 8);
    return b;
}
static double bits_f64(uint64_t b) {
    double v;
    memcpy(&v, &b, 8);
    return v;
}
static float bits_f32(uint32_t b) {
    float v;
    memcpy(&v, &b, 4);
    return v;
}

/* CRC32 of the configuration, little-endian: classes, features, qf, qb, lr (float32 bits), minibatch, epochs,
 * new_per_class, mixing, standardize (uint32 each), max_k (float64 bits), capacity, lr_bits (uint32 each) */
static uint32_t cfg_crc(const bnncl_cwr_config *cfg) {
    uint8_t b[56];
    uint32_t lr;
    memcpy(&lr, &cfg->lr, 4);
    const uint32_t v[10] = {(uint32_t)cfg->classes, (uint32_t)cfg->features, (uint32_t)cfg->qf, (uint32_t)cfg->qb,
                            lr, (uint32_t)cfg->minibatch, (uint32_t)cfg->epochs, (uint32_t)cfg->new_per_class,
                            (uint32_t)cfg->mixing, (uint32_t)cfg->standardize};
    for (int i = 0; i < 10; ++i) put32(b + 4 * i, v[i]);
    put64(b + 40, f64_bits(cfg->max_k));
    put32(b + 48, (uint32_t)cfg->capacity), put32(b + 52, (uint32_t)cfg->lr_bits);
    return crc32_update(0, b, sizeof b);
}

static void state_header(const ctx_cwr *w, uint32_t fingerprint, uint8_t *h) {
    put32(h, BNNCL_STATE_MAGIC), put32(h + 4, BNNCL_STATE_VERSION), put32(h + 8, fingerprint);
    put32(h + 12, STRATEGY_CWR), put32(h + 16, (uint32_t)w->classes), put32(h + 20, (uint32_t)w->features);
    put32(h + 24, (uint32_t)payload_bytes(&w->cfg));
    put32(h + 28, crc32_update(0, h, 28));
}

static size_t cwr_state_size(const ctx_cwr *w) { return STATE_HEADER + payload_bytes(&w->cfg) + 4; }

static int cwr_state_save(const ctx_cwr *w, uint32_t fingerprint, bnncl_write_fn write, void *user) {
    const bnncl_cwr_state *st = &w->st;
    const int64_t K = w->classes, D = w->features, C = w->cfg.capacity;
    uint8_t h[STATE_HEADER];
    state_header(w, fingerprint, h);
    if (write(user, h, sizeof h) != 0) return BNNCL_E_IO;
    wstream s;
    memset(&s, 0, sizeof s);
    s.fn = write, s.user = user;
    w_u32(&s, cfg_crc(&w->cfg));
    w_u32(&s, (uint32_t)(st->has_range ? 1 : 0) | (uint32_t)(st->fitted ? 2 : 0));
    w_u64(&s, (uint64_t)st->count), w_u64(&s, (uint64_t)w->next);
    w_u64(&s, f64_bits(st->lo)), w_u64(&s, f64_bits(st->hi));
    w_u64(&s, st->rng.state), w_u64(&s, st->rng.inc), w_u64(&s, st->buffer_rng.state), w_u64(&s, st->buffer_rng.inc);
    for (int64_t k = 0; k < K; ++k) w_u64(&s, (uint64_t)st->past[k]);
    for (int64_t k = 0; k < K; ++k) w_u64(&s, (uint64_t)st->seen[k]);
    for (int64_t i = 0; i < K * D; ++i) {
        uint32_t v;
        memcpy(&v, &st->cw[i], 4);
        w_u32(&s, v);
    }
    for (int64_t i = 0; i < 2 * D; ++i) {
        uint32_t v;
        memcpy(&v, i < D ? &st->shift[i] : &st->scale[i - D], 4);
        w_u32(&s, v);
    }
    for (int64_t i = 0; i < 2 * C; ++i) {
        const int64_t r = i % C;
        const int32_t v = r < st->count ? (i < C ? st->labels[r] : st->experience[r]) : 0;
        w_u32(&s, (uint32_t)v);
    }
    const size_t rb = row_bytes(&w->cfg);
    for (int64_t r = 0; r < C; ++r) {
        if (r < st->count) {
            const unsigned char *row = (const unsigned char *)st->store + (size_t)r * rb;
            if (w->cfg.lr_bits == 8) {
                w_put(&s, row, rb);
            } else {
                for (int64_t j = 0; j < D; ++j) {
                    uint32_t v;
                    memcpy(&v, row + 4 * j, 4);
                    w_u32(&s, v);
                }
            }
        } else {
            static const uint8_t zeros[64] = {0};
            for (size_t left = rb; left;) {
                const size_t k = left < sizeof zeros ? left : sizeof zeros;
                w_put(&s, zeros, k);
                left -= k;
            }
        }
    }
    w_flush(&s);
    uint8_t t[4];
    put32(t, s.crc);
    if (s.err || write(user, t, 4) != 0) return BNNCL_E_IO;
    return BNNCL_OK;
}

static int cwr_state_load(ctx_cwr *w, uint32_t fingerprint, bnncl_read_fn read, void *user) {
    const int64_t K = w->classes, D = w->features, C = w->cfg.capacity;
    uint8_t h[STATE_HEADER], want[STATE_HEADER], t[4];
    if (read(user, h, sizeof h) != 0) return BNNCL_E_IO;
    const uint32_t version = get32(h + 4);
    if (get32(h) != BNNCL_STATE_MAGIC || version < 1 || version > BNNCL_STATE_VERSION ||
        get32(h + 28) != crc32_update(0, h, 28))
        return BNNCL_E_STATE_CORRUPT;
    state_header(w, fingerprint, want);
    if (memcmp(h, want, 28) != 0) return BNNCL_E_STATE_FOREIGN; /* another model, strategy, size or version */
    const size_t payload = payload_bytes(&w->cfg);
    if (payload > w->load_bytes) return BNNCL_E_ARENA_SMALL; /* not with the planned arena */
    uint8_t *buf = w->work; /* the work area and the features' place hold the payload until it is checked */
    if (read(user, buf, payload) != 0 || read(user, t, 4) != 0) return BNNCL_E_IO;
    if (get32(t) != crc32_update(0, buf, payload)) return BNNCL_E_STATE_CORRUPT;
    if (get32(buf) != cfg_crc(&w->cfg)) return BNNCL_E_STATE_FOREIGN;
    const uint32_t flags = get32(buf + 4);
    const int64_t count = (int64_t)get64(buf + 8), next = (int64_t)get64(buf + 16);
    const double lo = bits_f64(get64(buf + 24)), hi = bits_f64(get64(buf + 32));
    int ok = flags <= 3u && count >= 0 && count <= C && next >= 0 && next <= INT32_MAX && odd(get64(buf + 48)) &&
             odd(get64(buf + 64)) && (!(flags & 1u) || (isfinite(lo) && isfinite(hi)));
    const uint8_t *p = buf + FIXED_PAYLOAD;
    for (int64_t k = 0; ok && k < 2 * K; ++k) ok = (int64_t)get64(p + 8 * k) >= 0; /* past, seen */
    const uint8_t *fl = p + 16 * K; /* cw, shift, scale */
    for (int64_t i = 0; ok && i < K * D + 2 * D; ++i) ok = isfinite(bits_f32(get32(fl + 4 * i)));
    const uint8_t *lab = fl + 4 * (K * D + 2 * D), *exps = lab + 4 * C, *rows = exps + 4 * C;
    for (int64_t r = 0; ok && r < count; ++r) {
        const int32_t y = (int32_t)get32(lab + 4 * r), e = (int32_t)get32(exps + 4 * r);
        ok = y >= 0 && y < K && e >= 0;
    }
    for (int64_t i = 0; ok && w->cfg.lr_bits == 32 && i < count * D; ++i) ok = isfinite(bits_f32(get32(rows + 4 * i)));
    if (!ok) return BNNCL_E_STATE_CORRUPT;
    bnncl_cwr_state *st = &w->st;
    st->has_range = (int32_t)(flags & 1u), st->fitted = (int32_t)(flags >> 1 & 1u);
    st->count = count, st->lo = lo, st->hi = hi;
    st->rng.state = get64(buf + 40), st->rng.inc = get64(buf + 48);
    st->buffer_rng.state = get64(buf + 56), st->buffer_rng.inc = get64(buf + 64);
    w->next = (int32_t)next;
    for (int64_t k = 0; k < K; ++k) st->past[k] = (int64_t)get64(p + 8 * k), st->seen[k] = (int64_t)get64(p + 8 * (K + k));
    for (int64_t i = 0; i < K * D; ++i) st->cw[i] = bits_f32(get32(fl + 4 * i));
    for (int64_t i = 0; i < D; ++i) {
        st->shift[i] = bits_f32(get32(fl + 4 * (K * D + i)));
        st->scale[i] = bits_f32(get32(fl + 4 * (K * D + D + i)));
    }
    for (int64_t r = 0; r < C; ++r) {
        st->labels[r] = r < count ? (int32_t)get32(lab + 4 * r) : 0;
        st->experience[r] = r < count ? (int32_t)get32(exps + 4 * r) : 0;
    }
    const size_t rb = row_bytes(&w->cfg);
    if (w->cfg.lr_bits == 8) {
        memcpy(st->store, rows, (size_t)C * rb);
    } else {
        float *dst = (float *)st->store;
        for (int64_t i = 0; i < C * D; ++i) dst[i] = bits_f32(get32(rows + 4 * i));
    }
    return BNNCL_OK;
}

const struct bnncl_strategy_impl bnncl_cwr_star_impl = {
    BNNCL_CWR_IMPL_MAGIC, cwr_model_ok, cwr_work_bytes, cwr_region_bytes, cwr_init, cwr_seen, cwr_classes,
    cwr_learn, cwr_predict, cwr_state_size, cwr_state_save, cwr_state_load,
};
