/* The PCI barrier page through the fault path: reads give 0xdeadbeef, no store is ever
 * visible, each store is one barrier of the drm file (how, and the aarch64 note: barrier.h).
 */
#define _GNU_SOURCE
#include "barrier.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "signals.h"

#if !defined(__x86_64__)
#error "barrier.c single-steps with the x86 trap flag (see the aarch64 note in barrier.h)"
#endif

#define PAGE 4096ul
#define MAX_FILES 64
#define MAX_MAPS 64
#define SLOTS 16
#define TRAP_FLAG 0x100
#define PF_WRITE 0x2  /* page-fault error code: a write ... */
#define PF_FETCH 0x10 /* ... not an instruction fetch */
#define FLUSH_WAIT_MS 200 /* a woken daemon looks at once; one nobody wakes, within 50 ms */
#define HALF ((XED_PCI_BARRIER_SEQ_MASK + 1) / 2)
#define PASS_FLAGS (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_32BIT | MAP_LOCKED | MAP_POPULATE)
#define BIT(sig) (1ull << ((sig) - 1))
/* blocked while the store is stepped: all but the signals its execution could raise */
#define STEP_MASK (~(BIT(SIGSEGV) | BIT(SIGBUS) | BIT(SIGILL) | BIT(SIGFPE) | BIT(SIGTRAP)))

struct shared { /* one page per drm file, MAP_SHARED: parent and children count together */
	_Atomic uint64_t seq;  /* barriers so far */
	_Atomic uint64_t safe; /* highest number published over 0xdeadbeef */
};
struct file {
	dev_t dev;
	ino_t ino;
	int maps;               /* program mappings in this process */
	int stored;             /* this process stored since it began (or forked) */
	_Atomic uint32_t *word; /* the daemon's page (the memfd), word 0; NULL: a free entry */
	struct shared *sh;
	/* the device's notice page: word 0 says unplugged; NOTICE_WATCHER_ASLEEP, non-zero
	 * while the daemon's page watcher sleeps */
	const _Atomic uint32_t *_Atomic notice;
};
struct map {
	_Atomic uintptr_t page; /* 0: free */
	_Atomic int busy;       /* stores being stepped: unmap waits for them */
	int file, writable;
};
static struct file files[MAX_FILES];
static struct map maps[MAX_MAPS];
static atomic_flag table_lock = ATOMIC_FLAG_INIT, fallback_lock = ATOMIC_FLAG_INIT;
static unsigned char *slots; /* SLOTS x two pages of 0xdeadbeef, where moved stores land */
static _Atomic int slot_busy[SLOTS];

/* This thread's store between its fault and its trap. */
static __thread __attribute__((tls_model("initial-exec"))) struct step {
	enum { NONE, REDIRECT, FALLBACK } mode;
	struct map *map;
	uintptr_t page;
	intptr_t delta;
	uint32_t moved; /* gregs moved by delta */
	int slot, saved_tf;
	uint64_t mask; /* the interrupted signal mask */
} step;

static void fill(void *p, size_t len)
{
	for (uint64_t *w = p; len >= 8; len -= 8)
		*w++ = 0xdeadbeefdeadbeefull;
}

static void spin(atomic_flag *f)
{
	while (atomic_flag_test_and_set_explicit(f, memory_order_acquire))
		sched_yield();
}

/* A sleeping page watcher looks at the page only every 50 ms by itself: wake it, so that
 * the barrier is counted now. While it is awake (barriers keep coming), one load. Only a
 * syscall: this runs in the signal handler. */
static void wake(struct file *f)
{
	const _Atomic uint32_t *notice = atomic_load(&f->notice);
	const _Atomic uint32_t *asleep = notice ? notice + XED_NOTICE_WATCHER_ASLEEP / 4 : NULL;
	int saved = errno;

	if (asleep && atomic_load(asleep)) /* after the CAS that published: never before it */
		syscall(SYS_futex, asleep, FUTEX_WAKE, 1, NULL, NULL, 0);
	errno = saved;
}

