/*
 * sock.c - one datagram out, one datagram in, on a connection to the daemon.
 *
 * SOCK_SEQPACKET keeps each request and reply whole, with its descriptors (SCM_RIGHTS)
 * attached to exactly that datagram. The program may have made its descriptor
 * non-blocking (the library's copy shares its open file), so EAGAIN waits in poll();
 * EINTR retries; MSG_NOSIGNAL keeps a vanished daemon from raising SIGPIPE in the
 * program. A failed connection is reported as ENODEV, what an unplugged device answers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

static int wait_for(int fd, short events)
{
	struct pollfd p = {.fd = fd, .events = events};
	while (syscall(SYS_poll, &p, 1ul, -1L) < 0)
		if (errno != EINTR)
			return ENODEV;
	return 0;
}

/* the daemon is gone, or our connection was closed under us: as an unplugged device */
static int lost(const char *what, int err)
{
	xed_log("%s: %s: the daemon connection is lost", what, strerror(err));
	return ENODEV;
}

/* is one of the n descriptors to attach not open? (sendmsg's EBADF does not say which
 * descriptor it met: ours, or one passed in the argument) */
static int any_closed(const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (sys_fcntl(fds[i], F_GETFD, 0L) < 0)
			return 1;
	return 0;
}

int send_frame(int fd, const void *data, size_t len, const int *fds, int nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * XED_MAX_FDS)];
		struct cmsghdr align;
	} u;
	struct iovec iov = {(void *)data, len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	if (nfds < 0 || nfds > XED_MAX_FDS)
		return EINVAL; /* more than the daemon takes with one frame */
	if (nfds) {
		/* one SCM_RIGHTS message, in order: the daemon reads them as the op lists them */
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	for (;;) {
		if (syscall(SYS_sendmsg, (long)fd, &msg, (long)MSG_NOSIGNAL) >= 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) { /* the program made its descriptor non-blocking */
			if (wait_for(fd, POLLOUT))
				return ENODEV;
			continue;
		}
		if (errno == EBADF && any_closed(fds, nfds))
			return EBADF; /* a descriptor passed in the argument is not open */
		return lost("sendmsg", errno);
	}
}

/* one datagram: its length, with its descriptors in fds[] (*nfds of them) */
long recv_frame(int fd, void *buf, size_t cap, int *fds, int *nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * XED_MAX_FDS)];
		struct cmsghdr align;
	} u;
	struct iovec iov = {buf, cap};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = sizeof u.buf};
	long n;
	*nfds = 0;
	for (;;) {
		n = syscall(SYS_recvmsg, (long)fd, &msg, (long)MSG_CMSG_CLOEXEC);
		if (n >= 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			if (wait_for(fd, POLLIN))
				return -ENODEV;
			continue;
		}
		return -lost("recvmsg", errno);
	}
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < k; i++) {
			int got;
			memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (*nfds < XED_MAX_FDS)
				fds[(*nfds)++] = got;
			else
				sys_close(got);
		}
	}
	return n ? n : -lost("recvmsg", EPIPE); /* EOF: the daemon hung up */
}

/* a datagram already queued (descriptors with it are dropped by the kernel, as no room is
 * given for them), without waiting: what a daemon said before it hung up */
long recv_queued(int fd, void *buf, size_t cap)
{
	long n;
	do
		n = syscall(SYS_recvfrom, (long)fd, buf, (long)cap, (long)MSG_DONTWAIT, 0L, 0L);
	while (n < 0 && errno == EINTR);
	return n;
}
