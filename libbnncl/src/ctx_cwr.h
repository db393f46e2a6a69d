/* libbnncl private: head-only CWR* inside the context (src/ctx_cwr.c), called by the dispatch in src/bnncl.c.
 *
 * Memory: the loop's scratch is the context's work area (the forward's buffers, grown to
 * bnncl_ctx_cwr_work_bytes; no forward runs while the loop does), and right after the work area comes the CWR*
 * region (bnncl_ctx_cwr_region_bytes): the features of max_images images, this part's context, the state.  A state
 * being loaded is read into the work area and the features' place (contiguous) until it is checked. */
#ifndef BNNCL_CTX_CWR_H
#define BNNCL_CTX_CWR_H

#include "bnncl.h"

typedef struct ctx_cwr ctx_cwr;

/* The CWR* part's entry points, called by src/bnncl.c through the model's bnncl_cwr_model.impl
 * (&bnncl_cwr_star_impl): a firmware that exports no CWR* model links none of them. */
#define BNNCL_CWR_IMPL_MAGIC 0x52574342u /* "BCWR" */
struct bnncl_strategy_impl {
    uint32_t magic;
    /* whether m's CWR* part (m->cwr) is one this library runs (m's own checks apart) */
    int (*model_ok)(const bnncl_model *m);
    /* bytes of work area the CWR* part needs (learn and predict scratch, a state being loaded) */
    size_t (*work_bytes)(const bnncl_model *m);
    /* bytes of the region after the work area (a multiple of 16) */
    size_t (*region_bytes)(const bnncl_model *m);
    /* lays the part out: work (work_bytes >= work_bytes(m), 8-byte aligned), the region at work + work_bytes; the
     * embedded state copied in */
    int (*init)(const bnncl_model *m, unsigned char *work, size_t work_bytes, ctx_cwr **out);
    /* some class has past > 0: predict uses the CWR* head */
    int (*seen)(const ctx_cwr *w);
    size_t (*classes)(const ctx_cwr *w);
    int (*learn)(bnncl_ctx *c, ctx_cwr *w, const uint8_t *images, size_t n, size_t image_bytes, const int32_t *labels);
    /* the prediction from the features of one image (feat may lie in the work area: copied first) */
    int (*predict)(ctx_cwr *w, const float *feat, int32_t *cls, float *scores);
    size_t (*state_size)(const ctx_cwr *w);
    int (*state_save)(const ctx_cwr *w, uint32_t fingerprint, bnncl_write_fn write, void *user);
    int (*state_load)(ctx_cwr *w, uint32_t fingerprint, bnncl_read_fn read, void *user);
};

/* the CWR* code of a model with m->cwr set */
#define CWR_IMPL(m) ((m)->cwr->impl)

#endif
