/* libbnncl: the head-only CWR* experience loop with latent replay, bit-identical to bnncl.cl.learner.
 * ContinualLearner (strategy cwr_star, no tail blocks, LearnerConfig.rng = "portable") on the same features:
 *
 *   bnncl_cwr_deploy   ContinualLearner._deploy: standardizer fit, CWRStar.init_from_head, buffer insertion
 *   bnncl_cwr_learn    ContinualLearner._train: standardizer fit (first experience), present classes, begin,
 *                      epochs of minibatches (_epoch_rows, mixed_minibatches / balanced_minibatches, auto_epochs),
 *                      bnncl_cwr_head_step, cur counts, bnncl_cwr_consolidate, buffer insertion
 *   bnncl_cwr_predict  ContinualLearner.predict / logits
 *
 * The buffer insertion is LatentReplayBuffer._add_balanced (water-filled class quotas, random eviction of an
 * over-quota class, a reservoir sample within each class) followed by _rebuild: the rows kept (class by class)
 * first, then the new ones encoded, rearranged in place (cycle-following, one row of scratch).
 *
 * Every random draw comes from the state's two portable streams (src/cwr_rng.c) in the order Python draws them;
 * the float arithmetic is NumPy's (float32 element-wise standardization, float64 sequential sums of
 * FeatureStandardizer.fit, the 8-bit codes of src/cwr.c).  No allocation: the caller's state and scratch.
 */
#include <math.h>
#include <string.h>

#include "bnncl.h"

/* ---- memory carving: the size functions run the same layout with no memory ---------------------------- */

typedef struct {
    unsigned char *base; /* NULL: only count */
    size_t used;
} carve;

static void *take(carve *c, size_t bytes) {
    const size_t off = (c->used + 7u) & ~(size_t)7u;
    c->used = off + bytes;
    return c->base ? (void *)(c->base + off) : NULL;
}

static int bits_ok(int bits) { return (bits >= 1 && bits <= 24) || bits == 32; }

static int config_ok(const bnncl_cwr_config *cfg) {
    return cfg && cfg->classes >= 1 && cfg->features >= 1 && bits_ok(cfg->qf) && bits_ok(cfg->qb) &&
           cfg->lr > 0.0f && isfinite(cfg->lr) && cfg->minibatch >= 1 && cfg->epochs >= 0 &&
           cfg->new_per_class >= 0 && (cfg->mixing == BNNCL_CWR_MIX_PROPORTIONAL ||
                                       cfg->mixing == BNNCL_CWR_MIX_BALANCED) &&
           (cfg->standardize == 0 || cfg->standardize == 1) && !isnan(cfg->max_k) && isfinite(cfg->max_k) &&
           cfg->capacity >= 1 && (cfg->lr_bits == 8 || cfg->lr_bits == 32);
}

static size_t row_bytes(const bnncl_cwr_config *cfg) {
    return (size_t)cfg->features * (cfg->lr_bits == 8 ? 1u : sizeof(float));
}

/* ---- state ------------------------------------------------------------------------------------------- */

typedef struct {
    float *cw, *shift, *scale;
    int64_t *past, *seen;
    void *store;
    int32_t *labels, *experience;
} state_arrays;

static void state_layout(const bnncl_cwr_config *cfg, carve *c, state_arrays *a) {
    const size_t K = (size_t)cfg->classes, D = (size_t)cfg->features, C = (size_t)cfg->capacity;
    a->cw = take(c, K * D * sizeof(float));
    a->past = take(c, K * sizeof(int64_t));
    a->shift = take(c, D * sizeof(float));
    a->scale = take(c, D * sizeof(float));
    a->seen = take(c, K * sizeof(int64_t));
    a->store = take(c, C * row_bytes(cfg));
    a->labels = take(c, C * sizeof(int32_t));
    a->experience = take(c, C * sizeof(int32_t));
}

size_t bnncl_cwr_state_bytes(const bnncl_cwr_config *cfg) {
    if (!config_ok(cfg)) return 0;
    carve c = {NULL, 0};
    state_arrays a;
    state_layout(cfg, &c, &a);
    return c.used;
}

