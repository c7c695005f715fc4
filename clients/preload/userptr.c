/*
 * userptr.c - MAP_USERPTR of the program's own memory.
 *
 * xe pins nothing for a userptr: the binding follows whatever pages the program has at
 * those addresses, through MMU notifiers. The daemon reaches only memory it can map: a
 * connection's host memory, one memfd registered with it (HOST_MEMORY_REGISTER). So the
 * first time a range of ordinary memory is bound, the library moves it into a memfd of
 * its own, the process's arena: it copies the pages' contents there and maps the arena
 * over the same addresses with the same protection (MAP_FIXED). The program finds the
 * same bytes at the same addresses, and the device reaches them. The arena is registered
 * with each drm file at its first such bind; one arena serves the whole process, so a
 * range bound through two files is one set of pages, as it is in the kernel.
 *
 * What can be moved: anonymous memory (malloc's heap and mappings, MAP_ANONYMOUS, shared
 * or private) and the arena itself. Anything else (a file's pages, the stack, a device
 * mapping, an unmapped hole) stays where it is, and the daemon answers EFAULT, as it
 * does for an address outside host memory. /proc/self/maps says which is which; it is
 * read only when a bind names memory and when moved memory changes.
 *
 * The notifier: munmap, a MAP_FIXED mmap or mremap over moved memory (the ones this
 * library interposes) are reported to the daemon as the kernel's notifier would report
 * them (HOST_MEMORY_INVALIDATE START before, END after): freed where the pages go; and
 * where a MAP_FIXED mmap puts fresh anonymous memory in their place (IGT's userptr
 * invalidation tests do), the arena is mapped there again, zeroed, so that the binding
 * finds the program's new pages, as xe's repin does.
 *
 * A forked child gets private memory back as private: the parent's moved pages are
 * shared with the arena, so a private copy is taken as fork begins and the child puts it
 * in place before fork returns to it (memory first mapped shared stays shared).
 *
 * Departures (README, "Running unmodified C programs"): a store another thread makes
 * while its range is being moved may be lost; libc's own munmap and madvise (free() of
 * a large block, a heap trimmed) go past this library, so those pages are not reported
 * freed until arena.c finds no mapping reaches them, and MADV_DONTNEED no longer zeroes
 * moved memory; the arena holds at most ARENA_MAX bytes at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "preload.h"
#include "proto.h"
#include "signals.h"
#include "sys.h"

#define ARENA_MAX (4ull << 30)
#define ARENA_MIN (16ull << 20)
#define MAX_MOVED 512
#define MAX_SEGS 16

/* what was moved: the program's [at.addr, at.addr+at.len) is the arena's from at.off on */
struct moved {
	struct span at;
	int private_copy; /* private memory before: a forked child takes a private copy */
	void *shadow;	  /* that copy, made as fork begins (private: the child inherits it) */
};

static atomic_flag lock = ATOMIC_FLAG_INIT;
static struct moved moved[MAX_MOVED];
static _Atomic int nmoved;
static int arena = -1; /* the memfd, from the first bind on */
static uint64_t arena_size;
static dev_t arena_dev;
static ino_t arena_ino;
static __thread __attribute__((tls_model("initial-exec"))) uint64_t fork_mask;

/* The mappings covering [lo, hi) (procmaps.c), the arena's told apart: their number, or
 * -1 (a hole, too many pieces, unreadable) */
static int read_segs(uint64_t lo, uint64_t hi, struct seg *segs)
{
	int n = proc_maps(lo, hi, segs, MAX_SEGS);
	for (int i = 0; i < n; i++)
		if (arena >= 0 && segs[i].ino == arena_ino && segs[i].dev == arena_dev)
			segs[i].kind = SEG_ARENA;
	return n;
}

/* --- the arena and its registration ------------------------------------------------ */
static int make_arena(uint64_t size)
{
	int fd = (int)syscall(SYS_memfd_create, "xed-userptr", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (syscall(SYS_ftruncate, fd, (long)size) < 0 ||
	    sys_fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		int err = errno;
		sys_close(fd);
		return -err;
	}
	return xed_private_fd(fd);
}

static int register_arena(struct xed_file *f, int fd, uint64_t size, uint64_t *base)
{
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_HOST_MEMORY_REGISTER);
	if (err)
		return err;
	xc_u(&c, "size", size);
	err = xc_run(&c, fd);
	if (!err)
		*base = r_get_uint(&c.body, "offset");
	xc_end(&c);
	return err;
}

/* The arena, made at the first bind as large as the daemon takes (a device with less
 * memory than ARENA_MAX refuses a larger one: EINVAL; a daemon whose offset space is
 * nearly full, ENOSPC), registered with f. Under the lock. */
