/* Signal interposition for the preload library (signals.c).
 *
 * The library needs SIGSEGV (a store to the PCI barrier page faults) and SIGTRAP (the
 * single step after it) for itself, yet the program's own handlers for both must behave
 * as if the library were not there. signals.c interposes sigaction, __sigaction, signal,
 * bsd_signal, ssignal, sysv_signal, __sysv_signal, sigset and sigignore.
 *
 * Nothing is installed before the first barrier page is mapped: until then these go
 * straight to libc, so a program that never maps the page keeps the kernel's own signal
 * handling, backtraces and all. xed_signals_install() takes the dispositions it finds in
 * the kernel as the program's and puts the library's handler in their place. From then
 * on, for SIGSEGV and SIGTRAP:
 *   - sigaction() records the program's action, normalised as the kernel and glibc would
 *     (unknown flags dropped, SA_RESTORER and glibc's restorer added, SIGKILL/SIGSTOP out
 *     of the mask), and reads back the program's action, never the library's;
 *   - the library's handler in the kernel mirrors the program's SA_ONSTACK and SA_RESTART:
 *     it runs on the stack the program's would, and restarts what the program's would;
 *   - a fault or trap that is not a barrier store goes to the program's handler: the mask
 *     becomes the interrupted mask | sa_mask | the signal (unless SA_NODEFER), SA_RESETHAND
 *     resets the recorded handler to SIG_DFL, then sa_sigaction(sig, info, ucontext) or
 *     sa_handler(sig) is called on the kernel's own siginfo and ucontext, so changes to the
 *     context and siglongjmp out of the handler work as without the library;
 *   - SIG_DFL, and SIG_IGN for a signal the kernel raised (a fault, int3), restore the
 *     default disposition and let the signal happen again (a fault repeats by itself,
 *     anything else is sent again), which ends the program as the kernel would; SIG_IGN
 *     for a signal sent with kill() discards it;
 *   - a SIGSEGV or SIGTRAP sent with kill() while the thread single-steps a barrier store
 *     waits until the store is done (sent again then, as SI_TKILL).
 * SIGSEGV is never really blocked (sigprocmask, pthread_sigmask, sighold, sigset SIG_HOLD
 * and every handler's sa_mask leave it out; sigaction still reads back an sa_mask naming
 * it): the kernel kills a thread whose fault signal is blocked, and a barrier store must
 * work in a thread that blocked every signal. The one place it stays blocked is the
 * program's own SIGSEGV handler (unless SA_NODEFER), exactly as the kernel blocks it.
 * Nothing here is specific to x86-64: an aarch64 port keeps this file as it is.
 */
#ifndef XED_SIGNALS_H
#define XED_SIGNALS_H

#include <stdatomic.h>
#include <stdint.h>

/* Install the library's SIGSEGV and SIGTRAP handlers (once; later calls return 0).
 * 0, or -1 with errno. Never from a signal handler. */
int xed_signals_install(void);

/* Block every signal in the calling thread and return the old mask (first 64 signals):
 * the library's locks are taken with signals blocked, so that a handler never finds one
 * held by the code it interrupted. */
uint64_t xed_signals_block(void);
void xed_signals_restore(uint64_t old);

/* One of the library's locks: signals blocked (xed_signals_block), then a spin; the
 * holders never wait for anything while they hold it. xed_lock returns the old mask for
 * xed_unlock to put back. */
uint64_t xed_lock(atomic_flag *lock);
void xed_unlock(atomic_flag *lock, uint64_t old);

#endif
