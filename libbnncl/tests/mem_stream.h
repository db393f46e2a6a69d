/* libbnncl test programs (learn_main.c, cortexm/cortexm_main.c): a state saved to and loaded from a byte
 * buffer through the library's write / read callbacks (bnncl_write_fn, bnncl_read_fn). */
#ifndef BNNCL_TESTS_MEM_STREAM_H
#define BNNCL_TESTS_MEM_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t *data;
    size_t size, pos; /* bytes in data, the next byte read or written */
} membuf;

/* Appends n bytes; 1 (a failure) when they do not fit. */
static inline int write_mem(void *user, const void *data, size_t n) {
    membuf *m = (membuf *)user;
    if (n > m->size - m->pos) return 1;
    memcpy(m->data + m->pos, data, n);
    m->pos += n;
    return 0;
}

/* Reads exactly n bytes; 1 (a failure) when fewer are left. */
static inline int read_mem(void *user, void *data, size_t n) {
    membuf *m = (membuf *)user;
    if (n > m->size - m->pos) return 1;
    memcpy(data, m->data + m->pos, n);
    m->pos += n;
    return 0;
}

#endif
