/* Host test program of libbnncl: predicts raw uint8 images with the exported model.
 *
 *   predict_main IMAGES.u8    (N * H * W * C bytes; $BNNCL_KERNEL: a kernel path to force, BNNCL_KERNEL_*)
 *
 * Prints "arena BYTES", "check NAME RC" for the error paths, then per image one line: the class and
 * the scores as the hexadecimal bits of each float32 (compared bit for bit by tests/native/test_libbnncl.py).
 * Exit status 0, or 1 with a one-line reason on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];
static uint8_t image[BNNCL_INPUT_H * BNNCL_INPUT_W * BNNCL_INPUT_C];
static uint64_t not_a_ctx[64]; /* zeros: no context magic */

static int fail(const char *what) {
    fprintf(stderr, "predict_main: %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) return fail("usage: predict_main IMAGES.u8");
    size_t need = bnncl_arena_size(&bnncl_exported_model);
    printf("arena %zu\n", need);
    if (need != BNNCL_ARENA_BYTES) return fail("bnncl_arena_size differs from BNNCL_ARENA_BYTES");
    bnncl_ctx *ctx = NULL;
    int32_t cls;
    float scores[BNNCL_NUM_CLASSES];
    bnncl_model foreign = bnncl_exported_model;
    foreign.magic ^= 1u;
    printf("check null_model %d\n", bnncl_init(NULL, arena, sizeof arena, &ctx));
    printf("check foreign_model %d\n", bnncl_init(&foreign, arena, sizeof arena, &ctx));
    printf("check small_arena %d\n", bnncl_init(&bnncl_exported_model, arena, need - 1, &ctx));
    printf("check misaligned %d\n", bnncl_init(&bnncl_exported_model, (char *)arena + 4, sizeof arena - 8, &ctx));
    printf("check uninit_ctx %d\n", bnncl_predict((bnncl_ctx *)(void *)not_a_ctx, image, sizeof image, &cls, NULL, 0));
    int rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx);
    if (rc != BNNCL_OK) return fail(bnncl_strerror(rc));
    if (getenv("BNNCL_KERNEL") && (rc = bnncl_set_kernel_path(ctx, atoi(getenv("BNNCL_KERNEL")))) != BNNCL_OK)
        return fail(bnncl_strerror(rc));
    fprintf(stderr, "kernel path %d\n", bnncl_kernel_path(ctx));
    printf("check wrong_image_size %d\n", bnncl_predict(ctx, image, sizeof image - 1, &cls, scores, BNNCL_NUM_CLASSES));
    printf("check short_scores %d\n", bnncl_predict(ctx, image, sizeof image, &cls, scores, BNNCL_NUM_CLASSES - 1));
    FILE *f = fopen(argv[1], "rb");
    if (!f) return fail("cannot open the images file");
    while (fread(image, 1, sizeof image, f) == sizeof image) {
        rc = bnncl_predict(ctx, image, sizeof image, &cls, scores, BNNCL_NUM_CLASSES);
        if (rc != BNNCL_OK) return fail(bnncl_strerror(rc));
        printf("%d", (int)cls);
        for (int j = 0; j < BNNCL_NUM_CLASSES; ++j) {
            uint32_t bits;
            memcpy(&bits, &scores[j], 4);
            printf(" %08x", (unsigned)bits);
        }
        printf("\n");
    }
    fclose(f);
    return 0;
}
