/*
 * syncobj.c - DRM core's binary syncobj ioctls (CREATE, DESTROY, WAIT, RESET, SIGNAL)
 * with the errno drm_syncobj.c gives, in its order of checks; a wait that sleeps until
 * its absolute deadline, or until another thread signals; and syncobjs between VM_BIND
 * and EXEC: the bind signals one, the batch waits on it and signals another.
 */
#include "fences.h"

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#define FOR_SUBMIT DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
#define WAIT_ALL DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL

/* SYNCOBJ_WAIT on handles[n]; its first_signaled in *first (left as it was on failure) */
static int wait_on(int fd, const uint32_t *handles, uint32_t n, int64_t timeout, uint32_t flags,
		   uint32_t *first)
{
	struct drm_syncobj_wait w = {.handles = (uintptr_t)handles, .count_handles = n,
				     .timeout_nsec = timeout, .flags = flags,
				     .first_signaled = 0x5a5a5a5a};
	int r = ioctl(fd, DRM_IOCTL_SYNCOBJ_WAIT, &w);
	if (r == 0)
		*first = w.first_signaled;
	else
		CHECK(w.first_signaled == 0x5a5a5a5a);
	return r;
}

static int wait1(int fd, uint32_t handle, int64_t timeout, uint32_t flags)
{
	uint32_t first;
	return wait_on(fd, &handle, 1, timeout, flags, &first);
}

static int array_op(int fd, unsigned long cmd, const uint32_t *handles, uint32_t n)
{
	struct drm_syncobj_array a = {.handles = (uintptr_t)handles, .count_handles = n};
	return ioctl(fd, cmd, &a);
}

/* n handles that end where a page nothing maps begins: all but the last one readable */
static uint32_t *at_page_end(uint32_t handle, uint32_t n)
{
	char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	CHECK_OK(munmap(p + 4096, 4096));
	uint32_t *h = (uint32_t *)(p + 4096) - (n - 1);
	for (uint32_t i = 0; i + 1 < n; i++)
		h[i] = handle;
	return h;
}

static void create_destroy(int fd)
{
	uint32_t a = create(fd, 0), b = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED);
	CHECK(a != b);
	struct drm_syncobj_create bad = {.flags = 2};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &bad), EINVAL);
	bad.flags = ~0u;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &bad), EINVAL);
	CHECK(bad.handle == 0);
	struct drm_syncobj_destroy padded = {.handle = a, .pad = 1};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_DESTROY, &padded), EINVAL);
	CHECK_ERR(try_destroy(fd, 0xdead), EINVAL); /* drm_syncobj_destroy: EINVAL, not ENOENT */
	CHECK_OK(try_destroy(fd, a));
	CHECK_ERR(try_destroy(fd, a), EINVAL);
	CHECK_ERR(wait1(fd, a, 0, 0), ENOENT); /* the handle is gone */
	CHECK_OK(try_destroy(fd, b));
	/* handles are the lowest free, as idr_alloc gives them */
	uint32_t c = create(fd, 0);
	CHECK(c == (a < b ? a : b));
	CHECK_OK(try_destroy(fd, c));
}