int bnncl_cwr_state_init(const bnncl_cwr_config *cfg, uint64_t seed, void *mem, size_t mem_bytes,
                         bnncl_cwr_state *st) {
    if (!cfg || !mem || !st) return BNNCL_E_NULL;
    if (!config_ok(cfg)) return BNNCL_E_SIZE;
    if ((uintptr_t)mem % 8u) return BNNCL_E_ALIGN;
    if (mem_bytes < bnncl_cwr_state_bytes(cfg)) return BNNCL_E_ARENA_SMALL;
    memset(mem, 0, bnncl_cwr_state_bytes(cfg));
    carve c = {(unsigned char *)mem, 0};
    state_arrays a;
    state_layout(cfg, &c, &a);
    memset(st, 0, sizeof *st);
    st->cw = a.cw;
    st->past = a.past;
    st->shift = a.shift;
    st->scale = a.scale;
    st->seen = a.seen;
    st->store = a.store;
    st->labels = a.labels;
    st->experience = a.experience;
    for (int32_t j = 0; j < cfg->features; ++j) st->scale[j] = 1.0f;
    bnncl_rng_seed(&st->rng, seed, BNNCL_RNG_LEARNER_STREAM);
    bnncl_rng_seed(&st->buffer_rng, seed, BNNCL_RNG_BUFFER_STREAM);
    return BNNCL_OK;
}

/* ---- scratch ----------------------------------------------------------------------------------------- */

/* the rows of one minibatch: at most minibatch + 1 (proportional) or minibatch + pools - 1 (balanced: the
 * ceil of each pool's share), pools <= 2 K */
static int64_t max_rows(const bnncl_cwr_config *cfg) { return (int64_t)cfg->minibatch + 2 * (int64_t)cfg->classes; }

typedef struct {
    int32_t source; /* 0 new (positions into the epoch rows), 1 replay (buffer rows) */
    int32_t len;    /* rows of the pool */
    int64_t off;    /* first row in poolrows */
    int64_t share;  /* L_p: presentations in the epoch */
    int64_t doff;   /* first presentation in drawn */
} pool;

typedef struct {
    /* live through the whole call */
    uint8_t *present;
    int64_t *cur;
    float *head;
    float *xb;
    int32_t *yb;
    void *step;
    size_t step_bytes;
    int32_t *rows;   /* n: the epoch's rows */
    uint8_t *used;   /* n */
    uint8_t *sel;    /* n */
    int32_t *ctmp;   /* n: one class's rows */
    /* the epoch's index arrays (training), or the buffer insertion's arrays (afterwards): the same memory */
    pool *pools;     /* 2 K */
    int32_t *poolrows; /* n + C (proportional: the two permutations) */
    int32_t *drawn;  /* n + C + minibatch */
    int32_t *ptmp;   /* max(n, C) */
    /* buffer insertion */
    int64_t *avail, *quota; /* K */
    int32_t *order, *by; /* K: the classes ascending, by (available, class) */
    int32_t *evict;  /* C: one class's held rows, shuffled */
    int32_t *members; /* C: >= 0 a held row, -(j + 1) the new pattern j */
    int32_t *oldrows; /* C: held rows by class */
    int32_t *newrows; /* n: new patterns by class */
    int64_t *ooff, *noff; /* K + 1 */
    uint8_t *needed, *done; /* C */
    void *rowtmp;    /* one stored row */
    float *lut;      /* 256: the value of each 8-bit code (the buffer's range is fixed during training) */
    double *stats;   /* 2 D: the standardizer's sums */
} work;

static void work_layout(const bnncl_cwr_config *cfg, int64_t n, carve *c, work *w) {
    const size_t K = (size_t)cfg->classes, D = (size_t)cfg->features, C = (size_t)cfg->capacity;
    const size_t N = (size_t)n, M = (size_t)max_rows(cfg);
    w->present = take(c, K);
    w->cur = take(c, K * sizeof(int64_t));
    w->head = take(c, K * D * sizeof(float));
    w->xb = take(c, M * D * sizeof(float));
    w->yb = take(c, M * sizeof(int32_t));
    w->step_bytes = bnncl_cwr_step_inplace_scratch((int64_t)M, (int64_t)D, (int64_t)K);
    if (w->step_bytes < K * D * sizeof(float)) w->step_bytes = K * D * sizeof(float);
    w->step = take(c, w->step_bytes);
    w->stats = take(c, 2 * D * sizeof(double));
    w->lut = take(c, 256 * sizeof(float));
    w->rows = take(c, N * sizeof(int32_t));
    w->used = take(c, N);
    w->sel = take(c, N);
    w->ctmp = take(c, N * sizeof(int32_t));
    const size_t start = c->used;
    w->pools = take(c, 2 * K * sizeof(pool));
    w->poolrows = take(c, (N + C) * sizeof(int32_t));
    w->drawn = take(c, (N + C + (size_t)cfg->minibatch) * sizeof(int32_t));
    w->ptmp = take(c, (N > C ? N : C) * sizeof(int32_t));
    const size_t train_end = c->used;
    c->used = start;
    w->avail = take(c, K * sizeof(int64_t));
    w->quota = take(c, K * sizeof(int64_t));
    w->order = take(c, K * sizeof(int32_t));
    w->by = take(c, K * sizeof(int32_t));
    w->evict = take(c, C * sizeof(int32_t));
    w->members = take(c, C * sizeof(int32_t));
    w->oldrows = take(c, C * sizeof(int32_t));
    w->newrows = take(c, N * sizeof(int32_t));
    w->ooff = take(c, (K + 1) * sizeof(int64_t));
    w->noff = take(c, (K + 1) * sizeof(int64_t));
    w->needed = take(c, C);
    w->done = take(c, C);
    w->rowtmp = take(c, row_bytes(cfg));
    if (c->used < train_end) c->used = train_end;
}

