/*
 * eventfd.c - DRM_IOCTL_SYNCOBJ_EVENTFD (drm_syncobj_eventfd_ioctl), emulated here: the
 * daemon never writes to a program's eventfd (a full counter would block it).
 *
 * Checks in the kernel's order: flags other than WAIT_AVAILABLE, then pad (EINVAL);
 * then the handle (ENOENT), found by a TIMELINE_WAIT of that one point with timeout 0
 * and WAIT_FOR_SUBMIT (| WAIT_AVAILABLE), which changes nothing; then the descriptor as
 * eventfd_ctx_fdget() takes it (EBADF if none is open there, EINVAL if it is no
 * eventfd). If that wait answered 0, the point is already signalled (or available): the
 * counter counts 1 before the ioctl returns. Otherwise the point is registered on a
 * one-off channel of the file of its own (SYNCOBJ_EVENTFD_REGISTER, answered before the
 * ioctl returns, so a DESTROY the program makes next comes after it), and a private copy
 * of the eventfd (the registration's reference) goes to a detached thread that waits on
 * that channel (SYNCOBJ_EVENTFD_WAIT) and counts 1 once it answers 0. The daemon holds
 * the syncobj no more than the kernel's registration does: when it is freed (its last
 * handle destroyed, no descriptor left) the wait answers ENOENT, and, as with any other
 * failure (the drm file released: the daemon ends its channels; the daemon gone), the
 * registration ends without counting, as the kernel frees it with its syncobj. The
 * thread holds no reference on the xed_file: the channel is opened before the thread
 * starts, and the program closing its drm file must release it as the kernel's close
 * does, not be kept alive by us.
 * In a forked child there is no such thread; the copies it inherits are close-on-exec.
 *
 * The counter is written once POLLOUT says a write would not block: a counter at its
 * maximum is left there (the kernel's eventfd_signal() saturates it), never waited on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

#define FOREVER INT64_MAX /* an absolute timeout no clock reaches */

struct registration {
	struct xcall c; /* the wait, begun on its own channel; it must not move */
	int efd;	/* the private copy of the program's eventfd */
};

/* the eventfd's counter += 1, unless that would block */
static void count_one(int efd)
{
	struct pollfd p = {.fd = efd, .events = POLLOUT};
	struct timespec zero = {0, 0};
	if (syscall(SYS_ppoll, &p, 1L, &zero, NULL, 0L) != 1 || !(p.revents & POLLOUT))
		return;
	uint64_t one = 1;
	while (syscall(SYS_write, (long)efd, &one, 8L) < 0 && errno == EINTR)
		;
}

/* a TIMELINE_WAIT of `point` of `handle`, WAIT_FOR_SUBMIT and the program's flags */
static void put_wait(struct xcall *c, const struct drm_syncobj_eventfd *a, int64_t timeout)
{
	xc_key(c, "handles");
	w_array(&c->w, 1);
	w_map(&c->w, 1);
	w_kuint(&c->w, "handle", a->handle);
	xc_u64s(c, "points", &a->point, 1);
	xc_i(c, "timeout_nsec", timeout);
	xc_u(c, "flags", DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT | a->flags);
	xc_u(c, "first_signaled", 0);
	xc_u(c, "pad", 0);
	xc_u(c, "deadline_nsec", 0);
}

/* eventfd_ctx_fdget(): 0, EBADF (no file) or EINVAL (not an eventfd) */
static int check_eventfd(int fd)
{
	if (fd < 0 || sys_fcntl(fd, F_GETFD, 0L) < 0)
		return EBADF;
	char path[64], link[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	long n = sys_readlinkat(AT_FDCWD, path, link, sizeof link - 1);
	if (n < 0)
		return EINVAL;
	link[n] = 0;
	return strcmp(link, "anon_inode:[eventfd]") ? EINVAL : 0;
}

static void *waiter(void *arg)
{
	struct registration *r = arg;
	if (!xc_run(&r->c, -1))
		count_one(r->efd);
	xc_end(&r->c);
	sys_close(r->efd);
	sys_munmap(r, sizeof *r);
	return NULL;
}

/* the wait in a thread of its own, every signal blocked in it (the program's handlers
 * are for its own threads): 0 or errno; on failure r is the caller's still */
static int start_waiter(struct registration *r)
{
	pthread_attr_t attr;
	if (pthread_attr_init(&attr))
		return ENOMEM;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_t t;
	int err = pthread_create(&t, &attr, waiter, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	return err ? ENOMEM : 0;
}

/* the registration: the eventfd copied, the wait begun, its thread started */
static int watch(struct xed_file *f, const struct drm_syncobj_eventfd *a)
{
	struct registration *r = sys_mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE,
					  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return ENOMEM;
	int err = 0;
	r->efd = sys_fcntl(a->fd, F_DUPFD_CLOEXEC, 0L);
	if (r->efd < 0)
		err = errno == EBADF ? EBADF : EMFILE; /* closed meanwhile by another thread */
	else
		r->efd = xed_private_fd(r->efd);
	if (!err)
		err = xc_begin_private(&r->c, f, XED_OP_SYNCOBJ_EVENTFD_REGISTER);
	if (!err) {
		xc_u(&r->c, "handle", a->handle);
		xc_u(&r->c, "flags", a->flags);
		xc_u(&r->c, "point", a->point);
		xc_u(&r->c, "pad", 0);
		err = xc_run(&r->c, -1);
		if (!err) {
			xc_again(&r->c, XED_OP_SYNCOBJ_EVENTFD_WAIT);
			err = start_waiter(r);
		}
		if (!err)
			return 0;
		xc_end(&r->c);
	}
	if (r->efd >= 0)
		sys_close(r->efd);
	sys_munmap(r, sizeof *r);
	return err;
}

int drm_syncobj_eventfd_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_eventfd *a = kdata;
	if (a->flags & ~DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE)
		return EINVAL;
	if (a->pad)
		return EINVAL;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_TIMELINE_WAIT);
	if (err)
		return err;
	put_wait(&c, a, 0);
	int waited = xc_run(&c, -1);
	xc_end(&c);
	if (waited && waited != ETIME)
		return waited; /* ENOENT: no such syncobj; or the daemon's failure */
	err = check_eventfd(a->fd);
	if (err)
		return err;
	if (!waited) {
		count_one(a->fd);
		return 0;
	}
	return watch(f, a);
}
