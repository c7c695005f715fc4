/*
 * sw_sync.c - the kernel's sw_sync timelines (debugfs's sync/sw_sync) through the
 * library: each open a new timeline at 0, CREATE_FENCE a sync file signalled once INC
 * brings the timeline to its point, the last close of a timeline signalling its fences
 * with ENOENT before close returns (through dup, dup2 and fcntl copies), errno for errno
 * in the kernel's order, a forked child and threads driving one timeline. All of it but
 * the last section runs before the program opens any drm device, as IGT's sw_sync does.
 */
#include "fences.h"

#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <linux/close_range.h>
#include <stdint.h>
#include <sys/wait.h>

/* FILE_INFO with room for one fence: the file's status, and its fence's in *fence */
static int status(int sync_file, int *fence)
{
	struct sync_fence_info fi = {0};
	struct sync_file_info info = {.num_fences = 1, .sync_fence_info = (uintptr_t)&fi};
	CHECK_OK(ioctl(sync_file, SYNC_IOC_FILE_INFO, &info));
	CHECK(info.num_fences == 1);
	*fence = fi.status;
	return info.status;
}

/* the lowest free descriptor number: the same before and after a call that leaks none */
static int next_fd(void)
{
	int probe = dup(0);
	CHECK(probe >= 0);
	CHECK_OK(close(probe));
	return probe;
}

/* the fence's timeline was released: readable at once, signalled with ENOENT */
static void released(int fence)
{
	int fs;
	CHECK(readable_within(fence, 0));
	CHECK(status(fence, &fs) == -ENOENT && fs == -ENOENT);
}

static void opens(void)
{
	CHECK_OK(access(SW_SYNC, R_OK | W_OK));
	int lowest = next_fd();
	int tl = sw_sync_timeline();
	CHECK(tl == lowest); /* the lowest free number, as the kernel's open gives */
	CHECK(!(fcntl(tl, F_GETFD) & FD_CLOEXEC));
	int ce = open(SW_SYNC, O_RDWR | O_CLOEXEC);
	CHECK(ce >= 0 && (fcntl(ce, F_GETFD) & FD_CLOEXEC));
	CHECK_ERR(open(SW_SYNC, O_RDWR | O_DIRECTORY), ENOTDIR);
	/* other spellings of the path, openat and creat open timelines too */
	int other = openat(AT_FDCWD, "/sys/kernel/debug//sync//sw_sync", O_RDWR);
	CHECK(other >= 0);
	int detour = open("/sys/kernel/debug/sync/../sync/sw_sync", O_RDWR);
	CHECK(detour >= 0);
	int created = creat(SW_SYNC, 0600);
	CHECK(created >= 0);
	/* each a timeline of its own, at 0 */
	int fences[] = {sw_sync_fence(tl, 1), sw_sync_fence(ce, 1), sw_sync_fence(other, 1),
			sw_sync_fence(detour, 1), sw_sync_fence(created, 1)};
	sw_sync_inc(tl, 1);
	CHECK(readable_within(fences[0], 0));
	for (int i = 1; i < 5; i++)
		CHECK(!readable_within(fences[i], 0));
	sw_sync_inc(created, 1);
	CHECK(readable_within(fences[4], 0));
	CHECK_OK(close(tl));
	CHECK_OK(close(ce));
	CHECK_OK(close(other));
	CHECK_OK(close(detour));
	CHECK_OK(close(created));
	released(fences[1]);
	released(fences[2]);
	released(fences[3]);
	int fs;
	CHECK(status(fences[0], &fs) == 1 && fs == 1); /* signalled before: no error */
	for (int i = 0; i < 5; i++)
		CHECK_OK(close(fences[i]));
}

