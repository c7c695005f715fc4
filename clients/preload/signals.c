/* Signal interposition: the library's SIGSEGV and SIGTRAP handlers stay in the kernel,
 * the program's are recorded here and called exactly as the kernel would call them.
 *
 * Before the first barrier page is mapped nothing is installed: sigaction and friends go
 * straight to libc (installing lazily keeps every program that never maps the page on
 * the kernel's own signal handling, backtraces and all). xed_signals_install() then
 * takes the dispositions it finds in the kernel as the program's and puts the library's
 * handler in their place. From then on, for SIGSEGV and SIGTRAP:
 *   - sigaction() records the program's action (flags and mask normalised as the kernel
 *     and glibc would: unknown flags dropped, SA_RESTORER added, SIGKILL/SIGSTOP out of
 *     the mask) and reads back the program's, never the library's;
 *   - the library's handler mirrors the program's SA_ONSTACK and SA_RESTART, so it runs
 *     on the stack the program's would have and restarts what the program's would;
 *   - a fault or trap that is not a barrier store goes to the program: its mask becomes
 *     the interrupted mask | sa_mask | the signal (unless SA_NODEFER), SA_RESETHAND resets
 *     the recorded handler, then sa_sigaction(sig, info, ucontext) or sa_handler(sig) is
 *     called on the kernel's own siginfo and ucontext (so changes to the context and
 *     siglongjmp out of the handler work as without the library). SIG_DFL, and SIG_IGN
 *     for a signal the kernel raised, restore the default disposition and let the signal
 *     happen again, which ends the program as the kernel would; SIG_IGN for a signal sent
 *     by kill() discards it.
 * Nothing here is specific to x86-64: an aarch64 port keeps this file as it is.
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

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000 /* glibc sets it on every action; the kernel reads it back */
#endif
#define SA_EXPOSE_TAGBITS_ 0x00000800
#define KNOWN_FLAGS                                                                        \
	(SA_NOCLDSTOP | SA_NOCLDWAIT | SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER |      \
	 SA_RESETHAND | SA_EXPOSE_TAGBITS_ | SA_RESTORER)
#define BIT(sig) (1ull << ((sig) - 1))
#define TLS __thread __attribute__((tls_model("initial-exec")))

typedef int sigaction_fn(int, const struct sigaction *, struct sigaction *);
typedef sighandler_t handler_fn(int, sighandler_t);
typedef int mask_fn(int, const sigset_t *, sigset_t *);
typedef int sig_fn(int);

static sigaction_fn *real_sigaction;
static handler_fn *real_signal, *real_sysv_signal, *real_sigset;
static mask_fn *real_sigprocmask, *real_pthread_sigmask;
static sig_fn *real_sighold, *real_sigignore;

/* The program's actions for SIGSEGV (0) and SIGTRAP (1), read by the handler under a
 * sequence count, written under `lock` with every signal blocked. */
struct action {
	struct sigaction sa;
	uint64_t mask; /* sa.sa_mask, first 64 signals */
};
static struct {
	_Atomic unsigned seq;
	struct action act;
} prog[2];
static atomic_flag lock = ATOMIC_FLAG_INIT;
static _Atomic int installed;
static void (*restorer)(void);  /* glibc's, read back from our own action */
static _Atomic uint64_t had_segv; /* signals whose sa_mask the program gave with SIGSEGV */
static TLS uint64_t parked;       /* signals sent while this thread single-stepped a store */

static void on_signal(int sig, siginfo_t *info, void *ctx);

__attribute__((constructor)) static void resolve(void)
{
	if (real_sigaction)
		return;
	real_signal = (handler_fn *)dlsym(RTLD_NEXT, "signal");
	real_sysv_signal = (handler_fn *)dlsym(RTLD_NEXT, "sysv_signal");
	real_sigset = (handler_fn *)dlsym(RTLD_NEXT, "sigset");
	real_sigprocmask = (mask_fn *)dlsym(RTLD_NEXT, "sigprocmask");
	real_pthread_sigmask = (mask_fn *)dlsym(RTLD_NEXT, "pthread_sigmask");
	real_sighold = (sig_fn *)dlsym(RTLD_NEXT, "sighold");
	real_sigignore = (sig_fn *)dlsym(RTLD_NEXT, "sigignore");
	real_sigaction = (sigaction_fn *)dlsym(RTLD_NEXT, "sigaction");
}

static int managed(int sig)
{
	return sig == SIGSEGV ? 0 : sig == SIGTRAP ? 1 : -1;
}

