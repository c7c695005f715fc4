/*
 * timeline.c - DRM core's timeline syncobj ioctls (TIMELINE_SIGNAL, QUERY,
 * TIMELINE_WAIT, TRANSFER) with the errno drm_syncobj.c gives, in its order of checks
 * (EFAULT of each user pointer where the kernel copies it); points of a sw_sync fence
 * imported and exported with HANDLE_TO_FD / FD_TO_HANDLE's TIMELINE; a wait asleep in
 * one thread until another signals its point; and points signalled and waited on by
 * VM_BIND and EXEC (syncs of type TIMELINE_SYNCOBJ).
 */
#include "fences.h"

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#define FOR_SUBMIT DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
#define AVAILABLE DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
#define WAIT_ALL DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
#define LAST_SUBMITTED DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED
#define UNTOUCHED 0x5a5a5a5au

/* TIMELINE_WAIT on handles[n] at points (NULL: 0 for each); its first_signaled in
 * *first, which must be left as it was on failure */
static int twait(int fd, const void *handles, const void *points, uint32_t n, int64_t timeout,
		 uint32_t flags, uint32_t *first)
{
	struct drm_syncobj_timeline_wait w = {.handles = (uintptr_t)handles,
					      .points = (uintptr_t)points, .count_handles = n,
					      .timeout_nsec = timeout, .flags = flags,
					      .first_signaled = UNTOUCHED};
	int r = ioctl(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, &w);
	if (r == 0)
		*first = w.first_signaled;
	else
		CHECK(w.first_signaled == UNTOUCHED);
	return r;
}

static int twait1(int fd, uint32_t handle, uint64_t point, int64_t timeout, uint32_t flags)
{
	uint32_t first = 99;
	int r = twait(fd, &handle, &point, 1, timeout, flags, &first);
	if (r == 0)
		CHECK(first == 0);
	return r;
}

static int tarray(int fd, unsigned long cmd, const void *handles, void *points, uint32_t n,
		  uint32_t flags)
{
	struct drm_syncobj_timeline_array a = {.handles = (uintptr_t)handles,
					       .points = (uintptr_t)points, .count_handles = n,
					       .flags = flags};
	return ioctl(fd, cmd, &a);
}

static int signal1(int fd, uint32_t handle, uint64_t point)
{
	return tarray(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, &handle, &point, 1, 0);
}

static uint64_t query1(int fd, uint32_t handle, uint32_t flags)
{
	uint64_t point = ~0ull;
	CHECK_OK(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, &handle, &point, 1, flags));
	return point;
}

static int transfer(int fd, uint32_t src, uint64_t src_point, uint32_t dst, uint64_t dst_point,
		    uint32_t flags)
{
	struct drm_syncobj_transfer t = {.src_handle = src, .dst_handle = dst,
					 .src_point = src_point, .dst_point = dst_point,
					 .flags = flags};
	return ioctl(fd, DRM_IOCTL_SYNCOBJ_TRANSFER, &t);
}

static int binary_wait(int fd, uint32_t handle, uint32_t flags)
{
	struct drm_syncobj_wait w = {.handles = (uintptr_t)&handle, .count_handles = 1,
				     .flags = flags};
	return ioctl(fd, DRM_IOCTL_SYNCOBJ_WAIT, &w);
}

/* a page kept mapped with no access: unlike an unmapped one, no later mmap lands there */
static void *no_access_page(void)
{
	void *p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	return p;
}

/* n elements of `size` bytes that end where a page nothing maps begins: all but the
 * last one readable and writable */
static void *at_page_end(size_t size, uint32_t n)
{
	char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	CHECK_OK(munmap(p + 4096, 4096));
	return p + 4096 - (n - 1) * size;
}

static uint32_t *handles_at_page_end(uint32_t handle, uint32_t n)
{
	uint32_t *h = at_page_end(sizeof *h, n);
	for (uint32_t i = 0; i + 1 < n; i++)
		h[i] = handle;
	return h;
}

static uint64_t *points_at_page_end(uint64_t point, uint32_t n)
{
	uint64_t *p = at_page_end(sizeof *p, n);
	for (uint32_t i = 0; i + 1 < n; i++)
		p[i] = point;
	return p;
}