size_t bnncl_cwr_learn_scratch_bytes(const bnncl_cwr_config *cfg, int64_t n) {
    if (!config_ok(cfg) || n < 1 || n > (int64_t)INT32_MAX) return 0;
    carve c = {NULL, 0};
    work w;
    work_layout(cfg, n, &c, &w);
    return c.used;
}

static int begin_call(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const float *x, const int32_t *labels,
                      int64_t n, void *scratch, size_t scratch_bytes, work *w) {
    if (!cfg || !st || !x || !labels || !scratch) return BNNCL_E_NULL;
    if (!config_ok(cfg) || n < 1 || n > (int64_t)INT32_MAX || st->count < 0 || st->count > cfg->capacity)
        return BNNCL_E_SIZE;
    if (!st->cw || !st->past || !st->shift || !st->scale || !st->seen || !st->store || !st->labels ||
        !st->experience)
        return BNNCL_E_NULL;
    if ((uintptr_t)scratch % 8u) return BNNCL_E_ALIGN;
    if (scratch_bytes < bnncl_cwr_learn_scratch_bytes(cfg, n)) return BNNCL_E_ARENA_SMALL;
    for (int64_t i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= cfg->classes) return BNNCL_E_LABEL;
    const int64_t nd = n * cfg->features;
    for (int64_t i = 0; i < nd; ++i)
        if (!isfinite(x[i])) return BNNCL_E_NUMERIC;
    carve c = {(unsigned char *)scratch, 0};
    work_layout(cfg, n, &c, w);
    return BNNCL_OK;
}

/* ---- standardizer (FeatureStandardizer.fit: float64, NumPy's sequential sums over axis 0) --------------- */

static void fit_standardizer(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const float *x, int64_t n,
                             double *stats) {
    const int64_t D = cfg->features;
    double *mean = stats, *sq = stats + D;
    for (int64_t j = 0; j < D; ++j) mean[j] = (double)x[j];
    for (int64_t i = 1; i < n; ++i)
        for (int64_t j = 0; j < D; ++j) mean[j] += (double)x[i * D + j];
    for (int64_t j = 0; j < D; ++j) mean[j] /= (double)n;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < D; ++j) {
            const double t = (double)x[i * D + j] - mean[j];
            if (i == 0)
                sq[j] = t * t;
            else
                sq[j] += t * t;
        }
    for (int64_t j = 0; j < D; ++j) {
        const double sd = sqrt(sq[j] / (double)n);
        st->shift[j] = (float)mean[j];
        st->scale[j] = sd > 1e-6 ? (float)sd : 1.0f;
    }
    st->fitted = 1;
}

/* the features the head sees: (x - shift) / scale in float32 when standardized */
static void head_row(const bnncl_cwr_config *cfg, const bnncl_cwr_state *st, const float *x, float *out) {
    const int64_t D = cfg->features;
    if (cfg->standardize && st->fitted)
        for (int64_t j = 0; j < D; ++j) out[j] = (x[j] - st->shift[j]) / st->scale[j];
    else if (out != x)
        memcpy(out, x, (size_t)D * sizeof(float));
}

/* one held row decoded (LatentReplayBuffer._decode): 8 bits through lut, the 256 values bnncl_replay_decode8 gives
 * (float64 arithmetic once per code, not once per value: software float64 on a Cortex-M4F) */
static void decode_row(const bnncl_cwr_config *cfg, const bnncl_cwr_state *st, const float *lut, int64_t slot,
                       float *out) {
    const int64_t D = cfg->features;
    if (cfg->lr_bits == 8) {
        const uint8_t *codes = (const uint8_t *)st->store + slot * D;
        for (int64_t j = 0; j < D; ++j) out[j] = lut[codes[j]];
    } else {
        memcpy(out, (const float *)st->store + slot * D, (size_t)D * sizeof(float));
    }
}

