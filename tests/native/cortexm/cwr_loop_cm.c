/* libbnncl's head-only CWR* loop on a bare-metal Cortex-M (tests/native/test_libbnncl_cwr_cortexm.py; in its own
 * folder: tests/device/test_cross_arch.py compiles every C file of tests/native).
 *
 * Reads cwr_in.bin from qemu's working folder through semihosting (the config, the base features with their labels
 * and the deployed head, the experiences, the test features: the layout below), deploys (when asked), learns each
 * experience, and after each stage writes the whole learner state to state<i>.bin and the test predictions and
 * scores to pred<i>.bin; the test compares them with the Python learner's.  Prints the timer ticks of each stage
 * ("T<i> <ticks>"; under qemu -icount shift=0, instructions = 40 x ticks).
 *
 * cwr_in.bin (little-endian): int32 classes, features, qf, qb, minibatch, epochs, new_per_class, mixing,
 * standardize, capacity, lr_bits, nbase, nexp, ntest, deployed, 0; float32 lr, 4 bytes 0; float64 max_k; uint64
 * seed; int32 n of each experience (nexp); float32 base features (nbase x D), int32 base labels, float32 head
 * (K x D); per experience float32 features (n x D), int32 labels; float32 test features (ntest x D).
 */
#include <stdint.h>
#include <string.h>

#include "bnncl.h"
#include "semihost.h"

static uint64_t pool[400000]; /* 3.2 MB: inputs, state, scratch */
static size_t pool_used;

static void *carve(size_t bytes) {
    void *p = (unsigned char *)pool + pool_used;
    pool_used += (bytes + 7u) & ~(size_t)7u;
    return pool_used <= sizeof pool ? p : NULL;
}

static int sh_open(const char *name, uint32_t mode) {
    uint32_t block[3] = {(uint32_t)(uintptr_t)name, mode, (uint32_t)strlen(name)};
    return sh_call(0x01, block);
}

static int sh_read(int fd, void *buf, size_t n) {
    uint32_t block[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, (uint32_t)n};
    return sh_call(0x06, block) == 0 ? 0 : -1;
}

static int sh_writef(int fd, const void *buf, size_t n) {
    uint32_t block[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, (uint32_t)n};
    return sh_call(0x05, block) == 0 ? 0 : -1;
}

static void sh_close(int fd) {
    uint32_t block[1] = {(uint32_t)fd};
    sh_call(0x02, block);
}

