/* Signal interposition: the library's SIGSEGV and SIGTRAP handlers stay in the kernel,
 * the program's are recorded here and called as the kernel would call them (signals.h).
 */
#define _GNU_SOURCE
#include "signals.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include "barrier.h"

#define SA_RESTORER_ 0x04000000 /* glibc sets it on every action; the kernel reads it back */
#define KNOWN_FLAGS                                                                        \
	(SA_NOCLDSTOP | SA_NOCLDWAIT | SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER |      \
	 SA_RESETHAND | 0x800 /* SA_EXPOSE_TAGBITS */ | SA_RESTORER_)
#define BIT(sig) (1ull << ((sig) - 1))
/* interposers stay visible when the library is built with -fvisibility=hidden */
#define EXPORT __attribute__((visibility("default")))

typedef int sigaction_fn(int, const struct sigaction *, struct sigaction *);
typedef sighandler_t handler_fn(int, sighandler_t);
typedef int mask_fn(int, const sigset_t *, sigset_t *);
static sigaction_fn *real_sigaction;
static handler_fn *real_signal; /* (it honours siginterrupt()) */
static mask_fn *real_sigprocmask, *real_pthread_sigmask;

/* The program's actions for SIGSEGV (0) and SIGTRAP (1), under `lock`, which is only
 * ever taken with every signal blocked (so a handler can wait for it). */
static struct action {
	struct sigaction sa;
	uint64_t mask; /* sa.sa_mask, first 64 signals */
} prog[2];
static atomic_flag lock = ATOMIC_FLAG_INIT;
static _Atomic int installed;
static void (*restorer)(void);  /* glibc's, read back from our own action */
static _Atomic uint64_t had_segv; /* signals whose sa_mask the program gave with SIGSEGV */
static __thread __attribute__((tls_model("initial-exec"))) uint64_t parked;

static void on_signal(int sig, siginfo_t *info, void *ctx);

__attribute__((constructor)) static void resolve(void)
{
	if (real_sigaction)
		return;
	real_signal = (handler_fn *)dlsym(RTLD_NEXT, "signal");
	real_sigprocmask = (mask_fn *)dlsym(RTLD_NEXT, "sigprocmask");
	real_pthread_sigmask = (mask_fn *)dlsym(RTLD_NEXT, "pthread_sigmask");
	real_sigaction = (sigaction_fn *)dlsym(RTLD_NEXT, "sigaction");
}

static int managed(int sig)
{
	return sig == SIGSEGV ? 0 : sig == SIGTRAP ? 1 : -1;
}

void xed_signals_restore(uint64_t old)
{
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof(old));
}

uint64_t xed_signals_block(void)
{
	uint64_t all = ~0ull, old = 0;

	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(all));
	return old;
}

uint64_t xed_lock(atomic_flag *l)
{
	uint64_t old = xed_signals_block();

	while (atomic_flag_test_and_set_explicit(l, memory_order_acquire))
		sched_yield();
	return old;
}

void xed_unlock(atomic_flag *l, uint64_t old)
{
	atomic_flag_clear_explicit(l, memory_order_release);
	xed_signals_restore(old);
}

static uint64_t take_lock(void) { return xed_lock(&lock); }

static void drop_lock(uint64_t old) { xed_unlock(&lock, old); }

static struct action read_action(int i)
{
	uint64_t old = take_lock();
	struct action a = prog[i];

	drop_lock(old);
	return a;
}

static int to_kernel(int sig, const struct action *a)
{
	struct sigaction k;

	memset(&k, 0, sizeof(k));
	k.sa_sigaction = on_signal;
	sigfillset(&k.sa_mask);
	k.sa_flags = SA_SIGINFO | (a->sa.sa_flags & (SA_ONSTACK | SA_RESTART));
	return real_sigaction(sig, &k, NULL);
}

static void set_action(struct action *a, const struct sigaction *sa)
{
	a->sa = *sa;
	memcpy(&a->mask, &sa->sa_mask, sizeof(a->mask));
	a->mask &= ~(BIT(SIGKILL) | BIT(SIGSTOP) | BIT(SIGSEGV));
	sigemptyset(&a->sa.sa_mask);
	memcpy(&a->sa.sa_mask, &a->mask, sizeof(a->mask));
}