static void wait_rules(int fd, int other)
{
	uint32_t sig = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED), empty = create(fd, 0), first = 99;
	CHECK_OK(wait_on(fd, &sig, 1, 0, 0, &first)); /* at once, timeout 0 or not */
	CHECK(first == 0);
	CHECK_OK(wait_on(fd, &sig, 1, INT64_MAX, WAIT_ALL, &first));
	CHECK(first == 0);
	CHECK_ERR(wait1(fd, empty, 0, 0), EINVAL); /* no fence, no WAIT_FOR_SUBMIT */
	CHECK_ERR(wait1(fd, empty, INT64_MAX, 0), EINVAL);
	CHECK_ERR(wait1(fd, empty, 0, FOR_SUBMIT), ETIME);

	/* an absolute CLOCK_MONOTONIC deadline: never answered before it */
	int64_t deadline = now_ns() + 50000000;
	CHECK_ERR(wait1(fd, empty, deadline, FOR_SUBMIT), ETIME);
	CHECK(now_ns() >= deadline);
	CHECK_ERR(wait1(fd, empty, now_ns() - 1000000, FOR_SUBMIT), ETIME); /* in the past */

	/* SIGNAL, RESET */
	CHECK_OK(array_op(fd, DRM_IOCTL_SYNCOBJ_SIGNAL, &empty, 1));
	CHECK_OK(wait1(fd, empty, 0, 0));
	CHECK_OK(array_op(fd, DRM_IOCTL_SYNCOBJ_RESET, &empty, 1));
	CHECK_ERR(wait1(fd, empty, 0, 0), EINVAL);
	CHECK_ERR(wait1(fd, empty, 0, FOR_SUBMIT), ETIME);

	/* several: WAIT_ALL needs every one; else first_signaled is the first signalled */
	uint32_t se[2] = {sig, empty}, es[2] = {empty, sig};
	CHECK_ERR(wait_on(fd, se, 2, 0, WAIT_ALL | FOR_SUBMIT, &first), ETIME);
	CHECK_ERR(wait_on(fd, se, 2, 0, WAIT_ALL, &first), EINVAL);
	CHECK_OK(wait_on(fd, se, 2, 0, FOR_SUBMIT, &first));
	CHECK(first == 0);
	CHECK_OK(wait_on(fd, es, 2, 0, FOR_SUBMIT, &first));
	CHECK(first == 1);
	CHECK_ERR(wait_on(fd, es, 2, 0, 0, &first), EINVAL); /* an empty one, no FOR_SUBMIT */
	uint32_t ss[2] = {sig, sig};
	CHECK_OK(wait_on(fd, ss, 2, 0, WAIT_ALL, &first));
	CHECK(first == 0);
	CHECK_OK(wait_on(fd, es, 2, 0, FOR_SUBMIT | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE, &first));
	CHECK(first == 1);

	/* the kernel's order: flags, count (none: nothing to wait for, the array unread),
	 * the array (EFAULT), the handles (ENOENT) */
	void *gone = unmapped_page();
	CHECK_ERR(wait_on(fd, &sig, 1, 0, DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE, &first), EINVAL);
	CHECK_ERR(wait_on(fd, &sig, 1, 0, 1u << 4, &first), EINVAL);
	CHECK_ERR(wait_on(fd, gone, 1, 0, 1u << 4, &first), EINVAL);
	CHECK(wait_on(fd, &sig, 0, 0, 0, &first) == 0);
	CHECK(first == 0x5a5a5a5a); /* written back as it was */
	CHECK(wait_on(fd, gone, 0, 0, 0, &first) == 0);
	CHECK_ERR(wait_on(fd, gone, 1, 0, 0, &first), EFAULT);
	CHECK_ERR(wait_on(fd, NULL, 2, INT64_MAX, FOR_SUBMIT, &first), EFAULT);
	CHECK_ERR(wait_on(fd, bad_address(), 1, 0, 0, &first), EFAULT);
	uint32_t *edge = at_page_end(sig, 3);
	CHECK_OK(wait_on(fd, edge, 2, 0, WAIT_ALL, &first));
	CHECK_ERR(wait_on(fd, edge, 3, 0, WAIT_ALL, &first), EFAULT); /* the last one faults */
	uint32_t unknown[2] = {sig, 0xdead};
	CHECK_ERR(wait_on(fd, unknown, 2, 0, 0, &first), ENOENT);
	CHECK_ERR(wait_on(fd, unknown, 2, INT64_MAX, FOR_SUBMIT, &first), ENOENT);
	CHECK_ERR(wait1(fd, 0, 0, 0), ENOENT);
	/* handles are the file's own: another file of the device has none of them */
	CHECK_ERR(wait1(other, sig, 0, 0), ENOENT);

	/* as many handles as a request carries; one more cannot be sent (ENOMEM) */
	static uint32_t many[4097];
	for (size_t i = 0; i < sizeof many / sizeof *many; i++)
		many[i] = sig;
	many[4095] = empty;
	CHECK_OK(wait_on(fd, many, 4096, 0, FOR_SUBMIT, &first));
	CHECK(first == 0);
	CHECK_ERR(wait_on(fd, many, 4096, 0, WAIT_ALL | FOR_SUBMIT, &first), ETIME);
	CHECK_ERR(wait_on(fd, many, 4097, 0, 0, &first), ENOMEM);
	CHECK_OK(try_destroy(fd, sig));
	CHECK_OK(try_destroy(fd, empty));
}

