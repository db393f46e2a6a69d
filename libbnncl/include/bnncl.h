/* libbnncl: the bnncl device engine as a portable C library (C99, no Python, no malloc).
 *
 * What works now (host, AArch64 Linux, bare-metal Cortex-M4F):
 *   - predict: one uint8 image in, the class and the float32 scores out; the frozen forward is
 *     bit-identical to the Python frozen engine (bnncl.device.frozen.FrozenEngine) on its scalar path;
 *   - learn: streaming LDA on the pooled features (bnncl.cl.slda.StreamingLDA: exact class-mean and
 *     shared-covariance merge, float64 accumulation, the leave-one-out tally of the shrinkage grid for
 *     rare classes, Cholesky refresh of the classifier);
 *   - or learn: head-only CWR* with latent replay (`bnncl export-c --strategy cwr_star`, section "head-only CWR* in
 *     the context" below), bit-identical to the Python learner with the portable random stream;
 *   - state_size / state_save / state_load through caller callbacks: versioned, CRC32-checked.
 * The model comes from `bnncl export-c MODEL.bnn -o DIR` as const C arrays (model.c, model.h) and a
 * config header (model_config.h) with the exact arena size, predict and learn included.
 *
 * How a device starts: the exported model may embed an initial SLDA state (the one
 * bnncl.api.Learner(model).deploy(...) computes in Python on the base classes); bnncl_init copies it
 * into the arena.  While no class has been learned (no state embedded, nothing learned or loaded),
 * predict uses the pretrained head; once any class has a count, predict uses the SLDA classifier,
 * restricted to the classes seen (count > 0), as bnncl.cl.learner.Learner.predict does.
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
#define BNNCL_E_IO (-7)          /* a state read or write callback reported a failure (or a short read) */
#define BNNCL_E_STATE_CORRUPT (-8) /* not a libbnncl state, a version this library does not read, or a
                                      checksum mismatch (damaged); the live state is left unchanged */
#define BNNCL_E_STATE_FOREIGN (-9) /* a valid state of another model or configuration (fingerprint, class
                                      count, feature count or strategy differ); the live state is unchanged */
#define BNNCL_E_NO_LEARNING (-10)  /* the model was exported without a learning configuration */
#define BNNCL_E_LABEL (-11)      /* a label is outside [0, slda_classes); nothing was learned */
#define BNNCL_E_NUMERIC (-12)    /* non-finite features (nothing learned) or a covariance the Cholesky
                                    factorisation refuses (the state is updated, predict then fails) */
#define BNNCL_E_UNSUPPORTED (-13) /* bnncl_set_kernel_path: a kernel path this CPU or build does not run */

/* A short English description of an error code (never NULL). */
const char *bnncl_strerror(int code);

/* ---- model description (written by `bnncl export-c`; do not fill by hand) ------------------- */
/* The packed weight panels are 64-byte aligned where the AVX-512 kernel may read them (x86-64, GCC/Clang);
 * a block whose panels are not aligned runs the scalar kernel (bit-identical). */
#if defined(__GNUC__) && defined(__x86_64__)
#define BNNCL_PANEL_ALIGN __attribute__((aligned(64)))
#else
#define BNNCL_PANEL_ALIGN
#endif
#define BNNCL_MODEL_MAGIC 0x4C434E42u /* "BNCL" */
#define BNNCL_MODEL_VERSION 4 /* 4: strategy and cwr (head-only CWR*) */
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
    uint32_t fingerprint;          /* CRC32 of the arrays above (export-c): a saved state names its model by it */
    /* learning (streaming LDA on the pooled features); slda_classes = 0: predict only */
    int32_t slda_classes;          /* rows of the state: dataset classes 0 .. slda_classes - 1 */
    double slda_shrinkage;         /* the shrinkage setting eps of StreamingLDA, in [0, 1) */
    const float *slda_means;       /* initial state (slda_classes, features), or NULL: start empty */
    const int64_t *slda_counts;    /* slda_classes (NULL with slda_means) */
    const float *slda_cov;         /* features * (features + 1) / 2: upper triangle row by row */
    const int64_t *slda_loo;       /* BNNCL_SHRINKAGE_GRID leave-one-out counts of the initial state
                                      (StreamingLDA.loo_correct), or NULL: zeros; read only with slda_means */
    /* the learning strategy: BNNCL_STRATEGY_NONE (predict only), _SLDA (slda_classes > 0) or _CWR_STAR (cwr set,
     * slda_classes 0) */
    int32_t strategy;
    const struct bnncl_cwr_model *cwr; /* head-only CWR* with latent replay (below), or NULL */
} bnncl_model;
#define BNNCL_STRATEGY_NONE 0
#define BNNCL_STRATEGY_SLDA 1
#define BNNCL_STRATEGY_CWR_STAR 2

