/*
 * unplug_zap.c - a device unplugged under a C program's mappings (tests/test_preload_unplug.py
 * unplugs it, as admin, when the program says so and tells it on stdin when done).
 *
 *   bo | dmabuf  maps a BO (GEM mmap of the drm fd) or its dma-buf, writes, says
 *                "mapped NAME" (the BO's flink name, for the test to map it by hand),
 *                waits for a line; then its mapping reads zeros, turns anonymous and
 *                private in /proc/self/maps with its own protection (polled, bounded),
 *                keeps what is written to it and never raises SIGBUS; says "written" and
 *                waits for a line before it exits. `bo` maps the read-only info block
 *                (an MMIO region) too: it falls the same way, read-only.
 *   fork         the same for a child forked after the mapping (and its parent): each
 *                mapping falls, and neither sees the other's writes. A mapping the child
 *                did not inherit (MADV_DONTFORK) is not its to zap: memory the child
 *                put at that address itself keeps what it holds.
 *   barrier      the barrier page after the unplug: a store neither crashes nor reaches the
 *                daemon's page (the library's own mapping of it, found in /proc/self/maps,
 *                keeps the emptied page's 0), the page still reads 0xdeadbeef, munmap works.
 *   after        mmap after the unplug (a BO of a file that mapped before, one of a file
 *                that never did, a dma-buf): ENODEV, no crash, no hang. A mapping moved
 *                by mremap falls where it went, and what the program put where it was
 *                is not zapped; a mapping shrunk by mremap falls, and what the program
 *                put where its tail was is not zapped.
 *   many         more mappings than the library's first table holds (4096): the table
 *                grows, and the first, a middle and the last mapping all fall.
 *   exit         one watcher thread per device, started by the first mapping, with every
 *                signal blocked but glibc's own; setgid() still returns; exits while the
 *                watcher waits.
 */
#include "check.h"

#include <dirent.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#define SIZE 0x4000
#define PATIENCE_S 30 /* a bound for the watcher's work, never a measured time */

static uint32_t flink(int fd, uint32_t bo)
{
	struct drm_gem_flink fl = {.handle = bo};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GEM_FLINK, &fl));
	return fl.name;
}

static int export(int fd, uint32_t bo)
{
	struct drm_prime_handle ph = {.handle = bo, .flags = DRM_CLOEXEC | DRM_RDWR};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
	return ph.fd;
}

static void wait_line(void)
{
	char line[64];
	CHECK(fgets(line, sizeof line, stdin) != NULL);
}

static void say(const char *what, unsigned name)
{
	printf(name ? "%s %u\n" : "%s\n", what, name);
	fflush(stdout);
}

/* The line of /proc/self/maps holding p (into line), and whether it is anonymous: no
 * inode, no path (the memfd's line names "/memfd:... (deleted)"). */
static int anonymous(const void *p, char *line, size_t cap)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	int anon = -1;

	CHECK(maps != NULL);
	while (anon < 0 && fgets(line, (int)cap, maps)) {
		unsigned long lo, hi, inode;
		int path = 0;

		CHECK(sscanf(line, "%lx-%lx %*s %*x %*x:%*x %lu %n", &lo, &hi, &inode, &path) == 3);
		if ((uintptr_t)p >= lo && (uintptr_t)p < hi)
			anon = inode == 0 && (line[path] == '\n' || line[path] == 0) && !strstr(line, "memfd:");
	}
	fclose(maps);
	CHECK(anon >= 0); /* still mapped */
	return anon;
}

/* Until p's line is anonymous; then its permissions must be `perms` ("rw-p": private) */
static void until_anonymous_as(const void *p, const char *perms)
{
	struct timespec ms = {0, 1000000}, start, now;
	char line[512];

	clock_gettime(CLOCK_MONOTONIC, &start);
	while (!anonymous(p, line, sizeof line)) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > PATIENCE_S) {
			fprintf(stderr, "%d: still not anonymous: %s", getpid(), line);
			exit(1);
		}
		nanosleep(&ms, NULL);
	}
	if (strncmp(strchr(line, ' ') + 1, perms, 4))
		fprintf(stderr, "not %s: %s", perms, line);
	CHECK(!strncmp(strchr(line, ' ') + 1, perms, 4));
}

static void until_anonymous(const void *p) { until_anonymous_as(p, "rw-p"); }

