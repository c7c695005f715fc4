/*
 * eventfd.c - DRM_IOCTL_SYNCOBJ_EVENTFD, which the library emulates: the eventfd counts
 * 1 at once for a point already signalled, later for one another thread signals, at
 * once with WAIT_AVAILABLE for a point submitted (a sw_sync fence imported) but not
 * signalled, and never for one left unsignalled; the errno drm_syncobj.c gives, in its
 * order of checks; a registration that outlives its drm file ends without counting, and
 * one whose syncobj is freed (its last handle destroyed, no descriptor left) too, while
 * a descriptor keeps the syncobj and the registration, even for a destroy right after.
 * `eventfd beyond N`: N registrations pending at once, more than the daemon's
 * limits.fence_waits, each count once their points are signalled.
 */
#include "fences.h"

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>

#define AVAILABLE DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE

static int reg(int fd, uint32_t handle, uint64_t point, int efd, uint32_t flags)
{
	struct drm_syncobj_eventfd e = {.handle = handle, .flags = flags, .point = point,
					.fd = efd};
	return ioctl(fd, DRM_IOCTL_SYNCOBJ_EVENTFD, &e);
}

static int signal1(int fd, uint32_t handle, uint64_t point)
{
	struct drm_syncobj_timeline_array a = {.handles = (uintptr_t)&handle,
					       .points = (uintptr_t)&point, .count_handles = 1};
	return ioctl(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, &a);
}

/* the counter, read (and so reset) if it becomes readable within ms; 0 if not */
static uint64_t counted(int efd, int ms)
{
	struct pollfd p = {.fd = efd, .events = POLLIN};
	int r = poll(&p, 1, ms);
	CHECK(r >= 0);
	if (!r)
		return 0;
	uint64_t v = 0;
	CHECK(read(efd, &v, sizeof v) == sizeof v);
	return v;
}

struct later {
	int fd;
	uint32_t handle;
	uint64_t point;
};

static void *signal_later(void *arg)
{
	struct later *l = arg;
	struct timespec ts = {0, 50 * 1000 * 1000};
	nanosleep(&ts, NULL);
	CHECK_OK(signal1(l->fd, l->handle, l->point));
	return NULL;
}

static void signalled(int fd, int efd)
{
	/* a binary syncobj created signalled: at once, before the ioctl returns */
	uint32_t bin = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED);
	CHECK_OK(reg(fd, bin, 0, efd, 0));
	CHECK(counted(efd, 0) == 1);
	CHECK_OK(reg(fd, bin, 0, efd, AVAILABLE));
	CHECK(counted(efd, 0) == 1);
	/* a timeline's point reached already, and one before it */
	uint32_t tl = create(fd, 0);
	CHECK_OK(signal1(fd, tl, 5));
	CHECK_OK(reg(fd, tl, 5, efd, 0));
	CHECK_OK(reg(fd, tl, 3, efd, 0));
	CHECK(counted(efd, 0) == 2);
	destroy(fd, bin);
	destroy(fd, tl);
}

static void later(int fd, int efd)
{
	/* a point not submitted yet: waited for (as WAIT_FOR_SUBMIT), then counted once */
	uint32_t tl = create(fd, 0);
	CHECK_OK(reg(fd, tl, 2, efd, 0));
	CHECK(counted(efd, 0) == 0);
	struct later l = {fd, tl, 2};
	pthread_t t;
	CHECK_OK(pthread_create(&t, NULL, signal_later, &l));
	CHECK(counted(efd, 5000) == 1);
	CHECK_OK(pthread_join(t, NULL));
	CHECK(counted(efd, 100) == 0); /* once only */
	/* a binary syncobj with no fence yet, signalled from another thread */
	uint32_t bin = create(fd, 0);
	CHECK_OK(reg(fd, bin, 0, efd, 0));
	struct drm_syncobj_array a = {.handles = (uintptr_t)&bin, .count_handles = 1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_SIGNAL, &a));
	CHECK(counted(efd, 5000) == 1);
	destroy(fd, tl);
	destroy(fd, bin);
}