static int first_arena(struct xed_file *f, uint64_t *base)
{
	int err = EINVAL;
	for (uint64_t size = ARENA_MAX; size >= ARENA_MIN && (err == EINVAL || err == ENOSPC);
	     size /= 4) {
		int fd = make_arena(size);
		if (fd < 0) {
			err = -fd;
			break;
		}
		err = register_arena(f, fd, size, base);
		if (err) {
			sys_close(fd);
			continue;
		}
		struct stat st;
		if (syscall(SYS_fstat, fd, &st) < 0) {
			err = errno;
			sys_close(fd);
			break;
		}
		err = arena_table(size); /* arena.c */
		if (err) {
			sys_close(fd);
			break;
		}
		arena_dev = st.st_dev;
		arena_ino = st.st_ino;
		arena_size = size;
		arena = fd;
	}
	return err;
}

/* f's name for the arena's first byte (HOST_MEMORY_REGISTER's offset): 0 or errno. Under
 * the lock, which also keeps two threads from registering one file twice. */
static int file_base(struct xed_file *f, uint64_t *base)
{
	if (atomic_load(&f->host_base)) {
		*base = atomic_load(&f->host_base);
		return 0;
	}
	int err = arena < 0 ? first_arena(f, base) : register_arena(f, arena, arena_size, base);
	if (!err)
		atomic_store(&f->host_base, *base);
	return err;
}

/* --- the notifier ----------------------------------------------------------------------- */
struct note {
	int event;
	uint64_t slice, len;
};

static void notify_file(struct xed_file *f, void *arg)
{
	const struct note *n = arg;
	uint64_t base = atomic_load(&f->host_base);
	struct xcall c;
	if (!base || xc_begin(&c, f, XED_OP_HOST_MEMORY_INVALIDATE))
		return;
	xc_u(&c, "addr", base + n->slice);
	xc_u(&c, "length", n->len);
	xc_u(&c, "event", (unsigned)n->event);
	int err = xc_run(&c, -1);
	xc_end(&c);
	if (err)
		xed_log("HOST_MEMORY_INVALIDATE %d of %#llx+%#llx: errno %d", n->event,
			(unsigned long long)n->slice, (unsigned long long)n->len, err);
}

/* every drm file the arena is registered with hears of [slice, slice+len) */
static void notify(int event, uint64_t slice, uint64_t len)
{
	struct note n = {event, slice, len};
	xf_for_each(notify_file, &n);
}

/* --- the table of moved ranges (under the lock) ------------------------------------- */
static void table_forget(uint64_t addr, uint64_t len)
{
	for (int i = 0; i < nmoved; i++) {
		struct moved *m = &moved[i];
		struct span tail;
		if (!span_cut(&m->at, addr, len, &tail))
			continue;
		if (!m->at.len)
			m->at = tail, tail.len = 0;
		if (!m->at.len) {
			*m = moved[--nmoved];
			i--;
		} else if (tail.len && nmoved < MAX_MOVED) { /* a hole in the middle */
			moved[nmoved++] = (struct moved){tail, m->private_copy, NULL};
		}
	}
}

static void table_add(uint64_t addr, uint64_t len, uint64_t slice, int private_copy)
{
	table_forget(addr, len);
	if (nmoved < MAX_MOVED)
		moved[nmoved++] = (struct moved){{addr, len, slice}, private_copy, NULL};
	else
		xed_log("too many userptr ranges: %#llx is not watched", (unsigned long long)addr);
}

/* [*lo, *lo + *n): where [a, a+alen) and [b, b+blen) meet; 0: they do not */
static int clip(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen, uint64_t *lo, uint64_t *n)
{
	uint64_t start = a > b ? a : b, end = a + alen < b + blen ? a + alen : b + blen;
	if (start >= end)
		return 0;
	*lo = start;
	*n = end - start;
	return 1;
}

/* The part of m inside [addr, addr+len), with its place in the arena in ->off; 0: none */
static int overlap(const struct moved *m, uint64_t addr, uint64_t len, struct span *part)
{
	uint64_t lo, n;
	if (!clip(m->at.addr, m->at.len, addr, len, &lo, &n))
		return 0;
	*part = (struct span){lo, n, m->at.off + (lo - m->at.addr)};
	return 1;
}

/* The part of m whose arena place lies in [off, off+len), as overlap() gives it; 0: none */
static int arena_overlap(const struct moved *m, uint64_t off, uint64_t len, struct span *part)
{
	uint64_t lo, n;
	if (!clip(m->at.off, m->at.len, off, len, &lo, &n))
		return 0;
	*part = (struct span){m->at.addr + (lo - m->at.off), n, lo};
	return 1;
}