/* ---- the class-balanced buffer insertion (LatentReplayBuffer._add_balanced + _rebuild) ------------------- */

static void *store_row(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, int64_t slot) {
    return (unsigned char *)st->store + (size_t)slot * row_bytes(cfg);
}

static void move_row(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, int64_t dst, int64_t src) {
    memcpy(store_row(cfg, st, dst), store_row(cfg, st, src), row_bytes(cfg));
    st->labels[dst] = st->labels[src];
    st->experience[dst] = st->experience[src];
}

/* _quotas: water-filling of the capacity over the classes in w->order[0 .. nc) with w->avail */
static void quotas(const bnncl_cwr_config *cfg, work *w, int32_t nc) {
    int32_t *by = w->by; /* quota < 0 below: not set yet */
    for (int32_t i = 0; i < nc; ++i) {
        const int32_t c = w->order[i];
        int32_t k = i;
        while (k > 0 && (w->avail[by[k - 1]] > w->avail[c] || (w->avail[by[k - 1]] == w->avail[c] && by[k - 1] > c))) {
            by[k] = by[k - 1];
            --k;
        }
        by[k] = c;
        w->quota[c] = -1;
    }
    int64_t remaining = cfg->capacity;
    for (int32_t i = 0; i < nc; ++i) {
        const int32_t c = by[i];
        if (w->avail[c] > remaining / (nc - i)) break;
        w->quota[c] = w->avail[c];
        remaining -= w->avail[c];
    }
    int32_t nrest = 0;
    for (int32_t i = 0; i < nc; ++i) nrest += w->quota[w->order[i]] < 0;
    if (!nrest) return;
    const int64_t share = remaining / nrest, extra = remaining % nrest;
    int32_t r = 0;
    for (int32_t i = 0; i < nc; ++i) { /* w->order is ascending */
        const int32_t c = w->order[i];
        if (w->quota[c] >= 0) continue;
        w->quota[c] = share + (r < extra ? 1 : 0);
        ++r;
    }
}

