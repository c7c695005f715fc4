/* Shared by the barrier_*.c tests: a barrier page handed over as the daemon would hand it
 * (a memfd page of 0xdeadbeef), mapped by xed_barrier_map() as the mmap interposer would,
 * plus the test's own view of the daemon's page to read the published count. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include "barrier.h"

#define CHECK(cond)                                                                        \
	do {                                                                                   \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
			exit(99);                                                                      \
		}                                                                                  \
	} while (0)

struct barrier {
	volatile uint32_t *page;  /* what the program sees */
	volatile uint32_t *daemon; /* the daemon's page (word 0: the published count) */
	int memfd;
};

static inline struct barrier barrier_open(void)
{
	struct barrier b;

	b.memfd = memfd_create("xe-pci-barrier", MFD_CLOEXEC);
	CHECK(b.memfd >= 0);
	CHECK(ftruncate(b.memfd, 4096) == 0);
	b.daemon = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, b.memfd, 0);
	CHECK(b.daemon != MAP_FAILED);
	for (int i = 0; i < 1024; i++)
		b.daemon[i] = XED_PCI_BARRIER_IDLE;
	b.page = xed_barrier_map(NULL, 4096, PROT_WRITE, MAP_SHARED, b.memfd);
	CHECK(b.page != MAP_FAILED);
	return b;
}

/* The count published in the daemon's page (0 if nothing was). */
static inline uint32_t barrier_count(const struct barrier *b)
{
	uint32_t w = b->daemon[0];

	if (w == XED_PCI_BARRIER_IDLE)
		return 0;
	CHECK((w & ~XED_PCI_BARRIER_SEQ_MASK) == XED_PCI_BARRIER_SEQ_TAG);
	return w & XED_PCI_BARRIER_SEQ_MASK;
}

/* Play the daemon's watcher once: take the number, restore 0xdeadbeef. */
static inline uint32_t barrier_look(const struct barrier *b)
{
	uint32_t n = barrier_count(b);

	b->daemon[0] = XED_PCI_BARRIER_IDLE;
	return n;
}

static inline void barrier_all_idle(const struct barrier *b)
{
	for (int i = 0; i < 1024; i++)
		CHECK(b->page[i] == XED_PCI_BARRIER_IDLE);
}

static inline uint64_t mask_now(void)
{
	sigset_t s;
	uint64_t m;

	CHECK(sigprocmask(SIG_SETMASK, NULL, &s) == 0);
	memcpy(&m, &s, sizeof(m));
	return m;
}
#define SIGBIT(sig) (1ull << ((sig) - 1))
