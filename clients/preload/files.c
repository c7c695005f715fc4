/*
 * files.c - which of the program's descriptors are drm files, dma-bufs and sw_sync
 * timelines of xed.
 *
 * The kernel shares one open file between every copy of a descriptor (dup, fork,
 * SCM_RIGHTS) and releases it at the last close; the library only needs to know, for
 * each descriptor number, whether it is one of ours and which drm file it is, so every
 * call that makes or drops a descriptor (close, dup*, fcntl F_DUPFD*, close_range) is
 * interposed to keep the table current. Lookups run on every ioctl, mmap and close of
 * the program, from any thread, possibly from signal handlers: they take no lock. A
 * drm file record lives in a fixed slot that is only ever reused for another drm file,
 * so a lookup racing a close can read a stale slot but never freed memory, and its
 * reference count is taken with compare-and-swap from a non-zero value only.
 *
 * A timeline's last close releases it in the kernel, within close(2): so closing a
 * descriptor marked as one (close, dup2/dup3 over it, close_range) tells the daemon
 * afterwards, with the inode taken before (sw_sync.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "preload.h"
#include "sys.h"

#define MAX_FILES 256
#define PAGE_FDS 4096
#define FD_PAGES 1024 /* descriptors up to 4M */
#define KIND_SHIFT 24

static struct xed_file slots[MAX_FILES];
static atomic_int slot_used[MAX_FILES];
static _Atomic(atomic_uint *) fd_pages[FD_PAGES];

/* --- drm file slots ------------------------------------------------------------------ */
void files_after_fork(void)
{
	for (int i = 0; i < MAX_FILES; i++)
		if (atomic_load(&slot_used[i]))
			conn_after_fork(&slots[i]);
}

struct xed_file *xf_alloc(int node)
{
	for (int i = 0; i < MAX_FILES; i++) {
		int free_slot = 0;
		if (!atomic_compare_exchange_strong(&slot_used[i], &free_slot, 1))
			continue;
		struct xed_file *f = &slots[i];
		f->node = node;
		f->owner = xed_pid;
		f->io.fd = -1;
		f->token[0] = 0;
		atomic_store(&f->notice, NULL);
		atomic_store(&f->host_base, 0);
		atomic_store(&f->io.state, 0);
		atomic_store(&f->spare, -1);
		for (int c = 0; c < XED_CHANNELS; c++) {
			atomic_store(&f->chans[c].state, 0);
			f->chans[c].fd = -1;
		}
		atomic_store(&f->refs, 1);
		return f;
	}
	return NULL;
}

void xf_hold(struct xed_file *f) { atomic_fetch_add(&f->refs, 1); }

void xf_put(struct xed_file *f)
{
	if (atomic_fetch_sub(&f->refs, 1) != 1)
		return;
	conn_release(f);
	atomic_store(&slot_used[f - slots], 0);
}