static int buffer_insert(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const float *x, const int32_t *labels,
                         int64_t n, int32_t experience_index, work *w) {
    const int32_t K = cfg->classes;
    const int64_t D = cfg->features, R = st->count;
    /* held rows and new patterns by class, each ascending */
    for (int32_t c = 0; c <= K; ++c) w->ooff[c] = w->noff[c] = 0;
    for (int64_t s = 0; s < R; ++s) ++w->ooff[st->labels[s] + 1];
    for (int64_t i = 0; i < n; ++i) ++w->noff[labels[i] + 1];
    for (int32_t c = 0; c < K; ++c) {
        w->ooff[c + 1] += w->ooff[c];
        w->noff[c + 1] += w->noff[c];
    }
    for (int32_t c = 0; c < K; ++c) w->avail[c] = 0; /* fill cursors */
    for (int64_t s = 0; s < R; ++s) {
        const int32_t c = st->labels[s];
        w->oldrows[w->ooff[c] + w->avail[c]++] = (int32_t)s;
    }
    for (int32_t c = 0; c < K; ++c) w->quota[c] = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t c = labels[i];
        w->newrows[w->noff[c] + w->quota[c]++] = (int32_t)i;
    }
    /* the classes: seen before, new, or held; their available patterns and quotas */
    int32_t nc = 0;
    for (int32_t c = 0; c < K; ++c) {
        const int64_t nold = w->ooff[c + 1] - w->ooff[c], nnew = w->noff[c + 1] - w->noff[c];
        if (st->seen[c] > 0 || nold > 0 || nnew > 0) {
            w->order[nc++] = c;
            w->avail[c] = nold + nnew;
        }
    }
    quotas(cfg, w, nc);
    /* members of each class, laid end to end */
    int64_t nm = 0;
    for (int32_t k = 0; k < nc; ++k) {
        const int32_t c = w->order[k];
        const int64_t q = w->quota[c];
        int32_t *old = w->oldrows + w->ooff[c];
        int64_t nold = w->ooff[c + 1] - w->ooff[c];
        int32_t *mem = w->members + nm;
        int64_t len = 0;
        if (nold > q) { /* evict at random: np.sort(choice(old, q, replace=False)) */
            int32_t *tmp = w->evict;
            memcpy(tmp, old, (size_t)nold * sizeof(int32_t));
            int rc = bnncl_rng_shuffle(&st->buffer_rng, tmp, nold, q);
            if (rc) return rc;
            for (int64_t i = 0; i < nold; ++i) w->done[old[i]] = 0;
            for (int64_t i = 0; i < q; ++i) w->done[tmp[i]] = 1;
            for (int64_t i = 0; i < nold; ++i)
                if (w->done[old[i]]) mem[len++] = old[i];
        } else {
            for (int64_t i = 0; i < nold; ++i) mem[len++] = old[i];
        }
        int64_t seen = st->seen[c];
        const int64_t nnew = w->noff[c + 1] - w->noff[c];
        int32_t *perm = w->ctmp;
        memcpy(perm, w->newrows + w->noff[c], (size_t)nnew * sizeof(int32_t));
        int rc = bnncl_rng_shuffle(&st->buffer_rng, perm, nnew, nnew);
        if (rc) return rc;
        for (int64_t i = 0; i < nnew; ++i) {
            ++seen;
            if (len < q)
                mem[len++] = -(perm[i] + 1);
            else if (q > 0 && bnncl_rng_random(&st->buffer_rng) < (double)q / (double)seen)
                mem[bnncl_rng_bounded(&st->buffer_rng, (uint32_t)len)] = -(perm[i] + 1);
        }
        nm += len;
    }
    /* _rebuild: keep = the held members in order, then the new ones; src of destination d < nk: keep[d] */
    int32_t *keep = w->oldrows; /* reused: the held rows by class are no longer needed */
    int64_t nk = 0, nn = 0;
    for (int64_t i = 0; i < nm; ++i)
        if (w->members[i] >= 0) keep[nk++] = w->members[i];
    int32_t *fresh = w->ctmp;
    for (int64_t i = 0; i < nm; ++i)
        if (w->members[i] < 0) fresh[nn++] = -w->members[i] - 1;
    for (int64_t s = 0; s < R; ++s) w->needed[s] = 0, w->done[s] = 0;
    for (int64_t d = 0; d < nk; ++d) w->needed[keep[d]] = 1;
    for (int64_t d = 0; d < nk; ++d) { /* chains that start at a row nobody needs */
        if (w->needed[d] || w->done[d]) continue;
        int64_t cur = d;
        for (;;) {
            const int64_t s = keep[cur];
            if (s != cur) move_row(cfg, st, cur, s);
            w->done[cur] = 1;
            if (s >= nk) break;
            cur = s;
        }
    }
    const size_t rb = row_bytes(cfg);
    for (int64_t d = 0; d < nk; ++d) { /* the cycles left */
        if (w->done[d]) continue;
        if (keep[d] == d) {
            w->done[d] = 1;
            continue;
        }
        memcpy(w->rowtmp, store_row(cfg, st, d), rb);
        const int32_t lab = st->labels[d], ex = st->experience[d];
        int64_t cur = d;
        for (;;) {
            const int64_t s = keep[cur];
            w->done[cur] = 1;
            if (s == d) {
                memcpy(store_row(cfg, st, cur), w->rowtmp, rb);
                st->labels[cur] = lab;
                st->experience[cur] = ex;
                break;
            }
            move_row(cfg, st, cur, s);
            cur = s;
        }
    }
    /* the new rows, encoded (8 bits: the value range of the first rows ever stored) */
    if (cfg->lr_bits == 8 && !st->has_range && nn > 0) {
        float lo = x[(int64_t)fresh[0] * D], hi = lo;
        for (int64_t i = 0; i < nn; ++i)
            for (int64_t j = 0; j < D; ++j) {
                const float v = x[(int64_t)fresh[i] * D + j];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
        st->lo = (double)lo;
        st->hi = hi > lo ? (double)hi : (double)lo + 1.0;
        st->has_range = 1;
    }
    for (int64_t i = 0; i < nn; ++i) {
        const int64_t slot = nk + i;
        const float *src = x + (int64_t)fresh[i] * D;
        if (cfg->lr_bits == 8) {
            int rc = bnncl_replay_encode8(src, D, st->lo, st->hi, (uint8_t *)store_row(cfg, st, slot));
            if (rc) return rc;
        } else {
            memcpy(store_row(cfg, st, slot), src, (size_t)D * sizeof(float));
        }
        st->labels[slot] = labels[fresh[i]];
        st->experience[slot] = experience_index;
    }
    st->count = nk + nn;
    for (int64_t i = 0; i < n; ++i) ++st->seen[labels[i]];
    return BNNCL_OK;
}

/* ---- deploy ------------------------------------------------------------------------------------------- */

