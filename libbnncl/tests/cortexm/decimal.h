/* The Cortex-M test programs' integer formatting (no printf on bare metal): v in decimal. */
#ifndef BNNCL_CORTEXM_DECIMAL_H
#define BNNCL_CORTEXM_DECIMAL_H

/* Writes v in decimal, NUL-terminated, to out (24 bytes hold any long); returns the number of characters. */
static int decimal(long v, char out[24]) {
    char t[24];
    int n = 0, k = 0;
    unsigned long u = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
    do t[n++] = (char)('0' + u % 10); while (u /= 10);
    if (v < 0) t[n++] = '-';
    while (n) out[k++] = t[--n];
    out[k] = 0;
    return k;
}

#endif
