/* Host test program of libbnncl's head-only CWR* (a model exported with --strategy cwr_star): predict, learn two
 * experiences, save, reload, predict, learn a third, refusals.
 *
 *   cwr_main TEST.u8 TRAIN.u8 TRAIN_LABELS.i32 SPLIT STATE1 STATE2 [REFUSED_STATE...]
 *
 * The first SPLIT training images are experience 1, the rest experience 2; after bnncl_init again and the load of
 * STATE1 (saved after experience 2), experience 1's images are learned again (experience 3).
 * Prints (compared with the Python learner by tests/native/test_libbnncl_ctx_cwr.py):
 *   arena BYTES / state_size BYTES
 *   p0 CLASS HEX...        per test image before learning (the exported state), with its scores (float32 bits)
 *   check NAME RC          refusals: too many images, a bad label, a wrong image size
 *   learn1 RC / p1 ... / learn2 RC / p2 ...
 *   save RC                STATE1 written
 *   load RC / p3 ...       after bnncl_init again and the load of STATE1
 *   check NAME RC          damaged and short states; check refused_I RC: each REFUSED_STATE (another model's or
 *                          configuration's, a checksummed one with a bad field, ...)
 *   check unchanged_after_refusals 0|1
 *   learn3 RC / p4 ... / save RC   STATE2 written after experience 3
 * Exit status 0, or 1 with a one-line reason on stderr.  The file buffers are malloc'ed here (a host test
 * program); the library allocates nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_io.h"
#include "mem_stream.h"
#include "model.h"

#define IMG (BNNCL_INPUT_H * BNNCL_INPUT_W * BNNCL_INPUT_C)

static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];

static int write_file(void *user, const void *data, size_t n) { return fwrite(data, 1, n, (FILE *)user) != n; }

static int fail(const char *what) {
    fprintf(stderr, "cwr_main: %s\n", what);
    return 1;
}

static int predict_all(bnncl_ctx *ctx, const char *tag, const uint8_t *test, size_t ntest, int32_t *out) {
    float scores[BNNCL_MAX_SCORES];
    for (size_t i = 0; i < ntest; ++i) {
        int32_t cls;
        int rc = bnncl_predict(ctx, test + i * IMG, IMG, &cls, scores, BNNCL_MAX_SCORES);
        if (rc != BNNCL_OK) return rc;
        if (out) out[i] = cls;
        if (!tag) continue;
        printf("%s %d", tag, (int)cls);
        for (size_t j = 0; j < bnncl_num_scores(ctx); ++j) {
            uint32_t bits;
            memcpy(&bits, &scores[j], 4);
            printf(" %08x", (unsigned)bits);
        }
        printf("\n");
    }
    return BNNCL_OK;
}

static int save(bnncl_ctx *ctx, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return BNNCL_E_IO;
    int rc = bnncl_state_save(ctx, write_file, f);
    fclose(f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 7) return fail("usage: cwr_main TEST.u8 TRAIN.u8 LABELS.i32 SPLIT STATE1 STATE2 [REFUSED...]");
    size_t ntest, ntrain, nlab, nstate;
    uint8_t *test = slurp(argv[1], &ntest), *train = slurp(argv[2], &ntrain), *lab = slurp(argv[3], &nlab);
    if (!test || !train || !lab) return fail("cannot read the input files");
    ntest /= IMG, ntrain /= IMG;
    const size_t split = (size_t)atol(argv[4]);
    if (nlab != 4 * ntrain || split > ntrain) return fail("one int32 label per training image, SPLIT <= images");
    int32_t *labels = (int32_t *)(void *)lab;
    printf("arena %zu\n", bnncl_arena_size(&bnncl_exported_model));
    bnncl_ctx *ctx = NULL;
    int rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx);
    if (rc != BNNCL_OK) return fail(bnncl_strerror(rc));
    printf("state_size %zu\n", bnncl_state_size(ctx));
    if (bnncl_state_size(ctx) != BNNCL_STATE_BYTES) return fail("bnncl_state_size differs from BNNCL_STATE_BYTES");
    if ((rc = predict_all(ctx, "p0", test, ntest, NULL)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    /* refusals before learning: one image more than a call may hold, a label out of range, a wrong image size */
    {
        const size_t over = BNNCL_CWR_MAX_IMAGES + 1;
        uint8_t *many = (uint8_t *)calloc(over, IMG);
        int32_t *zeros = (int32_t *)calloc(over, sizeof(int32_t));
        if (!many || !zeros) return fail("out of memory");
        printf("check too_many_images %d\n", bnncl_learn(ctx, many, over, IMG, zeros));
        free(many), free(zeros);
    }
    int32_t bad = BNNCL_CWR_CLASSES;
    printf("check bad_label %d\n", bnncl_learn(ctx, test, 1, IMG, &bad));
    printf("check learn_wrong_size %d\n", bnncl_learn(ctx, test, 1, IMG + 1, labels));
    printf("learn1 %d\n", bnncl_learn(ctx, train, split, IMG, labels));
    if ((rc = predict_all(ctx, "p1", test, ntest, NULL)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    printf("learn2 %d\n", bnncl_learn(ctx, train + split * IMG, ntrain - split, IMG, labels + split));
    if ((rc = predict_all(ctx, "p2", test, ntest, NULL)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    printf("save %d\n", save(ctx, argv[5]));
    /* a fresh start (the exported state), then the saved one */
    if ((rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx)) != BNNCL_OK) return fail("re-init");
    uint8_t *state = slurp(argv[5], &nstate);
    if (!state) return fail("cannot read the state file back");
    membuf mb = {state, nstate, 0};
    printf("load %d\n", bnncl_state_load(ctx, read_mem, &mb));
    int32_t *before = (int32_t *)malloc(ntest * sizeof(int32_t) + 1), *after = (int32_t *)malloc(ntest * 4 + 1);
    if (!before || !after) return fail("out of memory");
    if ((rc = predict_all(ctx, "p3", test, ntest, before)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    /* damaged states: one flipped byte in the payload, in the header, a short read; another model's */
    state[nstate / 2] ^= 0x10;
    mb.pos = 0;
    printf("check corrupt_payload %d\n", bnncl_state_load(ctx, read_mem, &mb));
    state[nstate / 2] ^= 0x10;
    state[5] ^= 0x01;
    mb.pos = 0;
    printf("check corrupt_header %d\n", bnncl_state_load(ctx, read_mem, &mb));
    state[5] ^= 0x01;
    membuf shortbuf = {state, nstate - 1, 0};
    printf("check short_state %d\n", bnncl_state_load(ctx, read_mem, &shortbuf));
    for (int a = 7; a < argc; ++a) {
        size_t nother;
        uint8_t *other = slurp(argv[a], &nother);
        if (!other) return fail("cannot read a refused state");
        membuf ob = {other, nother, 0};
        printf("check refused_%d %d\n", a - 7, bnncl_state_load(ctx, read_mem, &ob));
        free(other);
    }
    if ((rc = predict_all(ctx, NULL, test, ntest, after)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    printf("check unchanged_after_refusals %d\n", memcmp(before, after, ntest * sizeof(int32_t)) != 0);
    /* the loaded state learns on: experience 3 (its index and both streams from the state) */
    printf("learn3 %d\n", bnncl_learn(ctx, train, split, IMG, labels));
    if ((rc = predict_all(ctx, "p4", test, ntest, NULL)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    printf("save %d\n", save(ctx, argv[6]));
    return 0;
}
