/*
 * fences.h - what the fence test programs (syncobj.c, timeline.c, eventfd.c, sync_file.c,
 * sw_sync.c) all make: syncobjs, sw_sync timelines and their fences, the clock their
 * deadlines count on, and a look at a descriptor's readiness. Every call is checked.
 */
#ifndef XED_TEST_FENCES_H
#define XED_TEST_FENCES_H

#include "check.h"

#include <poll.h>
#include <stdint.h>
#include <time.h>

#define SW_SYNC "/sys/kernel/debug/sync/sw_sync"

/* CLOCK_MONOTONIC in nanoseconds: the clock of every syncobj deadline */
static inline int64_t now_ns(void)
{
	struct timespec ts;
	CHECK_OK(clock_gettime(CLOCK_MONOTONIC, &ts));
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint32_t create(int fd, uint32_t flags)
{
	struct drm_syncobj_create c = {.flags = flags};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &c));
	CHECK(c.handle);
	return c.handle;
}

/* DESTROY's own answer (0, or -1 and errno) */
static inline int try_destroy(int fd, uint32_t handle)
{
	struct drm_syncobj_destroy d = {.handle = handle};
	return ioctl(fd, DRM_IOCTL_SYNCOBJ_DESTROY, &d);
}

static inline void destroy(int fd, uint32_t handle) { CHECK_OK(try_destroy(fd, handle)); }

/* a new sw_sync timeline, at 0 */
static inline int sw_sync_timeline(void)
{
	int fd = open(SW_SYNC, O_RDWR);
	CHECK(fd >= 0);
	return fd;
}

/* a sync file of point `value` of the timeline */
static inline int sw_sync_fence(int timeline, uint32_t value)
{
	struct sw_sync_create_fence_data d = {.value = value, .fence = -1};
	CHECK_OK(ioctl(timeline, SW_SYNC_IOC_CREATE_FENCE, &d));
	CHECK(d.fence >= 0);
	return d.fence;
}

static inline void sw_sync_inc(int timeline, uint32_t n)
{
	CHECK_OK(ioctl(timeline, SW_SYNC_IOC_INC, &n));
}

/* readable (POLLIN) within timeout_ms (0: now) */
static inline int readable_within(int fd, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int n = poll(&p, 1, timeout_ms);
	CHECK(n >= 0);
	return n == 1 && (p.revents & POLLIN);
}

#endif