/* points 1 and 3 signalled: QUERY, waits for points there, between, and not yet there */
static void signal_query_wait(int fd)
{
	uint32_t tl = create(fd, 0), first;
	CHECK(query1(fd, tl, 0) == 0); /* empty */
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 0);
	CHECK_OK(signal1(fd, tl, 1));
	CHECK_OK(signal1(fd, tl, 3));
	CHECK(query1(fd, tl, 0) == 3);
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 3);
	CHECK_OK(twait1(fd, tl, 2, 0, 0)); /* 2 is reached through 3 */
	CHECK_OK(twait1(fd, tl, 3, INT64_MAX, WAIT_ALL));
	CHECK_OK(twait1(fd, tl, 0, 0, 0)); /* point 0: the latest */
	CHECK_OK(binary_wait(fd, tl, 0));
	CHECK_ERR(twait1(fd, tl, 4, 0, 0), EINVAL); /* not submitted */
	CHECK_ERR(twait1(fd, tl, 4, INT64_MAX, 0), EINVAL);
	CHECK_ERR(twait1(fd, tl, 4, 0, FOR_SUBMIT), ETIME);
	int64_t deadline = now_ns() + 50000000;
	CHECK_ERR(twait1(fd, tl, 4, deadline, FOR_SUBMIT), ETIME);
	CHECK(now_ns() >= deadline); /* never answered before it */
	deadline = now_ns() + 20000000;
	CHECK_ERR(twait1(fd, tl, 4, deadline, AVAILABLE), ETIME);
	CHECK(now_ns() >= deadline);
	CHECK_ERR(twait1(fd, tl, 4, deadline, FOR_SUBMIT | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE),
		  ETIME);

	/* several: WAIT_ALL needs every one; else first_signaled is the first signalled */
	uint32_t other = create(fd, 0);
	uint32_t both[2] = {other, tl};
	uint64_t at[2] = {2, 3};
	CHECK_ERR(twait(fd, both, at, 2, 0, 0, &first), EINVAL);
	CHECK_ERR(twait(fd, both, at, 2, 0, WAIT_ALL | FOR_SUBMIT, &first), ETIME);
	CHECK_OK(twait(fd, both, at, 2, 0, FOR_SUBMIT, &first));
	CHECK(first == 1);
	CHECK_OK(signal1(fd, other, 2));
	CHECK_OK(twait(fd, both, at, 2, 0, WAIT_ALL, &first));
	CHECK(first == 0);
	CHECK_OK(twait(fd, both, NULL, 2, 0, WAIT_ALL, &first)); /* NULL points: 0 for each */
	CHECK(first == 0);
	/* one call, several syncobjs (one twice), each its point */
	uint32_t three[3] = {tl, other, tl};
	uint64_t points[3] = {5, 4, 6}, got[3];
	CHECK_OK(tarray(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, three, points, 3, 0));
	CHECK_OK(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, three, got, 3, 0));
	CHECK(got[0] == 6 && got[1] == 4 && got[2] == 6);

	/* TIMELINE_SIGNAL at point 0 (NULL points): a signalled fence, no point (QUERY 0) */
	uint32_t bin = create(fd, 0);
	CHECK_OK(tarray(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, &bin, NULL, 1, 0));
	CHECK_OK(binary_wait(fd, bin, 0));
	CHECK(query1(fd, bin, 0) == 0 && query1(fd, bin, LAST_SUBMITTED) == 0);

	/* the 40 bytes before deadline_nsec (older programs): the rest zero-filled */
	uint64_t three_at = 3;
	struct drm_syncobj_timeline_wait old = {.handles = (uintptr_t)&tl,
						.points = (uintptr_t)&three_at, .count_handles = 1,
						.first_signaled = UNTOUCHED};
	CHECK_OK(ioctl(fd, DRM_IOWR(0xca, struct drm_syncobj_wait), &old));
	CHECK(old.first_signaled == 0);
	destroy(fd, tl);
	destroy(fd, other);
	destroy(fd, bin);
}

/* a point submitted, not signalled (a sw_sync fence imported at it): WAIT_AVAILABLE
 * takes it, a wait for it does not; exported as a sync file of that point */
