/* Cross-architecture check of the bnncl C core (tests/device/test_cross_arch.py).
 *
 * The harness runs the core's entry points on inputs drawn from a fixed pseudo-random stream, on
 * every kernel path the build supports, and prints one line per (case, path):
 *     <case> <path> <fnv1a-64 of the output bytes> <output bytes>
 * The test builds it for this machine and for AArch64 (run under qemu-user) and requires every
 * path of both builds to print the same hash for each case: the x86-64 paths are checked bit-exact
 * against the NumPy oracle by the rest of the suite, so equal hashes make the AArch64 build (scalar
 * and NEON) exact too. */
#ifndef BNNCL_CROSSCHECK_H
#define BNNCL_CROSSCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "bnncl_core.h"

/* The paths this build runs (bnncl_supported_paths), as BNNCL_PATH_* ids; returns their count. */
int cc_paths(int ids[4]);
const char *cc_path_name(int id);

/* Deterministic stream (xorshift64*); cc_seed restarts it, so each case draws the same inputs
 * on every path and architecture. */
void cc_seed(uint64_t seed);
uint64_t cc_u64(void);
int64_t cc_int(int64_t lo, int64_t hi); /* uniform in [lo, hi] */
float cc_float(float lo, float hi);     /* exactly representable: a multiple of 2^-12 in [lo, hi) */

/* Buffers (64-byte aligned, zeroed; cc_free_all releases everything allocated since the last call). */
void *cc_alloc(size_t bytes);
void cc_free_all(void);

/* Packed sign words for `rows` rows of `bits` valid bits each (padding bits 0, row stride
 * (bits + 63) / 64 words). */
uint64_t *cc_packed(int64_t rows, int64_t bits);
float *cc_floats(int64_t n, float lo, float hi);

/* One output line; rc != 0 prints "<case> <path> rc=<rc>" instead of the hash. */
void cc_emit(const char *name, int path, int rc, const void *data, size_t bytes);

/* Case groups (crosscheck.c: binary kernels, forward; cross_tail.c: tail training kernels). */
void cc_kernel_cases(void);
void cc_tail_cases(void);

#endif
