/* libbnncl: the deterministic pieces of head-only CWR* with latent replay (the papers' method, K = 0), on
 * caller buffers (no allocation), each bit-identical to the Python device engine given the same inputs:
 *
 *   bnncl_cwr_set_head     TailTrainer.set_head: the head stored at q_b bits (per-tensor min/max quantizer)
 *   bnncl_cwr_begin        CWRStar.begin_experience + set_head: zeros, the present classes' consolidated rows
 *   bnncl_cwr_head_step    TailTrainer._train_batch with no tail blocks: Q_f(Q_f(x)) features, logits on
 *                          Q_f(head) (bnncl_matmul_f32, summed in order), softmax, dlogits = Q_b((Q_f(p) -
 *                          onehot) / B), head gradient Q_b(dlogits^T f) (bnncl_matmul_f32), head <- Q_b(head -
 *                          lr g).  The one operation that is not NumPy's: exp, which is bnncl_cwr_expf here (a
 *                          float32 range reduction and polynomial, the same bits on every target; its code is
 *                          the C core's bnncl_softmax_expf, which the Python engine also calls) where NumPy
 *                          uses its own SIMD exp (up to 3 ULP apart from glibc's expf on x86-64 AVX-512); with
 *                          NumPy's exp replaced by this one the step is bit-identical (tests/native).
 *   bnncl_cwr_head_step_inplace  the same step quantizing the caller's minibatch in place (no copy in the scratch)
 *   bnncl_cwr_logits       TailTrainer.logits: Q_f(Q_f(x)) Q_f(head)^T
 *   bnncl_cwr_consolidate  CWRStar.end_experience: avg (float64, NumPy's pairwise sum), w' = w - avg, merge
 *                          (cw k + w') / (k + 1), k = sqrt(past / cur) (optionally capped), past += cur
 *   bnncl_replay_encode8 / bnncl_replay_decode8
 *                          LatentReplayBuffer at 8 bits: one affine map (lo, hi) for the whole buffer, codes
 *                          rint((clip(x, lo, hi) - lo) * (255 / (hi - lo))) in float64, values lo + code (hi -
 *                          lo) / 255 rounded to float32
 *
 * Float order and rounding as the NumPy expressions (no FMA: the library is compiled with -ffp-contract=off).
 */
#include <math.h>
#include <string.h>

#include "bnncl.h"
#include "bnncl_core.h"

/* ---- exp ---------------------------------------------------------------------------------------- */

/* tail_elementwise.c (C core): the one copy of the softmax's exp, shared with the Python engine */
float bnncl_softmax_expf(float x);

float bnncl_cwr_expf(float x) { return bnncl_softmax_expf(x); }

/* ---- the device quantizer (bnncl.device.quantize) ------------------------------------------------ */

/* s = (2^b - 1) / (max - min) as _scale computes it, or 0 when the tensor has one level (grid_scale: None) */
static float grid_scale(float lo, float hi, int bits) {
    if (!(hi > lo)) return 0.0f;
    const float r = 1.0f / (hi - lo);
    const float s = r * (float)((1ul << bits) - 1ul);
    return isfinite(s) ? s : 0.0f;
}

/* fake_quantize(x, bits) in place over n values (bits 32: unchanged) */
static void fake_quantize(float *x, int64_t n, int bits) {
    if (bits == 32 || n <= 0) return;
    float lo = x[0], hi = x[0];
    for (int64_t i = 1; i < n; ++i) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    const float s = grid_scale(lo, hi, bits);
    if (s == 0.0f) {
        for (int64_t i = 0; i < n; ++i) x[i] = lo;
        return;
    }
    for (int64_t i = 0; i < n; ++i) x[i] = rintf((x[i] - lo) * s) / s + lo;
}

static int bits_ok(int bits) { return (bits >= 1 && bits <= 24) || bits == 32; }

/* ---- NumPy's pairwise sums (numpy/_core/src/umath/loops_utils.h.src; add.reduce from the identity 0) ---- */

/* tail_elementwise.c (C core; NumPy's pairwise float32 sum, the one copy of that order) */
float bnncl_np_pairwise_f32(const float *a, int64_t n);

/* the same over float32 values taken as float64 (x.astype(np.float64).sum()), the values at stride 1 */
static double pairwise_f64(const float *a, int64_t n) {
    if (n < 8) {
        double r = -0.0;
        for (int64_t i = 0; i < n; ++i) r += (double)a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; ++j) r[j] = (double)a[j];
        int64_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += (double)a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += (double)a[i];
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_f64(a, n2) + pairwise_f64(a + n2, n - n2);
}

/* ---- head ---------------------------------------------------------------------------------------- */

int bnncl_cwr_set_head(float *head, int64_t classes, int64_t features, int qb) {
    if (!head) return BNNCL_E_NULL;
    if (classes < 1 || features < 1 || !bits_ok(qb)) return BNNCL_E_SIZE;
    fake_quantize(head, classes * features, qb);
    return BNNCL_OK;
}

