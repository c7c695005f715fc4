/* The PCI barrier page of /dev/dri/card0 under `xec run` (tests/test_preload_barrier.py):
 * mapped as IGT's xe_mmap maps it, every read is 0xdeadbeef, no store is visible, and the
 * daemon counts each store for the drm file. argv[1] picks the case, argv[2] the stores
 * per writer. The program prints "stored <total> pid <pid>" once its pages are unmapped
 * (so the daemon has counted them all), then waits for a line on stdin, keeping its drm
 * files open while the test reads their counts with `xed ctl`.
 *
 * "wake": one barrier after a quiet spell. The program maps the page and prints "mapped
 * pid <pid>", waits for a line (the test sees the daemon's page watcher asleep), stores
 * once, prints "store done pid <pid>" and waits for a line before it unmaps the page.
 * "replugs": the same on a device plugged in anew before each of argv[2] rounds, each
 * round with a drm file of its own, opened after a line on stdin.
 */
#include "check.h" /* first: it asks for _GNU_SOURCE */

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/wait.h>

#include "proto.h"

#define PAGE 4096

static long stores_each;

static uint64_t barrier_offset(int fd)
{
	struct drm_xe_gem_mmap_offset mo = {.handle = 0,
					    .flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};

	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
	CHECK(mo.offset == XED_PCI_BARRIER_MMAP_OFFSET);
	return mo.offset;
}

static volatile uint32_t *map_barrier(int fd)
{
	void *p = mmap64(NULL, PAGE, PROT_WRITE, MAP_SHARED, fd, (off64_t)barrier_offset(fd));

	CHECK(p != MAP_FAILED);
	return p;
}

/* `n` stores of every width at `first` onwards, each read back on the next line */
static void stores(volatile uint32_t *page, long first, long n)
{
	volatile unsigned char *bytes = (volatile unsigned char *)page;

	for (long i = first; i < first + n; i++) {
		unsigned at = (unsigned)(i * 8) % PAGE;

		switch (i % 4) {
		case 0: bytes[at] = (unsigned char)i; break;
		case 1: *(volatile uint16_t *)(bytes + at) = (uint16_t)i; break;
		case 2: *(volatile uint32_t *)(bytes + at) = (uint32_t)i; break;
		default: *(volatile uint64_t *)(bytes + at) = (uint64_t)i; break;
		}
		CHECK(*(volatile uint64_t *)(bytes + at) == 0xdeadbeefdeadbeefull);
	}
}

static void *writer(void *page)
{
	stores(page, 0, stores_each);
	return NULL;
}

