/* Semihosting helpers of the Cortex-M test start-up (startup.c). */
#ifndef BNNCL_SEMIHOST_H
#define BNNCL_SEMIHOST_H
#include <stdint.h>
int sh_call(int op, const void *arg);  /* one ARM semihosting call (bkpt 0xab): r0 = op, r1 = arg */
void sh_write0(const char *s);        /* a NUL-terminated string to the host's stdout */
void sh_exit(int status);             /* qemu exits with this status */
uint32_t sh_stack_used(void);         /* stack high-water mark in bytes (painted at reset) */
uint32_t sh_ticks(void);              /* 25 MHz timer ticks since reset; under qemu -icount shift=0
                                         (1 instruction = 1 ns), instructions = 40 x ticks */
#endif