int bnncl_cwr_deploy(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const float *x, const int32_t *labels,
                     int64_t n, int32_t experience_index, const float *head, void *scratch, size_t scratch_bytes) {
    if (!head) return BNNCL_E_NULL;
    work w;
    int rc = begin_call(cfg, st, x, labels, n, scratch, scratch_bytes, &w);
    if (rc) return rc;
    const int64_t K = cfg->classes, D = cfg->features;
    for (int64_t i = 0; i < K * D; ++i)
        if (!isfinite(head[i])) return BNNCL_E_NUMERIC;
    for (int64_t c = 0; c < K; ++c) w.cur[c] = 0;
    for (int64_t i = 0; i < n; ++i) ++w.cur[labels[i]];
    const int scaled = cfg->standardize && !st->fitted;
    if (scaled) fit_standardizer(cfg, st, x, n, w.stats);
    for (int64_t c = 0; c < K; ++c) {
        if (!w.cur[c]) continue;
        for (int64_t j = 0; j < D; ++j)
            st->cw[c * D + j] = scaled ? head[c * D + j] * st->scale[j] : head[c * D + j];
        st->past[c] = w.cur[c];
    }
    return buffer_insert(cfg, st, x, labels, n, experience_index, &w);
}

/* ---- learn -------------------------------------------------------------------------------------------- */

/* array_split of len items into nb chunks: chunk b's first item and size */
static void split_chunk(int64_t len, int64_t nb, int64_t b, int64_t *start, int64_t *size) {
    const int64_t q = len / nb, r = len % nb;
    *start = b * q + (b < r ? b : r);
    *size = q + (b < r ? 1 : 0);
}

/* _epoch_rows: all rows, or a fresh random subset of at most new_per_class of each class (ascending) */
static int epoch_rows(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const int32_t *labels, int64_t n, work *w,
                      int64_t *nrows) {
    if (cfg->new_per_class == 0) {
        for (int64_t i = 0; i < n; ++i) w->rows[i] = (int32_t)i;
        *nrows = n;
        return BNNCL_OK;
    }
    memset(w->sel, 0, (size_t)n);
    for (int32_t c = 0; c < cfg->classes; ++c) {
        int64_t m = 0;
        for (int64_t i = 0; i < n; ++i)
            if (labels[i] == c) w->ctmp[m++] = (int32_t)i;
        if (!m) continue;
        int rc = bnncl_rng_shuffle(&st->rng, w->ctmp, m, m);
        if (rc) return rc;
        const int64_t keep = m < cfg->new_per_class ? m : cfg->new_per_class;
        for (int64_t i = 0; i < keep; ++i) w->sel[w->ctmp[i]] = 1;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i)
        if (w->sel[i]) w->rows[k++] = (int32_t)i;
    *nrows = k;
    return BNNCL_OK;
}

/* balanced_minibatches' pools and draws for one epoch; *npools pools, *pres = presentations of new patterns */
static int balanced_draws(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const int32_t *labels, int64_t nrows,
                          int64_t nb, work *w, int32_t *npools, int64_t *pres) {
    const int32_t K = cfg->classes;
    const int64_t R = st->count;
    int32_t np = 0;
    int64_t off = 0;
    for (int32_t c = 0; c < K; ++c)
        for (int32_t source = 0; source < 2; ++source) {
            int64_t len = 0;
            if (source == 0) {
                for (int64_t p = 0; p < nrows; ++p)
                    if (labels[w->rows[p]] == c) w->poolrows[off + len++] = (int32_t)p;
            } else {
                for (int64_t s = 0; s < R; ++s)
                    if (st->labels[s] == c) w->poolrows[off + len++] = (int32_t)s;
            }
            if (!len) continue;
            w->pools[np].source = source;
            w->pools[np].len = (int32_t)len;
            w->pools[np].off = off;
            ++np;
            off += len;
        }
    *npools = np;
    *pres = 0;
    if (!np) return BNNCL_OK;
    const int64_t total = nb * cfg->minibatch;
    int64_t doff = 0;
    for (int32_t p = 0; p < np; ++p) {
        pool *pl = &w->pools[p];
        int64_t s0, L;
        split_chunk(total, np, p, &s0, &L);
        pl->share = L;
        pl->doff = doff;
        int64_t filled = 0;
        const int64_t reps = (L + pl->len - 1) / pl->len;
        for (int64_t r = 0; r < reps; ++r) {
            memcpy(w->ptmp, w->poolrows + pl->off, (size_t)pl->len * sizeof(int32_t));
            int rc = bnncl_rng_shuffle(&st->rng, w->ptmp, pl->len, pl->len);
            if (rc) return rc;
            const int64_t k = L - filled < pl->len ? L - filled : pl->len;
            memcpy(w->drawn + doff + filled, w->ptmp, (size_t)k * sizeof(int32_t));
            filled += k;
        }
        doff += L;
        if (pl->source == 0) *pres += L;
    }
    return BNNCL_OK;
}

