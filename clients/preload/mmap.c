/*
 * mmap.c - mmap(2) of a drm descriptor at a fake offset, and the table of such maps.
 *
 * The kernel's mmap handler checks the offset belongs to the file and the length and
 * flags suit the object; here the daemon makes those checks (MMAP) and answers with a
 * descriptor of the object's memory, which is mapped where, how long and how the
 * program asked. The PCI barrier page goes to the barrier module instead, which maps
 * it so that stores never stay, and its stores wake the daemon's page watcher through
 * the device's notice page (notice.c). The library remembers each mapping it makes
 * (address, length, fake offset, file, protection, device) because the daemon names
 * user memory by fake offset: a WAIT_USER_FENCE at a CPU address is translated through
 * this table; and because when the device is unplugged each of them falls onto a private
 * zero page (unplug.c), dma-buf mappings included. Every mapping of anything else goes to
 * the kernel as it is.
 *
 * The zero pages are mapped over the table's ranges (MAP_FIXED), so the table must never
 * name a range the program has since given to something else: munmap, a MAP_FIXED mmap
 * and mremap over a mapping of ours change the kernel's mappings and the table together,
 * under its lock, and a forked child forgets what it did not inherit (MADV_DONTFORK).
 * Only a raw syscall slips past: a range unmapped that way could later be zapped. The
 * lock is taken with every signal blocked, so a handler never finds it held by the code
 * it interrupted, nor does a siglongjmp out of one leave it held; fork takes it too, so
 * a child's table is never one half changed (a zap half done, say).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>

#include "barrier.h"
#include "preload.h"
#include "proto.h"
#include "signals.h"
#include "sys.h"

#define FIRST_MAPS 4096

struct map {
	uint64_t addr, len, offset;
	struct xed_file *file;	   /* NULL: a dma-buf's (no fake offset to translate) */
	struct xed_notice *notice; /* its device's; NULL: never zapped (barrier page) */
	int prot, zapped;
};
static struct map first[FIRST_MAPS];
static struct map *maps = first; /* first, then pages of its own as it doubles */
static int capacity = FIRST_MAPS;
static _Atomic int nmaps;
static atomic_flag lock = ATOMIC_FLAG_INIT;
static __thread __attribute__((tls_model("initial-exec"))) uint64_t fork_mask;

static uint64_t lock_maps(void) { return xed_lock(&lock); }

static void unlock_maps(uint64_t old) { xed_unlock(&lock, old); }

/* The kernel's dummy page: private zeros of the mapping's protection, at its address,
 * in one step. Refused (no memory, too many mappings): it keeps the emptied memfd. */
