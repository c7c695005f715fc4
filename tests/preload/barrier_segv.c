/* The program's own SIGSEGV and SIGTRAP handlers under the library: called for every
 * fault or trap that is not a barrier store, as the kernel calls them (siginfo, context,
 * mask, SA_NODEFER, SA_ONSTACK, SA_RESETHAND, plain handlers, kill()), and siglongjmp out
 * of them works; the barrier page goes on working in between. */
#include "barrier_common.h"

static sigjmp_buf jb;
static volatile int hits, traps, last_sig;
static siginfo_t last_info;
static void *last_uc, *last_stack;
static uint64_t handler_mask;
static volatile int *volatile null16; /* 16: hidden from the compiler */
static volatile uint32_t n; /* barriers expected */

static void on_segv(int sig, siginfo_t *info, void *uc)
{
	int here;

	hits++;
	last_sig = sig;
	last_info = *info;
	last_uc = uc;
	last_stack = &here;
	handler_mask = mask_now();
	siglongjmp(jb, 1);
}

static void on_segv_plain(int sig)
{
	hits++;
	last_sig = sig;
	siglongjmp(jb, 1);
}

static void skip_store(int sig, siginfo_t *info, void *uc)
{
	(void)sig;
	hits++;
	last_info = *info;
	((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP] += 6; /* movl $1, (%rax) */
}

static void on_trap(int sig, siginfo_t *info, void *uc)
{
	traps++;
	last_sig = sig;
	last_info = *info;
	((ucontext_t *)uc)->uc_mcontext.gregs[REG_EFL] &= ~0x100l;
}

static void set(int sig, void (*fn)(int, siginfo_t *, void *), int flags)
{
	struct sigaction a;

	memset(&a, 0, sizeof(a));
	a.sa_sigaction = fn;
	a.sa_flags = flags;
	sigemptyset(&a.sa_mask);
	sigaddset(&a.sa_mask, SIGUSR1);
	CHECK(sigaction(sig, &a, NULL) == 0);
}

/* Run `fault` expecting the program's handler to be called once (and to jump back). */
#define EXPECT_FAULT(fault)                                                                \
	do {                                                                                   \
		int before = hits;                                                                 \
		if (!sigsetjmp(jb, 1)) {                                                           \
			fault;                                                                         \
			CHECK(!"the fault came back");                                                 \
		}                                                                                  \
		CHECK(hits == before + 1);                                                         \
	} while (0)

int main(void)
{
	struct barrier b;
	volatile int *ro;
	volatile uint32_t *none;
	stack_t alt;

	null16 = (volatile int *)16;
	set(SIGSEGV, on_segv, SA_SIGINFO); /* before the library installs its own */
	b = barrier_open();

	EXPECT_FAULT(*null16 = 1);
	CHECK(last_sig == SIGSEGV && last_info.si_signo == SIGSEGV);
	CHECK(last_info.si_code == SEGV_MAPERR && last_info.si_addr == (void *)16);
	CHECK(last_uc != NULL);
	CHECK(handler_mask & SIGBIT(SIGSEGV) && handler_mask & SIGBIT(SIGUSR1));
	CHECK(!(mask_now() & (SIGBIT(SIGSEGV) | SIGBIT(SIGUSR1)))); /* siglongjmp restored it */
	b.page[0] = 1;
	CHECK(barrier_count(&b) == (n = n + 1) && b.page[0] == XED_PCI_BARRIER_IDLE);
	printf("NULL store: program's handler, si_addr 16, siglongjmp out\n");

	ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED);
	EXPECT_FAULT(ro[3] = 1);
	CHECK(last_info.si_code == SEGV_ACCERR && last_info.si_addr == (void *)(ro + 3));
	printf("read-only page of the program's: its handler, SEGV_ACCERR\n");

	none = xed_barrier_map(NULL, 4096, PROT_NONE, MAP_SHARED, b.memfd);
	CHECK(none != MAP_FAILED);
	EXPECT_FAULT(none[2] = 1);
	CHECK(last_info.si_code == SEGV_ACCERR && last_info.si_addr == (void *)(none + 2));
	EXPECT_FAULT((void)none[5]);
	CHECK(last_info.si_addr == (void *)(none + 5));
	CHECK(barrier_count(&b) == n);
	printf("barrier page mapped PROT_NONE: the program's fault\n");

	set(SIGSEGV, on_segv, SA_SIGINFO | SA_NODEFER);
	EXPECT_FAULT(*null16 = 2);
	CHECK(!(handler_mask & SIGBIT(SIGSEGV)) && handler_mask & SIGBIT(SIGUSR1));
	printf("SA_NODEFER: SIGSEGV not blocked in the handler\n");

	alt.ss_sp = malloc(1 << 16);
	alt.ss_size = 1 << 16;
	alt.ss_flags = 0;
	CHECK(alt.ss_sp && sigaltstack(&alt, NULL) == 0);
	set(SIGSEGV, on_segv, SA_SIGINFO | SA_ONSTACK);
	EXPECT_FAULT(*null16 = 3);
	CHECK((char *)last_stack > (char *)alt.ss_sp &&
	      (char *)last_stack < (char *)alt.ss_sp + alt.ss_size);
	b.page[1] = 1; /* the library's own work on the alternate stack too */
	CHECK(barrier_count(&b) == (n = n + 1));
	printf("SA_ONSTACK: the handler runs on the alternate stack\n");

	set(SIGSEGV, skip_store, SA_SIGINFO);
	hits = 0;
	__asm__ volatile("movq $16, %%rax\n\tmovl $1, (%%rax)" ::: "rax", "memory");
	CHECK(hits == 1 && last_info.si_addr == (void *)16);
	printf("the handler's changes to the context are honoured\n");

	CHECK(signal(SIGSEGV, on_segv_plain) != SIG_ERR);
	EXPECT_FAULT(*null16 = 4);
	CHECK(last_sig == SIGSEGV);
	printf("plain handler: called with the signal number\n");

	set(SIGSEGV, on_segv, SA_SIGINFO);
	EXPECT_FAULT(kill(getpid(), SIGSEGV));
	CHECK(last_info.si_code == SI_USER && last_info.si_pid == getpid());
	printf("kill(SIGSEGV): the program's handler, SI_USER\n");

	set(SIGSEGV, on_segv, SA_SIGINFO | SA_RESETHAND);
	EXPECT_FAULT(*null16 = 5);
	{
		struct sigaction now;

		CHECK(sigaction(SIGSEGV, NULL, &now) == 0);
		CHECK(now.sa_handler == SIG_DFL && now.sa_flags & SA_RESETHAND);
	}
	printf("SA_RESETHAND: the handler is SIG_DFL afterwards\n");

	set(SIGTRAP, on_trap, SA_SIGINFO);
	__asm__ volatile("int3");
	CHECK(traps == 1 && last_sig == SIGTRAP && last_info.si_code == SI_KERNEL);
	CHECK(barrier_count(&b) == n);
	printf("int3: the program's SIGTRAP handler\n");

	/* the program single-steps itself over a barrier store: one barrier, one trap */
	__asm__ volatile("pushfq\n\torq $0x100, (%%rsp)\n\tpopfq\n\tmovl $1, (%0)\n\tnop"
			 ::"r"(b.page + 7) : "memory", "cc");
	CHECK(traps == 2 && last_info.si_code == TRAP_TRACE);
	CHECK(barrier_count(&b) == (n = n + 1));
	printf("the program's own trap flag: its trap after the barrier store\n");

	barrier_look(&b);
	return 0;
}
