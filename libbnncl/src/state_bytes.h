/* libbnncl private: the byte level of the saved state, shared by the SLDA (src/bnncl.c) and CWR* (src/ctx_cwr.c)
 * formats: little-endian integers, zlib's CRC32, and a writer that batches a state's bytes through the caller's
 * write callback while it checksums them. */
#ifndef BNNCL_STATE_BYTES_H
#define BNNCL_STATE_BYTES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bnncl.h"

/* zlib's CRC32 of p[0 .. n) continued from crc (0 to start), bit by bit */
static inline uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v), put32(p + 4, (uint32_t)(v >> 32)); }
static inline uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* A state being written: bytes gathered in buf, handed to fn 64 at a time; crc covers every byte put; err set
 * once fn fails (later bytes are dropped). */
typedef struct {
    bnncl_write_fn fn;
    void *user;
    uint32_t crc;
    size_t n;
    int err;
    uint8_t buf[64];
} wstream;

static inline void w_flush(wstream *s) {
    if (s->n && !s->err && s->fn(s->user, s->buf, s->n) != 0) s->err = 1;
    s->n = 0;
}
static inline void w_put(wstream *s, const uint8_t *p, size_t n) {
    s->crc = crc32_update(s->crc, p, n);
    for (size_t i = 0; i < n; ++i) {
        s->buf[s->n++] = p[i];
        if (s->n == sizeof s->buf) w_flush(s);
    }
}
static inline void w_u32(wstream *s, uint32_t v) {
    uint8_t b[4];
    put32(b, v);
    w_put(s, b, 4);
}
static inline void w_u64(wstream *s, uint64_t v) {
    uint8_t b[8];
    put64(b, v);
    w_put(s, b, 8);
}
static inline void w_f32(wstream *s, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    w_u32(s, v);
}

#endif
