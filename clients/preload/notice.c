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
 * again has a page of its own, asked for by its own files. Failing to get the page costs
 * only promptness: the watcher counts at its next look.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

#define MAX_DEVICES 16 /* devices (replugs) one process meets; more go unwoken */
#define PAGE 4096ul

static struct device {
	atomic_int state; /* 0 free, 1 being filled, 2 ready */
	dev_t dev;
	ino_t ino;
	const _Atomic uint32_t *asleep;
} devices[MAX_DEVICES];

/* The notice page behind fd, mapped once per device: its asleep word, or NULL. */
static const _Atomic uint32_t *map_notice(int fd)
{
	struct stat st;
	uint8_t *page;

	if (sys_fstatat(fd, "", &st, AT_EMPTY_PATH) < 0 || st.st_size < (off_t)PAGE)
		return NULL; /* past the end, a read would fault */
	for (int i = 0; i < MAX_DEVICES; i++)
		if (atomic_load(&devices[i].state) == 2 && devices[i].dev == st.st_dev &&
		    devices[i].ino == st.st_ino)
			return devices[i].asleep;
	page = sys_mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (page == MAP_FAILED)
		return NULL;
	for (int i = 0; i < MAX_DEVICES; i++) {
		int free_ = 0;

		if (!atomic_compare_exchange_strong(&devices[i].state, &free_, 1))
			continue;
		devices[i].dev = st.st_dev;
		devices[i].ino = st.st_ino;
		devices[i].asleep = (const _Atomic uint32_t *)(page + XED_NOTICE_WATCHER_ASLEEP);
		atomic_store(&devices[i].state, 2);
		return devices[i].asleep;
	}
	sys_munmap(page, PAGE); /* nobody has seen it yet */
	return NULL;
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