static void zap(struct map *m)
{
	m->zapped = sys_mmap((void *)(uintptr_t)m->addr, m->len, m->prot,
			     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED;
}

/* not on zero pages yet, and its device is unplugged */
static int unplugged(const struct map *m)
{
	return m->notice && !m->zapped &&
	       atomic_load(m->notice->page) == XED_NOTICE_UNPLUGGED;
}

/* Under the lock: room for one entry more, doubling the table if it is full. Its pages
 * come from the kernel, not malloc: this runs with every signal blocked, in whatever
 * the program was doing (a signal handler's mmap, a fork child). 0: no memory. */
static int room(void)
{
	if (nmaps < capacity)
		return 1;
	size_t bytes = 2 * (size_t)capacity * sizeof *maps;
	struct map *bigger = sys_mmap(NULL, bytes, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (bigger == MAP_FAILED)
		return 0;
	memcpy(bigger, maps, (size_t)nmaps * sizeof *maps);
	if (maps != first)
		sys_munmap(maps, (size_t)capacity * sizeof *maps);
	maps = bigger;
	capacity *= 2;
	return 1;
}

/* Under the lock. A device unplugged since the daemon answered: it falls at once (its
 * watcher may have been and gone). */
static void remember(struct map m)
{
	if (unplugged(&m))
		zap(&m);
	if (room())
		maps[nmaps++] = m;
	else
		xed_log("no memory for the table of mappings: %#llx is not remembered",
			(unsigned long long)m.addr);
}

/* Under the lock: [addr, addr+len) is unmapped or replaced; drop or trim what it covered */
static void forget(uint64_t addr, uint64_t len)
{
	for (int i = 0; i < nmaps; i++) {
		struct map *m = &maps[i], kept = *m;
		struct span head = {m->addr, m->len, m->offset}, tail;
		if (!span_cut(&head, addr, len, &tail))
			continue;
		if (!head.len && !tail.len) {
			*m = maps[--nmaps];
			i--;
			continue;
		}
		if (!head.len)
			head = tail, tail.len = 0;
		m->addr = head.addr, m->len = head.len, m->offset = head.off;
		if (tail.len && room()) { /* a hole in the middle: keep the tail (room() may move m) */
			kept.addr = tail.addr, kept.len = tail.len, kept.offset = tail.off;
			maps[nmaps++] = kept;
		}
	}
}

int user_address(struct xed_file *f, uint64_t addr, uint64_t *out)
{
	uint64_t old = lock_maps();
	int found = 0;

	for (int i = 0; i < nmaps && !found; i++)
		if (maps[i].file == f && addr - maps[i].addr < maps[i].len) {
			*out = maps[i].offset + (addr - maps[i].addr);
			found = 1;
		}
	unlock_maps(old);
	return found;
}

void *maps_map(struct xed_file *f, uint64_t offset, struct xed_notice *n, void *addr,
	       size_t len, int prot, int flags, int memfd, off_t at)
{
	uint64_t old = lock_maps();
	void *p = sys_mmap(addr, len, prot, (flags & ~MAP_TYPE) | MAP_SHARED, memfd, at);
	int err = errno;

	if (p != MAP_FAILED) {
		forget((uintptr_t)p, ROUND(len)); /* what MAP_FIXED replaced, or stale */
		remember((struct map){(uintptr_t)p, ROUND(len), offset, f, n, prot, 0});
	}
	unlock_maps(old);
	if (p != MAP_FAILED && n && atomic_load(n->page) != XED_NOTICE_UNPLUGGED)
		unplug_watch(n);
	errno = err;
	return p;
}

void maps_zap(void)
{
	uint64_t old = lock_maps();

	for (int i = 0; i < nmaps; i++)
		if (unplugged(&maps[i]))
			zap(&maps[i]);
	unlock_maps(old);
}

void maps_before_fork(void) { fork_mask = lock_maps(); }
void maps_after_fork_parent(void) { unlock_maps(fork_mask); }

void maps_after_fork(void)
{
	int saved = errno;

	unlock_maps(fork_mask);
	for (int i = 0; i < nmaps; i++) /* not inherited (MADV_DONTFORK): no longer mapped */
		if (syscall(SYS_msync, maps[i].addr, maps[i].len, MS_ASYNC) < 0 && errno == ENOMEM) {
			maps[i] = maps[--nmaps];
			i--;
		}
	errno = saved;
}

void maps_watch(void)
{
	maps_zap(); /* devices unplugged already */
	for (int i = 0; i < nmaps; i++) {
		uint64_t old = lock_maps();
		struct xed_notice *n = i < nmaps && !maps[i].zapped ? maps[i].notice : NULL;

		unlock_maps(old);
		if (n && atomic_load(n->page) != XED_NOTICE_UNPLUGGED)
			unplug_watch(n); /* once per device: the next call finds it running */
	}
}

/* mmap(2) of anything else: what a MAP_FIXED one replaces is no mapping of ours now. */
static void *other_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	uint64_t old;
	void *p;
	int err;

	if (!(flags & MAP_FIXED) || !nmaps)
		return sys_mmap(addr, len, prot, flags, fd, off);
	old = lock_maps();
	p = sys_mmap(addr, len, prot, flags, fd, off);
	err = errno;
	if (p != MAP_FAILED)
		forget((uintptr_t)p, ROUND(len));
	unlock_maps(old);
	errno = err;
	return p;
}

static void *device_mmap(struct xed_file *f, void *addr, size_t len, int prot, int flags,
			 off_t off)
{
	int type = flags & MAP_TYPE;
	if (!len || off & (PAGE - 1) || type < MAP_SHARED || type > MAP_SHARED_VALIDATE) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	struct xed_notice *n = notice_get(f); /* before the mapping can exist: see maps_map */
	if (!n && errno == ENODEV)
		return MAP_FAILED; /* unplugged: MMAP would say so too */
	uint64_t plen = ROUND(len);
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_MMAP);
	if (err) {
		errno = err;
		return MAP_FAILED;
	}
	xc_u(&c, "offset", (uint64_t)off);
	xc_u(&c, "length", plen);
	xc_u(&c, "prot", (unsigned)prot);
	xc_u(&c, "flags", type == MAP_PRIVATE ? MAP_PRIVATE : MAP_SHARED);
	err = xc_run(&c, -1);
	uint64_t at = err ? 0 : r_get_uint(&c.body, "offset");
	int memfd = err ? -1 : xc_take_fd(&c);
	xc_end(&c);
	if (!err && memfd < 0)
		err = EIO;
	if (err) {
		errno = err;
		return MAP_FAILED;
	}
	void *p;
	if ((uint64_t)off == XED_PCI_BARRIER_MMAP_OFFSET) {
		p = xed_barrier_map(addr, len, prot, (flags & ~MAP_TYPE) | MAP_SHARED, memfd);
		err = errno;
		if (p != MAP_FAILED) { /* its stores wake the page watcher; it is never zapped */
			xed_barrier_waker(p, n ? n->page : NULL);
			uint64_t old = lock_maps();
			forget((uintptr_t)p, plen);
			remember((struct map){(uintptr_t)p, plen, (uint64_t)off, f, NULL, prot, 0});
			unlock_maps(old);
		}
	} else {
		p = maps_map(f, (uint64_t)off, n, addr, len, prot, flags, memfd, (off_t)at);
		err = errno;
	}
	sys_close(memfd);
	errno = err;
	return p;
}

