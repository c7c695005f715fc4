/* IGT's small-bar pattern under the library: signal(SIGBUS) with sigsetjmp/siglongjmp out
 * of the handler around a store that raises SIGBUS, and the same with signal(SIGSEGV)
 * around NULL stores, several times over (each siglongjmp restores the mask, so every
 * fault reaches the handler); barrier stores keep counting in between. */
#include "barrier_common.h"

static sigjmp_buf jmp;

__attribute__((noreturn)) static void trap_to_jmp(int sig)
{
	siglongjmp(jmp, sig);
}

static int store_expecting(volatile uint32_t *ptr, int sig)
{
	sighandler_t old = signal(sig, trap_to_jmp);
	int got;

	CHECK(old != SIG_ERR);
	switch ((got = sigsetjmp(jmp, sig))) {
	case 0:
		*ptr = 0xdeadbeaf;
		CHECK(!"reached");
		break;
	default:
		break;
	}
	CHECK(signal(sig, old) == trap_to_jmp);
	return got;
}

int main(void)
{
	struct barrier b = barrier_open();
	int empty = memfd_create("empty", MFD_CLOEXEC);
	volatile uint32_t *beyond_eof;

	CHECK(empty >= 0);
	beyond_eof = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, empty, 0);
	CHECK(beyond_eof != MAP_FAILED);
	for (uint32_t i = 1; i <= 3; i++) {
		CHECK(store_expecting(beyond_eof, SIGBUS) == SIGBUS);
		CHECK(store_expecting((volatile uint32_t *)(uintptr_t)8, SIGSEGV) == SIGSEGV);
		CHECK(!(mask_now() & (SIGBIT(SIGBUS) | SIGBIT(SIGSEGV))));
		b.page[i] = i;
		CHECK(barrier_count(&b) == i && b.page[i] == XED_PCI_BARRIER_IDLE);
	}
	CHECK(signal(SIGSEGV, SIG_DFL) == SIG_DFL && signal(SIGBUS, SIG_DFL) == SIG_DFL);
	barrier_look(&b);
	printf("ok\n");
	return 0;
}