/* --- the fd table --------------------------------------------------------------------- */
static atomic_uint *entry(int fd, int create)
{
	if (fd < 0 || fd >= PAGE_FDS * FD_PAGES)
		return NULL;
	atomic_uint *page = atomic_load(&fd_pages[fd / PAGE_FDS]);
	if (!page && create) {
		atomic_uint *fresh = sys_mmap(NULL, PAGE_FDS * sizeof *fresh, PROT_READ | PROT_WRITE,
					      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (fresh == MAP_FAILED)
			return NULL;
		if (atomic_compare_exchange_strong(&fd_pages[fd / PAGE_FDS], &page, fresh))
			page = fresh;
		else
			sys_munmap(fresh, PAGE_FDS * sizeof *fresh);
	}
	return page ? &page[fd % PAGE_FDS] : NULL;
}

int fd_kind(int fd)
{
	atomic_uint *e = entry(fd, 0);
	return e ? (int)(atomic_load(e) >> KIND_SHIFT) : FD_NONE;
}

struct xed_file *xf_get(int fd)
{
	atomic_uint *e = entry(fd, 0);
	if (!e)
		return NULL;
	for (;;) {
		unsigned v = atomic_load(e);
		if (v >> KIND_SHIFT != FD_DRM)
			return NULL;
		struct xed_file *f = &slots[v & 0xffff];
		int refs = atomic_load(&f->refs);
		if (refs <= 0)
			return NULL; /* being released: the descriptor is closing */
		if (!atomic_compare_exchange_weak(&f->refs, &refs, refs + 1))
			continue;
		if (atomic_load(e) == v)
			return f;
		xf_put(f); /* the slot was reused meanwhile: look again */
	}
}

static void set_entry(int fd, unsigned v)
{
	atomic_uint *e = entry(fd, v != 0);
	unsigned old = e ? atomic_exchange(e, v) : 0;
	if (old >> KIND_SHIFT == FD_DRM)
		xf_put(&slots[old & 0xffff]);
}

void fd_install(int fd, struct xed_file *f)
{
	set_entry(fd, (unsigned)FD_DRM << KIND_SHIFT | (unsigned)(f - slots));
}

void fd_mark_dmabuf(int fd) { set_entry(fd, (unsigned)FD_DMABUF << KIND_SHIFT); }
void fd_mark_timeline(int fd) { set_entry(fd, (unsigned)FD_TIMELINE << KIND_SHIFT); }
void fd_forget(int fd) { set_entry(fd, 0); }

/* newfd became a copy of oldfd */
static void fd_copied(int oldfd, int newfd)
{
	struct xed_file *f = xf_get(oldfd);
	int kind = fd_kind(oldfd);
	if (f)
		fd_install(newfd, f);
	else if (kind == FD_DMABUF || kind == FD_TIMELINE)
		set_entry(newfd, (unsigned)kind << KIND_SHIFT);
	else
		fd_forget(newfd);
}

struct xed_file *xf_any(void)
{
	static struct xed_file *hidden;
	for (int i = 0; i < MAX_FILES; i++) {
		struct xed_file *f = &slots[i];
		int refs = atomic_load(&f->refs);
		while (atomic_load(&slot_used[i]) && refs > 0)
			if (atomic_compare_exchange_weak(&f->refs, &refs, refs + 1))
				return f;
	}
	/* none open: one of our own, kept for the life of the process (a forked child
	 * inherits it as it does the program's drm files: files_after_fork) */
	struct xed_file *f = NULL;
	int node = xed_config()->nodes & 1 << XED_NODE_PRIMARY ? XED_NODE_PRIMARY : XED_NODE_RENDER;
	int fd = xed_open_node(node, 1, &f);
	if (fd < 0) {
		errno = -fd;
		return NULL;
	}
	xed_private_fd(fd);
	struct xed_file *none = NULL;
	if (!__atomic_compare_exchange_n(&hidden, &none, f, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		xf_put(f); /* another thread made one first */
	xf_hold(hidden);
	return hidden;
}

void xf_for_each(void (*fn)(struct xed_file *, void *), void *arg)
{
	for (int i = 0; i < MAX_FILES; i++) {
		struct xed_file *f = &slots[i];
		int refs = atomic_load(&f->refs);
		while (atomic_load(&slot_used[i]) && refs > 0)
			if (atomic_compare_exchange_weak(&f->refs, &refs, refs + 1)) {
				fn(f, arg);
				xf_put(f);
				break;
			}
	}
}

int xed_private_fd(int fd)
{
	/* high, close-on-exec, out of the range a program's next open() would get */
	static int base;
	if (!base) {
		struct rlimit rl;
		int b = 512;
		if (!getrlimit(RLIMIT_NOFILE, &rl))
			b = rl.rlim_cur > 2048 ? 1024 : (int)rl.rlim_cur / 2;
		base = b > 3 ? b : 3;
	}
	int high = sys_fcntl(fd, F_DUPFD_CLOEXEC, (long)base);
	if (high < 0)
		return fd; /* no room up there: keep it where it is */
	sys_close(fd);
	return high;
}

/* --- the interposers ------------------------------------------------------------------ */
XED_EXPORT int close(int fd)
{
	int kind = fd_kind(fd);
	uint64_t timeline = kind == FD_TIMELINE ? sw_sync_ino(fd) : 0;
	if (kind != FD_NONE)
		fd_forget(fd); /* before the number can be handed out again */
	int r = sys_close(fd);
	if (timeline)
		sw_sync_closed(timeline); /* keeps errno */
	return r;
}

XED_EXPORT int dup(int fd)
{
	int nfd = sys_dup(fd);
	if (nfd >= 0 && (fd_kind(fd) != FD_NONE || fd_kind(nfd) != FD_NONE))
		fd_copied(fd, nfd);
	return nfd;
}

static int dup_to(int fd, int fd2, int flags)
{
	int r;
	if (fd == fd2 && !flags) { /* dup2(fd, fd) only checks fd */
		r = sys_fcntl(fd, F_GETFD, 0L);
		return r < 0 ? -1 : fd;
	}
	uint64_t timeline = fd_kind(fd2) == FD_TIMELINE ? sw_sync_ino(fd2) : 0;
	r = sys_dup3(fd, fd2, flags);
	if (r >= 0 && (fd_kind(fd) != FD_NONE || fd_kind(fd2) != FD_NONE))
		fd_copied(fd, fd2);
	if (r >= 0 && timeline)
		sw_sync_closed(timeline); /* fd2's timeline was closed by the dup */
	return r;
}

XED_EXPORT int dup2(int fd, int fd2) { return dup_to(fd, fd2, 0); }
XED_EXPORT int dup3(int fd, int fd2, int flags)
{
	if (fd == fd2) {
		errno = EINVAL;
		return -1;
	}
	return dup_to(fd, fd2, flags);
}

static int do_fcntl(int fd, int cmd, unsigned long arg)
{
	int r = sys_fcntl(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) &&
	    (fd_kind(fd) != FD_NONE || fd_kind(r) != FD_NONE))
		fd_copied(fd, r);
	return r;
}

XED_EXPORT int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	unsigned long arg = va_arg(ap, unsigned long);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

XED_EXPORT int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	unsigned long arg = va_arg(ap, unsigned long);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

/* fn(fd) for each descriptor in [lo, hi] the table knows */
static void each_known(unsigned lo, unsigned hi, void (*fn)(int, void *), void *arg)
{
	for (unsigned fd = lo; fd <= hi && fd < PAGE_FDS * FD_PAGES; fd++) {
		if (!atomic_load(&fd_pages[fd / PAGE_FDS])) {
			fd = (fd / PAGE_FDS + 1) * PAGE_FDS - 1; /* a page never used */
			continue;
		}
		if (fd_kind((int)fd) != FD_NONE)
			fn((int)fd, arg);
	}
}

/* the timelines close_range closes: the first CLOSE_BATCH are told to the daemon (the
 * others it releases by itself, a little later) */
#define CLOSE_BATCH 64
struct closing {
	uint64_t ino[CLOSE_BATCH];
	int n;
};

static void note_timeline(int fd, void *arg)
{
	struct closing *c = arg;
	if (fd_kind(fd) == FD_TIMELINE && c->n < CLOSE_BATCH)
		c->ino[c->n++] = sw_sync_ino(fd);
}

static void forget(int fd, void *arg)
{
	(void)arg;
	fd_forget(fd);
}

XED_EXPORT int close_range(unsigned lo, unsigned hi, int flags)
{
	struct closing timelines = {.n = 0};
	int closes = !(flags & CLOSE_RANGE_CLOEXEC);
	if (closes)
		each_known(lo, hi, note_timeline, &timelines);
	int r = sys_close_range(lo, hi, flags);
	if (r == 0 && closes) {
		each_known(lo, hi, forget, NULL);
		for (int i = 0; i < timelines.n; i++)
			if (timelines.ino[i])
				sw_sync_closed(timelines.ino[i]);
	}
	return r;
}

XED_EXPORT void closefrom(int lo) { close_range((unsigned)lo, ~0u, 0); }