/* The device is gone: nothing is published, nobody is waited for (barrier.h). */
static int unplugged(struct file *f)
{
	const _Atomic uint32_t *notice = atomic_load(&f->notice);

	return notice && atomic_load(notice) == XED_NOTICE_UNPLUGGED;
}

static void publish(struct file *f, uint64_t seq)
{
	uint32_t want = XED_PCI_BARRIER_SEQ_TAG | (seq & XED_PCI_BARRIER_SEQ_MASK);
	uint32_t cur = atomic_load(f->word);
	uint64_t safe;

	if (unplugged(f))
		return;
	do {
		if ((cur & ~XED_PCI_BARRIER_SEQ_MASK) == XED_PCI_BARRIER_SEQ_TAG &&
		    ((cur - want) & XED_PCI_BARRIER_SEQ_MASK) < HALF)
			return; /* the same or a higher number is there: it counts ours */
	} while (!atomic_compare_exchange_weak(f->word, &cur, want));
	wake(f);
	safe = atomic_load(&f->sh->safe);
	while (cur == XED_PCI_BARRIER_IDLE && safe < seq &&
	       !atomic_compare_exchange_weak(&f->sh->safe, &safe, seq))
		;
}

/* Make sure the daemon has counted every store (bounded): wait for its look, publish the
 * count over 0xdeadbeef if the last number may have been lost, and wait for that look. */
static void flush(struct file *f)
{
	struct timespec ms = {0, 1000000};
	int i = 0;

	if (unplugged(f))
		return;
	if (atomic_load(f->word) != XED_PCI_BARRIER_IDLE)
		wake(f); /* a number is there: the watcher may be asleep over it */
	while (i++ < FLUSH_WAIT_MS && atomic_load(f->word) != XED_PCI_BARRIER_IDLE)
		nanosleep(&ms, NULL);
	if (atomic_load(&f->sh->safe) >= atomic_load(&f->sh->seq))
		return;
	publish(f, atomic_load(&f->sh->seq));
	while (i++ < FLUSH_WAIT_MS && atomic_load(f->word) != XED_PCI_BARRIER_IDLE)
		nanosleep(&ms, NULL);
}

int xed_barrier_stepping(void)
{
	return step.mode != NONE;
}

/* Undo what the fault did to the context: registers, trap flag, signal mask. */
static void finish(ucontext_t *uc)
{
	greg_t *g = uc->uc_mcontext.gregs;
	uintptr_t low = (uintptr_t)slots + 2 * PAGE * step.slot - PAGE - 64;

	if (step.mode == REDIRECT) {
		for (int r = 0; r < REG_RSP; r++) /* unless the store loaded something else */
			if (step.moved & (1u << r) && (uintptr_t)g[r] - low < 3 * PAGE + 128)
				g[r] -= step.delta;
		fill(slots + 2 * PAGE * step.slot, 2 * PAGE);
		atomic_store(&slot_busy[step.slot], 0);
	} else {
		fill((void *)step.page, PAGE);
		mprotect((void *)step.page, PAGE, PROT_READ);
		atomic_flag_clear_explicit(&fallback_lock, memory_order_release);
	}
	if (!step.saved_tf)
		g[REG_EFL] &= ~TRAP_FLAG;
	memcpy(&uc->uc_sigmask, &step.mask, sizeof(step.mask));
	atomic_fetch_sub(&step.map->busy, 1);
	step.mode = NONE;
}