int bnncl_cwr_begin(const float *cw, const uint8_t *present, float *head, int64_t classes, int64_t features,
                    int qb) {
    if (!cw || !present || !head) return BNNCL_E_NULL;
    if (classes < 1 || features < 1 || !bits_ok(qb)) return BNNCL_E_SIZE;
    for (int64_t c = 0; c < classes; ++c) {
        if (present[c])
            memcpy(head + c * features, cw + c * features, (size_t)features * sizeof(float));
        else
            memset(head + c * features, 0, (size_t)features * sizeof(float));
    }
    fake_quantize(head, classes * features, qb);
    return BNNCL_OK;
}

size_t bnncl_cwr_step_scratch(int64_t n, int64_t features, int64_t classes) {
    if (n < 1 || features < 1 || classes < 1) return 0;
    return (size_t)(n * features + features * classes + 3 * n * classes + classes * features) * sizeof(float);
}

/* the step on f (n x D, the minibatch, quantized at q_f in place) with the rest of the scratch */
static void head_step(float *f, const int32_t *labels, int64_t n, int64_t D, int64_t K, float *head, float lr, int qf,
                      int qb, float *rest) {
    float *ht = rest;             /* D x K: Q_f(head) transposed */
    float *lg = ht + D * K;       /* n x K: logits, then p, then Q_f(p) - onehot, / n, Q_b */
    float *dlt = lg + n * K;      /* K x n: dlogits transposed */
    float *e = dlt + K * n;       /* n x K: exp */
    float *g = e + n * K;         /* K x D: head gradient */
    fake_quantize(f, n * D, qf); /* fake_quantize(x, q_f) */
    fake_quantize(f, n * D, qf); /* quantize(.., q_f).dequantize() */
    memcpy(g, head, (size_t)(K * D) * sizeof(float));
    fake_quantize(g, K * D, qf); /* the forward copy of the head */
    for (int64_t c = 0; c < K; ++c)
        for (int64_t j = 0; j < D; ++j) ht[j * K + c] = g[c * D + j];
    bnncl_matmul_f32(f, ht, n, D, K, lg, BNNCL_PATH_SCALAR);
    for (int64_t i = 0; i < n; ++i) { /* softmax, float32 */
        float *l = lg + i * K, *ei = e + i * K;
        float m = l[0];
        for (int64_t c = 1; c < K; ++c) m = l[c] > m ? l[c] : m;
        for (int64_t c = 0; c < K; ++c) ei[c] = bnncl_cwr_expf(l[c] - m);
        const float sum = 0.0f + bnncl_np_pairwise_f32(ei, K);
        for (int64_t c = 0; c < K; ++c) l[c] = ei[c] / sum;
    }
    fake_quantize(lg, n * K, qf);
    const float nf = (float)n;
    for (int64_t i = 0; i < n; ++i) {
        float *l = lg + i * K;
        for (int64_t c = 0; c < K; ++c) l[c] = (l[c] - (c == labels[i] ? 1.0f : 0.0f)) / nf;
    }
    fake_quantize(lg, n * K, qb);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < K; ++c) dlt[c * n + i] = lg[i * K + c];
    bnncl_matmul_f32(dlt, f, K, n, D, g, BNNCL_PATH_SCALAR);
    fake_quantize(g, K * D, qb);
    for (int64_t i = 0; i < K * D; ++i) head[i] = head[i] - lr * g[i];
    fake_quantize(head, K * D, qb);
}

static int step_args(const void *x, const int32_t *labels, int64_t n, int64_t features, int64_t classes,
                     const float *head, float lr, int qf, int qb, const void *scratch) {
    if (!x || !labels || !head || !scratch) return BNNCL_E_NULL;
    if (n < 1 || features < 1 || classes < 1 || !bits_ok(qf) || !bits_ok(qb) || !(lr > 0.0f))
        return BNNCL_E_SIZE;
    if ((uintptr_t)scratch % sizeof(float)) return BNNCL_E_ALIGN;
    for (int64_t i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= classes) return BNNCL_E_LABEL;
    return BNNCL_OK;
}

int bnncl_cwr_head_step(const float *x, const int32_t *labels, int64_t n, int64_t features, int64_t classes,
                        float *head, float lr, int qf, int qb, void *scratch, size_t scratch_bytes) {
    const int rc = step_args(x, labels, n, features, classes, head, lr, qf, qb, scratch);
    if (rc) return rc;
    if (scratch_bytes < bnncl_cwr_step_scratch(n, features, classes)) return BNNCL_E_ARENA_SMALL;
    float *f = (float *)scratch; /* n x D: the features at q_f */
    memcpy(f, x, (size_t)(n * features) * sizeof(float));
    head_step(f, labels, n, features, classes, head, lr, qf, qb, f + n * features);
    return BNNCL_OK;
}

size_t bnncl_cwr_step_inplace_scratch(int64_t n, int64_t features, int64_t classes) {
    if (n < 1 || features < 1 || classes < 1) return 0;
    return bnncl_cwr_step_scratch(n, features, classes) - (size_t)(n * features) * sizeof(float);
}