/* The shrinkage values the leave-one-out selection compares (bnncl.cl.slda.SHRINKAGE_GRID):
 * 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 4e-2, 8e-2, 0.15, 0.3, 0.5. */
#define BNNCL_SHRINKAGE_GRID 11

/* ---- API ------------------------------------------------------------------------------------ */
typedef struct bnncl_ctx bnncl_ctx; /* opaque; lives at the start of the arena */

/* Bytes of arena bnncl_init needs for this model (the same on every target), or 0 when the
 * model description is invalid. */
size_t bnncl_arena_size(const bnncl_model *model);

/* Images bnncl_learn merges at a time in an arena of bnncl_arena_size bytes (BNNCL_LEARN_CHUNK in
 * model_config.h): the float32 features of that many images fit in the arena's learning scratch; 0 without
 * learning or for an invalid model.  A larger arena holds more (bnncl_arena_size_learn, bnncl_ctx_learn_chunk). */
size_t bnncl_learn_chunk(const bnncl_model *model);

/* Bytes of arena with which bnncl_learn merges at least `images` images at a time and holds as many for the
 * leave-one-out tally: a call of up to that many images is one merge and runs each image's forward once (0 for
 * an invalid model or a size that overflows).  The extra over bnncl_arena_size: about (images + 61 - chunk of
 * the smaller arena) x features x 4 bytes (the features, and the tally's solve factors past them), plus a copy of
 * the weights of the blocks with multiples of 32 input and output channels in the layout of the AVX-512 direct
 * kernel, which bnncl_init makes at the end of any arena that holds it on a CPU with AVX-512 (those blocks then
 * run that kernel with their epilogue fused, as the Python engine does: the same results).  A host caller trades
 * it for speed, a microcontroller keeps the minimum. */
size_t bnncl_arena_size_learn(const bnncl_model *model, size_t images);

/* Checks the model and lays out the context in arena (8-byte aligned, arena_bytes >= bnncl_arena_size).
 * The whole arena is used: bytes beyond bnncl_arena_size hold the direct kernel's weights (above) where they fit
 * on a CPU with AVX-512, and the rest lengthens the learning scratch (more images per chunk,
 * bnncl_ctx_learn_chunk).  The model's arrays are read in place (flash) for the context's lifetime. */
int bnncl_init(const bnncl_model *model, void *arena, size_t arena_bytes, bnncl_ctx **ctx);

/* Images bnncl_learn merges at a time in this context's arena (>= bnncl_learn_chunk of its model); 0 on a bad
 * ctx or a model without learning. */
size_t bnncl_ctx_learn_chunk(const bnncl_ctx *ctx);

/* Kernel paths of the binary convolution, all bit-identical: bnncl_init picks the fastest the CPU runs
 * (runtime detection: AVX-512 (F, BW, VL, VPOPCNTDQ) or AVX2 on x86-64, NEON on AArch64, else scalar, as on
 * Cortex-M).  bnncl_set_kernel_path forces one (BNNCL_KERNEL_AUTO: the fastest again); bnncl_kernel_path
 * says which runs. */
#define BNNCL_KERNEL_AUTO (-1)
#define BNNCL_KERNEL_SCALAR 0
#define BNNCL_KERNEL_AVX2 1
#define BNNCL_KERNEL_AVX512 2
#define BNNCL_KERNEL_NEON 3
int bnncl_set_kernel_path(bnncl_ctx *ctx, int path);
int bnncl_kernel_path(const bnncl_ctx *ctx);

