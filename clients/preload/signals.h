/* Signal interposition for the preload library (signals.c).
 *
 * The library needs SIGSEGV (a store to the PCI barrier page) and SIGTRAP (the single
 * step after it) for itself, yet the program's own handlers for both must behave as if
 * the library were not there. signals.c interposes sigaction, __sigaction, signal,
 * bsd_signal, ssignal, sysv_signal, __sysv_signal, sigset and sigignore: for SIGSEGV and
 * SIGTRAP it records what the program asked and reads it back, and once installed it
 * keeps its own handlers in the kernel and delivers every fault or trap that is not a
 * barrier store to the program's handler as the kernel would have. It also keeps SIGSEGV
 * from ever being blocked (sigprocmask, pthread_sigmask, sighold, sa_mask): the kernel
 * kills a thread whose synchronous fault signal is blocked, and a barrier store must
 * work in a thread that blocked every signal.
 */
#ifndef XED_SIGNALS_H
#define XED_SIGNALS_H

#include <stdint.h>

/* Install the library's SIGSEGV and SIGTRAP handlers (once; later calls return 0). The
 * dispositions found in the kernel become the program's. 0, or -1 with errno. Never call
 * it from a signal handler. */
int xed_signals_install(void);

/* Block every signal in the calling thread, returning the old mask (first 64 signals):
 * the library's locks are taken with signals blocked so that a handler can never find
 * one held by the code it interrupted. */
uint64_t xed_signals_block(void);
void xed_signals_restore(uint64_t old);

#endif
