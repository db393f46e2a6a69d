/* libbnncl: the bnncl device engine as a portable C library (C99, no Python, no malloc).
 *
 * What works now: predict on the host.  One uint8 image in, the class and the float32 scores out,
 * bit-identical to the Python frozen engine (bnncl.device.frozen.FrozenEngine.logits) on its scalar
 * kernel path.  The model comes from `bnncl export-c MODEL.bnn -o DIR` as const C arrays (model.c,
 * model.h) and a config header (model_config.h) with the exact arena size.
 *
 * Usage:
 *     static uint64_t arena[(BNNCL_ARENA_BYTES + 7) / 8];       (8-byte aligned, from model_config.h)
 *     bnncl_ctx *ctx;
 *     int rc = bnncl_init(&bnncl_exported_model, arena, sizeof arena, &ctx);
 *     rc = bnncl_predict(ctx, pixels, H * W * C, &cls, scores, BNNCL_NUM_CLASSES);
 *
 * Every function returns BNNCL_OK (0) or a negative error code (below); none aborts or allocates.
 * The context lives inside the arena; one context serves one thread at a time.
 */
#ifndef BNNCL_H
#define BNNCL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes ---------------------------------------------------------------------------- */
#define BNNCL_OK 0
#define BNNCL_E_NULL (-1)        /* a required pointer argument is NULL */
#define BNNCL_E_MODEL (-2)       /* the model description is foreign, of another version, or inconsistent */
#define BNNCL_E_ARENA_SMALL (-3) /* the arena is smaller than bnncl_arena_size() */
#define BNNCL_E_ALIGN (-4)       /* the arena is not 8-byte aligned */
#define BNNCL_E_CTX (-5)         /* the context was not made by bnncl_init (or its arena was overwritten) */
#define BNNCL_E_SIZE (-6)        /* the image has the wrong number of bytes, or the scores buffer is too short */

/* A short English description of an error code (never NULL). */
const char *bnncl_strerror(int code);

/* ---- model description (written by `bnncl export-c`; do not fill by hand) ------------------- */
#define BNNCL_MODEL_MAGIC 0x4C434E42u /* "BNCL" */
#define BNNCL_MODEL_VERSION 1
#define BNNCL_ADDMAP_FULL 0  /* stem_addmap: (H, W, stem_channels) */
#define BNNCL_ADDMAP_NINE 1  /* stem_addmap: (3, 3, stem_channels), by (top/middle/bottom, left/middle/right) */

typedef struct {
    int32_t in_channels, out_channels, stride, in_h, in_w;
    int32_t binary_input;          /* shortcut of sign(x + input_bias) instead of x */
    const uint64_t *panels;        /* packed weights in panels of 32 output channels: [panel][word][32] */
    const float *scale, *bias;     /* fused output transform, padded to a multiple of 32 */
    const float *input_bias;       /* in_channels: binarisation bias of this block's input */
    const float *shift_in, *slope, *shift_out; /* RPReLU, out_channels */
} bnncl_block_desc;

typedef struct bnncl_model {
    uint32_t magic, version;
    int32_t in_h, in_w, in_c, stem_channels;
    const int8_t *stem_weight_i8;  /* (9 * in_c, stem_channels) in (ky, kx, c) row order, or NULL */
    const float *stem_weight_f32;  /* the same as float32 when stem_weight_i8 is NULL */
    const float *stem_mul;         /* stem_channels: fused scale */
    int32_t addmap_kind;           /* BNNCL_ADDMAP_* */
    const float *stem_addmap;      /* fused bias with the input normalisation's border correction */
    const float *stem_shift_in, *stem_slope, *stem_shift_out;
    int32_t num_blocks;
    const bnncl_block_desc *blocks;
    int32_t features, num_classes;
    const float *head;             /* (features, num_classes): the bias-free linear head, transposed */
    const int32_t *class_ids;      /* num_classes: dataset class of each score */
} bnncl_model;

/* ---- API ------------------------------------------------------------------------------------ */
typedef struct bnncl_ctx bnncl_ctx; /* opaque; lives at the start of the arena */

/* Bytes of arena bnncl_init needs for this model (the same on every target), or 0 when the
 * model description is invalid. */
size_t bnncl_arena_size(const bnncl_model *model);

/* Checks the model and lays out the context in arena (8-byte aligned, arena_bytes >= bnncl_arena_size).
 * The model's arrays are read in place (flash) for the context's lifetime. */
int bnncl_init(const bnncl_model *model, void *arena, size_t arena_bytes, bnncl_ctx **ctx);

/* Classifies one uint8 image (H, W, C row-major, image_bytes = H * W * C): *cls = the dataset class
 * of the highest score (the first on ties); scores (optional, NULL to skip) receives the
 * num_classes float32 logits when nscores >= num_classes. */
int bnncl_predict(bnncl_ctx *ctx, const uint8_t *image, size_t image_bytes, int32_t *cls, float *scores,
                  size_t nscores);

#ifdef __cplusplus
}
#endif
#endif