int xed_barrier_fault(siginfo_t *info, ucontext_t *uc)
{
	greg_t *g = uc->uc_mcontext.gregs;
	uintptr_t page = (uintptr_t)info->si_addr & ~(PAGE - 1);
	uint64_t mask = STEP_MASK;
	struct map *m = NULL;
	int again = 0;

	if (step.mode != NONE) { /* the stepped instruction faulted */
		again = step.mode == REDIRECT && step.page == page;
		finish(uc);
		if (!again)
			return 0; /* on its other operand: the program's fault */
	} else if (info->si_code != SEGV_ACCERR || (g[REG_ERR] & (PF_WRITE | PF_FETCH)) != PF_WRITE) {
		return 0;
	}
	for (int i = 0; i < MAX_MAPS && !m; i++)
		if (atomic_load(&maps[i].page) == page)
			m = &maps[i];
	if (!m || !m->writable)
		return 0;
	atomic_fetch_add(&m->busy, 1);
	if (atomic_load(&m->page) != page) { /* unmapped meanwhile: as if stored after munmap */
		atomic_fetch_sub(&m->busy, 1);
		return 0;
	}
	step = (struct step){.map = m, .page = page, .saved_tf = g[REG_EFL] & TRAP_FLAG};
	for (step.slot = 0; !again; step.slot = (step.slot + 1) % SLOTS) {
		int free_ = 0;

		if (atomic_compare_exchange_strong(&slot_busy[step.slot], &free_, 1))
			break;
		if (step.slot == SLOTS - 1)
			sched_yield(); /* every slot busy: SLOTS threads are mid-store */
	}
	step.delta = (intptr_t)(slots + 2 * PAGE * step.slot) - (intptr_t)page;
	for (int r = 0; r < REG_RSP && !again; r++) { /* gregs 0..14: all but rsp and rip */
		if ((uintptr_t)g[r] - (page - PAGE) < 3 * PAGE) {
			g[r] += step.delta;
			step.moved |= 1u << r;
		}
	}
	step.mode = step.moved ? REDIRECT : FALLBACK;
	if (step.mode == FALLBACK) {
		if (!again)
			atomic_store(&slot_busy[step.slot], 0);
		spin(&fallback_lock);
		mprotect((void *)page, PAGE, PROT_READ | PROT_WRITE);
	}
	g[REG_EFL] |= TRAP_FLAG;
	memcpy(&step.mask, &uc->uc_sigmask, sizeof(step.mask));
	memcpy(&uc->uc_sigmask, &mask, sizeof(mask));
	return 1;
}

int xed_barrier_trap(siginfo_t *info, ucontext_t *uc)
{
	struct file *f;
	int tf = step.saved_tf;

	if (step.mode == NONE || info->si_code <= 0)
		return 0;
	f = &files[step.map->file]; /* alive while map->busy */
	publish(f, atomic_fetch_add(&f->sh->seq, 1) + 1);
	f->stored = 1;
	finish(uc);
	return tf ? 2 : 1;
}

static void child_after_fork(void)
{
	atomic_flag_clear(&table_lock); /* other threads' locks and steps did not fork */
	atomic_flag_clear(&fallback_lock);
	for (int i = 0; i < SLOTS; i++)
		atomic_store(&slot_busy[i], 0);
	for (int i = 0; i < MAX_MAPS; i++)
		atomic_store(&maps[i].busy, 0);
	for (int i = 0; i < MAX_FILES; i++)
		files[i].stored = 0; /* the parent's stores are the parent's to see counted */
}

/* The file behind memfd (the inode of its daemon page): one count per drm file, kept after
 * its last page is unmapped, since the daemon counts on from the last number it saw. */
static struct file *get_file(int memfd)
{
	struct file *f = NULL;
	struct stat st;

	if (fstat(memfd, &st) < 0)
		return NULL;
	for (int i = 0; i < MAX_FILES; i++) {
		if (files[i].word && files[i].dev == st.st_dev && files[i].ino == st.st_ino)
			return &files[i];
		if (!f && !files[i].word)
			f = &files[i];
	}
	for (int i = 0; i < MAX_FILES && !f; i++) { /* full: forget a file nothing maps */
		int busy = files[i].maps;

		for (int k = 0; k < MAX_MAPS; k++)
			busy |= maps[k].file == i && atomic_load(&maps[k].busy);
		if (!busy) {
			f = &files[i];
			munmap((void *)f->word, PAGE);
			munmap(f->sh, PAGE);
		}
	}
	if (!f)
		return errno = ENOMEM, NULL;
	f->word = NULL;
	f->sh = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (f->sh == MAP_FAILED)
		return NULL;
	f->word = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (f->word == MAP_FAILED) {
		munmap(f->sh, PAGE);
		return f->word = NULL, NULL;
	}
	*f = (struct file){.dev = st.st_dev, .ino = st.st_ino, .word = f->word, .sh = f->sh};
	return f;
}

