/*
 * own_handlers.c - the program's own SIGSEGV and SIGBUS handlers keep working under the
 * library, barrier page mapped and in use: a store to a read-only page reaches the
 * program's SIGSEGV handler (which siglongjmps out, as IGT's do); a store past the CPU-
 * visible part of VRAM (xe_mmap's small-bar) reaches its SIGBUS handler installed with
 * signal(); barrier stores between them are the library's and never reach the program.
 */
#include "check.h"

#include <setjmp.h>
#include <signal.h>

static sigjmp_buf jump;
static volatile int segvs, buses;

static void on_segv(int sig, siginfo_t *info, void *uc)
{
	(void)info, (void)uc;
	segvs++;
	siglongjmp(jump, sig);
}

static void on_bus(int sig)
{
	buses++;
	siglongjmp(jump, sig);
}

static void barrier_stores(int fd, int n)
{
	struct drm_xe_gem_mmap_offset mo = {.flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
	volatile uint32_t *p = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd, (off_t)mo.offset);
	CHECK(p != MAP_FAILED);
	for (int i = 0; i < n; i++)
		p[i] = 1;
	CHECK(p[0] == 0xdeadbeef);
	CHECK_OK(munmap((void *)p, 4096));
}

int main(void)
{
	int fd = open_card();
	struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};
	CHECK_OK(sigaction(SIGSEGV, &sa, NULL));
	barrier_stores(fd, 10);
	CHECK(segvs == 0);

	volatile uint32_t *ro = read_only_page();
	if (sigsetjmp(jump, 1) == 0) {
		ro[0] = 1;
		CHECK(!"the store to a read-only page went through");
	}
	CHECK(segvs == 1);
	barrier_stores(fd, 10); /* after a longjmp out of a handler: still the library's */
	CHECK(segvs == 1);

	/* the handler the program had stays its own as seen through sigaction */
	struct sigaction now;
	CHECK_OK(sigaction(SIGSEGV, NULL, &now));
	CHECK(now.sa_sigaction == on_segv && (now.sa_flags & SA_SIGINFO));

	/* small-bar: VRAM outside the CPU-visible part maps, but touching it is SIGBUS */
	static struct {
		struct drm_xe_query_mem_regions h;
		struct drm_xe_mem_region r[4];
	} mr;
	struct drm_xe_device_query q = {.query = DRM_XE_DEVICE_QUERY_MEM_REGIONS};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	q.data = (uintptr_t)&mr;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	uint64_t visible = mr.r[1].cpu_visible_size;
	CHECK(mr.r[1].mem_class == 1 && visible && visible < mr.r[1].total_size);
	struct drm_xe_gem_create c = {.size = visible + 4096, .placement = 2, .cpu_caching = 2};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &c));
	volatile uint32_t *map = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd,
				      (off_t)bo_offset(fd, c.handle));
	CHECK(map != MAP_FAILED);
	void (*old)(int) = signal(SIGBUS, on_bus);
	if (sigsetjmp(jump, 1) == 0) {
		map[0] = 0xdeadbeaf;
		CHECK(!"SIGBUS did not come");
	}
	signal(SIGBUS, old);
	CHECK(buses == 1 && segvs == 1);
	CHECK_OK(munmap((void *)map, 4096));
	CHECK_OK(gem_close(fd, c.handle));
	barrier_stores(fd, 5);
	CHECK(segvs == 1);
	CHECK_OK(close(fd));
	return 0;
}
