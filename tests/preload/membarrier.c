/*
 * membarrier.c - the PCI barrier page as xe_mmap's pci-membarrier subtests use it:
 * GEM_MMAP_OFFSET(handle 0, PCI_BARRIER), mmap of exactly 4096 bytes PROT_WRITE
 * MAP_SHARED; every word reads 0xdeadbeef, a stored value is never read back, 8192
 * bytes or a real handle are EINVAL. `membarrier count N`: make N stores, say
 * "stored N PID", and wait for a line on stdin (the test reads the daemon's count).
 * `membarrier parallel`: reopen the device, fork, each process writes its own page for
 * a second; neither ever sees the other's value.
 */
#include "check.h"

#include <sys/wait.h>
#include <time.h>

static volatile uint32_t *barrier_map(int fd)
{
	struct drm_xe_gem_mmap_offset mo = {.flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
	volatile uint32_t *p = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd, (off_t)mo.offset);
	CHECK(p != MAP_FAILED);
	return p;
}

static void whole_page(int fd)
{
	volatile uint32_t *p = barrier_map(fd);
	for (uint32_t i = 0; i < 1024; i++) {
		CHECK(p[i] == 0xdeadbeef);
		p[i] = i;
		CHECK(p[i] != i);
	}
	CHECK_OK(munmap((void *)p, 4096));
}

static void bad(int fd)
{
	struct drm_xe_gem_mmap_offset mo = {.flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
	CHECK_ERR(mmap(NULL, 8192, PROT_WRITE, MAP_SHARED, fd, (off_t)mo.offset) == MAP_FAILED ? -1 : 0, EINVAL);
	CHECK_ERR(mmap(NULL, 4096, PROT_WRITE, MAP_PRIVATE, fd, (off_t)mo.offset) == MAP_FAILED ? -1 : 0, EINVAL);
	CHECK_ERR(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, (off_t)mo.offset) == MAP_FAILED ? -1 : 0, EINVAL);
	struct drm_xe_gem_mmap_offset real = {.handle = bo_create(fd, 4096),
					      .flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &real), EINVAL);
	CHECK_OK(gem_close(fd, real.handle));
}

static void parallel(int fd)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	int xe = open(path, O_RDWR); /* drm_reopen_driver(): a new drm file */
	CHECK(xe >= 0);
	unsigned i = (unsigned)getpid() % 1024;
	pid_t child = fork();
	CHECK(child >= 0);
	int mine = child == 0 ? xe : fd;
	uint32_t value = child == 0 ? i + 1 : i, theirs = child == 0 ? i : i + 1;
	volatile uint32_t *p = barrier_map(mine);
	CHECK(p[i] == 0xdeadbeef);
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		CHECK(p[i] != theirs);
		p[i] = value;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - start.tv_sec < 1);
	CHECK(p[i] == 0xdeadbeef);
	CHECK_OK(munmap((void *)p, 4096));
	if (child == 0)
		_exit(0);
	int status;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && !WEXITSTATUS(status));
	CHECK_OK(close(xe));
}

int main(int argc, char **argv)
{
	int fd = open_card();
	if (argc == 3 && !strcmp(argv[1], "count")) {
		int n = atoi(argv[2]);
		volatile uint32_t *p = barrier_map(fd);
		for (int k = 0; k < n; k++)
			p[k % 1024] = (uint32_t)k;
		CHECK_OK(munmap((void *)p, 4096)); /* the last store reaches the daemon first */
		printf("stored %d %d\n", n, getpid());
		fflush(stdout);
		char line[8];
		CHECK(fgets(line, sizeof line, stdin));
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "parallel")) {
		parallel(fd);
		return 0;
	}
	whole_page(fd);
	bad(fd);
	CHECK_OK(close(fd));
	return 0;
}
