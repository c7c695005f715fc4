/*
 * notice.c - the device's notice page (UNPLUG_NOTICE): the word that says the device is
 * unplugged, and the word that says whether the daemon's page watcher sleeps.
 *
 * Word 0 turns XED_NOTICE_UNPLUGGED when the device goes and its futex waiters are woken:
 * unplug.c waits there, then puts zero pages under the process's mappings of the device.
 * The daemon's page watcher sleeps on a futex while no barrier comes, the u32 at
 * NOTICE_WATCHER_ASLEEP, and looks by itself only every 50 ms; a barrier store that finds
 * the word set wakes it (barrier.c), as the Python library does. The page is asked for
 * once per drm file, when it first maps anything, and mapped read-only once per device
 * (per inode: files of one device share it). It is never unmapped, since a signal handler
 * may read it at any moment and a watcher thread may wait on it: after an unplug the
 * daemon has cleared the asleep word and let go of its own mapping, ours lives on (the
 * memfd is sealed against shrinking, so it never faults). A device plugged in again has a
 * page of its own, asked for by its own files: a process keeps one page and one entry for
 * every device it has met, however many replugs. Failing to get the page costs only
 * promptness for barriers (the watcher counts at its next look) and the zero pages after
 * an unplug (the mappings keep the emptied memfds, as a mapping made by hand does).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>

#include "preload.h"
#include "proto.h"
#include "signals.h"
#include "sys.h"

#define PER_BLOCK 8 /* devices a block remembers; more take another block */

struct device {
	atomic_int state; /* 0 free, 1 being filled, 2 ready */
	dev_t dev;
	ino_t ino;
	struct xed_notice notice;
};
/* Every device (replug) the process has met, never forgotten: a page of its mapped for
 * good (see above) and an entry here. Blocks are chained as they fill, never freed. */
struct block {
	struct device devices[PER_BLOCK];
	struct block *_Atomic next;
};
static struct block first;
static atomic_flag lock = ATOMIC_FLAG_INIT; /* map_once's */

void notice_after_fork(void) { atomic_flag_clear(&lock); } /* another thread may hold it */

static struct xed_notice *find(const struct stat *st)
{
	for (struct block *b = &first; b; b = atomic_load(&b->next))
		for (int i = 0; i < PER_BLOCK; i++)
			if (atomic_load(&b->devices[i].state) == 2 &&
			    b->devices[i].dev == st->st_dev && b->devices[i].ino == st->st_ino)
				return &b->devices[i].notice;
	return NULL;
}

/* A free entry, claimed (state 1); NULL only if no memory is left for another block. */
static struct device *claim(void)
{
	struct block *b = &first;

	for (;;) {
		struct block *next, *fresh;

		for (int i = 0; i < PER_BLOCK; i++) {
			int free_ = 0;

			if (atomic_compare_exchange_strong(&b->devices[i].state, &free_, 1))
				return &b->devices[i];
		}
		next = atomic_load(&b->next);
		if (!next) {
			fresh = sys_mmap(NULL, sizeof(*fresh), PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (fresh == MAP_FAILED)
				return NULL;
			if (atomic_compare_exchange_strong(&b->next, &next, fresh))
				next = fresh;
			else /* another thread chained one first: use it */
				sys_munmap(fresh, sizeof(*fresh));
		}
		b = next;
	}
}

/* The notice page behind fd, mapped once per device; NULL and errno. */
static struct xed_notice *map_notice(int fd, const struct stat *st)
{
	struct xed_notice *found = find(st);
	struct device *entry;
	void *page;

	if (found)
		return found;
	page = sys_mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (page == MAP_FAILED)
		return NULL;
	entry = claim();
	if (!entry) {
		sys_munmap(page, PAGE); /* nobody has seen it yet */
		return errno = ENOMEM, NULL;
	}
	entry->dev = st->st_dev;
	entry->ino = st->st_ino;
	entry->notice.page = page;
	atomic_store(&entry->state, 2);
	return &entry->notice;
}

/* One entry per device, so one watcher: two files of a device asking at once take
 * turns (with signals blocked, so that a handler never finds the lock held). */
static struct xed_notice *map_once(int fd)
{
	struct xed_notice *n;
	struct stat st;
	uint64_t old;
	int err;

	if (sys_fstatat(fd, "", &st, AT_EMPTY_PATH) < 0)
		return NULL;
	if (st.st_size < (off_t)PAGE)
		return errno = EIO, NULL; /* past the end, a read would fault */
	old = xed_lock(&lock);
	n = map_notice(fd, &st);
	err = errno;
	xed_unlock(&lock, old);
	errno = err;
	return n;
}

struct xed_notice *notice_get(struct xed_file *f)
{
	struct xed_notice *n = atomic_load(&f->notice);
	struct xcall c;
	int fd = -1, err;

	if (n)
		return n;
	err = xc_begin(&c, f, XED_OP_UNPLUG_NOTICE);
	if (err)
		return errno = err, NULL;
	err = xc_run(&c, -1);
	if (!err)
		fd = xc_take_fd(&c);
	xc_end(&c);
	if (fd < 0)
		return errno = err ? err : EIO, NULL;
	n = map_once(fd);
	err = errno;
	sys_close(fd);
	atomic_store(&f->notice, n);
	errno = err;
	return n;
}