static void setmask(uint64_t mask)
{
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &mask, NULL, sizeof(mask));
}

uint64_t xed_signals_block(void)
{
	uint64_t all = ~0ull, old = 0;

	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(all));
	return old;
}

void xed_signals_restore(uint64_t old)
{
	setmask(old);
}

static uint64_t take_lock(void)
{
	uint64_t old = xed_signals_block();

	while (atomic_flag_test_and_set_explicit(&lock, memory_order_acquire))
		sched_yield();
	return old;
}

static void drop_lock(uint64_t old)
{
	atomic_flag_clear_explicit(&lock, memory_order_release);
	setmask(old);
}

static void read_action(int i, struct action *a)
{
	unsigned seq;

	do {
		while ((seq = atomic_load_explicit(&prog[i].seq, memory_order_acquire)) & 1)
			sched_yield();
		*a = prog[i].act;
		atomic_thread_fence(memory_order_acquire);
	} while (atomic_load_explicit(&prog[i].seq, memory_order_relaxed) != seq);
}

static void write_action(int i, const struct action *a) /* lock held */
{
	atomic_fetch_add_explicit(&prog[i].seq, 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	prog[i].act = *a;
	atomic_fetch_add_explicit(&prog[i].seq, 1, memory_order_release);
}

/* The library's handler in the kernel, with the program's stack and restart choices. */
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
	/* another thread may have held the lock or been half-way through a write */
	atomic_flag_clear(&lock);
	for (int i = 0; i < 2; i++)
		if (atomic_load(&prog[i].seq) & 1)
			atomic_fetch_add(&prog[i].seq, 1);
}

int xed_signals_install(void)
{
	struct sigaction cur;
	uint64_t old;
	int i, err = 0;

	if (atomic_load(&installed))
		return 0;
	resolve();
	if (!real_sigaction) {
		errno = ENOSYS;
		return -1;
	}
	old = take_lock();
	for (i = 0; i < 2 && !atomic_load(&installed); i++) {
		int sig = i ? SIGTRAP : SIGSEGV;

		if (real_sigaction(sig, NULL, &cur) < 0) {
			err = errno;
			break;
		}
		set_action(&prog[i].act, &cur);
		if (to_kernel(sig, &prog[i].act) < 0) {
			err = errno;
			break;
		}
	}
	if (err && i == 1) /* SIGSEGV is ours already: give it back */
		real_sigaction(SIGSEGV, &prog[0].act.sa, NULL);
	if (!err && !atomic_load(&installed)) {
		real_sigaction(SIGSEGV, NULL, &cur);
		restorer = cur.sa_restorer;
		pthread_atfork(NULL, NULL, child_after_fork);
		atomic_store(&installed, 1);
	}
	drop_lock(old);
	if (err)
		errno = err;
	return err ? -1 : 0;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *oldact)
{
	struct sigaction in;
	struct action a, prev;
	uint64_t old, had;
	int i = managed(sig), segv = 0, r = 0;

	resolve();
	if (act) { /* SIGSEGV is never blocked (signals.h); remembered for the read-back */
		in = *act;
		segv = sigismember(&in.sa_mask, SIGSEGV) == 1;
		sigdelset(&in.sa_mask, SIGSEGV);
	}
	old = i < 0 ? 0 : take_lock();
	had = sig > 0 && sig <= 64 ? atomic_load(&had_segv) & BIT(sig) : 0;
	if (i < 0 || !atomic_load(&installed)) {
		r = real_sigaction(sig, act ? &in : NULL, oldact);
	} else {
		prev = prog[i].act;
		if (act) {
			set_action(&a, &in);
			a.sa.sa_flags = (in.sa_flags & KNOWN_FLAGS) | SA_RESTORER;
			a.sa.sa_restorer = restorer;
			write_action(i, &a);
			to_kernel(sig, &a);
		}
		if (oldact)
			*oldact = prev.sa;
	}
	if (i >= 0)
		drop_lock(old);
	if (r == 0 && oldact && had)
		sigaddset(&oldact->sa_mask, SIGSEGV);
	if (r == 0 && act && sig > 0 && sig <= 64)
		segv ? atomic_fetch_or(&had_segv, BIT(sig)) : atomic_fetch_and(&had_segv, ~BIT(sig));
	return r;
}
__typeof__(sigaction) __sigaction __attribute__((alias("sigaction"), copy(sigaction)));

/* signal() and its relatives build the action glibc would build, then go through ours. */
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