static void *map_locked(void *addr, int prot, int flags, int memfd)
{
	static int at_fork;
	struct map *m = NULL;
	struct file *f;
	void *p;

	if (!slots) {
		p = mmap(NULL, SLOTS * 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
		if (p == MAP_FAILED)
			return MAP_FAILED;
		fill(p, SLOTS * 2 * PAGE);
		slots = p;
	}
	if (!at_fork)
		at_fork = !pthread_atfork(NULL, NULL, child_after_fork);
	for (int i = 0; i < MAX_MAPS && !m; i++)
		if (!atomic_load(&maps[i].page) && !atomic_load(&maps[i].busy))
			m = &maps[i];
	if (!m)
		return errno = ENOMEM, MAP_FAILED;
	f = get_file(memfd);
	if (!f)
		return MAP_FAILED;
	p = mmap(addr, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | (flags & PASS_FLAGS),
		 -1, 0);
	if (p == MAP_FAILED)
		return MAP_FAILED;
	fill(p, PAGE); /* then read-only (or nothing), so that every store faults */
	if (mprotect(p, PAGE, prot & PROT_WRITE ? PROT_READ : PROT_NONE) < 0) {
		munmap(p, PAGE);
		return MAP_FAILED;
	}
	f->maps++;
	m->file = (int)(f - files);
	m->writable = !!(prot & PROT_WRITE);
	atomic_store(&m->page, (uintptr_t)p);
	return p;
}

void *xed_barrier_map(void *addr, size_t len, int prot, int flags, int memfd)
{
	uint64_t old;
	void *p;

	if (len == 0 || len > PAGE)
		return errno = EINVAL, MAP_FAILED;
	if (xed_signals_install() < 0)
		return MAP_FAILED;
	if (flags & MAP_FIXED) /* what was there goes, as with mmap */
		xed_barrier_unmap(addr, PAGE);
	old = xed_lock(&table_lock);
	p = map_locked(addr, prot, flags, memfd);
	xed_unlock(&table_lock, old);
	return p;
}

void xed_barrier_waker(void *page, const _Atomic uint32_t *notice)
{
	uint64_t old = xed_lock(&table_lock);

	for (int i = 0; i < MAX_MAPS; i++)
		if (atomic_load(&maps[i].page) == (uintptr_t)page)
			atomic_store(&files[maps[i].file].notice, notice);
	xed_unlock(&table_lock, old);
}

void xed_barrier_unmap(void *addr, size_t len)
{
	uintptr_t start = (uintptr_t)addr, end = start + len;
	struct timespec ms = {0, 1000000};
	uint64_t old;
	int any = 0;

	if (start & (PAGE - 1) || len == 0 || end < start)
		return; /* munmap refuses it */
	for (int i = 0; i < MAX_MAPS && !any; i++) /* the common case: no barrier page there */
		any = atomic_load(&maps[i].page) - start < len;
	if (!any)
		return;
	old = xed_lock(&table_lock);
	for (int i = 0; i < MAX_MAPS; i++) {
		struct map *m = &maps[i];
		uintptr_t page = atomic_load(&m->page);

		if (!page || page < start || page >= end)
			continue;
		atomic_store(&m->page, 0);
		for (int k = 0; k < 1000 && atomic_load(&m->busy); k++)
			nanosleep(&ms, NULL); /* a store mid-step: one instruction, unless stopped */
		flush(&files[m->file]);
		files[m->file].maps--; /* its count stays: mapping the page again goes on from it */
	}
	xed_unlock(&table_lock, old);
}

__attribute__((destructor)) static void flush_at_exit(void)
{
	for (int i = 0; i < MAX_FILES; i++)
		if (files[i].word && files[i].stored)
			flush(&files[i]);
}