/* Classifies one uint8 image (H, W, C row-major, image_bytes = H * W * C): *cls = the dataset class
 * of the highest score (the first on ties).  scores (optional, NULL to skip) receives
 * bnncl_num_scores(ctx) float32 logits when nscores >= that: with the pretrained head, score j is
 * dataset class class_ids[j]; with the SLDA classifier, score c is dataset class c (only the seen
 * classes compete for *cls).  BNNCL_MAX_SCORES (model_config.h) is always enough. */
int bnncl_predict(bnncl_ctx *ctx, const uint8_t *image, size_t image_bytes, int32_t *cls, float *scores,
                  size_t nscores);

/* Scores predict writes now: num_classes (pretrained head) or slda_classes (SLDA); 0 on a bad ctx. */
size_t bnncl_num_scores(const bnncl_ctx *ctx);

/* The pooled features (the latents of the SLDA strategy, FrozenEngine.latents(split="gap")) of one
 * image: nfeatures >= features float32 values. */
int bnncl_features(bnncl_ctx *ctx, const uint8_t *image, size_t image_bytes, float *features, size_t nfeatures);

/* Learns one experience: n images (n * image_bytes bytes, each H, W, C) with their dataset classes.
 * Head-only CWR* (strategy BNNCL_STRATEGY_CWR_STAR): one experience of n <= max_images (BNNCL_CWR_MAX_IMAGES) images,
 * a larger n fails with BNNCL_E_SIZE, nothing learned (below).  Streaming LDA: the exact merge of StreamingLDA.update (float64), then the leave-one-out tally (the images
 * of the call whose class now holds 2 .. 100 features, each scored with its class mean taken without it, for
 * every value of the shrinkage grid, on the statistics after the whole call), then the classifier refresh.  The
 * images are merged in chunks of bnncl_ctx_learn_chunk(ctx) (bnncl_learn_chunk(model) in the minimum arena):
 * n <= that is one merge, whose features the tally reuses when they fit beside its scratch (always in an arena
 * of bnncl_arena_size_learn(model, n) bytes); a longer call rounds the float32 state between chunks (the same
 * state in exact arithmetic), and the tally runs the forwards of its tallied images again.  All
 * labels are checked first (BNNCL_E_LABEL: nothing learned); non-finite features stop the call with the
 * chunks before learned (and no tally).  n = 0: no-op. */
int bnncl_learn(bnncl_ctx *ctx, const uint8_t *images, size_t n, size_t image_bytes, const int32_t *labels);

/* The shrinkage the SLDA classifier uses now (StreamingLDA.effective_shrinkage: while the rarest seen class
 * has at most 100 features and some leave-one-out count is nonzero, the grid value with the most right
 * answers, ties to the one nearest on a log scale to the fallback rule 0.05 * 5 / (n_min + 5); else that
 * rule; the shrinkage setting is a floor) into *shrinkage (the setting itself while no class is seen), and
 * the BNNCL_SHRINKAGE_GRID leave-one-out counts into loo_correct (optional, NULL to skip). */
int bnncl_slda_selection(const bnncl_ctx *ctx, double *shrinkage, int64_t *loo_correct);

/* ---- state (the learned SLDA means, counts, covariance and leave-one-out counts; or CWR*'s) ---------------
 * Format (little-endian, the same on every target):
 *   header  8 x uint32: magic "BLST" (0x54534C42), version 2, model fingerprint, strategy (1 = slda; 2 = CWR*,
 *           whose payload src/ctx_cwr.c describes: configuration checksum, scalars, both streams, cw, past, seen,
 *           standardizer, the whole buffer; a fixed size, bnncl_state_size),
 *           classes K, features D, payload bytes, CRC32 of the 28 bytes before it
 *   payload counts int64 x K, means float32 x K*D, covariance float32 x D(D+1)/2 (upper, row by row),
 *           leave-one-out counts int64 x BNNCL_SHRINKAGE_GRID
 *   trailer CRC32 (zlib's) of the payload
 * bnncl_state_load also reads version 1 (the same without the leave-one-out counts: they load as zeros).
 * A callback returns 0 on success (read: exactly n bytes), anything else is a failure (BNNCL_E_IO). */