static void available(int fd)
{
	int timeline = sw_sync_timeline();
	int fence = sw_sync_fence(timeline, 1);
	uint32_t tl = create(fd, 0);
	CHECK_OK(signal1(fd, tl, 1));
	struct drm_syncobj_handle imp = {.handle = tl, .fd = fence, .point = 4,
					 .flags = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE |
						  DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &imp));
	CHECK(query1(fd, tl, 0) == 1);
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 4);
	CHECK_OK(twait1(fd, tl, 4, 0, AVAILABLE));
	CHECK_OK(twait1(fd, tl, 3, 0, AVAILABLE));
	CHECK_ERR(twait1(fd, tl, 4, 0, 0), ETIME);
	CHECK_ERR(twait1(fd, tl, 2, now_ns() + 10000000, FOR_SUBMIT), ETIME);
	CHECK_OK(twait1(fd, tl, 1, 0, 0));
	/* the sync file of point 4 (and of 3, reached through it); of 5, none: EINVAL */
	struct drm_syncobj_handle exp = {.handle = tl, .fd = -1, .point = 4,
					 .flags = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE |
						  DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &exp));
	CHECK(exp.fd >= 0 && !readable_within(exp.fd, 0));
	exp.point = 5;
	int exported = exp.fd;
	exp.fd = -1;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &exp), EINVAL);
	sw_sync_inc(timeline, 1);
	CHECK_OK(twait1(fd, tl, 4, 0, 0));
	CHECK(query1(fd, tl, 0) == 4);
	CHECK(readable_within(exported, 0));
	CHECK_OK(close(exported));
	CHECK_OK(close(fence));
	CHECK_OK(close(timeline));
	destroy(fd, tl);
}

/* a point of a binary syncobj's fence and back; the checks in the kernel's order */
static void transfers(int fd)
{
	uint32_t bin = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED), tl = create(fd, 0);
	uint32_t back = create(fd, 0);
	CHECK_OK(transfer(fd, bin, 0, tl, 7, 0));
	CHECK(query1(fd, tl, 0) == 7 && query1(fd, tl, LAST_SUBMITTED) == 7);
	CHECK_OK(twait1(fd, tl, 7, 0, 0));
	CHECK_ERR(binary_wait(fd, back, 0), EINVAL);
	CHECK_OK(transfer(fd, tl, 7, back, 0, 0));
	CHECK_OK(binary_wait(fd, back, 0));
	CHECK_OK(transfer(fd, tl, 5, back, 0, 0)); /* reached through 7 */
	CHECK_OK(transfer(fd, tl, 0, tl, 9, 0));   /* its latest as a later point */
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 9);

	struct drm_syncobj_transfer padded = {.src_handle = 0xdead, .dst_handle = 0xdead,
					      .flags = ~0u, .pad = 1};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_TRANSFER, &padded), EINVAL); /* pad first */
	CHECK_ERR(transfer(fd, 0xdead, 0, 0xdead, 0, ~0u), ENOENT);	    /* dst next */
	CHECK_ERR(transfer(fd, 0xdead, 0, tl, 0, 1u << 3), EINVAL);	    /* flags */
	CHECK_ERR(transfer(fd, 0xdead, 0, tl, 10, 0), ENOENT);		    /* then src */
	CHECK_ERR(transfer(fd, tl, 10, back, 0, 0), EINVAL); /* not submitted */
	uint32_t empty = create(fd, 0);
	CHECK_ERR(transfer(fd, empty, 0, tl, 10, 0), EINVAL);
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 9); /* none of them changed it */
	destroy(fd, bin);
	destroy(fd, tl);
	destroy(fd, back);
	destroy(fd, empty);
}

struct waiter {
	int fd;
	uint32_t handle;
	uint64_t point;
	uint32_t flags;
	int transfer_to; /* 0: TIMELINE_WAIT; else TRANSFER the point to this syncobj */
	_Atomic int result; /* -1 while it waits */
};

static void *waiting(void *arg)
{
	struct waiter *w = arg;
	uint32_t dst = (uint32_t)w->transfer_to;
	int r = dst ? transfer(w->fd, w->handle, w->point, dst, 0, w->flags)
		    : twait1(w->fd, w->handle, w->point, INT64_MAX, w->flags);
	w->result = r ? errno : 0;
	return NULL;
}

/* a wait (or a TRANSFER) asleep in one thread for a point another thread signals */
static void woken(int fd)
{
	uint32_t tl = create(fd, 0), dst = create(fd, 0);
	CHECK_OK(signal1(fd, tl, 1));
	static const uint32_t modes[3] = {FOR_SUBMIT, AVAILABLE, FOR_SUBMIT};
	for (int i = 0; i < 3; i++) {
		uint64_t point = 10 * (uint64_t)(i + 1);
		struct waiter w = {.fd = fd, .handle = tl, .point = point, .flags = modes[i],
				   .transfer_to = i == 2 ? (int)dst : 0, .result = -1};
		pthread_t t;
		CHECK_OK(pthread_create(&t, NULL, waiting, &w));
		usleep(20000);
		CHECK_OK(signal1(fd, tl, point - 1)); /* before it: not the one waited for */
		usleep(20000);
		CHECK(w.result == -1);
		CHECK_OK(signal1(fd, tl, point));
		CHECK_OK(pthread_join(t, NULL));
		CHECK(w.result == 0);
	}
	CHECK_OK(binary_wait(fd, dst, 0)); /* the TRANSFER's point 30 */
	destroy(fd, tl);
	destroy(fd, dst);
}