int bnncl_cwr_head_step_inplace(float *x, const int32_t *labels, int64_t n, int64_t features, int64_t classes,
                                float *head, float lr, int qf, int qb, void *scratch, size_t scratch_bytes) {
    const int rc = step_args(x, labels, n, features, classes, head, lr, qf, qb, scratch);
    if (rc) return rc;
    if (scratch_bytes < bnncl_cwr_step_inplace_scratch(n, features, classes)) return BNNCL_E_ARENA_SMALL;
    head_step(x, labels, n, features, classes, head, lr, qf, qb, (float *)scratch);
    return BNNCL_OK;
}

size_t bnncl_cwr_logits_scratch(int64_t n, int64_t features, int64_t classes) {
    if (n < 1 || features < 1 || classes < 1) return 0;
    return (size_t)(n * features + 2 * features * classes) * sizeof(float);
}

int bnncl_cwr_logits(const float *x, int64_t n, int64_t features, int64_t classes, const float *head, int qf,
                     float *logits, void *scratch, size_t scratch_bytes) {
    if (!x || !head || !logits || !scratch) return BNNCL_E_NULL;
    if (n < 1 || features < 1 || classes < 1 || !bits_ok(qf)) return BNNCL_E_SIZE;
    if (scratch_bytes < bnncl_cwr_logits_scratch(n, features, classes)) return BNNCL_E_ARENA_SMALL;
    if ((uintptr_t)scratch % sizeof(float)) return BNNCL_E_ALIGN;
    const int64_t D = features, K = classes;
    float *f = (float *)scratch, *g = f + n * D, *ht = g + K * D;
    memcpy(f, x, (size_t)(n * D) * sizeof(float));
    fake_quantize(f, n * D, qf);
    fake_quantize(f, n * D, qf);
    memcpy(g, head, (size_t)(K * D) * sizeof(float));
    fake_quantize(g, K * D, qf);
    for (int64_t c = 0; c < K; ++c)
        for (int64_t j = 0; j < D; ++j) ht[j * K + c] = g[c * D + j];
    bnncl_matmul_f32(f, ht, n, D, K, logits, BNNCL_PATH_SCALAR);
    return BNNCL_OK;
}

/* ---- consolidation ------------------------------------------------------------------------------- */

int bnncl_cwr_consolidate(const float *trained, const uint8_t *present, const int64_t *cur, float *cw,
                          int64_t *past, int64_t classes, int64_t features, double max_k, float *scratch) {
    if (!trained || !present || !cur || !cw || !past || !scratch) return BNNCL_E_NULL;
    if (classes < 1 || features < 1) return BNNCL_E_SIZE;
    const int64_t D = features;
    int64_t np = 0;
    for (int64_t c = 0; c < classes; ++c) {
        if (cur[c] < 0) return BNNCL_E_SIZE;
        if (present[c]) memcpy(scratch + np++ * D, trained + c * D, (size_t)D * sizeof(float));
    }
    if (!np) return BNNCL_OK;
    for (int64_t i = 0; i < np * D; ++i)
        if (!isfinite(scratch[i])) return BNNCL_E_NUMERIC;
    /* float(w[present].astype(np.float64).mean()): one pairwise sum over the rows laid end to end */
    const double avg = (0.0 + pairwise_f64(scratch, np * D)) / (double)(np * D);
    for (int64_t c = 0; c < classes; ++c) {
        if (!present[c] || cur[c] <= 0) continue;
        const float *w = trained + c * D;
        float *r = cw + c * D;
        if (past[c] == 0) {
            for (int64_t j = 0; j < D; ++j) r[j] = (float)((double)w[j] - avg);
        } else {
            double k = sqrt((double)past[c] / (double)cur[c]);
            if (max_k >= 0.0 && max_k < k) k = max_k;
            for (int64_t j = 0; j < D; ++j) r[j] = (float)(((double)r[j] * k + ((double)w[j] - avg)) / (k + 1.0));
        }
        past[c] += cur[c];
    }
    return BNNCL_OK;
}

/* ---- the replay buffer's 8-bit storage ----------------------------------------------------------- */

int bnncl_replay_encode8(const float *x, int64_t n, double lo, double hi, uint8_t *codes) {
    if (!x || !codes) return BNNCL_E_NULL;
    if (n < 0 || !(hi > lo)) return BNNCL_E_SIZE;
    const double s = 255.0 / (hi - lo);
    for (int64_t i = 0; i < n; ++i) {
        double v = (double)x[i];
        v = v < lo ? lo : (v > hi ? hi : v);
        codes[i] = (uint8_t)rint((v - lo) * s);
    }
    return BNNCL_OK;
}

int bnncl_replay_decode8(const uint8_t *codes, int64_t n, double lo, double hi, float *x) {
    if (!x || !codes) return BNNCL_E_NULL;
    if (n < 0 || !(hi > lo)) return BNNCL_E_SIZE;
    for (int64_t i = 0; i < n; ++i) x[i] = (float)(lo + (double)codes[i] * (hi - lo) / 255.0);
    return BNNCL_OK;
}
