/*
 * sharing.c - one drm file behind many descriptors and callers: dup/dup2/dup3/F_DUPFD
 * keep it alive past the original's close; a forked child shares its handles (and
 * both issue ioctls at once); threads issue ioctls on one descriptor at the same time,
 * each getting its own answer.
 */
#include "check.h"

#include <pthread.h>
#include <sys/wait.h>


#define THREADS 4
#define ROUNDS 300

static int shared_fd;

static void *worker(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		uint32_t a = bo_create(shared_fd, 4096), b = bo_create(shared_fd, 8192);
		CHECK(a != b);
		struct drm_xe_gem_mmap_offset mo = {.handle = b};
		CHECK_OK(ioctl(shared_fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
		CHECK_OK(gem_close(shared_fd, a));
		CHECK_OK(gem_close(shared_fd, b)); /* (its number may be another thread's next) */
	}
	return NULL;
}

int main(void)
{
	int fd = open_card();
	uint32_t bo = bo_create(fd, 4096);
	char *cpu = bo_map(fd, bo, 4096);

	/* copies of the descriptor are the same file; it lives until the last closes */
	int d1 = dup(fd), d2 = dup2(fd, 100), d3 = dup3(fd, 101, O_CLOEXEC);
	int d4 = fcntl(fd, F_DUPFD_CLOEXEC, 200);
	CHECK(d1 >= 0 && d2 == 100 && d3 == 101 && d4 >= 200);
	CHECK(fcntl(d3, F_GETFD) & FD_CLOEXEC);
	CHECK_OK(close(fd));
	CHECK(bo_offset(d1, bo)); /* the handle is still there */
	CHECK_OK(close(d1));
	CHECK_OK(close(d2));
	CHECK_OK(close(d3));
	CHECK(bo_offset(d4, bo));
	fd = d4;
	CHECK(dup2(fd, fd) == fd);
	/* dup2 over one of ours closes that copy: the file goes on through the others */
	int spare = dup(fd);
	int p[2];
	CHECK_OK(pipe(p));
	CHECK(dup2(p[0], spare) == spare);
	CHECK_ERR(gem_close(spare, bo), ENOTTY); /* a pipe now: the kernel's answer */
	CHECK(bo_offset(fd, bo));

	/* fork: the child has the parent's file, handles, mappings; both work at once */
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		for (int i = 0; i < ROUNDS; i++)
			CHECK(bo_offset(fd, bo));
		uint32_t mine = bo_create(fd, 4096);
		strcpy(cpu, "child was here");
		char msg[16];
		snprintf(msg, sizeof msg, "%u", mine);
		CHECK(write(p[1], msg, strlen(msg) + 1) > 0);
		_exit(0);
	}
	for (int i = 0; i < ROUNDS; i++)
		CHECK(bo_offset(fd, bo));
	int status;
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	char msg[16] = {0};
	CHECK(read(p[0], msg, sizeof msg) > 0);
	uint32_t childs = (uint32_t)strtoul(msg, NULL, 10);
	CHECK_OK(gem_close(fd, childs)); /* the child's BO is in our file */
	CHECK(!strcmp(cpu, "child was here"));

	/* a child that closes its copy does not close ours */
	child = fork();
	if (child == 0) {
		close(fd);
		_exit(0);
	}
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status));
	CHECK(bo_offset(fd, bo));

	/* threads on one descriptor */
	shared_fd = fd;
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		CHECK_OK(pthread_create(&t[i], NULL, worker, NULL));
	for (int i = 0; i < THREADS; i++)
		CHECK_OK(pthread_join(t[i], NULL));
	CHECK_OK(munmap(cpu, 4096));
	CHECK_OK(gem_close(fd, bo));
	CHECK_OK(close(fd));
	return 0;
}