static void fences(void)
{
	int tl = sw_sync_timeline();
	int f5 = sw_sync_fence(tl, 5), fs;
	CHECK(fcntl(f5, F_GETFD) & FD_CLOEXEC); /* the kernel's: close-on-exec */
	CHECK(!readable_within(f5, 0));
	CHECK(status(f5, &fs) == 0 && fs == 0);
	sw_sync_inc(tl, 1);
	CHECK(!readable_within(f5, 0));
	sw_sync_inc(tl, 4);
	CHECK(readable_within(f5, 0));
	CHECK(status(f5, &fs) == 1 && fs == 1);
	int passed = sw_sync_fence(tl, 3); /* the timeline is at 5 */
	CHECK(readable_within(passed, 0));
	CHECK(status(passed, &fs) == 1 && fs == 1);

	/* two points of one timeline merged: signalled once the later one is */
	int f7 = sw_sync_fence(tl, 7), f9 = sw_sync_fence(tl, 9);
	struct sync_merge_data m = {.fd2 = f7, .fence = -1};
	strcpy(m.name, "both");
	CHECK_OK(ioctl(f9, SYNC_IOC_MERGE, &m));
	CHECK(!readable_within(m.fence, 0));
	sw_sync_inc(tl, 2);
	CHECK(readable_within(f7, 0) && !readable_within(f9, 0) && !readable_within(m.fence, 0));
	CHECK(status(m.fence, &fs) == 0);
	sw_sync_inc(tl, 2);
	CHECK(readable_within(f9, 0) && readable_within(m.fence, 0));
	CHECK(status(m.fence, &fs) == 1 && fs == 1);

	/* any name, 32 bytes without a NUL, not UTF-8: the kernel does not use it, and
	 * writes the struct back as it was but for .fence */
	struct sw_sync_create_fence_data d = {.value = 1, .fence = -1};
	memset(d.name, 0xff, sizeof d.name);
	CHECK_OK(ioctl(tl, SW_SYNC_IOC_CREATE_FENCE, &d));
	CHECK(d.fence >= 0 && d.value == 1 && (unsigned char)d.name[31] == 0xff);
	CHECK(readable_within(d.fence, 0));

	/* the timeline closed under an unsignalled fence: signalled with ENOENT at once */
	int f11 = sw_sync_fence(tl, 11);
	CHECK_OK(close(tl));
	released(f11);
	CHECK(status(f5, &fs) == 1 && fs == 1); /* those signalled before keep their status */
	int all[] = {f5, passed, f7, f9, m.fence, d.fence, f11};
	for (size_t i = 0; i < sizeof all / sizeof *all; i++)
		CHECK_OK(close(all[i]));
}

/* a timeline is released at its last copy's close: dup, fcntl, dup2 over it */
static void copies(void)
{
	int tl = sw_sync_timeline();
	int copy = dup(tl);
	int f = sw_sync_fence(copy, 1);
	CHECK_OK(close(tl));
	CHECK(!readable_within(f, 0)); /* a copy is left */
	int again = fcntl(copy, F_DUPFD_CLOEXEC, 0);
	CHECK(again >= 0);
	CHECK_OK(close(copy));
	CHECK(!readable_within(f, 0));
	CHECK_OK(close(again));
	released(f);
	CHECK_OK(close(f));

	int pipes[2];
	CHECK_OK(pipe(pipes));
	tl = sw_sync_timeline();
	f = sw_sync_fence(tl, 1);
	CHECK(dup2(pipes[0], tl) == tl); /* closes the timeline */
	released(f);
	CHECK_ERR(ioctl(tl, SW_SYNC_IOC_INC, &(uint32_t){1}), ENOTTY); /* a pipe now */
	CHECK_OK(close(f));
	CHECK_OK(close(tl));
	CHECK_OK(close(pipes[0]));
	CHECK_OK(close(pipes[1]));

	/* close_range over copies made by F_DUPFD and dup2; CLOSE_RANGE_CLOEXEC closes none */
	tl = sw_sync_timeline();
	f = sw_sync_fence(tl, 1);
	CHECK(fcntl(tl, F_DUPFD, 200) == 200 && dup2(tl, 201) == 201);
	CHECK_OK(close(tl));
	CHECK_OK(close_range(200, 201, CLOSE_RANGE_CLOEXEC));
	CHECK(!readable_within(f, 0));
	CHECK_OK(close_range(200, 201, 0));
	released(f);
	CHECK_OK(close(f));
}

static void errors(int drm)
{
	int tl = sw_sync_timeline();
	int sync = sw_sync_fence(tl, 0);
	int pipes[2];
	CHECK_OK(pipe(pipes));
	struct sw_sync_create_fence_data d = {.value = 1};
	uint32_t one = 1;
	CHECK_ERR(ioctl(-1, SW_SYNC_IOC_CREATE_FENCE, &d), EBADF);
	CHECK_ERR(ioctl(987, SW_SYNC_IOC_INC, &one), EBADF);
	CHECK_ERR(ioctl(pipes[0], SW_SYNC_IOC_CREATE_FENCE, &d), ENOTTY);
	CHECK_ERR(ioctl(sync, SW_SYNC_IOC_CREATE_FENCE, &d), ENOTTY);
	CHECK_ERR(ioctl(sync, SW_SYNC_IOC_INC, &one), ENOTTY);
	if (drm >= 0) {
		CHECK_ERR(ioctl(drm, SW_SYNC_IOC_CREATE_FENCE, &d), ENOTTY);
		CHECK_ERR(ioctl(drm, SW_SYNC_IOC_INC, &one), ENOTTY);
	}
	/* ENOTTY comes before the argument is read */
	CHECK_ERR(ioctl(pipes[0], SW_SYNC_IOC_CREATE_FENCE, bad_address()), ENOTTY);
	CHECK_ERR(ioctl(sync, SW_SYNC_IOC_CREATE_FENCE, bad_address()), ENOTTY);
	CHECK_ERR(ioctl(sync, SW_SYNC_IOC_INC, bad_address()), ENOTTY);
	/* on a timeline: EFAULT either way, and a fence that cannot be written back is not
	 * left behind */
	CHECK_ERR(ioctl(tl, SW_SYNC_IOC_CREATE_FENCE, bad_address()), EFAULT);
	CHECK_ERR(ioctl(tl, SW_SYNC_IOC_CREATE_FENCE, unmapped_page()), EFAULT);
	CHECK_ERR(ioctl(tl, SW_SYNC_IOC_INC, bad_address()), EFAULT);
	struct sw_sync_create_fence_data *ro = read_only_page();
	int free_fd = next_fd();
	CHECK_ERR(ioctl(tl, SW_SYNC_IOC_CREATE_FENCE, ro), EFAULT);
	CHECK(next_fd() == free_fd);
	/* another 'W' number, or the right one with another size: ENOTTY */
	CHECK_ERR(ioctl(tl, XED_IOC(XED_IOC_WRITE, SW_SYNC_IOC_MAGIC, 2, 4), &one), ENOTTY);
	CHECK_ERR(ioctl(tl, XED_IOC(XED_IOC_WRITE, SW_SYNC_IOC_MAGIC, 1, 8), &one), ENOTTY);
	/* the timeline still works */
	int f = sw_sync_fence(tl, 1);
	sw_sync_inc(tl, 1);
	CHECK(readable_within(f, 0));
	int closed_tl = tl;
	CHECK_OK(close(tl));
	CHECK_ERR(ioctl(closed_tl, SW_SYNC_IOC_INC, &one), EBADF);
	CHECK_OK(close(f));
	CHECK_OK(close(sync));
	CHECK_OK(close(pipes[0]));
	CHECK_OK(close(pipes[1]));
}

