/* Host test program of libbnncl: a protocol of experiences, then the classes of a whole test split.
 *
 *   split_main TEST.u8 TRAIN.u8 TRAIN_LABELS.i32 SIZES.i32    ($BNNCL_KERNEL: a kernel path to force)
 *
 * $BNNCL_ARENA_IMAGES=N: an arena of bnncl_arena_size_learn(model, N) bytes (malloc'ed) instead of the static
 * BNNCL_ARENA_BYTES one: experiences of up to N images are one merge each and run each forward once.
 *
 * From the exported model (with its initial state, if any), learns the training images as consecutive
 * experiences of SIZES[0], SIZES[1], ... images (one bnncl_learn call each), then predicts every test image.
 * Prints (compared with the Python Learner by tests/native/test_libbnncl_split.py):
 *   path N                 the kernel path (bnncl_kernel_path)
 *   chunk IMAGES           bnncl_ctx_learn_chunk (bnncl_learn_chunk with the static arena)
 *   learn I RC             per experience
 *   p CLASS                per test image, after the last experience
 *   seconds LEARN PREDICT  wall time of the learn calls and of the predictions (clock())
 * Exit status 0, or 1 with a one-line reason on stderr.  The file buffers are malloc'ed here (a host
 * test program); the library allocates nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "host_io.h"
#include "model.h"

#define IMG (BNNCL_INPUT_H * BNNCL_INPUT_W * BNNCL_INPUT_C)

static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];

static int fail(const char *what) {
    fprintf(stderr, "split_main: %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) return fail("usage: split_main TEST.u8 TRAIN.u8 LABELS.i32 SIZES.i32");
    size_t ntest, ntrain, nlab, nsizes;
    uint8_t *test = slurp(argv[1], &ntest), *train = slurp(argv[2], &ntrain), *lab = slurp(argv[3], &nlab);
    uint8_t *sz = slurp(argv[4], &nsizes);
    if (!test || !train || !lab || !sz) return fail("cannot read the input files");
    ntest /= IMG, ntrain /= IMG, nsizes /= 4;
    if (nlab != 4 * ntrain) return fail("one int32 label per training image expected");
    const int32_t *labels = (const int32_t *)(void *)lab, *sizes = (const int32_t *)(void *)sz;
    bnncl_ctx *ctx = NULL;
    void *mem = arena;
    size_t mem_bytes = sizeof arena;
    if (getenv("BNNCL_ARENA_IMAGES")) {
        mem_bytes = bnncl_arena_size_learn(&bnncl_exported_model, (size_t)atol(getenv("BNNCL_ARENA_IMAGES")));
        if (!mem_bytes || !(mem = malloc(mem_bytes))) return fail("BNNCL_ARENA_IMAGES: no arena of that size");
    }
    int rc = bnncl_init(&bnncl_exported_model, mem, mem_bytes, &ctx);
    if (rc != BNNCL_OK) return fail(bnncl_strerror(rc));
    if (getenv("BNNCL_KERNEL") && (rc = bnncl_set_kernel_path(ctx, atoi(getenv("BNNCL_KERNEL")))) != BNNCL_OK)
        return fail(bnncl_strerror(rc));
    printf("path %d\n", bnncl_kernel_path(ctx));
    printf("chunk %zu\n", bnncl_ctx_learn_chunk(ctx));
    size_t at = 0;
    clock_t t0 = clock();
    for (size_t e = 0; e < nsizes; ++e) {
        if (sizes[e] < 0 || at + (size_t)sizes[e] > ntrain) return fail("SIZES: more images than TRAIN holds");
        rc = bnncl_learn(ctx, train + at * IMG, (size_t)sizes[e], IMG, labels + at);
        printf("learn %zu %d\n", e, rc);
        at += (size_t)sizes[e];
    }
    clock_t t1 = clock();
    for (size_t i = 0; i < ntest; ++i) {
        int32_t cls;
        rc = bnncl_predict(ctx, test + i * IMG, IMG, &cls, NULL, 0);
        if (rc != BNNCL_OK) return fail(bnncl_strerror(rc));
        printf("p %d\n", (int)cls);
    }
    clock_t t2 = clock();
    printf("seconds %.4f %.4f\n", (double)(t1 - t0) / CLOCKS_PER_SEC, (double)(t2 - t1) / CLOCKS_PER_SEC);
    return 0;
}