static void array_rules(int fd)
{
	static const unsigned long cmds[2] = {DRM_IOCTL_SYNCOBJ_RESET, DRM_IOCTL_SYNCOBJ_SIGNAL};
	uint32_t s = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED), e = create(fd, 0);
	void *gone = unmapped_page();
	for (int i = 0; i < 2; i++) {
		struct drm_syncobj_array padded = {.handles = (uintptr_t)&s, .count_handles = 1,
						   .pad = 1};
		CHECK_ERR(ioctl(fd, cmds[i], &padded), EINVAL);
		padded.handles = (uintptr_t)gone; /* pad is checked before the array is read */
		CHECK_ERR(ioctl(fd, cmds[i], &padded), EINVAL);
		CHECK_ERR(array_op(fd, cmds[i], &s, 0), EINVAL);
		CHECK_ERR(array_op(fd, cmds[i], gone, 0), EINVAL);
		CHECK_ERR(array_op(fd, cmds[i], gone, 1), EFAULT);
		CHECK_ERR(array_op(fd, cmds[i], NULL, 3), EFAULT);
		CHECK_ERR(array_op(fd, cmds[i], bad_address(), 1), EFAULT);
		CHECK_ERR(array_op(fd, cmds[i], at_page_end(s, 2), 2), EFAULT);
		uint32_t one = 0xdead;
		CHECK_ERR(array_op(fd, cmds[i], &one, 1), ENOENT);
	}
	/* a handle unknown: ENOENT, and none of the others is reset or signalled */
	uint32_t s_unknown[2] = {s, 0xdead}, e_unknown[2] = {e, 0xdead};
	CHECK_ERR(array_op(fd, DRM_IOCTL_SYNCOBJ_RESET, s_unknown, 2), ENOENT);
	CHECK_OK(wait1(fd, s, 0, 0));
	CHECK_ERR(array_op(fd, DRM_IOCTL_SYNCOBJ_SIGNAL, e_unknown, 2), ENOENT);
	CHECK_ERR(wait1(fd, e, 0, 0), EINVAL);
	/* several at once, one named twice */
	uint32_t both[3] = {s, e, s};
	CHECK_OK(array_op(fd, DRM_IOCTL_SYNCOBJ_SIGNAL, both, 3));
	uint32_t first;
	CHECK_OK(wait_on(fd, both, 3, 0, WAIT_ALL, &first));
	CHECK_OK(array_op(fd, DRM_IOCTL_SYNCOBJ_RESET, both, 3));
	CHECK_ERR(wait1(fd, s, 0, 0), EINVAL);
	CHECK_ERR(wait1(fd, e, 0, 0), EINVAL);
	CHECK_OK(try_destroy(fd, s));
	CHECK_OK(try_destroy(fd, e));
}

struct waiter {
	int fd;
	uint32_t handles[2];
	uint32_t flags, first;
	_Atomic int result; /* -1 while it waits */
};

static void *waiting(void *arg)
{
	struct waiter *w = arg;
	int r = wait_on(w->fd, w->handles, 2, INT64_MAX, w->flags, &w->first);
	w->result = r ? errno : 0;
	return NULL;
}

