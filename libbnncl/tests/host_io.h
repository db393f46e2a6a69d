/* Host test programs of libbnncl (learn_main.c, split_main.c): reading a whole input file.  The buffer is
 * malloc'ed here, in the test program; the library itself allocates nothing. */
#ifndef BNNCL_TESTS_HOST_IO_H
#define BNNCL_TESTS_HOST_IO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The bytes of the file at path (*n of them; a 1-byte buffer for an empty file), or NULL when it cannot be
 * opened or read whole. */
static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = (uint8_t *)malloc(len > 0 ? (size_t)len : 1);
    if (p && len > 0 && fread(p, 1, (size_t)len, f) != (size_t)len) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *n = len > 0 ? (size_t)len : 0;
    return p;
}

#endif
