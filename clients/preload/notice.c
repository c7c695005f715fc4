/*
 * notice.c - the device's notice page (UNPLUG_NOTICE), for the word that says whether
 * the daemon's page watcher sleeps.
 *
 * The watcher sleeps on a futex while no barrier comes, the u32 at NOTICE_WATCHER_ASLEEP
 * of the device's notice page, and looks by itself only every 50 ms; a barrier store that
 * finds the word set wakes it (barrier.c), as the Python library does. The page is asked
 * for once per drm file, when it first maps its barrier page, and mapped read-only once
 * per device (per inode: files of one device share it). It is never unmapped, since a
 * signal handler may read it at any moment: after an unplug the daemon has cleared the
 * word and let go of its own mapping, ours lives on (the memfd is sealed against
 * shrinking, so it never faults) and reads 0, so nobody is woken. A device plugged in
 * again has a page of its own, asked for by its own files: a process keeps one page and
 * one entry for every device it has met, however many replugs. Failing to get the page
 * costs only promptness: the watcher counts at its next look.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

#define PAGE 4096ul
#define PER_BLOCK 8 /* devices a block remembers; more take another block */

struct device {
	atomic_int state; /* 0 free, 1 being filled, 2 ready */
	dev_t dev;
	ino_t ino;
	const _Atomic uint32_t *asleep;
};
/* Every device (replug) the process has met, never forgotten: a page of its mapped for
 * good (see above) and an entry here. Blocks are chained as they fill, never freed. */
struct block {
	struct device devices[PER_BLOCK];
	struct block *_Atomic next;
};
static struct block first;

static const _Atomic uint32_t *find(const struct stat *st)
{
	for (struct block *b = &first; b; b = atomic_load(&b->next))
		for (int i = 0; i < PER_BLOCK; i++)
			if (atomic_load(&b->devices[i].state) == 2 &&
			    b->devices[i].dev == st->st_dev && b->devices[i].ino == st->st_ino)
				return b->devices[i].asleep;
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

/* The notice page behind fd, mapped once per device: its asleep word, or NULL. */
static const _Atomic uint32_t *map_notice(int fd)
{
	const _Atomic uint32_t *asleep;
	struct device *entry;
	struct stat st;
	uint8_t *page;

	if (sys_fstatat(fd, "", &st, AT_EMPTY_PATH) < 0 || st.st_size < (off_t)PAGE)
		return NULL; /* past the end, a read would fault */
	asleep = find(&st);
	if (asleep)
		return asleep;
	page = sys_mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (page == MAP_FAILED)
		return NULL;
	entry = claim();
	if (!entry) {
		sys_munmap(page, PAGE); /* nobody has seen it yet */
		return NULL;
	}
	entry->dev = st.st_dev;
	entry->ino = st.st_ino;
	entry->asleep = (const _Atomic uint32_t *)(page + XED_NOTICE_WATCHER_ASLEEP);
	atomic_store(&entry->state, 2);
	return entry->asleep;
}

const _Atomic uint32_t *notice_asleep(struct xed_file *f)
{
	const _Atomic uint32_t *asleep = atomic_load(&f->asleep);
	struct xcall c;
	int fd = -1;

	if (asleep || xc_begin(&c, f, XED_OP_UNPLUG_NOTICE))
		return asleep;
	if (!xc_run(&c, -1))
		fd = xc_take_fd(&c);
	xc_end(&c);
	if (fd < 0)
		return NULL;
	asleep = map_notice(fd);
	sys_close(fd);
	atomic_store(&f->asleep, asleep);
	return asleep;
}