static int zeros(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* What an unplugged mapping must do: zeros, then anonymous, then keep a write. */
static void fallen(char *p, const char *mine)
{
	CHECK(zeros(p, SIZE));
	until_anonymous(p);
	CHECK(zeros(p, SIZE));
	strcpy(p + 64, mine);
	strcpy(p + SIZE - 64, mine);
	CHECK(!strcmp(p + 64, mine) && !strcmp(p + SIZE - 64, mine));
}

/* The info block (an MMIO region), mapped read-only. */
static const volatile uint32_t *info_map(int fd, size_t *size)
{
	struct drm_xe_mmio_region_open op = info_region_open(fd);
	const volatile uint32_t *info = mmap(NULL, op.size, PROT_READ, MAP_SHARED, fd, (off_t)op.offset);
	CHECK(info != MAP_FAILED);
	*size = op.size;
	return info;
}

static void one(int dmabuf)
{
	int fd = open_card();
	uint32_t bo = bo_create(fd, SIZE);
	const volatile uint32_t *info = NULL;
	size_t info_size = 0;
	char *p;

	if (dmabuf) {
		int buf = export(fd, bo);
		p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, buf, 0);
		CHECK(p != MAP_FAILED);
		CHECK_OK(close(buf));
	} else {
		p = bo_map(fd, bo, SIZE);
		info = info_map(fd, &info_size);
		CHECK(info[0] != 0); /* XE_INFO_DEVICE_ID */
	}
	strcpy(p, "before");
	CHECK(!anonymous(p, (char[512]){0}, 512));
	say("mapped", flink(fd, bo));
	wait_line();
	fallen(p, "after the unplug");
	if (info) {
		until_anonymous_as((const void *)info, "r--p");
		for (size_t i = 0; i < info_size / 4; i++)
			CHECK(info[i] == 0);
	}
	say("written", 0);
	wait_line();
	CHECK(!strcmp(p + 64, "after the unplug")); /* still there: nobody took it away */
}

static void forked(void)
{
	int fd = open_card(), ready[2], go[2], status;
	uint32_t bo = bo_create(fd, SIZE);
	char *p = bo_map(fd, bo, SIZE), byte;
	char *kept = bo_map(fd, bo_create(fd, SIZE), SIZE);
	pid_t child;

	CHECK_OK(madvise(kept, SIZE, MADV_DONTFORK));

	strcpy(p, "before");
	CHECK_OK(pipe(ready));
	CHECK_OK(pipe(go));
	child = fork();
	CHECK(child >= 0);
	if (child == 0) { /* no ioctl, mmap or munmap from here on */
		close(ready[0]);
		close(go[1]);
		/* where `kept` was, memory of the child's own, mapped past the library */
		CHECK((char *)syscall(SYS_mmap, kept, SIZE, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == kept);
		strcpy(kept, "the child's own");
		CHECK(write(ready[1], "r", 1) == 1);
		CHECK(read(go[0], &byte, 1) == 1);
		fallen(p, "the child's");
		CHECK_OK(munmap(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), 4096));
		CHECK(!strcmp(kept, "the child's own")); /* the watcher's pass is over: untouched */
		CHECK(write(ready[1], "w", 1) == 1);
		CHECK(read(go[0], &byte, 1) == 1);
		CHECK(!strcmp(p + 64, "the child's")); /* the parent's write did not reach it */
		_exit(0);
	}
	close(ready[1]); /* a child that fails ends the parent's reads */
	close(go[0]);
	CHECK(read(ready[0], &byte, 1) == 1);
	say("mapped", flink(fd, bo));
	wait_line();
	CHECK(write(go[1], "g", 1) == 1);
	CHECK(read(ready[0], &byte, 1) == 1); /* the child has written */
	fallen(p, "the parent's"); /* and the child's write did not reach this mapping */
	CHECK(write(go[1], "g", 1) == 1);
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	say("written", 0);
	wait_line();
}

/* The library's own mapping of the daemon's barrier page (the memfd), where stores are
 * published. */
static volatile uint32_t *daemon_page(void)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	unsigned long lo = 0, hi;
	char line[512];

	CHECK(maps != NULL);
	while (!lo && fgets(line, sizeof line, maps))
		if (strstr(line, "/memfd:xe-pci-barrier"))
			CHECK(sscanf(line, "%lx-%lx", &lo, &hi) == 2);
	fclose(maps);
	CHECK(lo != 0);
	return (volatile uint32_t *)lo;
}

static void barrier(void)
{
	struct timespec ms = {0, 1000000};
	int fd = open_card();
	struct drm_xe_gem_mmap_offset mo = {.flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
	volatile uint32_t *p = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd, (off_t)mo.offset);
	CHECK(p != MAP_FAILED);
	volatile uint32_t *theirs = daemon_page();

	p[0] = 1; /* counted: the daemon's page reads 0xdeadbeef again once it has looked */
	for (int i = 0; i < PATIENCE_S * 1000 && theirs[0] != 0xdeadbeef; i++)
		nanosleep(&ms, NULL);
	CHECK(theirs[0] == 0xdeadbeef);
	say("mapped", (unsigned)getpid());
	wait_line();
	CHECK(theirs[0] == 0); /* emptied */
	p[0] = 2;
	p[7] = 3;
	CHECK(p[0] == 0xdeadbeef && p[7] == 0xdeadbeef);
	CHECK(theirs[0] == 0); /* nothing published */
	CHECK_OK(munmap((void *)p, 4096));
	CHECK(theirs[0] == 0);
	say("written", 0);
	wait_line();
}