static void child_after_fork(void)
{
	atomic_flag_clear(&lock); /* another thread may have held it */
}

int xed_signals_install(void)
{
	struct sigaction cur;
	uint64_t old;
	int i, err = 0;

	if (atomic_load(&installed))
		return 0;
	resolve();
	old = take_lock();
	for (i = 0; i < 2 && !atomic_load(&installed) && !err; i++) {
		if (real_sigaction(i ? SIGTRAP : SIGSEGV, NULL, &cur) < 0)
			err = errno;
		set_action(&prog[i], &cur);
		if (!err && to_kernel(i ? SIGTRAP : SIGSEGV, &prog[i]) < 0)
			err = errno;
	}
	if (err && i == 2) /* SIGSEGV is ours already: give it back */
		real_sigaction(SIGSEGV, &prog[0].sa, NULL);
	if (!err && !atomic_load(&installed)) {
		real_sigaction(SIGSEGV, NULL, &cur);
		restorer = cur.sa_restorer;
		pthread_atfork(NULL, NULL, child_after_fork);
		atomic_store(&installed, 1);
	}
	drop_lock(old);
	errno = err ? err : errno;
	return err ? -1 : 0;
}

EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *oldact)
{
	struct sigaction in;
	struct action prev;
	int i = managed(sig), segv = 0, r = 0;
	uint64_t old, had, bit = sig > 0 && sig <= 64 ? BIT(sig) : 0;

	resolve();
	if (act) { /* SIGSEGV is never blocked (signals.h); remembered for the read-back */
		in = *act;
		segv = sigismember(&in.sa_mask, SIGSEGV) == 1;
		sigdelset(&in.sa_mask, SIGSEGV);
	}
	old = take_lock();
	had = atomic_load(&had_segv) & bit;
	if (i < 0 || !atomic_load(&installed)) {
		r = real_sigaction(sig, act ? &in : NULL, oldact);
	} else {
		prev = prog[i];
		if (act) {
			set_action(&prog[i], &in);
			prog[i].sa.sa_flags = (in.sa_flags & KNOWN_FLAGS) | SA_RESTORER_;
			prog[i].sa.sa_restorer = restorer;
			to_kernel(sig, &prog[i]);
		}
		if (oldact)
			*oldact = prev.sa;
	}
	drop_lock(old);
	if (r == 0 && oldact && had)
		sigaddset(&oldact->sa_mask, SIGSEGV);
	if (r == 0 && act)
		segv ? atomic_fetch_or(&had_segv, bit) : atomic_fetch_and(&had_segv, ~bit);
	return r;
}
__typeof__(sigaction) __sigaction __attribute__((alias("sigaction"), copy(sigaction), visibility("default")));

/* signal() and its relatives: the action glibc would build, through our sigaction (for
 * every signal: glibc's own would call its internal sigaction, past ours). */
static sighandler_t simple(int sig, sighandler_t handler, int flags, int self)
{
	struct sigaction a, old;

	if (handler == SIG_ERR) {
		errno = EINVAL;
		return SIG_ERR;
	}
	memset(&a, 0, sizeof(a));
	a.sa_handler = handler;
	sigemptyset(&a.sa_mask);
	if (self)
		sigaddset(&a.sa_mask, sig);
	a.sa_flags = flags;
	return sigaction(sig, &a, &old) < 0 ? SIG_ERR : old.sa_handler;
}

EXPORT sighandler_t signal(int sig, sighandler_t handler)
{
	resolve();
	return managed(sig) < 0 ? real_signal(sig, handler) : simple(sig, handler, SA_RESTART, 1);
}
__typeof__(signal) bsd_signal __attribute__((alias("signal"), copy(signal), visibility("default")));
__typeof__(signal) ssignal __attribute__((alias("signal"), copy(signal), visibility("default")));

EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler)
{
	return simple(sig, handler, SA_RESETHAND | SA_NODEFER, 0);
}
__typeof__(sysv_signal) __sysv_signal
	__attribute__((alias("sysv_signal"), copy(sysv_signal), visibility("default")));

