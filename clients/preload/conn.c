/*
 * conn.c - talking to the daemon: opening drm files, channels, one request at a time.
 *
 * The program's descriptor is the drm file's connection, but two readers of one socket
 * would take each other's replies. So each connection is used by one caller at a time:
 * in the process that opened the file, the file's own connection (through a private,
 * close-on-exec copy of the program's descriptor, whose number the program cannot
 * close or reuse under us); for every other caller at the same moment (another
 * thread) and in every other process (a forked child), a channel: a connection of its
 * own that joined the file with the token HELLO gave (same handles, same file). A
 * connection is taken with compare-and-swap and never waited for: a caller that finds
 * them all busy opens a one-off channel. Nothing here blocks on a lock, so a signal
 * handler that longjmps out of a call (IGT does) costs at most one connection, never
 * a hang.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

enum { CHAN_EMPTY = 0, CHAN_IDLE = 1, CHAN_BUSY = 2 };

static atomic_uint next_id;

static uint32_t new_id(void)
{
	uint32_t id;
	do
		id = atomic_fetch_add(&next_id, 1) + 1;
	while (!id);
	return id;
}

static int buffer(struct xed_chan *ch)
{
	if (ch->buf)
		return 0;
	void *p = sys_mmap(NULL, XED_CHAN_BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	if (p == MAP_FAILED)
		return ENOMEM;
	ch->buf = p;
	return 0;
}

static void drop_chan(struct xed_chan *ch)
{
	if (ch->fd >= 0)
		sys_close(ch->fd);
	ch->fd = -1;
	if (ch->buf)
		sys_munmap(ch->buf, XED_CHAN_BUF);
	ch->buf = NULL;
}

static void start_frame(struct xcall *c, uint32_t op)
{
	w_init(&c->w, c->chan->buf, XED_SEND_CAP);
	w_array(&c->w, 3);
	w_uint(&c->w, new_id());
	w_uint(&c->w, op);
	c->map_at = w_map32(&c->w); /* the count is filled in by xc_run */
	c->op = (int)op;
	c->keys = 0;
	c->nfds = 0;
}

/* HELLO on a fresh connection; joins the file named by `token` if one is given */
static int hello(struct xcall *c, int node, const char *join, char *token_out)
{
	start_frame(c, XED_OP_HELLO);
	static const uint64_t version[2] = {XED_PROTOCOL_MAJOR, XED_PROTOCOL_MINOR};
	xc_u64s(c, "version", version, 2);
	xc_key(c, "role");
	w_str(&c->w, "drm");
	if (node == XED_NODE_RENDER) {
		xc_key(c, "node");
		w_str(&c->w, "render");
	}
	if (join && *join) {
		xc_key(c, "join");
		w_str(&c->w, join);
	}
	int err = xc_run(c, -1);
	if (!err && token_out) {
		struct rbuf v;
		size_t n = 0;
		const char *t = r_find(&c->body, "token", &v) ? r_str(&v, &n) : NULL;
		if (!t || n >= XED_TOKEN_MAX)
			n = 0;
		memcpy(token_out, t ? t : "", n);
		token_out[n] = 0;
	}
	for (int i = 0; i < c->nfds; i++)
		sys_close(c->fds[i]);
	c->nfds = 0;
	return err;
}

static int connect_daemon(int cloexec)
{
	const struct xed_config *cfg = xed_config();
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, cfg->socket, sizeof sa.sun_path);
	int fd = (int)syscall(SYS_socket, (long)AF_UNIX,
			      (long)(SOCK_SEQPACKET | (cloexec ? SOCK_CLOEXEC : 0)), 0L);
	if (fd < 0)
		return -errno;
	while (syscall(SYS_connect, (long)fd, &sa, (long)sizeof sa) < 0) {
		if (errno == EINTR)
			continue;
		int err = errno;
		xed_log("cannot reach the daemon at %s: %s", cfg->socket, strerror(err));
		sys_close(fd);
		/* a socket this user may not reach is a node it may not open, as the
		 * kernel's /dev/dri/card0 without the rights; no daemon, no device */
		return err == EACCES ? -EACCES : -ENODEV;
	}
	return fd;
}

/* a channel of f in slot ch (state BUSY, fd -1): connected, joined, ready */
static int open_channel(struct xed_file *f, struct xed_chan *ch)
{
	if (!f->token[0])
		return ENODEV; /* a daemon without channels: the file cannot be shared */
	int err = buffer(ch);
	if (err)
		return err;
	int fd = atomic_exchange(&f->spare, -1); /* a forked child's first channel */
	if (fd < 0) {
		fd = connect_daemon(1);
		if (fd < 0)
			return -fd;
		fd = xed_private_fd(fd);
	}
	ch->fd = fd;
	struct xcall c = {.file = f, .chan = ch};
	err = hello(&c, f->node, f->token, NULL);
	if (err) {
		sys_close(ch->fd);
		ch->fd = -1;
	}
	return err;
}