static int64_t auto_epochs(int64_t pres, int64_t n_new) {
    if (n_new <= 0 || pres <= 0) return 8;
    const int64_t wanted = (16 * n_new + pres - 1) / pres;
    return wanted < 8 ? 8 : (wanted > 64 ? 64 : wanted);
}

int bnncl_cwr_learn(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const float *x, const int32_t *labels,
                    int64_t n, int32_t experience_index, void *scratch, size_t scratch_bytes) {
    work w;
    int rc = begin_call(cfg, st, x, labels, n, scratch, scratch_bytes, &w);
    if (rc) return rc;
    const int32_t K = cfg->classes;
    const int64_t D = cfg->features, R = st->count, mb = cfg->minibatch;
    if (cfg->standardize && !st->fitted) fit_standardizer(cfg, st, x, n, w.stats);
    memset(w.present, 0, (size_t)K);
    for (int64_t i = 0; i < n; ++i) w.present[labels[i]] = 1;
    for (int64_t s = 0; s < R; ++s) w.present[st->labels[s]] = 1;
    rc = bnncl_cwr_begin(st->cw, w.present, w.head, K, D, cfg->qb);
    if (rc) return rc;
    if (cfg->lr_bits == 8 && R > 0) {
        uint8_t codes[256];
        for (int c = 0; c < 256; ++c) codes[c] = (uint8_t)c;
        rc = bnncl_replay_decode8(codes, 256, st->lo, st->hi, w.lut);
        if (rc) return rc;
    }
    memset(w.used, 0, (size_t)n);
    int64_t epochs = cfg->epochs;
    for (int64_t e = 0; epochs == 0 || e < epochs; ++e) {
        int64_t nrows;
        rc = epoch_rows(cfg, st, labels, n, &w, &nrows);
        if (rc) return rc;
        for (int64_t p = 0; p < nrows; ++p) w.used[w.rows[p]] = 1;
        const int64_t nb = (nrows + R + mb - 1) / mb > 1 ? (nrows + R + mb - 1) / mb : 1;
        int32_t npools = 0;
        int64_t pres = nrows;
        int32_t *perm_new = w.poolrows, *perm_rep = w.poolrows + nrows;
        if (cfg->mixing == BNNCL_CWR_MIX_BALANCED) {
            rc = balanced_draws(cfg, st, labels, nrows, nb, &w, &npools, &pres);
        } else {
            for (int64_t p = 0; p < nrows; ++p) perm_new[p] = (int32_t)p;
            for (int64_t s = 0; s < R; ++s) perm_rep[s] = (int32_t)s;
            rc = bnncl_rng_shuffle(&st->rng, perm_new, nrows, nrows);
            if (!rc) rc = bnncl_rng_shuffle(&st->rng, perm_rep, R, R);
        }
        if (rc) return rc;
        if (epochs == 0) epochs = auto_epochs(pres, n);
        if (cfg->mixing == BNNCL_CWR_MIX_BALANCED && !npools) continue; /* nothing to present */
        for (int64_t b = 0; b < nb; ++b) {
            int64_t m = 0;
            for (int32_t pass = 0; pass < 2; ++pass) { /* the new patterns first, then the replayed ones */
                if (cfg->mixing == BNNCL_CWR_MIX_BALANCED) {
                    for (int32_t p = 0; p < npools; ++p) {
                        const pool *pl = &w.pools[p];
                        if (pl->source != pass) continue;
                        int64_t s0, k;
                        split_chunk(pl->share, nb, b, &s0, &k);
                        for (int64_t i = 0; i < k; ++i) {
                            const int32_t idx = w.drawn[pl->doff + s0 + i];
                            if (pass == 0) {
                                const int32_t row = w.rows[idx];
                                head_row(cfg, st, x + (int64_t)row * D, w.xb + m * D);
                                w.yb[m++] = labels[row];
                            } else {
                                decode_row(cfg, st, w.lut, idx, w.xb + m * D);
                                head_row(cfg, st, w.xb + m * D, w.xb + m * D);
                                w.yb[m++] = st->labels[idx];
                            }
                        }
                    }
                } else {
                    int64_t s0, k;
                    split_chunk(pass == 0 ? nrows : R, nb, b, &s0, &k);
                    for (int64_t i = 0; i < k; ++i) {
                        if (pass == 0) {
                            const int32_t row = w.rows[perm_new[s0 + i]];
                            head_row(cfg, st, x + (int64_t)row * D, w.xb + m * D);
                            w.yb[m++] = labels[row];
                        } else {
                            const int32_t slot = perm_rep[s0 + i];
                            decode_row(cfg, st, w.lut, slot, w.xb + m * D);
                            head_row(cfg, st, w.xb + m * D, w.xb + m * D);
                            w.yb[m++] = st->labels[slot];
                        }
                    }
                }
            }
            if (!m) continue;
            rc = bnncl_cwr_head_step_inplace(w.xb, w.yb, m, D, K, w.head, cfg->lr, cfg->qf, cfg->qb, w.step,
                                             w.step_bytes);
            if (rc) return rc;
        }
    }
    for (int32_t c = 0; c < K; ++c) w.cur[c] = 0;
    for (int64_t i = 0; i < n; ++i) w.cur[labels[i]] += w.used[i];
    for (int64_t s = 0; s < R; ++s) ++w.cur[st->labels[s]];
    rc = bnncl_cwr_consolidate(w.head, w.present, w.cur, st->cw, st->past, K, D, cfg->max_k < 0.0 ? -1.0 : cfg->max_k,
                               (float *)w.step);
    if (rc) return rc;
    return buffer_insert(cfg, st, x, labels, n, experience_index, &w);
}

