/* The cost of one barrier store through the fault path (benchmark, not a test): N stores
 * (default 100000) to the barrier page, timed, as JSON. The count is checked, the time is
 * only reported. */
#include "barrier_common.h"

#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	struct barrier b = barrier_open();
	long n = argc > 1 ? atol(argv[1]) : 100000;
	double t0, t1;

	CHECK(n > 0 && n < (long)XED_PCI_BARRIER_SEQ_MASK);
	b.page[0] = 0; /* warm up: slots touched, handlers resolved */
	barrier_look(&b);
	t0 = now();
	for (long i = 0; i < n; i++)
		b.page[i & 1023] = (uint32_t)i;
	t1 = now();
	CHECK(barrier_count(&b) == (uint32_t)n + 1);
	barrier_look(&b);
	printf("{\"stores\": %ld, \"seconds\": %.6f, \"us_per_store\": %.3f}\n", n, t1 - t0,
	       (t1 - t0) * 1e6 / n);
	return 0;
}
