/* Cortex-M test program of libbnncl (bare metal, qemu-system-arm -M mps2-an386, semihosting).
 *
 * The exported model (model.c, with the streaming-LDA state deployed on the base classes) and the
 * images (data.c, written by libbnncl/tests/embed_images.py: test images, training images of the
 * new classes and their labels) are const arrays in flash; the arena and the buffer the state is saved
 * to are static arrays in RAM.  Prints (compared with the Python engine by
 * tests/native/test_libbnncl_cortexm.py), one line each:
 *   arena BYTES / state_size BYTES / chunk IMAGES (bnncl_learn_chunk)
 *   f CLASS HEX...      per test image: the frozen forward with the pretrained head (the model started
 *                       without its state), class and float32 logits (bits)
 *   feat HEX...         per test image: the pooled features (the latents of the SLDA strategy)
 *   p0 CLASS HEX...     per test image with the deployed state (SLDA scores)
 *   sel0 HEX HEX LOO... bnncl_slda_selection with the deployed state: the shrinkage (float64 bits, high
 *                       and low words), the 11 leave-one-out counts
 *   learn RC            one experience: the training images
 *   sel1 HEX HEX LOO... after learning
 *   p1 CLASS HEX...     per test image after learning
 *   save RC / state HEX... (the saved state, 128 bytes a line)
 *   load RC             after bnncl_init again, from the saved buffer
 *   p2 CLASS HEX...     per test image after the reload
 *   check corrupt_payload RC    one flipped byte in the saved buffer
 *   stack BYTES         the stack high-water mark (painted at reset)
 *   ticks NAME T        25 MHz timer ticks of: predict (the frozen predictions), features, learn (the
 *                       experience), predict_slda (p1), calib (a loop of CALIB_INSNS instructions);
 *                       meaningful under qemu -icount shift=0, where one instruction takes 1 ns:
 *                       instructions = 40 x T (to +-40), checked by calib
 * and exits (semihosting) with status 0, or 1 after "error WHAT RC". */
#include <string.h>

#include "model.h"
#include "semihost.h"
#include "line_out.h"
#include "../mem_stream.h"

#define IMG (BNNCL_INPUT_H * BNNCL_INPUT_W * BNNCL_INPUT_C)

extern const uint8_t bnncl_test_images[], bnncl_train_images[];
extern const int32_t bnncl_train_labels[];
extern const uint32_t bnncl_test_count, bnncl_train_count;

static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];
__attribute__((section(".statebuf"))) static uint8_t state_buf[BNNCL_STATE_BYTES];
static bnncl_model frozen; /* the exported model without its initial state: predicts with the pretrained head */
static float buf[BNNCL_MAX_SCORES > 512 ? BNNCL_MAX_SCORES : 512];

static void put_selection(bnncl_ctx *ctx, const char *tag) {
    double eps = -1.0;
    int64_t loo[BNNCL_SHRINKAGE_GRID];
    memset(loo, 0, sizeof loo);
    bnncl_slda_selection(ctx, &eps, loo);
    uint64_t bits;
    memcpy(&bits, &eps, 8);
    put(tag);
    put_hex((uint32_t)(bits >> 32), 8);
    put_hex((uint32_t)bits, 8);
    for (int j = 0; j < BNNCL_SHRINKAGE_GRID; ++j) {
        put(" ");
        put_int((long)loo[j]);
    }
    endl();
}

static uint32_t t_predict, t_features, t_learn, t_slda, t_calib;

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
        put_floats(buf, bnncl_num_scores(ctx));
        endl();
    }
    return 0;
}

int main(void) {
    bnncl_ctx *ctx = NULL;
    int rc;
    put("arena ");
    put_int((long)bnncl_arena_size(&bnncl_exported_model));
    endl();

    frozen = bnncl_exported_model;
    frozen.slda_means = NULL, frozen.slda_counts = NULL, frozen.slda_cov = NULL, frozen.slda_loo = NULL;
    if ((rc = bnncl_init(&frozen, arena, sizeof arena, &ctx)) != BNNCL_OK) return error("init_frozen", rc);
    if (predict_all(ctx, "f", &t_predict)) return 1;
    for (uint32_t i = 0; i < bnncl_test_count; ++i) {
        uint32_t t0 = sh_ticks();
        rc = bnncl_features(ctx, bnncl_test_images + (size_t)i * IMG, IMG, buf, sizeof buf / sizeof buf[0]);
        t_features += sh_ticks() - t0;
        if (rc != BNNCL_OK) return error("features", rc);
        put("feat");
        put_floats(buf, (size_t)bnncl_exported_model.features);
        endl();
    }

    if ((rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx)) != BNNCL_OK) return error("init", rc);
    put("state_size ");
    put_int((long)bnncl_state_size(ctx));
    endl();
    put("chunk ");
    put_int((long)bnncl_learn_chunk(&bnncl_exported_model));
    endl();
    if (bnncl_state_size(ctx) != sizeof state_buf) return error("state_size", -1);
    if (predict_all(ctx, "p0", NULL)) return 1;
    put_selection(ctx, "sel0");
    t_learn = sh_ticks();
    rc = bnncl_learn(ctx, bnncl_train_images, bnncl_train_count, IMG, bnncl_train_labels);
    t_learn = sh_ticks() - t_learn;
    put("learn ");
    put_int(rc);
    endl();
    put_selection(ctx, "sel1");
    if (predict_all(ctx, "p1", &t_slda)) return 1;
    membuf mb = {state_buf, sizeof state_buf, 0};
    rc = bnncl_state_save(ctx, write_mem, &mb);
    put("save ");
    put_int(rc);
    endl();
    for (size_t at = 0; at < sizeof state_buf; at += 128) {
        put("state");
        for (size_t j = at; j < at + 128 && j < sizeof state_buf; ++j) put_hex(state_buf[j], 2);
        endl();
    }

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
    state_buf[sizeof state_buf / 2] ^= 0x10;
    put("stack ");
    put_int((long)sh_stack_used());
    endl();
    put_ticks("predict", t_predict);
    put_ticks("features", t_features);
    put_ticks("learn", t_learn);
    put_ticks("predict_slda", t_slda);
    t_calib = calibrate();
    put_ticks("calib", t_calib);
    put("calib_insns ");
    put_int((long)CALIB_INSNS);
    endl();
    return 0;
}
