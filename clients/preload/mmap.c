/*
 * mmap.c - mmap(2) of a drm descriptor at a fake offset, and the table of such maps.
 *
 * The kernel's mmap handler checks the offset belongs to the file and the length and
 * flags suit the object; here the daemon makes those checks (MMAP) and answers with a
 * descriptor of the object's memory, which is mapped where, how long and how the
 * program asked. The PCI barrier page goes to the barrier module instead, which maps
 * it so that stores never stay, and its stores wake the daemon's page watcher through
 * the device's notice page (notice.c). The library remembers each mapping (address,
 * length, fake offset, file) because the daemon names user memory by fake offset: a
 * WAIT_USER_FENCE at a CPU address is translated through this table. munmap and every
 * mapping of anything else go to the kernel untouched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>

#include "barrier.h"
#include "preload.h"
#include "proto.h"
#include "sys.h"

#define MAX_MAPS 4096
#define PAGE 4096ul

struct map {
	uint64_t addr, len, offset;
	struct xed_file *file;
};
static struct map maps[MAX_MAPS];
static int nmaps;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

void maps_after_fork(void) { pthread_mutex_init(&lock, NULL); }

static void remember(struct xed_file *f, void *addr, uint64_t len, uint64_t offset)
{
	pthread_mutex_lock(&lock);
	if (nmaps < MAX_MAPS)
		maps[nmaps++] = (struct map){(uintptr_t)addr, len, offset, f};
	pthread_mutex_unlock(&lock);
}

/* [addr, addr+len) is unmapped: drop or trim what it covered */
static void forget(uint64_t addr, uint64_t len)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < nmaps; i++) {
		struct map *m = &maps[i];
		uint64_t lo = addr > m->addr ? addr : m->addr;
		uint64_t end = m->addr + m->len, hi = addr + len < end ? addr + len : end;
		if (lo >= hi)
			continue;
		if (lo == m->addr && hi == end) {
			*m = maps[--nmaps];
			i--;
		} else if (lo == m->addr) {
			m->offset += hi - m->addr;
			m->len = end - hi;
			m->addr = hi;
		} else {
			if (hi < end && nmaps < MAX_MAPS) /* a hole in the middle: keep the tail */
				maps[nmaps++] = (struct map){hi, end - hi, m->offset + (hi - m->addr),
							     m->file};
			m->len = lo - m->addr;
		}
	}
	pthread_mutex_unlock(&lock);
}

int user_address(struct xed_file *f, uint64_t addr, uint64_t *out)
{
	int found = 0;
	pthread_mutex_lock(&lock);
	for (int i = 0; i < nmaps && !found; i++)
		if (maps[i].file == f && addr - maps[i].addr < maps[i].len) {
			*out = maps[i].offset + (addr - maps[i].addr);
			found = 1;
		}
	pthread_mutex_unlock(&lock);
	return found;
}

static void *device_mmap(struct xed_file *f, void *addr, size_t len, int prot, int flags,
			 off_t off)
{
	int type = flags & MAP_TYPE;
	if (!len || off & (PAGE - 1) || type < MAP_SHARED || type > MAP_SHARED_VALIDATE) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	uint64_t plen = (len + PAGE - 1) & ~(PAGE - 1);
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
	int shared = (flags & ~MAP_TYPE) | MAP_SHARED;
	if ((uint64_t)off == XED_PCI_BARRIER_MMAP_OFFSET)
		p = xed_barrier_map(addr, len, prot, shared, memfd);
	else
		p = sys_mmap(addr, len, prot, shared, memfd, at);
	err = errno;
	sys_close(memfd);
	if (p == MAP_FAILED) {
		errno = err;
		return MAP_FAILED;
	}
	if ((uint64_t)off == XED_PCI_BARRIER_MMAP_OFFSET) /* its stores wake the page watcher */
		xed_barrier_waker(p, notice_asleep(f));
	remember(f, p, plen, (uint64_t)off);
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
	void *p = sys_mmap(addr, len, prot, flags, fd, off);
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

XED_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return do_mmap(addr, len, prot, flags, fd, off);
}

XED_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return do_mmap(addr, len, prot, flags, fd, off);
}

XED_EXPORT int munmap(void *addr, size_t len)
{
	xed_barrier_unmap(addr, len);
	int r = sys_munmap(addr, len);
	if (!r && nmaps)
		forget((uintptr_t)addr, (len + PAGE - 1) & ~(PAGE - 1));
	return r;
}
