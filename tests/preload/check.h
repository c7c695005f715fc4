/*
 * check.h - the little the C test programs share: checks that name the failing line,
 * and the calls every program makes (open the device, create and map a BO).
 *
 * A program exits 0 when every check held; the first failed check prints its line and
 * the errno seen, and exits 1. tests/test_preload.py compiles each program and runs
 * it under `xec run` against a real daemon.
 */
#ifndef XED_TEST_CHECK_H
#define XED_TEST_CHECK_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uapi.h"

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "%s:%d: check failed: %s (errno %d: %s)\n",     \
				__FILE__, __LINE__, #cond, errno, strerror(errno));      \
			exit(1);                                                         \
		}                                                                        \
	} while (0)

/* `call` fails with -1 and exactly errno `err` */
#define CHECK_ERR(call, err)                                                             \
	do {                                                                             \
		errno = 0;                                                               \
		long r_ = (long)(call);                                                  \
		if (r_ != -1 || errno != (err)) {                                        \
			fprintf(stderr, "%s:%d: %s: expected errno %d (%s), got %ld/%d (%s)\n", \
				__FILE__, __LINE__, #call, err, strerror(err), r_, errno,  \
				strerror(errno));                                        \
			exit(1);                                                         \
		}                                                                        \
	} while (0)

#define CHECK_OK(call) CHECK((call) == 0)

static inline int open_card(void)
{
	int fd = open("/dev/dri/card0", O_RDWR);
	CHECK(fd >= 0);
	return fd;
}

static inline uint32_t bo_create(int fd, uint64_t size)
{
	struct drm_xe_gem_create c = {.size = size, .placement = 1,
				      .cpu_caching = DRM_XE_GEM_CPU_CACHING_WB};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &c));
	return c.handle;
}

static inline uint64_t bo_offset(int fd, uint32_t handle)
{
	struct drm_xe_gem_mmap_offset mo = {.handle = handle};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
	return mo.offset;
}

static inline void *bo_map(int fd, uint32_t handle, uint64_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)bo_offset(fd, handle));
	CHECK(p != MAP_FAILED);
	return p;
}

static inline int gem_close(int fd, uint32_t handle)
{
	struct drm_gem_close gc = {.handle = handle};
	return ioctl(fd, DRM_IOCTL_GEM_CLOSE, &gc);
}

/* an address nothing is mapped at, hidden from the compiler's own checks */
static inline void *bad_address(void)
{
	volatile uintptr_t p = 8;
	return (void *)p;
}

/* a page the program may read but not write */
static inline void *read_only_page(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	CHECK_OK(mprotect(p, 4096, PROT_READ));
	return p;
}

/* an address with nothing mapped */
static inline void *unmapped_page(void)
{
	void *p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	CHECK_OK(munmap(p, 4096));
	return p;
}

/* Open the first MMIO region DEVICE_QUERY lists, which must be the info block. */
static inline struct drm_xe_mmio_region_open info_region_open(int fd)
{
	static struct {
		struct drm_xe_query_mmio_regions h;
		struct drm_xe_mmio_region r[16];
	} regions;
	struct drm_xe_device_query q = {.query = DRM_XE_DEVICE_QUERY_MMIO_REGIONS};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q)); /* the size */
	q.data = (uintptr_t)&regions;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	CHECK(regions.h.num_regions >= 1 && !strcmp(regions.r[0].name, "info"));
	struct drm_xe_mmio_region_open op = {.bar_offset = regions.r[0].bar_offset,
					     .size = regions.r[0].size};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_MMIO_REGION_OPEN, &op));
	CHECK(op.offset && op.size == regions.r[0].size);
	return op;
}

#endif