/* Whether the table covers [addr, addr+len) whole; *private_copy: any part was private */
static int table_covers(uint64_t addr, uint64_t len, int *private_copy)
{
	uint64_t at = addr;
	*private_copy = 0;
	for (int pass = 0; pass < nmoved && at < addr + len; pass++)
		for (int i = 0; i < nmoved; i++)
			if (at - moved[i].at.addr < moved[i].at.len) {
				*private_copy |= moved[i].private_copy;
				at = moved[i].at.addr + moved[i].at.len;
			}
	return at >= addr + len;
}

/* Report each moved range overlapping [addr, addr+len) with `event`. */
static void notify_overlaps(uint64_t addr, uint64_t len, int event)
{
	struct span part;
	for (int i = 0; i < nmoved; i++)
		if (overlap(&moved[i], addr, len, &part))
			notify(event, part.off, part.len);
}

/* pwrite or pread (`nr`) of len bytes at the arena's off whole, in the pieces the kernel
 * moves at once (at most 2 GiB less a page): 0, or -1 where memory faulted */
static int arena_io(long nr, void *buf, uint64_t len, uint64_t off)
{
	for (uint64_t done = 0; done < len;) {
		long got = syscall(nr, arena, (char *)buf + done, len - done, (long)(off + done));
		if (got <= 0)
			return -1;
		done += (uint64_t)got;
	}
	return 0;
}

/* --- giving slices back ------------------------------------------------------------------ */
/* arena.c found [off, off+len) reached by no mapping of ours: what the table still says
 * is there went past this library (libc's own munmap), and is reported freed now */
static void freed_unseen(uint64_t off, uint64_t len, void *arg)
{
	(void)arg;
	for (int found = 1; found;) {
		struct span part = {0, 0, 0};
		found = 0;
		for (int i = 0; i < nmoved && !found; i++)
			found = arena_overlap(&moved[i], off, len, &part);
		if (found) {
			notify(XED_HOST_INVALIDATE_START, part.off, part.len);
			notify(XED_HOST_INVALIDATE_END_FREED, part.off, part.len);
			table_forget(part.addr, part.len);
		}
	}
}

static int collect(void) { return arena_collect(arena, arena_dev, arena_ino, freed_unseen, NULL); }

/* --- moving memory in ------------------------------------------------------------------ */
/* A slice of `len` bytes with addr's alignment to 64 KiB: 0, or ENOMEM if full even once
 * what nothing maps any more is given back. One with pages taken before (*reused) is
 * reported about to change, until move_in has put the new contents there. */
static int take_slice(uint64_t addr, uint64_t len, uint64_t *slice, int *reused)
{
	int err = arena_take(addr, len, slice, reused);
	if (err == ENOMEM && collect())
		err = arena_take(addr, len, slice, reused);
	if (!err && *reused) /* its pages may have been reported freed: they are new ones */
		notify(XED_HOST_INVALIDATE_START, *slice, len);
	return err;
}

/* [addr, addr+len) into a new slice: 0 and *slice, or errno (the range left as it was,
 * or with the same contents). Under the lock. */
static int move_in(const struct seg *segs, int n, uint64_t addr, uint64_t len, uint64_t *slice)
{
	int private_copy = 0;
	for (int i = 0; i < n; i++) {
		if (segs[i].kind == SEG_OTHER || !(segs[i].prot & PROT_READ))
			return EFAULT; /* memory the kernel would pin, but not ours to move */
		private_copy |= segs[i].kind == SEG_ANON && !segs[i].shared;
	}
	int reused = 0, err = take_slice(addr, len, slice, &reused);
	if (err)
		return err;
	if (arena_io(SYS_pwrite64, (void *)(uintptr_t)addr, len, *slice))
		err = EFAULT; /* a page went meanwhile, or cannot be read */
	if (reused) /* the device may reach them again: as after xe's repin */
		notify(XED_HOST_INVALIDATE_END_REPLACED, *slice, len);
	if (err)
		return err; /* the slice is given back when next collected: nothing maps it */
	for (int i = 0; i < n; i++) /* arena pages bound elsewhere in it: moved again */
		if (segs[i].kind == SEG_ARENA)
			notify(XED_HOST_INVALIDATE_START, segs[i].off, segs[i].hi - segs[i].lo);
	for (int i = 0; i < n && !err; i++) {
		const struct seg *s = &segs[i];
		off_t at = (off_t)(*slice + (s->lo - addr));
		if (sys_mmap((void *)(uintptr_t)s->lo, s->hi - s->lo, s->prot, MAP_SHARED | MAP_FIXED,
			     arena, at) == MAP_FAILED)
			err = errno ? errno : ENOMEM; /* what is moved already reads the same */
	}
	for (int i = 0; i < n; i++)
		if (segs[i].kind == SEG_ARENA) {
			int dummy;
			if (table_covers(segs[i].lo, segs[i].hi - segs[i].lo, &dummy))
				private_copy |= dummy;
			notify(XED_HOST_INVALIDATE_END_FREED, segs[i].off, segs[i].hi - segs[i].lo);
		}
	if (!err)
		table_add(addr, len, *slice, private_copy);
	return err;
}

