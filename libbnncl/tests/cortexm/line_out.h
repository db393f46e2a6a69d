/* The Cortex-M test programs' output (no printf on bare metal): one line at a time, built in a buffer and
 * written by semihosting (SYS_WRITE0) at endl(); a line longer than the buffer is cut.  Also the timer
 * calibration the instruction counts rest on.  Include once per program, after semihost.h. */
#ifndef BNNCL_CORTEXM_LINE_OUT_H
#define BNNCL_CORTEXM_LINE_OUT_H

#include <stdint.h>
#include <string.h>

#include "semihost.h"

/* every helper may go unused in one program */
#define LINE_OUT_FN static __attribute__((unused))

#ifndef LINE_BYTES
#define LINE_BYTES 4096
#endif

static char line[LINE_BYTES];
static size_t len;

LINE_OUT_FN void put(const char *s) {
    while (*s && len < sizeof line - 2) line[len++] = *s++;
}

/* v in decimal */
LINE_OUT_FN void put_int(long v) {
    char t[24];
    int n = 0;
    unsigned long u = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
    do t[n++] = (char)('0' + u % 10); while (u /= 10);
    if (v < 0) t[n++] = '-';
    while (n && len < sizeof line - 2) line[len++] = t[--n];
}

/* a space, then v in hex with the given number of digits */
LINE_OUT_FN void put_hex(uint32_t v, int digits) {
    static const char hex[] = "0123456789abcdef";
    if (len + (size_t)digits + 1 >= sizeof line - 2) return;
    line[len++] = ' ';
    for (int i = digits - 1; i >= 0; --i) line[len++] = hex[(v >> (4 * i)) & 15];
}

/* each value's float32 bits in hex */
LINE_OUT_FN void put_floats(const float *v, size_t n) {
    for (size_t j = 0; j < n; ++j) {
        uint32_t bits;
        memcpy(&bits, &v[j], 4);
        put_hex(bits, 8);
    }
}

LINE_OUT_FN void endl(void) {
    line[len++] = '\n';
    line[len] = 0;
    sh_write0(line);
    len = 0;
}

/* "error WHAT RC"; returns main's failure status */
LINE_OUT_FN int error(const char *what, long rc) {
    put("error ");
    put(what);
    put(" ");
    put_int(rc);
    endl();
    return 1;
}

/* "ticks NAME T" */
LINE_OUT_FN void put_ticks(const char *name, uint32_t t) {
    put("ticks ");
    put(name);
    put(" ");
    put_int((long)t);
    endl();
}

/* Timer ticks of about CALIB_INSNS instructions (2 per iteration: subs, bne; and the timer reads): under qemu
 * -icount shift=0 one instruction takes 1 ns, so instructions = 40 x ticks of the 25 MHz timer. */
#define CALIB_ITERS 1000000u
#define CALIB_INSNS (2u * CALIB_ITERS)
LINE_OUT_FN uint32_t calibrate(void) {
    uint32_t n = CALIB_ITERS;
    uint32_t t0 = sh_ticks();
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
    return sh_ticks() - t0;
}

#endif
