/* A forked child shares the parent's barrier page and count: parent and child store at
 * once, the child also through a second mapping of the same page, and the count is
 * exactly the sum. Neither sees the other's values, nor its own. */
#include "barrier_common.h"

#define STORES 20000

static void stores(volatile uint32_t *page, int n, uint32_t value)
{
	for (int i = 0; i < n; i++) {
		page[i % 1024] = value;
		CHECK(page[i % 1024] == XED_PCI_BARRIER_IDLE);
	}
}

int main(void)
{
	struct barrier b = barrier_open();
	int status;
	pid_t child;

	b.page[0] = 1;
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		volatile uint32_t *again;

		barrier_all_idle(&b);
		stores(b.page, STORES, 2);
		again = xed_barrier_map(NULL, 4096, PROT_WRITE, MAP_SHARED, b.memfd);
		CHECK(again != MAP_FAILED && again != b.page);
		stores(again, STORES, 3);
		xed_barrier_unmap((void *)again, 4096);
		CHECK(munmap((void *)again, 4096) == 0);
		_exit(0); /* the parent plays the daemon: nothing to flush for */
	}
	stores(b.page, STORES, 4);
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	printf("count %u\n", barrier_count(&b));
	CHECK(barrier_count(&b) == 1 + 3 * STORES);
	barrier_look(&b);
	return 0;
}
