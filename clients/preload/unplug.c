/*
 * unplug.c - a device's unplug as the program lives it: its mappings fall onto zero pages.
 *
 * The kernel zaps every CPU mapping of a device it unplugs, and a later access faults in
 * a private zeroed dummy page: no SIGBUS, and what is written stays there, seen by nobody
 * else. Here the daemon empties the memfds (every mapping reads zeros at once) and turns
 * word 0 of the device's notice page (notice.c); a thread per device waits on it with
 * FUTEX_WAIT and then maps private zero pages of the same protection over every mapping
 * the library made of that device (mmap.c's table: BOs, MMIO regions, dma-bufs), at the
 * same addresses, so that what the program writes afterwards reaches no other process,
 * as the Python library does (clients/unplug.py). Until the thread gets there (a few
 * milliseconds) a write still lands in the emptied memfd. The barrier page is left as it
 * is and stops talking to the daemon by itself (barrier.h, "Unplug"). Mappings made past
 * the library (a raw mmap syscall of a descriptor) keep the emptied memfds.
 *
 * The thread is started by the device's first mapping, not at open, once per device and
 * process; it ends after the unplug's zero pages, for good (mmap then answers ENODEV, and
 * a mapping the daemon granted just before the unplug falls as it is made, mmap.c), and
 * otherwise waits until the process exits, which ends it wherever it is: it holds
 * nothing the exit needs. It is detached and blocks every signal but glibc's own
 * SIGCANCEL and SIGSETXID (setuid() and the like wait until every thread has taken the
 * latter), so the program's handlers never run on it. It touches nothing but the table,
 * under the table's lock, which every holder takes with signals blocked: a handler never
 * finds it held by the code it interrupted, and one that munmaps on another thread waits
 * at most for the watcher's one pass of mmap calls, which never waits for anything.
 *
 * fork: threads do not survive it, mappings do (but MADV_DONTFORK ones, which mmap.c
 * forgets in the child; fork takes the table's lock, so a pass is never half copied).
 * Each device remembers which process's watcher waits on it by an epoch that the child
 * handler of pthread_atfork (config.c) bumps, which marks the parent's watchers as not
 * running in the child; the same handler then zaps what belongs to a device unplugged
 * already and starts the child's watchers for the others, so an inherited mapping falls
 * even in a child that never calls the library again: no window but the few
 * milliseconds above. Creating a thread there is safe with glibc: fork has reset
 * malloc's, stdio's, the loader's and the thread stacks' locks in the child before it
 * runs the child handlers (posix/fork.c), so pthread_create works as in any
 * single-threaded process. The price: such a child is multi-threaded from the start (it
 * cannot unshare(CLONE_NEWUSER), say), as its parent already was. If the thread cannot
 * be made (no memory), the device's next mapping tries again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "preload.h"
#include "proto.h"

#define STACK (64 * 1024) /* syscalls and a log line */
#define BIT(sig) (1ull << ((sig) - 1))
#define WATCHER_MASK (~(BIT(32) | BIT(33))) /* glibc's SIGCANCEL and SIGSETXID stay open */

static _Atomic unsigned epoch = 1; /* this process's; 0 names no process */

static void *watch(void *arg)
{
	struct xed_notice *n = arg;
	uint32_t word;

	while ((word = atomic_load(n->page)) != XED_NOTICE_UNPLUGGED)
		syscall(SYS_futex, n->page, FUTEX_WAIT, word, NULL, NULL, 0);
	maps_zap();
	return NULL;
}

static int start(struct xed_notice *n)
{
	uint64_t mask = WATCHER_MASK, old;
	pthread_attr_t attr;
	pthread_t thread;
	int err = pthread_attr_init(&attr);

	if (err)
		return err;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, STACK);
	/* the new thread starts with this mask: no handler of the program ever runs on it */
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &mask, &old, sizeof(mask));
	err = pthread_create(&thread, &attr, watch, n);
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof(old));
	pthread_attr_destroy(&attr);
	return err;
}

void unplug_watch(struct xed_notice *n)
{
	unsigned mine = atomic_load(&epoch), cur = atomic_load(&n->watcher);
	int saved = errno, err;

	while (cur != mine) {
		if (!atomic_compare_exchange_weak(&n->watcher, &cur, mine))
			continue;
		err = start(n);
		if (err) {
			xed_log("no unplug watcher: %s", strerror(err));
			atomic_compare_exchange_strong(&n->watcher, &mine, 0);
		}
		break;
	}
	errno = saved;
}

void unplug_after_fork(void)
{
	unsigned next = atomic_load(&epoch) + 1;

	atomic_store(&epoch, next ? next : 1);
	maps_watch();
}