typedef int (*bnncl_write_fn)(void *user, const void *data, size_t n);
typedef int (*bnncl_read_fn)(void *user, void *data, size_t n);
#define BNNCL_STATE_MAGIC 0x54534C42u /* "BLST" */
#define BNNCL_STATE_VERSION 2

/* Bytes bnncl_state_save writes (0 on a bad ctx or a model without learning). */
size_t bnncl_state_size(const bnncl_ctx *ctx);
int bnncl_state_save(const bnncl_ctx *ctx, bnncl_write_fn write, void *user);
/* Reads and checks a whole state before it replaces the live one (then the classifier is refreshed);
 * a damaged state gives BNNCL_E_STATE_CORRUPT, another model's BNNCL_E_STATE_FOREIGN (CWR*: also another
 * configuration's, or another strategy's); the live state is then unchanged. */
int bnncl_state_load(bnncl_ctx *ctx, bnncl_read_fn read, void *user);

/* ---- head-only CWR* with latent replay: the deterministic pieces (src/cwr.c) -------------------
 * Each function is one step of bnncl.api.Learner(model, strategy="cwr_star", tail_blocks=0) on caller
 * buffers (no allocation), bit-identical to the Python device engine on the same inputs (tests/native/
 * test_libbnncl_cwr.py).  A head is classes x features float32 values on the q_b grid (what
 * TailTrainer.get_head returns); q_f, q_b: bit widths 1..24 or 32 (float32).  The experience loop that calls
 * them is bnncl_cwr_learn (src/cwr_learn.c, below). */

/* exp of the softmax: float32 range reduction and a degree-7 polynomial, the same bits on every target
 * (NumPy's exp is its own SIMD code, up to 3 ULP apart; the Python engine needs this one to agree bit for bit
 * on every minibatch; see src/cwr.c). */
float bnncl_cwr_expf(float x);
/* TailTrainer.logits with no tail blocks: logits (n x classes) = Q_f(Q_f(x)) Q_f(head)^T, x (n x features) quantized
 * as one tensor (the engine's batch), the products summed in order.  scratch: bnncl_cwr_logits_scratch bytes. */
size_t bnncl_cwr_logits_scratch(int64_t n, int64_t features, int64_t classes);
int bnncl_cwr_logits(const float *x, int64_t n, int64_t features, int64_t classes, const float *head, int qf,
                     float *logits, void *scratch, size_t scratch_bytes);
/* TailTrainer.set_head: head <- Q_qb(head) in place. */
int bnncl_cwr_set_head(float *head, int64_t classes, int64_t features, int qb);
/* CWRStar.begin_experience then set_head: head = Q_qb(cw rows of the present classes, zeros elsewhere). */
int bnncl_cwr_begin(const float *cw, const uint8_t *present, float *head, int64_t classes, int64_t features,
                    int qb);
/* Bytes of scratch bnncl_cwr_head_step needs for a minibatch of n (4-byte aligned). */
size_t bnncl_cwr_step_scratch(int64_t n, int64_t features, int64_t classes);
/* One SGD step of the head (TailTrainer._train_batch, no tail blocks) on the minibatch x (n x features
 * float32, the features the head sees) with labels in [0, classes): head updated in place. */
int bnncl_cwr_head_step(const float *x, const int32_t *labels, int64_t n, int64_t features, int64_t classes,
                        float *head, float lr, int qf, int qb, void *scratch, size_t scratch_bytes);
/* The same step with the minibatch x quantized in place (x is overwritten): no copy of it in the scratch. */
size_t bnncl_cwr_step_inplace_scratch(int64_t n, int64_t features, int64_t classes);
int bnncl_cwr_head_step_inplace(float *x, const int32_t *labels, int64_t n, int64_t features, int64_t classes,
                                float *head, float lr, int qf, int qb, void *scratch, size_t scratch_bytes);
