/*
 * prime_races.c - the calls of IGT's xe_prime_self_import, races included: one thread
 * per CPU re-importing a dma-buf and closing the handle, or exporting handle 1 while
 * others create and close BOs, for `seconds` (argv[1]) each; the flink-opened handle
 * equals the re-import; the BO lives while any dma-buf copy exists.
 */
#include "check.h"

#include <pthread.h>
#include <time.h>

static int seconds = 1;
static pthread_barrier_t start;

static int until_done(const struct timespec *t0)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec - t0->tv_sec < seconds;
}

static void *reimport_vs_close(void *arg)
{
	int *fds = arg;
	struct timespec t0;
	pthread_barrier_wait(&start);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (until_done(&t0)) {
		struct drm_prime_handle imp = {.fd = fds[1]};
		CHECK_OK(ioctl(fds[0], DRM_IOCTL_PRIME_FD_TO_HANDLE, &imp));
		struct drm_gem_close gc = {.handle = imp.handle};
		ioctl(fds[0], DRM_IOCTL_GEM_CLOSE, &gc); /* may race another thread's close */
	}
	return NULL;
}

static void *export_vs_close(void *arg)
{
	int fd = (int)(intptr_t)arg;
	struct timespec t0;
	pthread_barrier_wait(&start);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (until_done(&t0)) {
		uint32_t h = bo_create(fd, 4096);
		if (h != 1)
			CHECK_OK(gem_close(fd, h));
		struct drm_prime_handle ph = {.handle = 1, .flags = DRM_CLOEXEC, .fd = -1};
		ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph); /* expected to fail now and then */
		struct drm_gem_close gc = {.handle = 1};
		ioctl(fd, DRM_IOCTL_GEM_CLOSE, &gc);
		close(ph.fd);
	}
	return NULL;
}

static void race(void *(*fn)(void *), void *arg)
{
	int n = (int)sysconf(_SC_NPROCESSORS_ONLN);
	pthread_t *t = calloc((size_t)n, sizeof *t);
	pthread_barrier_init(&start, NULL, (unsigned)n);
	for (int i = 0; i < n; i++)
		CHECK_OK(pthread_create(&t[i], NULL, fn, arg));
	for (int i = 0; i < n; i++)
		CHECK_OK(pthread_join(t[i], NULL));
	pthread_barrier_destroy(&start);
	free(t);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		seconds = atoi(argv[1]);
	int fd1 = open_card(), fd2 = open_card();
	/* one BO, two files: the flink-opened handle is what a re-import gives */
	uint32_t orig = bo_create(fd1, 4096);
	struct drm_prime_handle e1 = {.handle = orig, .flags = DRM_CLOEXEC};
	CHECK_OK(ioctl(fd1, DRM_IOCTL_PRIME_HANDLE_TO_FD, &e1));
	struct drm_gem_flink fl = {.handle = orig};
	CHECK_OK(ioctl(fd1, DRM_IOCTL_GEM_FLINK, &fl));
	struct drm_gem_open op = {.name = fl.name};
	CHECK_OK(ioctl(fd2, DRM_IOCTL_GEM_OPEN, &op));
	struct drm_prime_handle e2 = {.handle = op.handle, .flags = DRM_CLOEXEC};
	CHECK_OK(ioctl(fd2, DRM_IOCTL_PRIME_HANDLE_TO_FD, &e2));
	struct drm_prime_handle back = {.fd = e2.fd};
	CHECK_OK(ioctl(fd2, DRM_IOCTL_PRIME_FD_TO_HANDLE, &back));
	CHECK(back.handle == op.handle);
	CHECK_OK(close(e1.fd));
	CHECK_OK(close(e2.fd));

	/* the races */
	int fds[2] = {open_card(), -1};
	uint32_t h = bo_create(fds[0], 4096);
	struct drm_prime_handle ex = {.handle = h, .flags = DRM_CLOEXEC};
	CHECK_OK(ioctl(fds[0], DRM_IOCTL_PRIME_HANDLE_TO_FD, &ex));
	fds[1] = ex.fd;
	race(reimport_vs_close, fds);
	CHECK_OK(close(fds[0]));
	CHECK_OK(close(fds[1]));
	int fd = open_card();
	race(export_vs_close, (void *)(intptr_t)fd);
	CHECK_OK(close(fd));
	CHECK_OK(close(fd1));
	CHECK_OK(close(fd2));
	return 0;
}