int xed_open_node(int node, int cloexec, struct xed_file **out)
{
	int fd = connect_daemon(cloexec);
	if (fd < 0)
		return fd;
	struct xed_file *f = xf_alloc(node);
	if (!f) {
		sys_close(fd);
		return -ENFILE;
	}
	int err = buffer(&f->io);
	int io = err ? -1 : sys_fcntl(fd, F_DUPFD_CLOEXEC, 0L);
	if (io < 0) {
		sys_close(fd);
		xf_put(f);
		return err ? -err : -errno;
	}
	f->io.fd = xed_private_fd(io);
	struct xcall c = {.file = f, .chan = &f->io};
	err = hello(&c, node, NULL, f->token);
	if (err) {
		sys_close(fd);
		xf_put(f);
		return -err;
	}
	atomic_store(&f->io.state, CHAN_IDLE);
	*out = f;
	return fd;
}

int xc_begin(struct xcall *c, struct xed_file *f, int op)
{
	c->file = f;
	c->temporary = 0;
	int idle = CHAN_IDLE;
	if (f->owner == xed_pid && atomic_compare_exchange_strong(&f->io.state, &idle, CHAN_BUSY)) {
		c->chan = &f->io;
		start_frame(c, (uint32_t)op);
		return 0;
	}
	for (int pass = 0;; pass++) {
		for (int i = 0; i < XED_CHANNELS; i++) {
			struct xed_chan *ch = &f->chans[i];
			int want = pass ? CHAN_EMPTY : CHAN_IDLE;
			if (!atomic_compare_exchange_strong(&ch->state, &want, CHAN_BUSY))
				continue;
			if (pass) {
				int err = open_channel(f, ch);
				if (err) {
					atomic_store(&ch->state, CHAN_EMPTY);
					if (err != ENODEV || f->owner != xed_pid || f->token[0])
						return err;
					/* no channels from this daemon: wait for the file's own */
					while (idle = CHAN_IDLE, !atomic_compare_exchange_weak(
									 &f->io.state, &idle, CHAN_BUSY))
						sched_yield();
					ch = &f->io;
				}
			}
			c->chan = ch;
			start_frame(c, (uint32_t)op);
			return 0;
		}
		if (pass)
			break;
	}
	/* every slot busy: a channel for this call only */
	return xc_begin_private(c, f, op);
}

int xc_begin_private(struct xcall *c, struct xed_file *f, int op)
{
	c->file = f;
	c->own.fd = -1;
	c->own.buf = NULL;
	int err = open_channel(f, &c->own);
	if (err) {
		drop_chan(&c->own);
		return err;
	}
	c->chan = &c->own;
	c->temporary = 1;
	start_frame(c, (uint32_t)op);
	return 0;
}

void xc_again(struct xcall *c, int op)
{
	xc_end_fds(c);
	start_frame(c, (uint32_t)op);
}

void xc_end(struct xcall *c)
{
	xc_end_fds(c);
	if (c->temporary)
		drop_chan(c->chan);
	else
		atomic_store(&c->chan->state, CHAN_IDLE);
	c->chan = NULL;
}

void conn_after_fork(struct xed_file *f)
{
	/* the parent's channels are the parent's: its threads may be reading them now */
	for (int i = 0; i < XED_CHANNELS; i++) {
		struct xed_chan *ch = &f->chans[i];
		if (ch->fd >= 0)
			sys_close(ch->fd);
		ch->fd = -1;
		atomic_store(&ch->state, CHAN_EMPTY);
	}
	/*
	 * The child's own connection, made now with the rights it was forked with, and
	 * greeted at its first call (open_channel). A child may give those rights up
	 * before that call (setuid to an unprivileged user, as IGT's igt_drop_root() and
	 * privilege-separated servers do) and then could not reach the daemon's socket;
	 * it still holds the drm file, as the kernel's child holds the open file it
	 * inherited, and the checks of each call are made against what it is then.
	 */
	int spare = atomic_exchange(&f->spare, -1);
	if (spare >= 0)
		sys_close(spare); /* the parent's, inherited from a fork of its own */
	if (f->token[0]) {
		int fd = connect_daemon(1);
		if (fd >= 0)
			atomic_store(&f->spare, xed_private_fd(fd));
	}
}

void conn_release(struct xed_file *f)
{
	/* the daemon sees EOF once every copy of the program's descriptor is closed too */
	drop_chan(&f->io);
	for (int i = 0; i < XED_CHANNELS; i++) {
		drop_chan(&f->chans[i]);
		atomic_store(&f->chans[i].state, CHAN_EMPTY);
	}
	atomic_store(&f->io.state, CHAN_EMPTY);
	int spare = atomic_exchange(&f->spare, -1);
	if (spare >= 0)
		sys_close(spare);
}