/* a point submitted but not signalled: WAIT_AVAILABLE counts at once, a plain
 * registration only once the fence signals */
static void available(int fd, int efd)
{
	int timeline = sw_sync_timeline();
	int fence = sw_sync_fence(timeline, 1);
	uint32_t tl = create(fd, 0);
	struct drm_syncobj_handle imp = {.handle = tl, .fd = fence, .point = 4,
					 .flags = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE |
						  DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &imp));
	int plain = eventfd(0, EFD_CLOEXEC);
	CHECK(plain >= 0);
	CHECK_OK(reg(fd, tl, 4, plain, 0));
	CHECK_OK(reg(fd, tl, 4, efd, AVAILABLE));
	CHECK(counted(efd, 0) == 1);
	CHECK(counted(plain, 100) == 0);
	/* WAIT_AVAILABLE for a point not submitted yet: counted once it is */
	CHECK_OK(reg(fd, tl, 6, efd, AVAILABLE));
	CHECK(counted(efd, 100) == 0);
	CHECK_OK(signal1(fd, tl, 6));
	CHECK(counted(efd, 5000) == 1);
	sw_sync_inc(timeline, 1);
	CHECK(counted(plain, 5000) == 1);
	CHECK_OK(close(plain));
	CHECK_OK(close(fence));
	CHECK_OK(close(timeline));
	destroy(fd, tl);
}

static void errors(int fd, int efd)
{
	uint32_t sig = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED);
	/* flags, then pad, then the handle, then the descriptor */
	struct drm_syncobj_eventfd e = {.handle = 0xdead, .flags = 1, .fd = -1, .pad = 1};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_EVENTFD, &e), EINVAL);
	e.flags = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_EVENTFD, &e), EINVAL);
	e.pad = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_EVENTFD, &e), ENOENT);
	CHECK_ERR(reg(fd, 0, 0, efd, 0), ENOENT);
	CHECK_ERR(reg(fd, sig, 0, -1, 0), EBADF);
	CHECK_ERR(reg(fd, sig, 0, 999, 0), EBADF); /* no descriptor there */
	int p[2];
	CHECK_OK(pipe(p));
	CHECK_ERR(reg(fd, sig, 0, p[0], 0), EINVAL);
	CHECK_ERR(reg(fd, sig, 0, fd, 0), EINVAL); /* the drm file itself */
	CHECK_ERR(reg(fd, sig, 0, efd, 1u << 1), EINVAL);
	CHECK_ERR(reg(fd, sig, 0, efd, 1u << 0), EINVAL);
	CHECK_OK(close(p[0]));
	CHECK_OK(close(p[1]));
	CHECK(counted(efd, 0) == 0); /* none of them counted */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_EVENTFD, bad_address()), EFAULT);
	/* another file of the device has none of this file's handles */
	int other = open_card();
	CHECK_ERR(reg(other, sig, 0, efd, 0), ENOENT);
	CHECK_OK(close(other));
	destroy(fd, sig);
}

/* the descriptors of this process that are eventfds (a registration holds one) */
static int eventfds(void)
{
	DIR *d = opendir("/proc/self/fd");
	CHECK(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		char path[300], link[64];
		snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
		ssize_t len = readlink(path, link, sizeof link - 1);
		if (len > 0) {
			link[len] = 0;
			n += !strcmp(link, "anon_inode:[eventfd]");
		}
	}
	closedir(d);
	return n;
}

/* the number of eventfds becomes `want` within 5 s */
static int settles(int want)
{
	for (int i = 0; i < 500; i++) {
		if (eventfds() == want)
			return 1;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}

/* the registration of a point never signalled ends with its drm file: nothing counted,
 * its reference on the eventfd dropped */
static void outlived(int efd)
{
	CHECK(settles(1));
	int fd = open_card();
	uint32_t tl = create(fd, 0);
	CHECK_OK(reg(fd, tl, 1, efd, 0));
	CHECK(eventfds() == 2);
	CHECK_OK(close(fd));
	CHECK(settles(1));
	CHECK(counted(efd, 0) == 0);
	/* a new file works as ever */
	fd = open_card();
	uint32_t bin = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED);
	CHECK_OK(reg(fd, bin, 0, efd, 0));
	CHECK(counted(efd, 0) == 1);
	CHECK_OK(close(fd));
}