/* CWRStar.end_experience: consolidates the trained rows of the present classes (present[c] != 0) with cur[c]
 * patterns into cw and past; max_k < 0: no cap (cwr_max_k None).  scratch: classes x features floats. */
int bnncl_cwr_consolidate(const float *trained, const uint8_t *present, const int64_t *cur, float *cw,
                          int64_t *past, int64_t classes, int64_t features, double max_k, float *scratch);
/* LatentReplayBuffer(bits=8) storage with the buffer's value range (lo, hi): n values to codes and back. */
int bnncl_replay_encode8(const float *x, int64_t n, double lo, double hi, uint8_t *codes);
int bnncl_replay_decode8(const uint8_t *codes, int64_t n, double lo, double hi, float *x);

/* ---- the portable random stream (src/cwr_rng.c) -------------------------------------------------------
 * PCG32 (O'Neill's pcg32_random_r: 64-bit LCG, XSH-RR output) with draws specified to the bit; its Python twin is
 * bnncl.cl.portable_rng.PortableRNG, whose docstring specifies every draw.  The learner and its replay buffer
 * draw from two streams of the same seed. */
typedef struct {
    uint64_t state, inc; /* inc odd */
} bnncl_rng;
#define BNNCL_RNG_LEARNER_STREAM 0u
#define BNNCL_RNG_BUFFER_STREAM 1u
void bnncl_rng_seed(bnncl_rng *rng, uint64_t seed, uint64_t stream);
uint32_t bnncl_rng_next32(bnncl_rng *rng);
/* uniform in [0, n) (Lemire's multiply-shift with rejection); n = 0 gives 0 and draws nothing */
uint32_t bnncl_rng_bounded(bnncl_rng *rng, uint32_t n);
/* uniform double in [0, 1) with 53 random bits (two draws) */
double bnncl_rng_random(bnncl_rng *rng);
/* partial Fisher-Yates from the front: items[0 .. size) become size distinct items of the n, as
 * PortableRNG.choice(items, size, replace=False); size = n: PortableRNG.permutation.  n < 2^32. */
int bnncl_rng_shuffle(bnncl_rng *rng, int32_t *items, int64_t n, int64_t size);

/* ---- head-only CWR* experience loop (src/cwr_learn.c) ---------------------------------------------------
 * bnncl.cl.learner.ContinualLearner with strategy cwr_star, no tail blocks and rng="portable", on the pooled
 * features (bnncl_features): deploy (ContinualLearner.deploy) and learn one experience (ContinualLearner.
 * train_experience): present classes = new + buffer classes, the fixed standardization (FeatureStandardizer,
 * standardize on), begin, epochs (fixed or auto: bnncl.cl.strategies.auto_epochs), proportional or balanced
 * minibatches (mixed_minibatches / balanced_minibatches, the new_per_class cap), head steps, the cur counts,
 * consolidation (cwr_max_k), then the class-balanced buffer insertion (LatentReplayBuffer._add_balanced) at 8 or
 * 32 bits, every draw from the portable stream in Python's order: cw, past, the buffer (codes, labels, order) and
 * the standardizer are bit-identical to Python's (tests/native/test_libbnncl_cwr_loop.py).  Not here: weight_align
 * (off), the random buffer policy, 1-bit replay (real-valued pooled features: bnncl refuses --lr-bits 1 there).
 *
 * The caller owns everything: a config, a state (bnncl_cwr_state_bytes of memory laid out by
 * bnncl_cwr_state_init) and a scratch buffer per call (bnncl_cwr_learn_scratch_bytes / _predict_scratch_bytes,
 * 8-byte aligned); nothing is allocated.  Errors: BNNCL_E_NULL, BNNCL_E_SIZE (a config or size out of range),
 * BNNCL_E_ARENA_SMALL / BNNCL_E_ALIGN (scratch or state memory), BNNCL_E_LABEL (nothing learned),
 * BNNCL_E_NUMERIC (non-finite features: nothing learned), BNNCL_E_NO_LEARNING (predict before any class). */
