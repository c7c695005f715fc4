/* What the kernel does when the program keeps no handler, under the library: a fault
 * under SIG_DFL or SIG_IGN ends the program with that signal, kill() under SIG_IGN is
 * discarded, and SA_RESETHAND leaves SIG_DFL for the next fault. argv[1] picks the case;
 * the test checks the exit status. */
#include "barrier_common.h"

#include <sys/resource.h>

static volatile int *volatile null16 = (volatile int *)16;
static sigjmp_buf jb;

static void once(int sig)
{
	(void)sig;
	siglongjmp(jb, 1);
}

int main(int argc, char **argv)
{
	struct rlimit no_core = {0, 0};
	struct barrier b = barrier_open(); /* the library's handlers are in place */
	const char *what = argc > 1 ? argv[1] : "";

	CHECK(setrlimit(RLIMIT_CORE, &no_core) == 0);

	b.page[0] = 1;
	CHECK(barrier_count(&b) == 1);
	barrier_look(&b);
	fflush(stdout);
	if (!strcmp(what, "segv-dfl")) {
		*null16 = 1;
	} else if (!strcmp(what, "segv-ign")) {
		CHECK(signal(SIGSEGV, SIG_IGN) == SIG_DFL);
		*null16 = 1;
	} else if (!strcmp(what, "segv-ign-kill")) {
		CHECK(signal(SIGSEGV, SIG_IGN) == SIG_DFL);
		CHECK(kill(getpid(), SIGSEGV) == 0);
		printf("survived\n");
		return 0;
	} else if (!strcmp(what, "segv-dfl-kill")) {
		kill(getpid(), SIGSEGV);
	} else if (!strcmp(what, "trap-dfl")) {
		__asm__ volatile("int3");
	} else if (!strcmp(what, "trap-ign")) {
		CHECK(signal(SIGTRAP, SIG_IGN) == SIG_DFL);
		__asm__ volatile("int3");
	} else if (!strcmp(what, "resethand")) {
		struct sigaction a;

		memset(&a, 0, sizeof(a));
		a.sa_handler = once;
		a.sa_flags = SA_RESETHAND;
		CHECK(sigaction(SIGSEGV, &a, NULL) == 0);
		if (!sigsetjmp(jb, 1))
			*null16 = 1;
		printf("first fault handled\n");
		fflush(stdout);
		*null16 = 2;
	} else {
		return 2;
	}
	printf("still alive\n");
	return 1;
}