static int is_userptr(const struct drm_xe_vm_bind_op *o)
{
	return o->op == DRM_XE_VM_BIND_OP_MAP_USERPTR && !o->obj; /* with obj: EINVAL */
}

void userptr_register(struct xed_file *f, const struct drm_xe_vm_bind_op *o)
{
	if (!is_userptr(o))
		return;
	uint64_t base, old = xed_lock(&lock);
	file_base(f, &base); /* what fails here fails again, and is told, at the bind */
	xed_unlock(&lock, old);
}

uint64_t userptr_obj_offset(struct xed_file *f, const struct drm_xe_vm_bind_op *o)
{
	uint64_t addr = o->obj_offset, len = o->range;
	if (!is_userptr(o) || !len || (addr | len) & (PAGE - 1) || addr + len < addr)
		return addr; /* no userptr, or one the daemon refuses in the kernel's order */
	struct seg segs[MAX_SEGS];
	uint64_t old = xed_lock(&lock), base = 0, slice = 0;
	int err = file_base(f, &base);
	int n = err ? -1 : read_segs(addr, addr + len, segs);
	int ours = n > 0, contiguous = 1;
	for (int i = 0; i < n; i++) {
		ours &= segs[i].kind == SEG_ARENA;
		contiguous &= segs[i].off == segs[0].off + (segs[i].lo - addr);
	}
	if (ours && contiguous) {
		slice = segs[0].off;
		int private_copy;
		if (!table_covers(addr, len, &private_copy)) {
			/* moved by mremap, or inherited: its pages are the program's again */
			notify(XED_HOST_INVALIDATE_START, slice, len);
			notify(XED_HOST_INVALIDATE_END_REPLACED, slice, len);
			table_add(addr, len, slice, private_copy);
		}
	} else if (n > 0) {
		err = move_in(segs, n, addr, len, &slice);
	} else if (!err) {
		err = EFAULT;
	}
	xed_unlock(&lock, old);
	if (err) {
		xed_log("MAP_USERPTR of %#llx+%#llx: memory the daemon cannot reach (errno %d)",
			(unsigned long long)addr, (unsigned long long)len, err);
		return addr; /* outside host memory: the daemon answers EFAULT */
	}
	return base + slice;
}

/* --- the program changing moved memory ------------------------------------------------ */
int userptr_begin(uint64_t addr, uint64_t len, uint64_t *mask)
{
	if (!atomic_load(&nmoved))
		return 0;
	*mask = xed_lock(&lock);
	len = ROUND(len);
	struct span part;
	int touched = 0;
	for (int i = 0; i < nmoved && !touched; i++)
		touched = overlap(&moved[i], addr, len, &part);
	if (!touched) {
		xed_unlock(&lock, *mask);
		return 0;
	}
	notify_overlaps(addr, len, XED_HOST_INVALIDATE_START);
	return 1;
}

void userptr_end(uint64_t addr, uint64_t len, int changed, uint64_t mask)
{
	len = ROUND(len);
	notify_overlaps(addr, len,
			changed ? XED_HOST_INVALIDATE_END_FREED : XED_HOST_INVALIDATE_END_REPLACED);
	if (changed) {
		table_forget(addr, len);
		collect(); /* its slice, unless mapped elsewhere now (mremap) */
	}
	xed_unlock(&lock, mask);
}