/* errno for errno in drm_syncobj.c's order: flags, count, handles (EFAULT), handles
 * (ENOENT), then the points (EFAULT), read or written */
static void errnos(int fd, int other)
{
	uint32_t tl = create(fd, 0), first = UNTOUCHED;
	CHECK_OK(signal1(fd, tl, 2));
	void *gone = no_access_page(), *ro = read_only_page();
	uint64_t two = 2, out = 0;
	uint32_t unknown[2] = {tl, 0xdead};
	uint64_t pts[2] = {2, 2};

	/* TIMELINE_WAIT */
	CHECK_ERR(twait(fd, gone, gone, 1, 0, 1u << 4, &first), EINVAL);
	CHECK(twait(fd, gone, gone, 0, 0, 0, &first) == 0); /* nothing to wait for */
	CHECK(first == UNTOUCHED);			      /* left as it was */
	CHECK(twait(fd, &tl, &two, 0, 0, FOR_SUBMIT, &first) == 0);
	CHECK(first == UNTOUCHED);
	CHECK_ERR(twait(fd, gone, &two, 1, 0, 0, &first), EFAULT);
	CHECK_ERR(twait(fd, NULL, &two, 1, 0, 0, &first), EFAULT);
	CHECK_ERR(twait(fd, bad_address(), gone, 1, 0, 0, &first), EFAULT);
	CHECK_ERR(twait(fd, handles_at_page_end(tl, 2), pts, 2, 0, 0, &first), EFAULT);
	CHECK_ERR(twait(fd, unknown, gone, 2, 0, 0, &first), ENOENT); /* before the points */
	CHECK_ERR(twait(fd, unknown, pts, 2, 0, 0, &first), ENOENT);
	CHECK_ERR(twait(other, &tl, &two, 1, 0, 0, &first), ENOENT); /* another file's */
	CHECK_ERR(twait(fd, &tl, gone, 1, 0, 0, &first), EFAULT);
	CHECK_ERR(twait(fd, &tl, bad_address(), 1, INT64_MAX, FOR_SUBMIT, &first), EFAULT);
	CHECK_ERR(twait(fd, unknown, points_at_page_end(2, 2), 2, 0, 0, &first), ENOENT);
	uint32_t tl2[2] = {tl, tl};
	CHECK_ERR(twait(fd, tl2, points_at_page_end(2, 2), 2, 0, 0, &first), EFAULT);
	CHECK_OK(twait(fd, tl2, points_at_page_end(2, 3), 2, 0, WAIT_ALL, &first));
	CHECK_OK(twait(fd, &tl, ro, 1, 0, 0, &first)); /* read only: point 0 there */

	/* QUERY: the points are written, one at a time, once the handles are found */
	static const unsigned long cmds[2] = {DRM_IOCTL_SYNCOBJ_QUERY,
					      DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL};
	for (int i = 0; i < 2; i++) {
		unsigned long cmd = cmds[i];
		CHECK_ERR(tarray(fd, cmd, gone, gone, 1, 1u << 1), EINVAL);
		CHECK_ERR(tarray(fd, cmd, gone, gone, 0, 0), EINVAL);
		CHECK_ERR(tarray(fd, cmd, &tl, &out, 0, 0), EINVAL);
		CHECK_ERR(tarray(fd, cmd, gone, &out, 1, 0), EFAULT);
		CHECK_ERR(tarray(fd, cmd, NULL, &out, 1, 0), EFAULT);
		CHECK_ERR(tarray(fd, cmd, handles_at_page_end(tl, 3), pts, 3, 0), EFAULT);
		CHECK_ERR(tarray(fd, cmd, unknown, gone, 2, 0), ENOENT);
		CHECK_ERR(tarray(other, cmd, &tl, &out, 1, 0), ENOENT);
		CHECK_ERR(tarray(fd, cmd, &tl, gone, 1, 0), EFAULT);
		CHECK_ERR(tarray(fd, cmd, tl2, points_at_page_end(3, 2), 2, 0), EFAULT);
	}
	CHECK_ERR(tarray(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, &tl, &out, 1, LAST_SUBMITTED),
		  EINVAL); /* TIMELINE_SIGNAL takes no flags at all */
	CHECK_ERR(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, &tl, NULL, 1, 0), EFAULT);
	CHECK_ERR(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, &tl, ro, 1, 0), EFAULT);
	uint64_t *edge = points_at_page_end(99, 2);
	CHECK_ERR(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, tl2, edge, 2, 0), EFAULT);
	CHECK(edge[0] == 2); /* the one before the fault was written */
	/* none of the failed TIMELINE_SIGNALs added a point */
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 2);
	CHECK_OK(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, &tl, &out, 1, LAST_SUBMITTED));
	CHECK(out == 2);
	CHECK_ERR(tarray(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, unknown, pts, 2, 0), ENOENT);
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 2);

	/* as many handles as a request carries; one more cannot be sent (ENOMEM), nor so
	 * many with points that do not fit one with them */
	static uint32_t many[4097];
	static uint64_t points[4097];
	for (size_t i = 0; i < 4097; i++)
		many[i] = tl, points[i] = 2;
	CHECK_OK(twait(fd, many, points, 4096, 0, WAIT_ALL, &first));
	CHECK_OK(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, many, points, 4096, 0));
	CHECK(points[0] == 2 && points[4095] == 2);
	CHECK_ERR(twait(fd, many, points, 4097, 0, WAIT_ALL, &first), ENOMEM);
	CHECK_ERR(tarray(fd, DRM_IOCTL_SYNCOBJ_QUERY, many, points, 4097, 0), ENOMEM);
	CHECK_ERR(tarray(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, many, points, 4097, 0), ENOMEM);
	for (size_t i = 0; i < 4097; i++)
		points[i] = 1ull << 60;
	CHECK_ERR(twait(fd, many, points, 4096, 0, WAIT_ALL | AVAILABLE, &first), ENOMEM);
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 2);
	destroy(fd, tl);
}