static void *do_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (flags & MAP_FIXED) /* whatever it maps replaces a barrier page there */
		xed_barrier_unmap(addr, len);
	if (fd >= 0 && !(flags & MAP_ANONYMOUS)) {
		struct xed_file *f = xf_get(fd);
		if (f) {
			void *p = device_mmap(f, addr, len, prot, flags, off);
			xf_put(f);
			return p;
		}
	}
	void *p = other_mmap(addr, len, prot, flags, fd, off);
	if (p != MAP_FAILED || errno != ENODEV || fd < 0)
		return p;
	if (!dmabuf_is(fd)) {
		errno = ENODEV; /* the kernel's answer, whatever asking left in errno */
		return MAP_FAILED;
	}
	int err = dmabuf_mmap(fd, addr, len, prot, flags, off, &p);
	if (err) {
		errno = err;
		return MAP_FAILED;
	}
	return p;
}

/* A MAP_FIXED mmap over memory moved for a userptr is the MMU notifier's business too
 * (userptr.c); fresh anonymous memory there stays within the device's reach. */
static void *mmap_fixed(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	uint64_t mask;
	void *p;
	int err;

	if (flags & MAP_ANONYMOUS && (p = userptr_fresh(addr, len, prot, flags)))
		return p;
	if (!userptr_begin((uintptr_t)addr, len, &mask))
		return do_mmap(addr, len, prot, flags, fd, off);
	p = do_mmap(addr, len, prot, flags, fd, off);
	err = errno;
	userptr_end((uintptr_t)addr, len, p != MAP_FAILED, mask);
	errno = err;
	return p;
}

XED_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (flags & MAP_FIXED)
		return mmap_fixed(addr, len, prot, flags, fd, off);
	return do_mmap(addr, len, prot, flags, fd, off);
}

XED_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

static int do_munmap(void *addr, size_t len)
{
	uint64_t old;
	int r, err;

	xed_barrier_unmap(addr, len);
	if (!nmaps)
		return sys_munmap(addr, len);
	old = lock_maps();
	r = sys_munmap(addr, len);
	err = errno;
	if (!r)
		forget((uintptr_t)addr, ROUND(len));
	unlock_maps(old);
	errno = err;
	return r;
}

XED_EXPORT int munmap(void *addr, size_t len)
{
	uint64_t mask;
	int r, err;

	if (!userptr_begin((uintptr_t)addr, len, &mask))
		return do_munmap(addr, len);
	r = do_munmap(addr, len);
	err = errno;
	userptr_end((uintptr_t)addr, len, r == 0, mask);
	errno = err;
	return r;
}

/* The entry holding addr, copied into *out; 0 if none. Under the lock. */
static int holding(uint64_t addr, struct map *out)
{
	for (int i = 0; i < nmaps; i++)
		if (addr - maps[i].addr < maps[i].len) {
			*out = maps[i];
			return 1;
		}
	return 0;
}

/* A mapping of ours moved or resized goes on being ours where it now is, as the kernel's
 * VMA keeps its file and vm_ops: translated for WAIT_USER_FENCE and zapped at an unplug.
 * What it left behind (all of it, unless MREMAP_DONTUNMAP; a shrunk mapping's tail) is
 * no mapping of ours any more. */
static void *do_mremap(void *from, size_t len, size_t new_len, int flags, void *to)
{
	struct map moved;
	uint64_t old;
	void *p;
	int err, ours;

	if (!nmaps)
		return (void *)syscall(SYS_mremap, from, len, new_len, (long)flags, to);
	old = lock_maps();
	p = (void *)syscall(SYS_mremap, from, len, new_len, (long)flags, to);
	err = errno;
	if (p != MAP_FAILED) {
		ours = holding((uintptr_t)from, &moved);
		if (len && !(flags & MREMAP_DONTUNMAP))
			forget((uintptr_t)from, ROUND(len));
		forget((uintptr_t)p, ROUND(new_len));
		if (ours) {
			moved.offset += (uintptr_t)from - moved.addr;
			moved.addr = (uintptr_t)p;
			moved.len = ROUND(new_len);
			remember(moved);
		}
	}
	unlock_maps(old);
	errno = err;
	return p;
}

/* Memory moved for a userptr that moves again is reported freed where it was (userptr.c
 * takes it back, wherever it went, at its next bind). */
XED_EXPORT void *mremap(void *from, size_t len, size_t new_len, int flags, ...)
{
	void *to = NULL, *p;
	uint64_t mask;
	va_list ap;
	int err;

	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		to = va_arg(ap, void *);
		va_end(ap);
	}
	if (!userptr_begin((uintptr_t)from, len, &mask))
		return do_mremap(from, len, new_len, flags, to);
	p = do_mremap(from, len, new_len, flags, to);
	err = errno;
	userptr_end((uintptr_t)from, len, p != MAP_FAILED, mask);
	errno = err;
	return p;
}