#define BNNCL_CWR_MIX_PROPORTIONAL 0
#define BNNCL_CWR_MIX_BALANCED 1
typedef struct {
    int32_t classes, features; /* K head rows (dataset classes 0 .. K - 1), D pooled features */
    int32_t qf, qb;            /* forward / backward bits of the head step (1..24 or 32) */
    float lr;                  /* SGD learning rate (> 0) */
    int32_t minibatch;         /* patterns per minibatch (>= 1) */
    int32_t epochs;            /* epochs per experience (>= 1), 0: auto */
    int32_t new_per_class;     /* cap on the new patterns of a class per epoch (>= 1), 0: all */
    int32_t mixing;            /* BNNCL_CWR_MIX_* */
    int32_t standardize;       /* 1: FeatureStandardizer on (fitted at deployment or by the first experience) */
    double max_k;              /* cwr_max_k (>= 0), < 0: none */
    int32_t capacity;          /* replay buffer patterns (>= 1) */
    int32_t lr_bits;           /* replay storage: 8 (uint8 codes, one value range) or 32 (float32) */
} bnncl_cwr_config;

typedef struct {
    /* arrays inside the caller's state memory (bnncl_cwr_state_init) */
    float *cw;          /* K x D consolidated rows (CWRStar.cw) */
    int64_t *past;      /* K pattern counts (CWRStar.past) */
    float *shift;       /* D (FeatureStandardizer.shift) */
    float *scale;       /* D (FeatureStandardizer.scale) */
    int64_t *seen;      /* K patterns of each class offered to the buffer so far (LatentReplayBuffer._seen) */
    void *store;        /* capacity x D: uint8 codes (lr_bits 8) or float32 values, the first count rows held */
    int32_t *labels;    /* capacity: class of each held row */
    int32_t *experience; /* capacity: experience index of each held row */
    /* scalars */
    int64_t count;      /* rows held */
    double lo, hi;      /* lr_bits 8: the buffer's value range (value_range), valid when has_range */
    int32_t has_range;
    int32_t fitted;     /* the standardizer's statistics are set */
    bnncl_rng rng;      /* the learner's draws (ContinualLearner._rng) */
    bnncl_rng buffer_rng; /* the buffer's draws (LatentReplayBuffer._rng) */
} bnncl_cwr_state;

/* Bytes of state memory for cfg (the arrays above, each 8-byte aligned), 0 for an invalid config. */
size_t bnncl_cwr_state_bytes(const bnncl_cwr_config *cfg);
/* Lays the state's arrays out in mem (8-byte aligned, >= bnncl_cwr_state_bytes), all zero (nothing learned,
 * an empty buffer, shift 0 and scale 1), the two streams seeded with seed (LearnerConfig.seed). */
int bnncl_cwr_state_init(const bnncl_cwr_config *cfg, uint64_t seed, void *mem, size_t mem_bytes,
                         bnncl_cwr_state *st);
/* Scratch bytes bnncl_cwr_learn and bnncl_cwr_deploy need for calls of at most n patterns (the exact layout
 * they use; a call with fewer patterns fits too); 0 for an invalid config or n < 1. */
size_t bnncl_cwr_learn_scratch_bytes(const bnncl_cwr_config *cfg, int64_t n);
/* ContinualLearner.deploy on the base features x (n x D float32) with labels: the standardizer fitted on them (if
 * on and not fitted), cw rows of the classes present = the pretrained head's rows (head: K x D, what the engine's
 * get_head returns, on standardized features FeatureStandardizer.head_rows of it), past = their counts, and the
 * buffer offered the patterns. */
int bnncl_cwr_deploy(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const float *x, const int32_t *labels,
                     int64_t n, int32_t experience_index, const float *head, void *scratch, size_t scratch_bytes);
