/* Minimal bare-metal start-up for a Cortex-M test program under qemu-system-arm (mps2-an386/an500):
 * vector table, reset handler (FPU on, .data copied, .bss zeroed, stack painted for the high-water
 * mark, timer 0 started), and ARM semihosting: output (SYS_WRITE0), exit (SYS_EXIT_EXTENDED, so qemu exits with
 * main's status) and any other call through sh_call.  Faults exit with status 3. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _sstack, _estack;
int main(void);
void Reset_Handler(void);

#define STACK_PAINT 0x5AA5C33Cu

int sh_call(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void sh_write0(const char *s) { sh_call(0x04, s); }

void sh_exit(int status) {
    uint32_t block[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, (uint32_t)status};
    sh_call(0x20 /* SYS_EXIT_EXTENDED */, block);
    for (;;) {
    }
}

/* CMSDK APB timer 0 of the MPS2 boards (0x40000000), counting down at the 25 MHz peripheral clock */
#define TIMER0 ((volatile uint32_t *)0x40000000u)

uint32_t sh_ticks(void) { return 0xFFFFFFFFu - TIMER0[1]; }

uint32_t sh_stack_used(void) {
    const uint32_t *p = &_sstack;
    while (p < &_estack && *p == STACK_PAINT) ++p;
    return (uint32_t)((uintptr_t)&_estack - (uintptr_t)p);
}

static void fault(void) {
    sh_write0("fault\n");
    sh_exit(3);
}

__attribute__((section(".isr_vector"), used)) void (*const vectors[16])(void) = {
    (void (*)(void))&_estack, Reset_Handler, fault, fault, fault, fault, fault, 0, 0, 0, 0, fault, fault, 0,
    fault, fault};

void Reset_Handler(void) {
    /* CPACR: full access to CP10/CP11 (the FPU) before any floating-point instruction */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    for (uint32_t *s = &_sidata, *d = &_sdata; d < &_edata;) *d++ = *s++;
    for (uint32_t *d = &_sbss; d < &_ebss;) *d++ = 0;
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (volatile uint32_t *p = &_sstack; p < sp - 16;) *p++ = STACK_PAINT;
    TIMER0[2] = 0xFFFFFFFFu, TIMER0[1] = 0xFFFFFFFFu, TIMER0[0] = 1u; /* reload, value, enable */
    sh_exit(main());
}
