/* What sigaction() and its relatives read back for SIGSEGV and SIGTRAP under the library
 * is what the kernel and libc read back for SIGBUS, which the library leaves alone: the
 * program's handler, flags and mask, never the library's. Also pinned: SIGSEGV is never
 * really blocked (the library's departure), and a disposition inherited across exec
 * becomes the program's. */
#include "barrier_common.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* sigset and co. on purpose */
sighandler_t bsd_signal(int sig, sighandler_t handler);

static void h1(int sig) { (void)sig; }
static void h2(int sig, siginfo_t *info, void *uc) { (void)sig, (void)info, (void)uc; }

static void same(int sig, const struct sigaction *got, const struct sigaction *want)
{
	if (got->sa_handler != want->sa_handler || got->sa_flags != want->sa_flags ||
	    got->sa_restorer != want->sa_restorer) {
		fprintf(stderr, "signal %d: handler %p flags %#x, want %p %#x\n", sig,
			(void *)got->sa_handler, got->sa_flags, (void *)want->sa_handler, want->sa_flags);
		exit(97);
	}
	for (int s = 1; s <= 64; s++)
		if (sigismember(&got->sa_mask, s) != sigismember(&want->sa_mask, s)) {
			fprintf(stderr, "signal %d: mask differs at %d\n", sig, s);
			exit(97);
		}
}

/* Set the same action on SIGBUS and `sig`: both read back alike. */
static void compare(int sig, void (*fn)(int), int flags, const int *mask)
{
	struct sigaction a, bus, ours;

	memset(&a, 0, sizeof(a));
	if (flags & SA_SIGINFO)
		a.sa_sigaction = h2;
	else
		a.sa_handler = fn;
	a.sa_flags = flags;
	sigemptyset(&a.sa_mask);
	for (; *mask; mask++)
		sigaddset(&a.sa_mask, *mask);
	CHECK(sigaction(SIGBUS, &a, NULL) == 0 && sigaction(sig, &a, NULL) == 0);
	CHECK(sigaction(SIGBUS, NULL, &bus) == 0 && sigaction(sig, NULL, &ours) == 0);
	same(sig, &ours, &bus);
}

static void all_cases(int sig)
{
	static const int none[] = {0}, usr1[] = {SIGUSR1, 0},
			 many[] = {SIGUSR1, SIGSEGV, SIGKILL, SIGSTOP, SIGTRAP, 40, 64, 0};

	compare(sig, h1, 0, none);
	compare(sig, NULL, SA_SIGINFO, usr1);
	compare(sig, h1, SA_NODEFER | SA_RESETHAND | SA_ONSTACK | SA_RESTART | 0x20000000, many);
	compare(sig, SIG_IGN, 0, many);
	compare(sig, SIG_DFL, SA_RESTART, usr1);
	/* signal() and friends build the same actions */
	CHECK(signal(SIGBUS, h1) != SIG_ERR && signal(sig, h1) != SIG_ERR);
	CHECK(signal(SIGBUS, SIG_DFL) == h1 && signal(sig, SIG_DFL) == h1);
	CHECK(sysv_signal(SIGBUS, h1) == SIG_DFL && sysv_signal(sig, h1) == SIG_DFL);
	compare(sig, SIG_DFL, 0, none); /* (compares the sysv_signal read-back first) */
	CHECK(bsd_signal(SIGBUS, h1) == SIG_DFL && bsd_signal(sig, h1) == SIG_DFL);
	CHECK(sigset(SIGBUS, h1) == h1 && sigset(sig, h1) == h1);
	CHECK(sigignore(SIGBUS) == 0 && sigignore(sig) == 0);
	CHECK(signal(SIGBUS, SIG_DFL) == SIG_IGN && signal(sig, SIG_DFL) == SIG_IGN);
	CHECK(sigset(sig, SIG_HOLD) == SIG_DFL);
	CHECK(sigset(sig, SIG_DFL) == (sig == SIGSEGV ? SIG_DFL : SIG_HOLD));
}

static volatile uint32_t *page;
static uint64_t usr1_mask;

static void on_usr1(int sig)
{
	(void)sig;
	usr1_mask = mask_now();
	page[0] = 1; /* a barrier store in a handler whose sa_mask named SIGSEGV */
}

int main(int argc, char **argv)
{
	struct sigaction a, o;
	struct barrier b;
	sigset_t set;

	if (argc > 1 && !strcmp(argv[1], "exec")) { /* come back with SIGSEGV ignored */
		CHECK(signal(SIGSEGV, SIG_IGN) != SIG_ERR && signal(SIGTRAP, SIG_IGN) != SIG_ERR);
		execl("/proc/self/exe", argv[0], "inherited", (char *)NULL);
		return 3;
	}
	if (argc > 1 && !strcmp(argv[1], "inherited")) {
		b = barrier_open();
		CHECK(sigaction(SIGSEGV, NULL, &o) == 0 && o.sa_handler == SIG_IGN);
		CHECK(sigaction(SIGTRAP, NULL, &o) == 0 && o.sa_handler == SIG_IGN);
		barrier_look(&b);
		printf("inherited SIG_IGN read back\n");
		return 0;
	}
	all_cases(SIGSEGV); /* the library is not installed yet: libc's own answers */
	b = barrier_open();
	all_cases(SIGSEGV);
	all_cases(SIGTRAP);
	printf("read-back equals the kernel's\n");

	sigemptyset(&set);
	sigaddset(&set, SIGSEGV);
	sigaddset(&set, SIGUSR1);
	CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
	CHECK(mask_now() & SIGBIT(SIGUSR1) && !(mask_now() & SIGBIT(SIGSEGV)));
	CHECK(pthread_sigmask(SIG_SETMASK, &set, NULL) == 0 && !(mask_now() & SIGBIT(SIGSEGV)));
	CHECK(sighold(SIGSEGV) == 0 && !(mask_now() & SIGBIT(SIGSEGV)));
	CHECK(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);
	printf("SIGSEGV is never blocked\n");

	page = b.page;
	memset(&a, 0, sizeof(a));
	a.sa_handler = on_usr1;
	sigfillset(&a.sa_mask);
	CHECK(sigaction(SIGUSR1, &a, NULL) == 0 && sigaction(SIGUSR1, NULL, &o) == 0);
	CHECK(sigismember(&o.sa_mask, SIGSEGV) == 1);
	CHECK(raise(SIGUSR1) == 0);
	CHECK(usr1_mask & SIGBIT(SIGINT) && !(usr1_mask & SIGBIT(SIGSEGV)));
	CHECK(barrier_count(&b) == 1);
	printf("a handler's sa_mask reads back SIGSEGV but does not block it\n");
	barrier_look(&b);
	return 0;
}
