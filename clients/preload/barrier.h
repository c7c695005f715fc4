/* The PCI barrier page as a program under the preload library sees it (barrier.c).
 *
 * Interface with the rest of the library:
 *   - the mmap interposer, once the daemon's MMAP check of the barrier offset passed and
 *     handed over the barrier memfd, calls xed_barrier_map() with the program's addr, len,
 *     prot and flags, returns what it returns, and closes the memfd afterwards;
 *   - the munmap interposer calls xed_barrier_unmap() for every range before the real
 *     munmap (ranges that hold no barrier page are ignored, and so is a call munmap
 *     would refuse: unaligned address, zero length), and so must anything that replaces
 *     a mapping (mmap with MAP_FIXED of something else over a barrier page).
 * The handlers in signals.c call the other three.
 */
#ifndef XED_BARRIER_H
#define XED_BARRIER_H

#include <signal.h>
#include <stddef.h>
#include <ucontext.h>

/* protocols/constants.py: PCI_BARRIER_IDLE, PCI_BARRIER_SEQ_TAG, PCI_BARRIER_SEQ_MASK */
#define XED_PCI_BARRIER_IDLE 0xdeadbeefu
#define XED_PCI_BARRIER_SEQ_TAG 0x5e000000u
#define XED_PCI_BARRIER_SEQ_MASK 0x00ffffffu

/* Map the barrier page for the program: a page reading 0xdeadbeef at addr (MAP_FIXED and
 * MAP_FIXED_NOREPLACE as mmap), whose stores count as barriers in the daemon's page behind
 * memfd. The daemon has checked len, prot and flags. MAP_FAILED with errno on failure. */
void *xed_barrier_map(void *addr, size_t len, int prot, int flags, int memfd);

/* Forget the barrier pages in [addr, addr + len) before they are unmapped; the last
 * barrier of each is made sure to reach the daemon (bounded wait). */
void xed_barrier_unmap(void *addr, size_t len);

/* Signal handlers only. fault: a SIGSEGV; 1 if it was a store to a barrier page (now
 * being stepped), 0 if it is the program's. trap: a SIGTRAP; 0 the program's, 1 the end
 * of a barrier store, 2 that and the program's own trap flag was set (its turn next). */
int xed_barrier_fault(siginfo_t *info, ucontext_t *uc);
int xed_barrier_trap(siginfo_t *info, ucontext_t *uc);
int xed_barrier_stepping(void); /* this thread is between a barrier fault and its trap */

#endif
