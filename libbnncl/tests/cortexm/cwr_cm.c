/* Cortex-M test program of libbnncl with head-only CWR* (a model exported with --strategy cwr_star; bare metal,
 * qemu-system-arm -M mps2-an386, semihosting): make -C libbnncl cortexm MODEL=DIR DATA=data.c CM_MAIN=cwr_cm.
 *
 * The exported model (model.c, with the CWR* state deployed on the base classes) and the images (data.c, written by
 * libbnncl/tests/embed_images.py: test images, training images and their labels) are const arrays in flash; the
 * arena and the buffer the state is saved to are static arrays in RAM.  Prints (compared with the Python learner
 * by tests/native/test_libbnncl_ctx_cwr.py), one line each:
 *   arena BYTES / state_size BYTES
 *   p0 CLASS HEX...     per test image with the deployed state (CWR* scores, float32 bits)
 *   learn RC            one experience: the training images
 *   p1 CLASS HEX...     per test image after learning
 *   save RC / head HEX... / crc HEX   the saved state's 32-byte header and its last 4 bytes (the payload's CRC32)
 *   load RC             after bnncl_init again, from the saved buffer
 *   p2 CLASS HEX...     per test image after the reload
 *   check corrupt_payload RC    one flipped byte in the saved buffer
 *   stack BYTES         the stack high-water mark (painted at reset)
 *   ticks NAME T        25 MHz timer ticks of: predict (p0), learn (the experience), calib (a loop of CALIB_INSNS
 *                       instructions); under qemu -icount shift=0 instructions = 40 x T
 * and exits (semihosting) with status 0, or 1 after "error WHAT RC". */
#include <string.h>

#include "model.h"
#include "semihost.h"
#define LINE_BYTES 512
#include "line_out.h"
#include "../mem_stream.h"

#define IMG (BNNCL_INPUT_H * BNNCL_INPUT_W * BNNCL_INPUT_C)

extern const uint8_t bnncl_test_images[], bnncl_train_images[];
extern const int32_t bnncl_train_labels[];
extern const uint32_t bnncl_test_count, bnncl_train_count;

static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];
__attribute__((section(".statebuf"))) static uint8_t state_buf[BNNCL_STATE_BYTES];
static float buf[BNNCL_MAX_SCORES];

static int predict_all(bnncl_ctx *ctx, const char *tag, uint32_t *ticks) {
    for (uint32_t i = 0; i < bnncl_test_count; ++i) {
        int32_t cls;
        uint32_t t0 = sh_ticks();
        int rc = bnncl_predict(ctx, bnncl_test_images + (size_t)i * IMG, IMG, &cls, buf, BNNCL_MAX_SCORES);
        if (ticks) *ticks += sh_ticks() - t0;
        if (rc != BNNCL_OK) return error(tag, rc);
        put(tag);
        put(" ");
        put_int(cls);
        for (size_t j = 0; j < bnncl_num_scores(ctx); ++j) {
            uint32_t bits;
            memcpy(&bits, &buf[j], 4);
            put_hex(bits, 8);
        }
        endl();
    }
    return 0;
}

int main(void) {
    bnncl_ctx *ctx = NULL;
    int rc;
    uint32_t t_predict = 0, t_learn;
    put("arena ");
    put_int((long)bnncl_arena_size(&bnncl_exported_model));
    endl();
    if ((rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx)) != BNNCL_OK) return error("init", rc);
    put("state_size ");
    put_int((long)bnncl_state_size(ctx));
    endl();
    if (bnncl_state_size(ctx) != sizeof state_buf) return error("state_size", -1);
    if (predict_all(ctx, "p0", &t_predict)) return 1;
    t_learn = sh_ticks();
    rc = bnncl_learn(ctx, bnncl_train_images, bnncl_train_count, IMG, bnncl_train_labels);
    t_learn = sh_ticks() - t_learn;
    put("learn ");
    put_int(rc);
    endl();
    if (predict_all(ctx, "p1", NULL)) return 1;
    membuf mb = {state_buf, sizeof state_buf, 0};
    put("save ");
    put_int(bnncl_state_save(ctx, write_mem, &mb));
    endl();
    put("head");
    for (size_t j = 0; j < 32; ++j) put_hex(state_buf[j], 2);
    endl();
    put("crc");
    for (size_t j = sizeof state_buf - 4; j < sizeof state_buf; ++j) put_hex(state_buf[j], 2);
    endl();
    if ((rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx)) != BNNCL_OK) return error("re-init", rc);
    mb.pos = 0;
    put("load ");
    put_int(bnncl_state_load(ctx, read_mem, &mb));
    endl();
    if (predict_all(ctx, "p2", NULL)) return 1;
    state_buf[sizeof state_buf / 2] ^= 0x10;
    mb.pos = 0;
    put("check corrupt_payload ");
    put_int(bnncl_state_load(ctx, read_mem, &mb));
    endl();
    put("stack ");
    put_int((long)sh_stack_used());
    endl();
    put_ticks("predict", t_predict);
    put_ticks("learn", t_learn);
    put_ticks("calib", calibrate());
    put("calib_insns ");
    put_int((long)CALIB_INSNS);
    endl();
    return 0;
}