sighandler_t signal(int sig, sighandler_t handler)
{
	resolve();
	return managed(sig) < 0 ? real_signal(sig, handler) : simple(sig, handler, SA_RESTART, 1);
}
__typeof__(signal) bsd_signal __attribute__((alias("signal"), copy(signal)));
__typeof__(signal) ssignal __attribute__((alias("signal"), copy(signal)));

sighandler_t sysv_signal(int sig, sighandler_t handler)
{
	resolve();
	if (managed(sig) < 0)
		return real_sysv_signal(sig, handler);
	return simple(sig, handler, SA_RESETHAND | SA_NODEFER, 0);
}
__typeof__(sysv_signal) __sysv_signal __attribute__((alias("sysv_signal"), copy(sysv_signal)));

int sigignore(int sig)
{
	resolve();
	if (managed(sig) < 0)
		return real_sigignore(sig);
	return simple(sig, SIG_IGN, 0, 0) == SIG_ERR ? -1 : 0;
}

sighandler_t sigset(int sig, sighandler_t disp)
{
	sigset_t one, was;
	struct sigaction a, old;

	resolve();
	if (managed(sig) < 0)
		return real_sigset(sig, disp);
	if (disp == SIG_ERR) {
		errno = EINVAL;
		return SIG_ERR;
	}
	sigemptyset(&one);
	sigaddset(&one, sig);
	memset(&a, 0, sizeof(a));
	a.sa_handler = disp;
	sigemptyset(&a.sa_mask);
	if (disp == SIG_HOLD) {
		if (sigprocmask(SIG_BLOCK, &one, &was) < 0)
			return SIG_ERR;
		if (sigismember(&was, sig))
			return SIG_HOLD;
		return sigaction(sig, NULL, &old) < 0 ? SIG_ERR : old.sa_handler;
	}
	if (sigaction(sig, &a, &old) < 0 || sigprocmask(SIG_UNBLOCK, &one, &was) < 0)
		return SIG_ERR;
	return sigismember(&was, sig) ? SIG_HOLD : old.sa_handler;
}

static const sigset_t *without_segv(int how, const sigset_t *set, sigset_t *copy)
{
	if (!set || how == SIG_UNBLOCK || sigismember(set, SIGSEGV) != 1)
		return set;
	*copy = *set;
	sigdelset(copy, SIGSEGV);
	return copy;
}

int sigprocmask(int how, const sigset_t *set, sigset_t *oldset)
{
	sigset_t copy;

	resolve();
	return real_sigprocmask(how, without_segv(how, set, &copy), oldset);
}

int pthread_sigmask(int how, const sigset_t *set, sigset_t *oldset)
{
	sigset_t copy;

	resolve();
	return real_pthread_sigmask(how, without_segv(how, set, &copy), oldset);
}

int sighold(int sig)
{
	resolve();
	return sig == SIGSEGV ? 0 : real_sighold(sig);
}

/* Not the program's to keep: restore the default and let the signal happen again. A
 * fault repeats by itself when the handler returns; anything else is sent again (it
 * stays pending until this handler returns). */
static void die(int sig, const siginfo_t *info)
{
	struct sigaction dfl;
	uint64_t old;

	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	old = take_lock();
	real_sigaction(sig, &dfl, NULL);
	drop_lock(old);
	if (sig != SIGSEGV || info->si_code <= 0)
		syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig);
}

static void deliver(int sig, siginfo_t *info, ucontext_t *uc)
{
	int i = managed(sig);
	struct action a;
	uint64_t mask, old;

	read_action(i, &a);
	if (a.sa.sa_handler == SIG_IGN && info->si_code <= 0)
		return; /* sent with kill() and ignored: the kernel drops it */
	if (a.sa.sa_handler == SIG_DFL || a.sa.sa_handler == SIG_IGN) {
		die(sig, info);
		return;
	}
	if (a.sa.sa_flags & SA_RESETHAND) { /* the kernel resets the handler, nothing else */
		struct action now;

		old = take_lock();
		now = prog[i].act;
		now.sa.sa_handler = SIG_DFL;
		write_action(i, &now);
		drop_lock(old);
	}
	memcpy(&mask, &uc->uc_sigmask, sizeof(mask));
	mask |= a.mask | (a.sa.sa_flags & SA_NODEFER ? 0 : BIT(sig));
	setmask(mask);
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
	if (parked && !xed_barrier_stepping()) {
		for (int s = 1; s <= 64; s++)
			if (parked & BIT(s))
				syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), s);
		parked = 0;
	}
	errno = saved;
	if (ours != 1) /* 2: ours, and the program's own trap flag wants its SIGTRAP too */
		deliver(sig, info, uc);
}