static void wait_child(pid_t child)
{
	int status;

	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static sigjmp_buf jb;
static volatile void *fault_addr;

static void on_segv(int sig, siginfo_t *info, void *uc)
{
	(void)sig, (void)uc;
	fault_addr = info->si_addr;
	siglongjmp(jb, 1);
}

/* "replugs": a round per device, each opened anew once a line says it is plugged in */
static int replugs(long rounds)
{
	char line[16];

	for (long round = 0; round < rounds; round++) {
		volatile uint32_t *page;
		int card;

		CHECK(fgets(line, sizeof(line), stdin) != NULL);
		card = open_card();
		page = map_barrier(card);
		printf("mapped round %ld pid %d\n", round, (int)getpid());
		fflush(stdout);
		CHECK(fgets(line, sizeof(line), stdin) != NULL);
		page[0] = 1;
		printf("store done round %ld\n", round);
		fflush(stdout);
		CHECK(fgets(line, sizeof(line), stdin) != NULL);
		CHECK_OK(munmap((void *)page, PAGE));
		CHECK_OK(close(card));
		printf("closed round %ld\n", round);
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "";
	int fd = open_card();
	volatile uint32_t *page;
	long total = 0;
	char line[16];

	stores_each = argc > 2 ? atol(argv[2]) : 1000;
	if (!strcmp(what, "igt")) { /* xe_mmap's pci-membarrier checks, then more stores */
		uint32_t bo = bo_create(fd, PAGE);
		struct drm_xe_gem_mmap_offset bad = {.handle = bo,
						     .flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};

		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &bad), EINVAL);
		CHECK(mmap64(NULL, 2 * PAGE, PROT_WRITE, MAP_SHARED, fd,
			     (off64_t)barrier_offset(fd)) == MAP_FAILED && errno == EINVAL);
		page = map_barrier(fd);
		for (int i = 0; i < PAGE / 4; i++) {
			CHECK(page[i] == XED_PCI_BARRIER_IDLE);
			page[i] = (uint32_t)i;
			CHECK(page[i] != (uint32_t)i);
		}
		stores(page, 0, stores_each);
		total = PAGE / 4 + stores_each;
	} else if (!strcmp(what, "threads")) { /* four threads on one page */
		pthread_t t[4];

		page = map_barrier(fd);
		for (int i = 0; i < 4; i++)
			CHECK_OK(pthread_create(&t[i], NULL, writer, (void *)page));
		for (int i = 0; i < 4; i++)
			CHECK_OK(pthread_join(t[i], NULL));
		total = 4 * stores_each;
	} else if (!strcmp(what, "fork")) { /* parent and child on the inherited page */
		pid_t child;

		page = map_barrier(fd);
		child = fork();
		CHECK(child >= 0);
		stores(page, 0, stores_each);
		if (child == 0) {
			CHECK_OK(munmap((void *)page, PAGE));
			exit(0);
		}
		wait_child(child);
		total = 2 * stores_each;
	} else if (!strcmp(what, "parallel")) { /* xe_mmap's pci-membarrier-parallel */
		char path[64];
		int other;
		pid_t child;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		other = open(path, O_RDWR); /* a drm file of its own */
		CHECK(other >= 0);
		child = fork();
		CHECK(child >= 0);
		page = map_barrier(child == 0 ? other : fd);
		stores(page, 0, stores_each);
		if (child == 0) {
			CHECK_OK(munmap((void *)page, PAGE));
			exit(0);
		}
		wait_child(child);
		total = 2 * stores_each; /* stores_each in each of the two files */
	} else if (!strcmp(what, "segv")) { /* the program's own SIGSEGV handler still fires */
		struct sigaction a = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};

		sigemptyset(&a.sa_mask);
		CHECK_OK(sigaction(SIGSEGV, &a, NULL));
		page = map_barrier(fd);
		for (volatile int i = 0; i < 3; i++) {
			if (!sigsetjmp(jb, 1))
				*(volatile int *)bad_address() = 1;
			CHECK(fault_addr == bad_address());
			fault_addr = NULL;
			stores(page, 0, stores_each);
		}
		total = 3 * stores_each;
	} else if (!strcmp(what, "replaced")) { /* MAP_FIXED over the page ends it */
		struct sigaction a = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};
		volatile uint32_t *ro;

		sigemptyset(&a.sa_mask);
		CHECK_OK(sigaction(SIGSEGV, &a, NULL));
		page = map_barrier(fd);
		stores(page, 0, stores_each);
		ro = mmap((void *)page, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		CHECK(ro == page && ro[0] == 0);
		if (!sigsetjmp(jb, 1))
			ro[1] = 1; /* a read-only page of the program's now: its fault */
		CHECK(fault_addr == ro + 1);
		page = map_barrier(fd); /* (for the checks below) */
		total = stores_each;
	} else if (!strcmp(what, "wake")) {
		page = map_barrier(fd);
		printf("mapped pid %d\n", (int)getpid());
		fflush(stdout);
		CHECK(fgets(line, sizeof(line), stdin) != NULL);
		page[0] = 1;
		printf("store done pid %d\n", (int)getpid());
		fflush(stdout);
		CHECK(fgets(line, sizeof(line), stdin) != NULL);
		total = 1;
	} else if (!strcmp(what, "replugs")) {
		return replugs(stores_each);
	} else if (!strcmp(what, "segv-dfl")) { /* no handler: killed with SIGSEGV */
		page = map_barrier(fd);
		stores(page, 0, stores_each);
		*(volatile int *)bad_address() = 1;
		return 3;
	} else {
		return 2;
	}
	for (int i = 0; i < PAGE / 4; i++)
		CHECK(page[i] == XED_PCI_BARRIER_IDLE);
	CHECK_OK(munmap((void *)page, PAGE));
	printf("stored %ld pid %d\n", total, (int)getpid());
	fflush(stdout);
	CHECK(fgets(line, sizeof(line), stdin) != NULL);
	return 0;
}