/* VM_BIND signals point 1; the batch waits on point 1 and signals point 2 */
static void with_jobs(int fd)
{
	struct job_rig rig;
	rig_up(fd, &rig);
	uint32_t tl = create(fd, 0);

	struct drm_xe_sync bound = {.type = DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ,
				    .flags = DRM_XE_SYNC_FLAG_SIGNAL, .handle = tl,
				    .timeline_value = 1};
	rig_bind(fd, &rig, &bound);
	CHECK_OK(twait1(fd, tl, 1, INT64_MAX, 0));
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 1);

	CHECK_ERR(twait1(fd, tl, 2, 0, 0), EINVAL); /* nothing put at 2 yet */
	struct drm_xe_sync syncs[2] = {
		{.type = DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ, .handle = tl, .timeline_value = 1},
		{.type = DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ, .flags = DRM_XE_SYNC_FLAG_SIGNAL,
		 .handle = tl, .timeline_value = 2},
	};
	rig_exec(fd, &rig, syncs, 2);
	/* the EXEC put its job's fence at point 2 before it returned */
	CHECK(query1(fd, tl, LAST_SUBMITTED) == 2);
	CHECK_OK(twait1(fd, tl, 2, INT64_MAX, 0));
	CHECK(rig.cpu[0x200 / 4] == 0xc0ffee);
	CHECK(query1(fd, tl, 0) == 2);

	destroy(fd, tl);
	rig_down(fd, &rig);
}

int main(void)
{
	int fd = open_card(), other = open_card();
	struct drm_get_cap cap = {.capability = DRM_CAP_SYNCOBJ_TIMELINE};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GET_CAP, &cap));
	CHECK(cap.value == 1);
	signal_query_wait(fd);
	available(fd);
	transfers(fd);
	woken(fd);
	errnos(fd, other);
	with_jobs(fd);
	/* the render node has them too (DRM_RENDER_ALLOW) */
	int render = open("/dev/dri/renderD128", O_RDWR);
	CHECK(render >= 0);
	uint32_t r = create(render, 0);
	CHECK_OK(signal1(render, r, 1));
	CHECK(query1(render, r, 0) == 1);
	destroy(render, r);
	CHECK_OK(close(render));
	CHECK_OK(close(other));
	CHECK_OK(close(fd));
	printf("timeline ok\n");
	return 0;
}