/* ContinualLearner.train_experience on n >= 1 feature rows x (n x D float32) with labels in [0, K). */
int bnncl_cwr_learn(const bnncl_cwr_config *cfg, bnncl_cwr_state *st, const float *x, const int32_t *labels,
                    int64_t n, int32_t experience_index, void *scratch, size_t scratch_bytes);
/* Scratch bytes of bnncl_cwr_predict for a batch of n rows. */
size_t bnncl_cwr_predict_scratch_bytes(const bnncl_cwr_config *cfg, int64_t n);
/* ContinualLearner.predict / logits of a batch of n feature rows (quantized at q_f together, as the Python engine
 * quantizes the batch it is given): cls[i] = the class with past > 0 of the highest score (the first on ties);
 * scores (optional, NULL to skip): n x K logits. */
int bnncl_cwr_predict(const bnncl_cwr_config *cfg, const bnncl_cwr_state *st, const float *x, int64_t n,
                      int32_t *cls, float *scores, void *scratch, size_t scratch_bytes);

/* ---- head-only CWR* in the context (src/ctx_cwr.c) -----------------------------------------------------
 * A model exported with `bnncl export-c MODEL --strategy cwr_star` (strategy BNNCL_STRATEGY_CWR_STAR) learns with the
 * loop above inside the context: bnncl_init lays the state out in the arena (bnncl_cwr_state_init) and copies the
 * embedded one over it (the Python learner's state after deployment, both random streams included: deployment
 * draws from the buffer's stream); bnncl_learn is one experience: the frozen forward of each image (its pooled
 * features, as bnncl_features) then one bnncl_cwr_learn of them all, with the context's experience counter as its
 * index (then counted up).  A call of more than max_images images fails with BNNCL_E_SIZE (learning them in parts
 * would be another result: each call is an experience); BNNCL_E_LABEL (a label outside [0, classes)) and
 * BNNCL_E_NUMERIC (non-finite features) leave the state unchanged.  bnncl_predict: bnncl_cwr_predict of the one
 * image's features (quantized at q_f alone), the scores of dataset classes 0 .. classes - 1, only classes with
 * past > 0 competing; while no class has past > 0, the pretrained head as for SLDA.  The arena (bnncl_arena_size):
 * the state (bnncl_cwr_state_bytes), the features of max_images images, and the learn scratch
 * (bnncl_cwr_learn_scratch_bytes(cfg, max_images)), which shares the forward's work area (no forward runs while
 * the loop does) and holds a state being loaded until it is checked.  State format: below (strategy 2). */
struct bnncl_strategy_impl; /* the library's code of a learning strategy (opaque) */
/* CWR* in the context (src/ctx_cwr.c): a model names it (bnncl_cwr_model.impl), so a firmware whose model learns
 * with SLDA (or not at all) links none of the CWR* code */
extern const struct bnncl_strategy_impl bnncl_cwr_star_impl;
typedef struct bnncl_cwr_model {
    const struct bnncl_strategy_impl *impl; /* &bnncl_cwr_star_impl */
    bnncl_cwr_config cfg;
    int32_t max_images;       /* n_max: images one bnncl_learn call may learn (>= 1) */
    int32_t next_experience;  /* experience index of the first bnncl_learn call (1 after a deployment as 0) */
    /* the initial state (ContinualLearner.state_dict), or cw = NULL: start empty, the streams seeded with seed */
    uint64_t seed;
    const float *cw;          /* K x D */
    const int64_t *past;      /* K */
    const float *shift, *scale; /* D each (the standardizer; shift 0, scale 1 when not fitted) */
    const int64_t *seen;      /* K */
    const void *store;        /* count x D: uint8 codes (lr_bits 8) or float32 (NULL when count is 0) */
    const int32_t *labels, *experience; /* count each (NULL when count is 0) */
    int64_t count;            /* buffer rows held, <= capacity */
    double lo, hi;            /* lr_bits 8: the buffer's value range, when has_range */
    int32_t has_range, fitted;
    uint64_t rng_state, rng_inc, buffer_rng_state, buffer_rng_inc; /* the two streams (bnncl_rng) */
} bnncl_cwr_model;

#ifdef __cplusplus
}
#endif
#endif