/* a registration pending across fork: the parent's thread counts, the child goes on */
static void forked(int fd, int efd)
{
	uint32_t tl = create(fd, 0);
	CHECK_OK(reg(fd, tl, 1, efd, 0));
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		uint32_t sig = create(fd, DRM_SYNCOBJ_CREATE_SIGNALED);
		int mine = eventfd(0, 0);
		CHECK(mine >= 0);
		CHECK_OK(reg(fd, sig, 0, mine, 0));
		CHECK(counted(mine, 0) == 1);
		_exit(0);
	}
	int status = 0;
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status));
	CHECK(counted(efd, 0) == 0);
	CHECK_OK(signal1(fd, tl, 1));
	CHECK(counted(efd, 5000) == 1);
	destroy(fd, tl);
}

static uint32_t handle_to_fd(int fd, uint32_t handle)
{
	struct drm_syncobj_handle h = {.handle = handle};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &h));
	return (uint32_t)h.fd;
}

static uint32_t fd_to_handle(int fd, int sfd)
{
	struct drm_syncobj_handle h = {.fd = sfd};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &h));
	return h.handle;
}

/* freed with its syncobj: the registration ends uncounted, its eventfd copy let go; kept
 * by a descriptor: it counts once the point comes through a handle imported from it */
static void freed(int fd, int efd)
{
	CHECK(settles(1));
	uint32_t tl = create(fd, 0);
	CHECK_OK(reg(fd, tl, 1, efd, 0));
	CHECK(eventfds() == 2);
	destroy(fd, tl);
	CHECK(settles(1));
	CHECK(counted(efd, 0) == 0);
	for (int i = 0; i < 10; i++) {
		tl = create(fd, 0);
		int sfd = (int)handle_to_fd(fd, tl);
		CHECK_OK(reg(fd, tl, 1, efd, 0));
		destroy(fd, tl); /* right after: the registration was made first */
		uint32_t again = fd_to_handle(fd, sfd);
		CHECK_OK(close(sfd));
		CHECK_OK(signal1(fd, again, 1));
		CHECK(counted(efd, 5000) == 1);
		destroy(fd, again);
	}
	CHECK(settles(1));
}

/* n registrations pending at once (more than the file's fence_waits), each counted */
static void beyond(int fd, int n)
{
	uint32_t tl = create(fd, 0);
	int efds[64];
	CHECK(n <= 64);
	for (int i = 0; i < n; i++) {
		efds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		CHECK(efds[i] >= 0);
		CHECK_OK(reg(fd, tl, (uint64_t)i + 1, efds[i], 0));
	}
	for (int i = 0; i < n; i++)
		CHECK(counted(efds[i], 0) == 0);
	CHECK_OK(signal1(fd, tl, (uint64_t)n));
	for (int i = 0; i < n; i++) {
		CHECK(counted(efds[i], 5000) == 1);
		CHECK_OK(close(efds[i]));
	}
	destroy(fd, tl);
	CHECK(settles(0)); /* every registration's copy let go */
}

int main(int argc, char **argv)
{
	int fd = open_card();
	if (argc == 3 && !strcmp(argv[1], "beyond")) {
		beyond(fd, atoi(argv[2]));
		CHECK_OK(close(fd));
		puts("eventfd beyond ok");
		return 0;
	}
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	CHECK(efd >= 0);
	signalled(fd, efd);
	later(fd, efd);
	available(fd, efd);
	errors(fd, efd);
	outlived(efd);
	freed(fd, efd);
	forked(fd, efd);
	CHECK_OK(close(efd));
	CHECK_OK(close(fd));
	puts("eventfd ok");
	return 0;
}