/* a wait asleep in one thread (on a channel of the file), woken by a SIGNAL from another */
static void woken(int fd)
{
	uint32_t a = create(fd, 0), b = create(fd, 0);
	static const uint32_t modes[2] = {FOR_SUBMIT, FOR_SUBMIT | WAIT_ALL};
	for (int i = 0; i < 2; i++) {
		uint32_t flags = modes[i];
		struct waiter w = {.fd = fd, .handles = {a, b}, .flags = flags, .result = -1};
		pthread_t t;
		CHECK_OK(pthread_create(&t, NULL, waiting, &w));
		usleep(20000);
		CHECK_OK(array_op(fd, DRM_IOCTL_SYNCOBJ_SIGNAL, &b, 1));
		if (flags & WAIT_ALL) {
			usleep(20000);
			CHECK(w.result == -1); /* still asleep: a is empty */
			CHECK_OK(array_op(fd, DRM_IOCTL_SYNCOBJ_SIGNAL, &a, 1));
		}
		CHECK_OK(pthread_join(t, NULL));
		CHECK(w.result == 0);
		/* without WAIT_ALL the one that woke it; with it, the first signalled when the
		 * wait began: none (~0), or b if the thread came only after the SIGNAL */
		if (flags & WAIT_ALL)
			CHECK(w.first == 0xffffffffu || w.first == 1);
		else
			CHECK(w.first == 1);
		uint32_t pair[2] = {a, b};
		CHECK_OK(array_op(fd, DRM_IOCTL_SYNCOBJ_RESET, pair, 2));
	}
	CHECK_OK(try_destroy(fd, a));
	CHECK_OK(try_destroy(fd, b));
}

/* VM_BIND signals s1; the batch waits on s1 and signals s2 when it has run */
static void with_jobs(int fd)
{
	struct job_rig rig;
	rig_up(fd, &rig);
	uint32_t s1 = create(fd, 0), s2 = create(fd, 0);

	struct drm_xe_sync bound = {.type = DRM_XE_SYNC_TYPE_SYNCOBJ,
				    .flags = DRM_XE_SYNC_FLAG_SIGNAL, .handle = s1};
	rig_bind(fd, &rig, &bound);
	CHECK_OK(wait1(fd, s1, INT64_MAX, 0));

	CHECK_ERR(wait1(fd, s2, 0, 0), EINVAL); /* nothing put in it yet */
	struct drm_xe_sync syncs[2] = {
		{.type = DRM_XE_SYNC_TYPE_SYNCOBJ, .handle = s1},
		{.type = DRM_XE_SYNC_TYPE_SYNCOBJ, .flags = DRM_XE_SYNC_FLAG_SIGNAL, .handle = s2},
	};
	rig_exec(fd, &rig, syncs, 2);
	/* the EXEC put its job's fence in s2 before it returned: no WAIT_FOR_SUBMIT needed */
	uint32_t first = 99;
	CHECK_OK(wait_on(fd, &s2, 1, INT64_MAX, 0, &first));
	CHECK(first == 0);
	CHECK(rig.cpu[0x200 / 4] == 0xc0ffee);

	CHECK_OK(try_destroy(fd, s1));
	CHECK_OK(try_destroy(fd, s2));
	rig_down(fd, &rig);
}

int main(void)
{
	int fd = open_card(), other = open_card();
	create_destroy(fd);
	wait_rules(fd, other);
	array_rules(fd);
	woken(fd);
	with_jobs(fd);
	/* the render node has them too (DRM_RENDER_ALLOW) */
	int render = open("/dev/dri/renderD128", O_RDWR);
	CHECK(render >= 0);
	uint32_t r = create(render, DRM_SYNCOBJ_CREATE_SIGNALED);
	CHECK_OK(wait1(render, r, 0, 0));
	CHECK_OK(try_destroy(render, r));
	/* EVENTFD is known now: its argument is read, a bad one EFAULT (the rest of it:
	 * eventfd.c; the timeline ones: timeline.c; HANDLE_TO_FD and FD_TO_HANDLE:
	 * sync_file.c) */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_EVENTFD, bad_address()), EFAULT);
	CHECK_OK(close(render));
	CHECK_OK(close(other));
	CHECK_OK(close(fd));
	return 0;
}