void *userptr_fresh(void *where, size_t size, int prot, int flags)
{
	uint64_t addr = (uintptr_t)where, len = ROUND(size), mask;
	if (!atomic_load(&nmoved) || addr & (PAGE - 1) || !len)
		return NULL;
	mask = xed_lock(&lock);
	struct span part;
	int touched = 0;
	for (int i = 0; i < nmoved && !touched; i++)
		touched = overlap(&moved[i], addr, len, &part);
	if (!touched) {
		xed_unlock(&lock, mask);
		return NULL;
	}
	notify_overlaps(addr, len, XED_HOST_INVALIDATE_START);
	/* the fresh memory asked for, then under what was moved the arena again, its pages
	 * gone first so that they read zeros */
	void *p = sys_mmap(where, size, prot, flags, -1, 0);
	int err = p == MAP_FAILED ? errno : 0, fresh = !err;
	for (int i = 0; i < nmoved && !err; i++) {
		if (!overlap(&moved[i], addr, len, &part))
			continue;
		if (syscall(SYS_fallocate, arena, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			    (long)part.off, (long)part.len) < 0 ||
		    sys_mmap((void *)(uintptr_t)part.addr, part.len, prot,
			     (flags & ~(MAP_TYPE | MAP_ANONYMOUS)) | MAP_SHARED | MAP_FIXED, arena,
			     (off_t)part.off) == MAP_FAILED)
			err = errno;
		else if ((flags & MAP_TYPE) == MAP_PRIVATE)
			moved[i].private_copy = 1;
	}
	/* a piece not put back is fresh memory the device cannot reach: freed, for it */
	notify_overlaps(addr, len,
			err && fresh ? XED_HOST_INVALIDATE_END_FREED : XED_HOST_INVALIDATE_END_REPLACED);
	if (err && fresh)
		table_forget(addr, len);
	xed_unlock(&lock, mask);
	if (!fresh)
		errno = err;
	return fresh ? where : MAP_FAILED;
}

/* --- fork ------------------------------------------------------------------------------ */
/* Whether a forked child may map arena [off, off+len) shared: memory mapped shared (or
 * that the table does not know: moved by mremap) */
static int maybe_shared(uint64_t off, uint64_t len, void *arg)
{
	(void)arg;
	struct span part;
	int known = 0;
	for (int i = 0; i < nmoved; i++)
		if (arena_overlap(&moved[i], off, len, &part)) {
			if (!moved[i].private_copy)
				return 1;
			known = 1;
		}
	return !known;
}

/* As fork begins: a private copy of what was private memory, which the child inherits as
 * it is now (the parent may write the arena's pages the moment fork returns to it, while
 * the child is still putting its copies in place). Read from the arena, not the program's
 * mapping, which may not be readable (PROT_NONE since). */
void userptr_before_fork(void)
{
	fork_mask = xed_lock(&lock);
	arena_pin(maybe_shared, NULL); /* a child's mapping would outlive our munmap */
	for (int i = 0; i < nmoved; i++) {
		struct moved *m = &moved[i];
		m->shadow = NULL;
		if (!m->private_copy)
			continue;
		void *copy = sys_mmap(NULL, m->at.len, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (copy == MAP_FAILED)
			continue;
		if (arena_io(SYS_pread64, copy, m->at.len, m->at.off))
			sys_munmap(copy, m->at.len);
		else
			m->shadow = copy;
	}
}

static void drop_shadows(void)
{
	for (int i = 0; i < nmoved; i++)
		if (moved[i].shadow) {
			sys_munmap(moved[i].shadow, moved[i].at.len); /* what was not moved away */
			moved[i].shadow = NULL;
		}
}

void userptr_after_fork_parent(void)
{
	drop_shadows();
	xed_unlock(&lock, fork_mask);
}

/* In the child: what was private memory is private again, the copy made as fork began
 * put in place of each piece still mapped from the arena (one mremap each, with that
 * piece's protection); its binds are the parent's, not the child's. */
void userptr_after_fork(void)
{
	int saved = errno;
	struct seg segs[MAX_SEGS];
	for (int i = 0; i < nmoved; i++) {
		const struct moved *m = &moved[i];
		if (!m->shadow)
			continue;
		int n = read_segs(m->at.addr, m->at.addr + m->at.len, segs);
		for (int k = 0; k < n; k++) {
			const struct seg *s = &segs[k];
			char *piece = (char *)m->shadow + (s->lo - m->at.addr);
			uint64_t len = s->hi - s->lo;
			if (s->kind != SEG_ARENA)
				continue;
			if (syscall(SYS_mprotect, piece, len, (long)s->prot) < 0 ||
			    syscall(SYS_mremap, piece, len, len, (long)(MREMAP_MAYMOVE | MREMAP_FIXED),
				    (void *)(uintptr_t)s->lo) == (long)MAP_FAILED)
				xed_log("fork: %#llx stays shared with the parent",
					(unsigned long long)s->lo);
		}
	}
	drop_shadows();
	nmoved = 0;
	xed_unlock(&lock, fork_mask);
	errno = saved;
}