/* a forked child advances the timeline it inherited: the parent's fence signals */
static void forked(void)
{
	int tl = sw_sync_timeline();
	int f = sw_sync_fence(tl, 1);
	CHECK(!readable_within(f, 0));
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		usleep(100 * 1000);
		uint32_t one = 1;
		_exit(ioctl(tl, SW_SYNC_IOC_INC, &one) ? 1 : 0);
	}
	CHECK(readable_within(f, 10000));
	int st;
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* and a child's close of its copy leaves the parent's timeline alone */
	int f2 = sw_sync_fence(tl, 2);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(close(tl) ? 1 : 0);
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(!readable_within(f2, 0));
	sw_sync_inc(tl, 1);
	CHECK(readable_within(f2, 0));
	CHECK_OK(close(f));
	CHECK_OK(close(f2));
	CHECK_OK(close(tl));
}

/* consumers waiting on their own points while a producer advances: IGT's
 * sync_multi_consumer, smaller */
#define CONSUMERS 2
#define ROUNDS 100
static struct {
	int tl;
	_Atomic uint32_t counter;
	sem_t sem;
} shared;

static void *consumer(void *arg)
{
	uint32_t id = (uint32_t)(uintptr_t)arg;
	for (uint32_t i = 0; i < ROUNDS; i++) {
		uint32_t point = i * CONSUMERS + id;
		int f = sw_sync_fence(shared.tl, point);
		if (!readable_within(f, 10000) || shared.counter != point)
			return (void *)1;
		sem_post(&shared.sem);
		CHECK_OK(close(f));
	}
	return NULL;
}

static void *producer(void *arg)
{
	(void)arg;
	for (int i = 0; i < CONSUMERS * ROUNDS; i++) {
		CHECK_OK(sem_wait(&shared.sem));
		shared.counter++;
		sw_sync_inc(shared.tl, 1);
	}
	return NULL;
}

static void threads(void)
{
	shared.tl = sw_sync_timeline();
	shared.counter = 0;
	CHECK_OK(sem_init(&shared.sem, 0, 0));
	pthread_t t[CONSUMERS + 1];
	for (uintptr_t i = 0; i < CONSUMERS; i++)
		CHECK_OK(pthread_create(&t[i], NULL, consumer, (void *)i));
	CHECK_OK(pthread_create(&t[CONSUMERS], NULL, producer, NULL));
	for (int i = 0; i <= CONSUMERS; i++) {
		void *ret;
		CHECK_OK(pthread_join(t[i], &ret));
		CHECK(ret == NULL);
	}
	CHECK(shared.counter == CONSUMERS * ROUNDS);
	CHECK_OK(close(shared.tl));
	sem_destroy(&shared.sem);
}

int main(void)
{
	/* no drm device open: the library's own connection carries it all */
	opens();
	fences();
	copies();
	errors(-1);
	forked();
	threads();

	/* with one open: the same through the program's drm file */
	int drm = open_card();
	errors(drm);
	int tl = sw_sync_timeline();
	int f = sw_sync_fence(tl, 2);
	sw_sync_inc(tl, 2);
	CHECK(readable_within(f, 0));
	int g = sw_sync_fence(tl, 3);
	CHECK_OK(close(tl));
	released(g);
	CHECK_OK(close(f));
	CHECK_OK(close(g));
	forked();
	threads();
	CHECK_OK(close(drm));
	puts("sw_sync ok");
	return 0;
}