EXPORT int sigignore(int sig)
{
	return simple(sig, SIG_IGN, 0, 0) == SIG_ERR ? -1 : 0;
}

EXPORT sighandler_t sigset(int sig, sighandler_t disp)
{
	sigset_t one, was;
	struct sigaction old;
	sighandler_t prev;

	if (sigemptyset(&one) < 0 || sigaddset(&one, sig) < 0)
		return SIG_ERR;
	if (disp == SIG_HOLD) {
		if (sigprocmask(SIG_BLOCK, &one, &was) < 0)
			return SIG_ERR;
		if (sigismember(&was, sig))
			return SIG_HOLD;
		return sigaction(sig, NULL, &old) < 0 ? SIG_ERR : old.sa_handler;
	}
	prev = simple(sig, disp, 0, 0);
	if (prev == SIG_ERR || sigprocmask(SIG_UNBLOCK, &one, &was) < 0)
		return SIG_ERR;
	return sigismember(&was, sig) ? SIG_HOLD : prev;
}

static const sigset_t *without_segv(int how, const sigset_t *set, sigset_t *copy)
{
	if (!set || how == SIG_UNBLOCK || sigismember(set, SIGSEGV) != 1)
		return set;
	*copy = *set;
	sigdelset(copy, SIGSEGV);
	return copy;
}

EXPORT int sigprocmask(int how, const sigset_t *set, sigset_t *oldset)
{
	sigset_t copy;

	resolve();
	return real_sigprocmask(how, without_segv(how, set, &copy), oldset);
}

EXPORT int pthread_sigmask(int how, const sigset_t *set, sigset_t *oldset)
{
	sigset_t copy;

	resolve();
	return real_pthread_sigmask(how, without_segv(how, set, &copy), oldset);
}

EXPORT int sighold(int sig)
{
	sigset_t one;

	if (sigemptyset(&one) < 0 || sigaddset(&one, sig) < 0)
		return -1;
	return sigprocmask(SIG_BLOCK, &one, NULL);
}

static void send_self(int sig)
{
	syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig);
}

static void deliver(int sig, siginfo_t *info, ucontext_t *uc)
{
	int i = managed(sig);
	struct action a = read_action(i);
	uint64_t mask, old;

	if (a.sa.sa_handler == SIG_IGN && info->si_code <= 0)
		return; /* sent with kill() and ignored: the kernel drops it */
	if (a.sa.sa_handler == SIG_DFL || a.sa.sa_handler == SIG_IGN) {
		struct sigaction dfl = {.sa_handler = SIG_DFL};

		old = take_lock();
		real_sigaction(sig, &dfl, NULL);
		drop_lock(old);
		if (sig != SIGSEGV || info->si_code <= 0)
			send_self(sig); /* pending until this handler returns */
		return;
	}
	if (a.sa.sa_flags & SA_RESETHAND) { /* the kernel resets the handler, nothing else */
		old = take_lock();
		prog[i].sa.sa_handler = SIG_DFL;
		drop_lock(old);
	}
	memcpy(&mask, &uc->uc_sigmask, sizeof(mask));
	xed_signals_restore(mask | a.mask | (a.sa.sa_flags & SA_NODEFER ? 0 : BIT(sig)));
	if (a.sa.sa_flags & SA_SIGINFO)
		a.sa.sa_sigaction(sig, info, uc);
	else
		a.sa.sa_handler(sig);
}

static void on_signal(int sig, siginfo_t *info, void *ctx)
{
	ucontext_t *uc = ctx;
	int saved = errno, ours;

	if (info->si_code <= 0 && xed_barrier_stepping()) {
		parked |= BIT(sig); /* sent mid-step: delivered once the store is done */
		errno = saved;
		return;
	}
	ours = sig == SIGSEGV ? xed_barrier_fault(info, uc) : xed_barrier_trap(info, uc);
	for (int s = 1; parked && !xed_barrier_stepping() && s <= 64; s++) {
		if (parked & BIT(s))
			send_self(s);
		parked &= ~BIT(s);
	}
	errno = saved;
	if (ours != 1) /* 2: ours, and the program's own trap flag wants its SIGTRAP too */
		deliver(sig, info, uc);
}
