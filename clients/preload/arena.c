/*
 * arena.c - which parts of the userptr arena are taken (userptr.c moves memory there).
 *
 * The arena is one memfd that a process and its forked children share, and so is the
 * record of what is taken: a table of extents in shared memory, each a 64 KiB-aligned
 * run of the arena and the pid that took it, under a spin lock that holds its holder's
 * pid (one killed while holding it is found gone, and the lock taken over).
 *
 * An extent no mapping of its taker reaches any more (an munmap, a MAP_FIXED mmap or an
 * mremap away; libc's own munmap of a large free() too, which this library never sees)
 * is given back with its pages (FALLOC_FL_PUNCH_HOLE) when its taker collects: after
 * an munmap of moved memory, and when the arena is full. An extent that may be mapped
 * shared by a forked child is kept for good (pinned at fork), and so are the extents a
 * process left behind that way; the rest of a process gone is given back by whoever
 * collects next.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

#include "preload.h"
#include "sys.h"

#define EXTENT_ALIGN (64ull << 10)
#define MAX_EXTENTS 1020
#define MAX_DYING 64 /* given back per pass of arena_collect */

struct extent {
	uint64_t off, len;
	int32_t pid;
	uint8_t pinned, dying;
};

struct table {
	_Atomic int32_t holder; /* the pid holding the lock; 0: free */
	uint32_t n;		/* extents, by offset */
	uint64_t size, high;	/* the arena's size; the end of the highest extent ever */
	struct extent x[MAX_EXTENTS];
};

static struct table *t;

static int32_t me(void) { return (int32_t)syscall(SYS_getpid); }

static int gone_pid(int32_t pid) { return syscall(SYS_kill, (long)pid, 0L) < 0 && errno == ESRCH; }

static void table_lock(void)
{
	int32_t free_ = 0, mine = me();
	for (unsigned spins = 1; !atomic_compare_exchange_weak(&t->holder, &free_, mine); spins++) {
		int32_t holder = free_;
		free_ = 0;
		if (spins % 1024 == 0 && holder && gone_pid(holder)) /* killed holding it */
			atomic_compare_exchange_strong(&t->holder, &holder, 0);
		sched_yield();
	}
}

static void table_unlock(void) { atomic_store(&t->holder, 0); }

int arena_table(uint64_t size)
{
	struct table *shared = sys_mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE,
					MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED)
		return ENOMEM;
	shared->size = size;
	t = shared;
	return 0;
}

static void insert(uint32_t i, struct extent e)
{
	memmove(&t->x[i + 1], &t->x[i], (t->n - i) * sizeof *t->x);
	t->x[i] = e;
	t->n++;
}

static void erase(uint32_t i)
{
	memmove(&t->x[i], &t->x[i + 1], (t->n - i - 1) * sizeof *t->x);
	t->n--;
}

/* The first gap that holds `want` bytes: its place in the table, and *off; -1: none */
static int first_fit(uint64_t want, uint64_t *off)
{
	uint64_t at = 0;
	if (t->n == MAX_EXTENTS)
		return -1;
	for (uint32_t i = 0; i <= t->n; i++) {
		uint64_t end = i < t->n ? t->x[i].off : t->size;
		if (end >= at && end - at >= want) {
			*off = at;
			return (int)i;
		}
		if (i < t->n)
			at = t->x[i].off + t->x[i].len;
	}
	return -1;
}

int arena_take(uint64_t addr, uint64_t len, uint64_t *slice, int *reused)
{
	uint64_t skew = addr & (EXTENT_ALIGN - 1), off;
	uint64_t want = (skew + len + EXTENT_ALIGN - 1) & ~(EXTENT_ALIGN - 1);
	if (!t || want < len)
		return ENOMEM;
	table_lock();
	int i = first_fit(want, &off);
	if (i >= 0) {
		insert((uint32_t)i, (struct extent){off, want, me(), 0, 0});
		*reused = off < t->high;
		if (off + want > t->high)
			t->high = off + want;
		*slice = off + skew;
	}
	table_unlock();
	return i >= 0 ? 0 : ENOMEM;
}

struct reach {
	dev_t dev;
	ino_t ino;
	uint8_t *alive;
};

/* one mapping: the extents it reaches are alive */
static int mark_alive(const struct seg *s, void *arg)
{
	const struct reach *r = arg;
	if (s->dev == r->dev && s->ino == r->ino)
		for (uint32_t i = 0; i < t->n; i++)
			if (t->x[i].off < s->off + (s->hi - s->lo) && s->off < t->x[i].off + t->x[i].len)
				r->alive[i] = 1;
	return 0;
}

/* Mark the extents no mapping of ours reaches (and those of processes gone) dying, and
 * copy them out: their number. Under the table's lock. */
static int find_dying(dev_t dev, ino_t ino, struct extent *dying)
{
	static __thread uint8_t alive[MAX_EXTENTS]; /* not on the stack: 1 KiB */
	struct reach r = {dev, ino, alive};
	int32_t mine = me();
	memset(alive, 0, sizeof alive);
	if (proc_maps_each(mark_alive, &r) < 0)
		return 0; /* the maps could not be read whole: nothing is known dead */
	int n = 0;
	for (uint32_t i = 0; i < t->n && n < MAX_DYING; i++) {
		struct extent *x = &t->x[i];
		if (x->pinned || x->dying || (x->pid == mine ? alive[i] : !gone_pid(x->pid)))
			continue;
		x->dying = 1;
		dying[n++] = *x;
	}
	return n;
}

int arena_collect(int fd, dev_t dev, ino_t ino, void (*gone)(uint64_t, uint64_t, void *),
		  void *arg)
{
	struct extent dying[MAX_DYING];
	if (!t)
		return 0;
	table_lock();
	int n = find_dying(dev, ino, dying);
	table_unlock();
	for (int k = 0; k < n; k++) { /* no lock held while the daemon is told */
		if (dying[k].pid == me())
			gone(dying[k].off, dying[k].len, arg);
		syscall(SYS_fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			(long)dying[k].off, (long)dying[k].len);
	}
	table_lock();
	for (int k = 0; k < n; k++) /* ours only: another collect may be mid-way through its own */
		for (uint32_t i = 0; i < t->n; i++)
			if (t->x[i].dying && t->x[i].off == dying[k].off) {
				erase(i);
				break;
			}
	table_unlock();
	return n;
}

void arena_pin(int (*shared)(uint64_t, uint64_t, void *), void *arg)
{
	if (!t)
		return;
	int32_t mine = me();
	table_lock();
	for (uint32_t i = 0; i < t->n; i++)
		if (t->x[i].pid == mine && !t->x[i].pinned)
			t->x[i].pinned = (uint8_t)shared(t->x[i].off, t->x[i].len, arg);
	table_unlock();
}
