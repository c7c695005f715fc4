/* Four threads store to one barrier page at once (one of them with every signal
 * blocked) while a fifth reads every word: the count is exactly the number of stores,
 * and the reader never sees anything but 0xdeadbeef. */
#include "barrier_common.h"

#include <pthread.h>
#include <stdatomic.h>

#define WRITERS 4
#define STORES 20000

static struct barrier b;
static atomic_int writing = WRITERS;
static atomic_ulong seen_other;

static void *writer(void *arg)
{
	long id = (long)arg;

	if (id == 0) { /* a thread that blocked everything (as many libraries do) */
		sigset_t all;

		sigfillset(&all);
		CHECK(pthread_sigmask(SIG_BLOCK, &all, NULL) == 0);
	}
	for (int i = 0; i < STORES; i++) {
		b.page[(id * 64 + i) % 1024] = (uint32_t)i;
		if (b.page[(id * 64 + i) % 1024] != XED_PCI_BARRIER_IDLE)
			atomic_fetch_add(&seen_other, 1);
	}
	atomic_fetch_sub(&writing, 1);
	return NULL;
}

static void *reader(void *arg)
{
	(void)arg;
	while (atomic_load(&writing))
		for (int i = 0; i < 1024; i++)
			if (b.page[i] != XED_PCI_BARRIER_IDLE)
				atomic_fetch_add(&seen_other, 1);
	return NULL;
}

int main(void)
{
	pthread_t t[WRITERS + 1];

	b = barrier_open();
	CHECK(pthread_create(&t[WRITERS], NULL, reader, NULL) == 0);
	for (long i = 0; i < WRITERS; i++)
		CHECK(pthread_create(&t[i], NULL, writer, (void *)i) == 0);
	for (int i = 0; i <= WRITERS; i++)
		CHECK(pthread_join(t[i], NULL) == 0);
	printf("count %u seen %lu\n", barrier_count(&b), atomic_load(&seen_other));
	CHECK(barrier_count(&b) == WRITERS * STORES);
	CHECK(atomic_load(&seen_other) == 0);
	barrier_all_idle(&b);
	barrier_look(&b);
	return 0;
}