static void after(void)
{
	int fd = open_card(), never = open_card();
	uint32_t bo = bo_create(fd, SIZE), late = bo_create(fd, SIZE);
	uint32_t theirs = bo_create(never, SIZE);
	uint64_t late_at = bo_offset(fd, late), theirs_at = bo_offset(never, theirs);
	int buf = export(fd, late);
	char *p = bo_map(fd, bo, SIZE), *moved = bo_map(fd, bo_create(fd, SIZE), SIZE), *to;
	char *shrunk = bo_map(fd, bo_create(fd, SIZE), SIZE), *tail = shrunk + SIZE / 2;

	strcpy(moved, "moved");
	to = mmap(NULL, SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* a place */
	CHECK(to != MAP_FAILED);
	CHECK(mremap(moved, SIZE, SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, to) == to);
	CHECK(!strcmp(to, "moved"));
	CHECK((char *)syscall(SYS_mmap, moved, SIZE, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == moved);
	strcpy(moved, "not a mapping of the device");
	CHECK(mremap(shrunk, SIZE, SIZE / 2, 0) == shrunk);
	CHECK((char *)syscall(SYS_mmap, tail, SIZE / 2, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == tail);
	strcpy(tail, "not a mapping of the device either");
	say("mapped", flink(fd, bo));
	wait_line();
	CHECK(mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)late_at) == MAP_FAILED);
	CHECK(errno == ENODEV);
	CHECK(mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, never, (off_t)theirs_at) == MAP_FAILED);
	CHECK(errno == ENODEV);
	CHECK(mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, buf, 0) == MAP_FAILED);
	CHECK(errno == ENODEV);
	until_anonymous(p);
	until_anonymous(to);
	until_anonymous(shrunk);
	CHECK(zeros(to, SIZE) && zeros(shrunk, SIZE / 2));
	CHECK_OK(munmap(p, SIZE)); /* once it has the lock, the watcher's pass is over */
	CHECK(!strcmp(moved, "not a mapping of the device"));
	CHECK(!strcmp(tail, "not a mapping of the device either"));
	CHECK_OK(close(buf));
	say("written", 0);
	wait_line();
}

#define MANY 5000

static void many(void)
{
	static char *p[MANY];
	int fd = open_card();
	uint32_t bo = bo_create(fd, SIZE);

	for (int i = 0; i < MANY; i++)
		p[i] = bo_map(fd, bo, SIZE);
	strcpy(p[0], "before");
	CHECK(!strcmp(p[MANY - 1], "before")); /* one BO, mapped MANY times */
	say("mapped", 0);
	wait_line();
	until_anonymous(p[MANY - 1]);
	until_anonymous(p[MANY / 2]);
	until_anonymous(p[0]);
	CHECK(zeros(p[0], SIZE) && zeros(p[MANY - 1], SIZE));
	say("written", 0);
	wait_line();
}

static int tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	CHECK(d != NULL);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* Whether every thread but this one blocks `want` (SigBlk), and how many there are. A
 * new thread starts with every signal blocked and sets its own mask as it begins to run
 * (glibc's start_thread): until then it shows all blocked. */
static int others_block_now(const char *want, int *seen)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	char path[300], line[256];
	int all = 1;

	CHECK(d != NULL);
	*seen = 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == getpid())
			continue;
		snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
		FILE *f = fopen(path, "r");
		CHECK(f != NULL);
		while (fgets(line, sizeof line, f))
			if (!strncmp(line, "SigBlk:", 7)) {
				if (!strstr(line, want))
					all = 0;
				++*seen;
			}
		fclose(f);
	}
	closedir(d);
	return all;
}

/* every thread but this one comes to block exactly `want` (polled: 10 s at most) */
static void others_block(const char *want)
{
	int seen = 0;

	for (int i = 0; i < 1000 && !others_block_now(want, &seen); i++)
		usleep(10000);
	if (!others_block_now(want, &seen))
		fprintf(stderr, "the watcher does not block %s\n", want);
	CHECK(others_block_now(want, &seen));
	CHECK(seen == 1);
}

static void leaves(void)
{
	int fd = open_card();
	uint32_t bo = bo_create(fd, SIZE), other = bo_create(fd, SIZE);

	CHECK(tasks() == 1); /* open starts nothing */
	char *p = bo_map(fd, bo, SIZE);
	CHECK(tasks() == 2); /* the first mapping starts the watcher */
	int buf = export(fd, other);
	char *q = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, buf, 0);
	CHECK(q != MAP_FAILED);
	char *r = bo_map(fd, other, SIZE);
	CHECK(tasks() == 2); /* one per device */
	/* all but glibc's SIGCANCEL and SIGSETXID (and SIGKILL and SIGSTOP, never blocked) */
	others_block("fffffffe7ffbfeff");
	CHECK_OK(setgid(getgid())); /* glibc asks every thread: it must answer */
	p[0] = r[0] = (char)(q[0] + 1);
	exit(0); /* the watcher still waits */
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";

	if (!strcmp(mode, "bo") || !strcmp(mode, "dmabuf"))
		one(!strcmp(mode, "dmabuf"));
	else if (!strcmp(mode, "fork"))
		forked();
	else if (!strcmp(mode, "after"))
		after();
	else if (!strcmp(mode, "barrier"))
		barrier();
	else if (!strcmp(mode, "many"))
		many();
	else if (!strcmp(mode, "exit"))
		leaves();
	else
		CHECK(!"mode: bo, dmabuf, fork, barrier, after, many or exit");
	return 0;
}