/* ---- predict ------------------------------------------------------------------------------------------ */

static void predict_layout(const bnncl_cwr_config *cfg, int64_t n, carve *c, float **xs, float **head,
                           float **logits, void **lsc, size_t *lbytes) {
    const size_t K = (size_t)cfg->classes, D = (size_t)cfg->features, N = (size_t)n;
    *xs = take(c, N * D * sizeof(float));
    *head = take(c, K * D * sizeof(float));
    *logits = take(c, N * K * sizeof(float));
    *lbytes = bnncl_cwr_logits_scratch(n, (int64_t)D, (int64_t)K);
    *lsc = take(c, *lbytes);
}

size_t bnncl_cwr_predict_scratch_bytes(const bnncl_cwr_config *cfg, int64_t n) {
    if (!config_ok(cfg) || n < 1) return 0;
    carve c = {NULL, 0};
    float *a, *b, *l;
    void *s;
    size_t lb;
    predict_layout(cfg, n, &c, &a, &b, &l, &s, &lb);
    return c.used;
}

int bnncl_cwr_predict(const bnncl_cwr_config *cfg, const bnncl_cwr_state *st, const float *x, int64_t n,
                      int32_t *cls, float *scores, void *scratch, size_t scratch_bytes) {
    if (!cfg || !st || !x || !cls || !scratch || !st->cw || !st->past || !st->shift || !st->scale) return BNNCL_E_NULL;
    if (!config_ok(cfg) || n < 1) return BNNCL_E_SIZE;
    if ((uintptr_t)scratch % 8u) return BNNCL_E_ALIGN;
    if (scratch_bytes < bnncl_cwr_predict_scratch_bytes(cfg, n)) return BNNCL_E_ARENA_SMALL;
    const int64_t K = cfg->classes, D = cfg->features;
    int any = 0;
    for (int64_t c = 0; c < K; ++c) any |= st->past[c] > 0;
    if (!any) return BNNCL_E_NO_LEARNING;
    carve c = {(unsigned char *)scratch, 0};
    float *xs, *head, *logits;
    void *lsc;
    size_t lbytes;
    predict_layout(cfg, n, &c, &xs, &head, &logits, &lsc, &lbytes);
    for (int64_t i = 0; i < n; ++i) head_row(cfg, st, x + i * D, xs + i * D);
    memcpy(head, st->cw, (size_t)(K * D) * sizeof(float));
    int rc = bnncl_cwr_set_head(head, K, D, cfg->qb);
    if (!rc) rc = bnncl_cwr_logits(xs, n, D, K, head, cfg->qf, logits, lsc, lbytes);
    if (rc) return rc;
    for (int64_t i = 0; i < n; ++i) {
        const float *l = logits + i * K;
        int32_t best = -1;
        for (int32_t k = 0; k < K; ++k)
            if (st->past[k] > 0 && (best < 0 || l[k] > l[best])) best = k;
        cls[i] = best;
    }
    if (scores) memcpy(scores, logits, (size_t)(n * K) * sizeof(float));
    return BNNCL_OK;
}
