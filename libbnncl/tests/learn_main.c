/* Host test program of libbnncl learning: predict, learn, save, reload, predict again.
 *
 *   learn_main TEST.u8 TRAIN.u8 TRAIN_LABELS.i32 STATE_OUT [OTHER_MODEL_STATE [STATE_V1]]
 *
 * $BNNCL_ARENA_IMAGES=N: an arena of bnncl_arena_size_learn(model, N) bytes (malloc'ed) instead of the static
 * BNNCL_ARENA_BYTES one (a learn call of up to N images is one merge).
 *
 * Prints (compared with the Python engine by tests/native/test_libbnncl.py):
 *   arena BYTES / state_size BYTES / chunk IMAGES (bnncl_ctx_learn_chunk: bnncl_learn_chunk in the static arena)
 *   feat HEX...            the pooled features of the first 4 training images (float32 bits)
 *   sel0 HEX LOO...        bnncl_slda_selection before learning: the shrinkage (float64 bits), the 11
 *                          leave-one-out counts
 *   p0 CLASS               per test image, before learning (the exported initial state)
 *   learn RC
 *   sel1 HEX LOO...        after learning
 *   p1 CLASS HEX...        per test image after learning, with its scores (float32 bits)
 *   p2 CLASS               per test image after bnncl_init again + bnncl_state_load of the saved state
 *   sel2 HEX LOO...        after that load
 *   check NAME RC          error paths (bad label, damaged and foreign states, short read)
 *   v1 RC / sel3 HEX LOO... / p3 CLASS HEX...   STATE_V1 (a state of format version 1) loaded, predictions
 * Exit status 0, or 1 with a one-line reason on stderr.  The file buffers are malloc'ed here (a host
 * test program); the library allocates nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_io.h"
#include "mem_stream.h"
#include "model.h"

#define IMG (BNNCL_INPUT_H * BNNCL_INPUT_W * BNNCL_INPUT_C)

static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];

static int write_file(void *user, const void *data, size_t n) { return fwrite(data, 1, n, (FILE *)user) != n; }

static void print_selection(bnncl_ctx *ctx, const char *tag) {
    double eps = -1.0;
    int64_t loo[BNNCL_SHRINKAGE_GRID];
    memset(loo, 0, sizeof loo);
    int rc = bnncl_slda_selection(ctx, &eps, loo);
    uint64_t bits;
    memcpy(&bits, &eps, 8);
    printf("%s %d %016llx", tag, rc, (unsigned long long)bits);
    for (int j = 0; j < BNNCL_SHRINKAGE_GRID; ++j) printf(" %lld", (long long)loo[j]);
    printf("\n");
}

static int fail(const char *what) {
    fprintf(stderr, "learn_main: %s\n", what);
    return 1;
}

static int predict_all(bnncl_ctx *ctx, const char *tag, const uint8_t *test, size_t ntest, int scores_too,
                       int32_t *out) {
    float scores[BNNCL_MAX_SCORES];
    for (size_t i = 0; i < ntest; ++i) {
        int32_t cls;
        int rc = bnncl_predict(ctx, test + i * IMG, IMG, &cls, scores, BNNCL_MAX_SCORES);
        if (rc != BNNCL_OK) return rc;
        if (out) out[i] = cls;
        if (!tag) continue;
        printf("%s %d", tag, (int)cls);
        for (size_t j = 0; scores_too && j < bnncl_num_scores(ctx); ++j) {
            uint32_t bits;
            memcpy(&bits, &scores[j], 4);
            printf(" %08x", (unsigned)bits);
        }
        printf("\n");
    }
    return BNNCL_OK;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 7) return fail("usage: learn_main TEST.u8 TRAIN.u8 LABELS.i32 STATE_OUT [OTHER [V1]]");
    size_t ntest, ntrain, nlab, nstate;
    uint8_t *test = slurp(argv[1], &ntest), *train = slurp(argv[2], &ntrain), *lab = slurp(argv[3], &nlab);
    if (!test || !train || !lab) return fail("cannot read the input files");
    ntest /= IMG, ntrain /= IMG;
    if (nlab != 4 * ntrain) return fail("one int32 label per training image expected");
    int32_t *labels = (int32_t *)(void *)lab;
    printf("arena %zu\n", bnncl_arena_size(&bnncl_exported_model));
    bnncl_ctx *ctx = NULL;
    void *mem = arena;
    size_t mem_bytes = sizeof arena;
    if (getenv("BNNCL_ARENA_IMAGES")) {
        mem_bytes = bnncl_arena_size_learn(&bnncl_exported_model, (size_t)atol(getenv("BNNCL_ARENA_IMAGES")));
        if (!mem_bytes || !(mem = malloc(mem_bytes))) return fail("BNNCL_ARENA_IMAGES: no arena of that size");
    }
    int rc = bnncl_init(&bnncl_exported_model, mem, mem_bytes, &ctx);
    if (rc != BNNCL_OK) return fail(bnncl_strerror(rc));
    printf("state_size %zu\n", bnncl_state_size(ctx));
    printf("chunk %zu\n", bnncl_ctx_learn_chunk(ctx));
    if (bnncl_learn_chunk(&bnncl_exported_model) != BNNCL_LEARN_CHUNK) return fail("chunk differs from BNNCL_LEARN_CHUNK");
    if (bnncl_state_size(ctx) != BNNCL_STATE_BYTES) return fail("bnncl_state_size differs from BNNCL_STATE_BYTES");
    float feat[512];
    for (size_t i = 0; i < ntrain && i < 4; ++i) {
        rc = bnncl_features(ctx, train + i * IMG, IMG, feat, 512);
        if (rc != BNNCL_OK) return fail(bnncl_strerror(rc));
        printf("feat");
        for (int j = 0; j < bnncl_exported_model.features; ++j) {
            uint32_t bits;
            memcpy(&bits, &feat[j], 4);
            printf(" %08x", (unsigned)bits);
        }
        printf("\n");
    }
    print_selection(ctx, "sel0");
    if ((rc = predict_all(ctx, "p0", test, ntest, 0, NULL)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    int32_t bad = BNNCL_SLDA_CLASSES;
    printf("check bad_label %d\n", bnncl_learn(ctx, test, 1, IMG, &bad));
    printf("check learn_wrong_size %d\n", bnncl_learn(ctx, test, 1, IMG + 1, &bad));
    printf("learn %d\n", bnncl_learn(ctx, train, ntrain, IMG, labels));
    print_selection(ctx, "sel1");
    if ((rc = predict_all(ctx, "p1", test, ntest, 1, NULL)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    FILE *f = fopen(argv[4], "wb");
    if (!f) return fail("cannot write the state file");
    rc = bnncl_state_save(ctx, write_file, f);
    fclose(f);
    printf("save %d\n", rc);
    /* a fresh start (the exported initial state), then the saved state */
    if ((rc = bnncl_init(&bnncl_exported_model, mem, mem_bytes, &ctx)) != BNNCL_OK) return fail("re-init");
    uint8_t *state = slurp(argv[4], &nstate);
    if (!state) return fail("cannot read the state file back");
    membuf mb = {state, nstate, 0};
    printf("load %d\n", bnncl_state_load(ctx, read_mem, &mb));
    int32_t *before = (int32_t *)malloc(ntest * sizeof(int32_t) + 1), *after = (int32_t *)malloc(ntest * 4 + 1);
    if (!before || !after) return fail("out of memory");
    if ((rc = predict_all(ctx, "p2", test, ntest, 0, before)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    print_selection(ctx, "sel2");
    /* damaged states: one flipped byte in the payload, in the header, a short read */
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
    if (argc >= 6) {
        size_t nother;
        uint8_t *other = slurp(argv[5], &nother);
        if (!other) return fail("cannot read the other model's state");
        membuf ob = {other, nother, 0};
        printf("check foreign_state %d\n", bnncl_state_load(ctx, read_mem, &ob));
    }
    if ((rc = predict_all(ctx, NULL, test, ntest, 0, after)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    printf("check unchanged_after_refusals %d\n", memcmp(before, after, ntest * sizeof(int32_t)) != 0);
    if (argc == 7) {
        size_t nv1;
        uint8_t *v1 = slurp(argv[6], &nv1);
        if (!v1) return fail("cannot read the version-1 state");
        membuf vb = {v1, nv1, 0};
        printf("v1 %d\n", bnncl_state_load(ctx, read_mem, &vb));
        print_selection(ctx, "sel3");
        if ((rc = predict_all(ctx, "p3", test, ntest, 1, NULL)) != BNNCL_OK) return fail(bnncl_strerror(rc));
    }
    return 0;
}
