/*
 * xcall.c - one request as a call: its fields written into the frame, the frame sent,
 * the reply that carries its id waited for and handed back with its descriptors.
 *
 * A frame is [id, op, {field: value}]; the map's count is written last, once every
 * field is in. Replies to other ids (a call a signal handler longjmp'd out of, long
 * ago, on this connection) and events (id 0) are dropped with their descriptors. A
 * refusal is its errno (the daemon's message goes to XED_PRELOAD_DEBUG's stderr).
 *
 * A daemon that will not serve a connection (one over its uid's connection limit) may
 * say why in a PROTOCOL_ERROR event and hang up before our request is read: the call
 * then fails with that event's errno (EMFILE), whether the event was read before the
 * hang-up or is still queued behind the reset, rather than with ENODEV.
 */
#include <errno.h>
#include <string.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"


void xc_key(struct xcall *c, const char *key)
{
	w_str(&c->w, key);
	c->keys++;
}

void xc_u(struct xcall *c, const char *key, uint64_t v)
{
	xc_key(c, key);
	w_uint(&c->w, v);
}

void xc_i(struct xcall *c, const char *key, int64_t v)
{
	xc_key(c, key);
	w_int(&c->w, v);
}

void xc_u64s(struct xcall *c, const char *key, const uint64_t *v, uint32_t n)
{
	w_kuints(&c->w, key, v, n);
	c->keys++;
}

void xc_u16s(struct xcall *c, const char *key, const uint16_t *v, uint32_t n)
{
	w_kuints16(&c->w, key, v, n);
	c->keys++;
}

/* the errno a frame gives, if it is a PROTOCOL_ERROR event; 0 for anything else */
static int last_word(const uint8_t *frame, size_t len)
{
	struct rbuf r;
	r_init(&r, frame, len);
	if (r_array(&r) != 3 || r_uint(&r) != 0 || r_uint(&r) != XED_EVENT_PROTOCOL_ERROR)
		return 0;
	uint64_t err = r_get_uint(&r, "errno");
	return !r.bad && err > 0 && err < 4096 ? (int)err : 0;
}

/* The daemon hung up: the errno of the PROTOCOL_ERROR event it sent before, already read
 * (`said`) or still queued (the kernel reports a reset before what is queued); else
 * ENODEV, as an unplugged device answers. */
static int hung_up(int fd, uint8_t *buf, size_t cap, int said)
{
	if (said)
		return said;
	long n = recv_queued(fd, buf, cap);
	int why = n > 0 ? last_word(buf, (size_t)n) : 0;
	return why ? why : ENODEV;
}

int xc_run(struct xcall *c, int fd_in)
{
	return xc_run_fds(c, &fd_in, fd_in >= 0 ? 1 : 0);
}

int xc_run_fds(struct xcall *c, const int *fds, int nfds)
{
	if (c->w.overflow)
		return EINVAL; /* more than a datagram holds: the daemon would refuse it */
	uint8_t *m = c->w.p + c->map_at + 1;
	m[0] = (uint8_t)(c->keys >> 24);
	m[1] = (uint8_t)(c->keys >> 16);
	m[2] = (uint8_t)(c->keys >> 8);
	m[3] = (uint8_t)c->keys;
	struct rbuf head;
	r_init(&head, c->w.p, c->w.len);
	r_array(&head);
	uint64_t id = r_uint(&head);
	int fd = c->chan->fd;
	uint8_t *in = c->chan->buf + XED_SEND_CAP;
	size_t cap = XED_CHAN_BUF - XED_SEND_CAP;
	int err = send_frame(fd, c->w.p, c->w.len, fds, nfds);
	if (err)
		return err == ENODEV ? hung_up(fd, in, cap, 0) : err;
	int said = 0; /* a PROTOCOL_ERROR event's errno, until our reply comes */
	for (;;) {
		long n = recv_frame(fd, in, cap, c->fds, &c->nfds);
		if (n < 0)
			return n == -ENODEV ? hung_up(fd, in, cap, said) : (int)-n;
		struct rbuf r;
		r_init(&r, in, (size_t)n);
		int64_t items = r_array(&r);
		uint64_t got = r_uint(&r);
		int64_t code = r_int(&r);
		if (items == 3 && !r.bad && got == id) {
			c->body = r;
			if (code == 0)
				return 0;
			struct rbuf msg;
			size_t len = 0;
			const char *text = r_find(&r, "message", &msg) ? r_str(&msg, &len) : NULL;
			xed_log("op %#x refused: %s: %.*s", (unsigned)c->op,
				strerror((int)code), (int)len, text ? text : "");
			xc_end_fds(c);
			return code > 0 && code < 4096 ? (int)code : EIO;
		}
		/* an event (id 0), or the reply to a call a signal interrupted for good */
		int why = last_word(in, (size_t)n);
		if (why)
			said = why;
		xc_end_fds(c);
	}
}

void xc_end_fds(struct xcall *c)
{
	for (int i = 0; i < c->nfds; i++)
		if (c->fds[i] >= 0)
			sys_close(c->fds[i]);
	c->nfds = 0;
}

int xc_take_fd(struct xcall *c)
{
	for (int i = 0; i < c->nfds; i++)
		if (c->fds[i] >= 0) {
			int fd = c->fds[i];
			c->fds[i] = -1;
			return fd;
		}
	return -1;
}

/* A descriptor the daemon hands back (a sync file, a syncobj's) is a new number of the
 * program's: whatever the library knew of an earlier file under it is forgotten. */
int xc_take_new_fd(struct xcall *c)
{
	int fd = xc_take_fd(c);
	if (fd >= 0)
		fd_forget(fd);
	return fd;
}

int xc_handle_pad(struct xed_file *f, int op, uint32_t handle, uint32_t pad)
{
	struct xcall c;
	int err = xc_begin(&c, f, op);
	if (err)
		return err;
	xc_u(&c, "handle", handle);
	xc_u(&c, "pad", pad);
	err = xc_run(&c, -1);
	xc_end(&c);
	return err;
}
