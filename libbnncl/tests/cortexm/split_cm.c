/* Cortex-M test program of libbnncl: a protocol of experiences, then the classes of a whole test split
 * (bare metal, qemu-system-arm -M mps2-an386 / mps2-an500; the inputs are read from the host through
 * semihosting file calls, so they need not fit the board's memory).
 *
 * The Cortex-M twin of split_main.c (the same inputs; its chunk, learn and p lines): qemu runs in the folder holding
 *   test.u8 (test images), train.u8 (training images), labels.i32 (one int32 per training image),
 *   sizes.i32 (images per experience);
 * from the exported model (with its initial state), learns the training images as consecutive experiences
 * (one bnncl_learn call each), then predicts every test image, one read at a time.  Prints:
 *   chunk IMAGES / learn I RC (per experience) / p CLASS (per test image)
 * and exits with status 0, or 1 after "error WHAT RC". */
#include <stdint.h>
#include <string.h>

#include "model.h"
#include "semihost.h"
#include "line_out.h"

#define IMG (BNNCL_INPUT_H * BNNCL_INPUT_W * BNNCL_INPUT_C)
#ifndef SPLIT_MAX_EXPERIENCE
#define SPLIT_MAX_EXPERIENCE 1000 /* images of the largest experience (a RAM buffer of the test program) */
#endif

static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];
static uint8_t images[(size_t)SPLIT_MAX_EXPERIENCE * IMG];
static int32_t labels[SPLIT_MAX_EXPERIENCE];
/* SYS_OPEN (mode 0: "r", binary) of a file in qemu's working folder: a handle, or -1 */
static int sh_open(const char *name) {
    uint32_t block[3] = {(uint32_t)(uintptr_t)name, 1u /* "rb" */, (uint32_t)strlen(name)};
    return sh_call(0x01, block);
}

/* SYS_READ of exactly n bytes: 0, or -1 on a short read */
static int sh_read(int fd, void *buf, size_t n) {
    uint32_t block[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, (uint32_t)n};
    return sh_call(0x06, block) == 0 ? 0 : -1; /* the call returns the bytes NOT read */
}

static long sh_flen(int fd) {
    uint32_t block[1] = {(uint32_t)fd};
    return sh_call(0x0C, block);
}

int main(void) {
    int ft = sh_open("test.u8"), fx = sh_open("train.u8"), fy = sh_open("labels.i32"), fs = sh_open("sizes.i32");
    if (ft < 0 || fx < 0 || fy < 0 || fs < 0) return error("open", -1);
    long ntest = sh_flen(ft) / IMG, nsizes = sh_flen(fs) / 4;
    bnncl_ctx *ctx = NULL;
    int rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx);
    if (rc != BNNCL_OK) return error("init", rc);
    put("chunk ");
    put_int((long)bnncl_learn_chunk(&bnncl_exported_model));
    endl();
    for (long e = 0; e < nsizes; ++e) {
        int32_t n;
        if (sh_read(fs, &n, 4) != 0) return error("sizes", e);
        if (n < 0 || n > SPLIT_MAX_EXPERIENCE) return error("experience_too_large", n);
        if (sh_read(fx, images, (size_t)n * IMG) != 0 || sh_read(fy, labels, (size_t)n * 4) != 0)
            return error("train", e);
        rc = bnncl_learn(ctx, images, (size_t)n, IMG, labels);
        put("learn ");
        put_int(e);
        put(" ");
        put_int(rc);
        endl();
    }
    for (long i = 0; i < ntest; ++i) {
        int32_t cls;
        if (sh_read(ft, images, IMG) != 0) return error("test", i);
        rc = bnncl_predict(ctx, images, IMG, &cls, NULL, 0);
        if (rc != BNNCL_OK) return error("predict", rc);
        put("p ");
        put_int(cls);
        endl();
    }
    return 0;
}
