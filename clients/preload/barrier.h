/* The PCI barrier page as a program under the preload library sees it (barrier.c): every
 * read gives 0xdeadbeef, no store is ever visible, each store is one barrier of the drm
 * file, counted by the daemon.
 *
 * How. The program's page is a private page of 0xdeadbeef, always read-only (x86 has no
 * write-only pages). A store faults (SIGSEGV); the handler moves every general register
 * that points into or next to the page by the distance to a scratch copy of its own (a
 * slot: two pages of 0xdeadbeef), sets the trap flag and returns; the CPU performs the
 * store on the slot and traps (SIGTRAP); the handler moves the registers back, refills the
 * slot, clears the flag and counts. So neither this thread's next read nor any other
 * thread ever sees the value, and another thread's store at the same time faults and
 * counts on its own. If no register points near the page (the address is computed from
 * registers that all point elsewhere), or the one moved was not the address (the store
 * faults on the page again), the page itself is made writable for that one instruction
 * under a process-wide lock: the fallback, during whose one instruction another thread
 * could see the value or store uncounted.
 *
 * Counting. A running number per drm file (per inode of the daemon's memfd) lives in a
 * MAP_SHARED page of the library's, so a forked child and its parent count together; it
 * is published to word 0 of the daemon's page (the memfd, mapped where the program never
 * sees it) as PCI_BARRIER_SEQ_TAG | seq by compare-and-swap, never over a higher number:
 * the daemon counts the difference from the last number it saw. The daemon restores
 * 0xdeadbeef with a read and then a write, so a number published over another number can
 * be lost in between (the next one makes up for it); one published over 0xdeadbeef never
 * is. So munmap and exit wait, at most 200 ms in all, for the daemon to have looked at
 * the page (it reads 0xdeadbeef again), publish the count once more over 0xdeadbeef if the
 * last number may have been lost, and wait for that look too: once munmap returns, the
 * daemon has counted every store. The count of a file outlives its mappings (mapping the
 * page again goes on from it, as the daemon does); up to 64 files are remembered.
 *
 * Waking. The daemon's page watcher sleeps on a futex while no barrier comes, the u32 at
 * NOTICE_WATCHER_ASLEEP of the device's notice page, which reads non-zero meanwhile; by
 * itself it looks every 50 ms. After each number it publishes (and before munmap and
 * exit wait for the daemon's look) the library reads that word and, if it is set,
 * FUTEX_WAKEs the watcher, as the Python library does, so a barrier after a quiet spell
 * is counted at once. The notice page is mapped read-only by notice.c and never
 * unmapped; after an unplug it reads 0 and nobody is woken.
 *
 * Unplug. Once the notice page's word 0 says the device is unplugged, nothing is
 * published any more and munmap and exit wait for nobody (the daemon no longer looks, and
 * its page is emptied). The program's page is left as it is, and is not among the
 * mappings unplug.c puts zero pages under: it still reads 0xdeadbeef, a store still
 * faults and is stepped into a slot, and goes nowhere, so the address keeps working
 * without a crash and without a word reaching the daemon. (The kernel's dummy page would
 * read zeros and keep what is written; replacing a page whose stores may be mid-step in
 * other threads is what this avoids.) A store racing the unplug's announcement may still
 * land in the emptied page, which nobody reads.
 *
 * x86-64 only: the trap flag is EFLAGS bit 8 (gregs[REG_EFL]) and the page-fault error
 * code (gregs[REG_ERR]) says write. An aarch64 port has no trap flag it can set from user
 * space (single-stepping needs ptrace), so it would emulate the store: A64 stores are
 * 4-byte instructions of a few encodings; ESR_EL1 in the signal frame (esr_context) gives
 * WnR and, for most stores, the size and register; skip the instruction (pc += 4), apply
 * the base write-back of pre/post-indexed forms, and give atomics, swaps and exclusives
 * the 0xdeadbeef they would have loaded and a successful status. signals.c ports as is.
 *
 * Interface with the rest of the library:
 *   - the mmap interposer, once the daemon's MMAP check of the barrier offset passed and
 *     handed over the barrier memfd, calls xed_barrier_map() with the program's addr, len,
 *     prot and flags, returns what it returns, and closes the memfd afterwards; on
 *     success it then calls xed_barrier_waker() with the device's notice page (notice.c);
 *   - the munmap interposer calls xed_barrier_unmap() for every range before the real
 *     munmap (ranges holding no barrier page are ignored, and so is a call munmap would
 *     refuse), and so must anything that replaces a mapping (mmap with MAP_FIXED of
 *     something else over a barrier page);
 *   - the signal handlers of signals.c call the other three.
 */
#ifndef XED_BARRIER_H
#define XED_BARRIER_H

#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <ucontext.h>

#include "proto.h" /* XED_PCI_BARRIER_IDLE, _SEQ_TAG, _SEQ_MASK (checked against protocols) */

/* Map the barrier page for the program at addr (MAP_FIXED, MAP_FIXED_NOREPLACE as mmap),
 * writable if prot has PROT_WRITE, inaccessible if not; its stores count in the daemon's
 * page behind memfd. The daemon has checked len, prot and flags. MAP_FAILED and errno on
 * failure. */
void *xed_barrier_map(void *addr, size_t len, int prot, int flags, int memfd);

/* Stores to the barrier page at `page` (mapped by xed_barrier_map) wake the daemon's page
 * watcher through the device's notice page `notice` (its word 0), mapped for as long as the
 * process lives, and stop counting once it says unplugged (NULL: nobody is woken, the
 * watcher counts at its next look; and an unplug goes unnoticed here). */
void xed_barrier_waker(void *page, const _Atomic uint32_t *notice);

/* Forget the barrier pages in [addr, addr + len) before they are unmapped. */
void xed_barrier_unmap(void *addr, size_t len);

/* Signal handlers only. fault: a SIGSEGV; 1 if it was a store to a barrier page (now
 * being stepped), 0 if it is the program's. trap: a SIGTRAP; 0 the program's, 1 the end
 * of a barrier store, 2 that and the program's own trap flag was set (its turn next). */
int xed_barrier_fault(siginfo_t *info, ucontext_t *uc);
int xed_barrier_trap(siginfo_t *info, ucontext_t *uc);
int xed_barrier_stepping(void); /* this thread is between a barrier fault and its trap */

#endif