static void put_u32(const char *tag, uint32_t v) {
    char s[24];
    int i = 23;
    s[i] = 0;
    s[--i] = '\n';
    do {
        s[--i] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    sh_write0(tag);
    sh_write0(s + i);
}

static int fail(const char *what, int rc) {
    sh_write0("error ");
    sh_write0(what);
    put_u32(" ", (uint32_t)-rc);
    return 1;
}

static void name_of(char *out, const char *stem, int i) {
    size_t k = strlen(stem);
    memcpy(out, stem, k);
    out[k++] = (char)('0' + i / 10);
    out[k++] = (char)('0' + i % 10);
    memcpy(out + k, ".bin", 5);
}

static int dump(const bnncl_cwr_config *cfg, const bnncl_cwr_state *st, const float *test, int32_t ntest, int i,
                int32_t *cls, float *scores, void *psc, size_t pbytes) {
    char name[32];
    name_of(name, "state", i);
    int fd = sh_open(name, 5u /* "wb" */);
    if (fd < 0) return fail("open state", -1);
    const size_t K = (size_t)cfg->classes, D = (size_t)cfg->features, n = (size_t)st->count;
    const size_t rb = D * (cfg->lr_bits == 8 ? 1u : 4u);
    int32_t flags[2] = {st->has_range, st->fitted};
    uint64_t rng[4] = {st->rng.state, st->rng.inc, st->buffer_rng.state, st->buffer_rng.inc};
    int bad = sh_writef(fd, &st->count, 8) || sh_writef(fd, &st->lo, 8) || sh_writef(fd, &st->hi, 8) ||
              sh_writef(fd, flags, 8) || sh_writef(fd, rng, 32) || sh_writef(fd, st->cw, K * D * 4) ||
              sh_writef(fd, st->past, K * 8) || sh_writef(fd, st->shift, D * 4) || sh_writef(fd, st->scale, D * 4) ||
              sh_writef(fd, st->seen, K * 8) || (n && (sh_writef(fd, st->store, n * rb) ||
                                                      sh_writef(fd, st->labels, n * 4) ||
                                                      sh_writef(fd, st->experience, n * 4)));
    sh_close(fd);
    if (bad) return fail("write state", -1);
    int rc = bnncl_cwr_predict(cfg, st, test, ntest, cls, scores, psc, pbytes);
    if (rc) return fail("predict", rc);
    name_of(name, "pred", i);
    fd = sh_open(name, 5u);
    if (fd < 0) return fail("open pred", -1);
    bad = sh_writef(fd, cls, (size_t)ntest * 4) || sh_writef(fd, scores, (size_t)ntest * K * 4);
    sh_close(fd);
    return bad ? fail("write pred", -1) : 0;
}

int main(void) {
    int fd = sh_open("cwr_in.bin", 1u /* "rb" */);
    if (fd < 0) return fail("open input", -1);
    int32_t h[16];
    float lr[2];
    double max_k;
    uint64_t seed;
    if (sh_read(fd, h, sizeof h) || sh_read(fd, lr, sizeof lr) || sh_read(fd, &max_k, 8) || sh_read(fd, &seed, 8))
        return fail("read header", -1);
    bnncl_cwr_config cfg = {h[0], h[1], h[2], h[3], lr[0], h[4], h[5], h[6], h[7], h[8], max_k, h[9], h[10]};
    const int32_t nbase = h[11], nexp = h[12], ntest = h[13], deployed = h[14];
    const size_t K = (size_t)cfg.classes, D = (size_t)cfg.features;
    int32_t *sizes = carve((size_t)nexp * 4);
    float *base = carve((size_t)nbase * D * 4), *head = carve(K * D * 4);
    int32_t *base_y = carve((size_t)nbase * 4);
    if (!sizes || !base || !head || !base_y || sh_read(fd, sizes, (size_t)nexp * 4) ||
        sh_read(fd, base, (size_t)nbase * D * 4) || sh_read(fd, base_y, (size_t)nbase * 4) ||
        sh_read(fd, head, K * D * 4))
        return fail("read base", -1);
    int32_t most = nbase;
    float *xs[16];
    int32_t *ys[16];
    if (nexp > 16) return fail("experiences", -1);
    for (int32_t e = 0; e < nexp; ++e) {
        xs[e] = carve((size_t)sizes[e] * D * 4);
        ys[e] = carve((size_t)sizes[e] * 4);
        if (!xs[e] || !ys[e] || sh_read(fd, xs[e], (size_t)sizes[e] * D * 4) || sh_read(fd, ys[e], (size_t)sizes[e] * 4))
            return fail("read experience", -1);
        most = sizes[e] > most ? sizes[e] : most;
    }
    float *test = carve((size_t)ntest * D * 4);
    if (!test || sh_read(fd, test, (size_t)ntest * D * 4)) return fail("read test", -1);
    sh_close(fd);

    const size_t sbytes = bnncl_cwr_state_bytes(&cfg), lbytes = bnncl_cwr_learn_scratch_bytes(&cfg, most);
    const size_t pbytes = bnncl_cwr_predict_scratch_bytes(&cfg, ntest);
    void *mem = carve(sbytes), *scratch = carve(lbytes), *psc = carve(pbytes);
    int32_t *cls = carve((size_t)ntest * 4);
    float *scores = carve((size_t)ntest * K * 4);
    if (!sbytes || !lbytes || !mem || !scratch || !psc || !cls || !scores) return fail("memory", -1);
    put_u32("state_bytes ", (uint32_t)sbytes);
    put_u32("learn_scratch_bytes ", (uint32_t)lbytes);
    bnncl_cwr_state st;
    int rc = bnncl_cwr_state_init(&cfg, seed, mem, sbytes, &st);
    if (rc) return fail("state_init", rc);
    int stage = 0;
    if (deployed) {
        uint32_t t0 = sh_ticks();
        rc = bnncl_cwr_deploy(&cfg, &st, base, base_y, nbase, 0, head, scratch, lbytes);
        if (rc) return fail("deploy", rc);
        put_u32("T00 ", sh_ticks() - t0);
        if (dump(&cfg, &st, test, ntest, stage, cls, scores, psc, pbytes)) return 1;
    }
    for (int32_t e = 0; e < nexp; ++e) {
        ++stage;
        uint32_t t0 = sh_ticks();
        rc = bnncl_cwr_learn(&cfg, &st, xs[e], ys[e], sizes[e], e + 1, scratch, lbytes);
        if (rc) return fail("learn", rc);
        char tag[8] = {'T', (char)('0' + stage / 10), (char)('0' + stage % 10), ' ', 0};
        put_u32(tag, sh_ticks() - t0);
        if (dump(&cfg, &st, test, ntest, stage, cls, scores, psc, pbytes)) return 1;
    }
    put_u32("stack_bytes ", sh_stack_used());
    sh_write0("done\n");
    return 0;
}
