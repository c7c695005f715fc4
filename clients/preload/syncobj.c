/*
 * syncobj.c - DRM core's syncobj ioctls (drm_syncobj.c) as daemon requests: CREATE,
 * DESTROY, WAIT, RESET and SIGNAL; the timeline ones, TIMELINE_WAIT, QUERY, TRANSFER
 * and TIMELINE_SIGNAL; and the descriptors HANDLE_TO_FD and FD_TO_HANDLE make: a
 * syncobj's own (another drm file, or process, imports it) or, with EXPORT_SYNC_FILE /
 * IMPORT_SYNC_FILE, a sync file of the fence it holds (TIMELINE: of a point). Either is
 * a socket the daemon holds the other end of, sent and received as SCM_RIGHTS; a sync
 * file polls readable once its fence is signalled, so the program polls and closes it
 * with no help from here. EVENTFD is eventfd.c's: the library writes the eventfd.
 *
 * The handles array is read from the program with copy_from_user after the checks the
 * kernel makes before its own copy (WAIT and TIMELINE_WAIT: flags, then count; RESET
 * and SIGNAL: pad, then count; QUERY and TIMELINE_SIGNAL: flags, then count): a request
 * failing those goes with an empty list and the daemon answers it (EINVAL, or at once
 * for a wait on nothing) in the kernel's order, without the array ever being read. A
 * bad array is then EFAULT here, before the daemon looks any handle up (ENOENT).
 *
 * A points array the kernel reads (TIMELINE_WAIT, TIMELINE_SIGNAL) is read only once it
 * has found every handle: ENOENT comes before its EFAULT. Here it is read with the
 * handles, before the request goes; if it faults, a QUERY of the same handles, which
 * changes nothing, says whether ENOENT comes first. The one QUERY writes is written
 * once the daemon answers, a point at a time, as the kernel does: those before a fault
 * land.
 */
#include <errno.h>

#include "preload.h"
#include "proto.h"

/* The daemon's cap on a request's handles list (protocols/messages.py). The kernel has
 * none of its own: drm_syncobj_array_find() allocates count_handles entries, which fails
 * (ENOMEM) only for counts far larger. A longer array cannot be sent, so it is ENOMEM
 * here, the kernel's answer for an array too big to hold, not an EINVAL it never gives. */
#define MAX_HANDLES 4096

#define WAIT_FLAGS                                                                  \
	(DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT | \
	 DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE)

#define TIMELINE_WAIT_FLAGS (WAIT_FLAGS | DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE)

/* The handles and the points read from the program go into the reply half of the
 * channel's buffer: free until the reply comes, and the request is sent by then. */
#define HANDLES_AT (XED_CHAN_BUF / 2)
#define POINTS_AT (HANDLES_AT + MAX_HANDLES * sizeof(uint32_t))
_Static_assert(POINTS_AT + MAX_HANDLES * sizeof(uint64_t) <= XED_CHAN_BUF, "arrays fit");

/* The `handles` field: n records {handle} read from the program at ptr (n == 0: an
 * empty list, nothing read). 0, ENOMEM or EFAULT. */
static int put_handles(struct xcall *c, uint64_t ptr, uint32_t n)
{
	uint32_t *h = (void *)(c->chan->buf + HANDLES_AT);
	if (n > MAX_HANDLES)
		return ENOMEM;
	if (copy_from_user(h, ptr, n * sizeof *h))
		return EFAULT;
	xc_key(c, "handles");
	w_array(&c->w, n);
	for (uint32_t i = 0; i < n; i++) {
		w_map(&c->w, 1);
		w_kuint(&c->w, "handle", h[i]);
	}
	return 0;
}

int drm_syncobj_create_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_create *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_CREATE);
	if (err)
		return err;
	xc_u(&c, "handle", a->handle);
	xc_u(&c, "flags", a->flags);
	err = xc_run(&c, -1);
	if (!err)
		a->handle = (uint32_t)r_get_uint(&c.body, "handle");
	xc_end(&c);
	return err;
}

int drm_syncobj_destroy_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_destroy *a = kdata;
	return xc_handle_pad(f, XED_OP_SYNCOBJ_DESTROY, a->handle, a->pad);
}

/* blocking on the daemon's side, as WAIT_USER_FENCE: the reply comes when the wait ends */
int drm_syncobj_wait_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_wait *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_WAIT);
	if (err)
		return err;
	int refused = (a->flags & ~WAIT_FLAGS) || !a->count_handles;
	err = put_handles(&c, a->handles, refused ? 0 : a->count_handles);
	if (!err) {
		xc_i(&c, "timeout_nsec", a->timeout_nsec);
		xc_u(&c, "flags", a->flags);
		xc_u(&c, "first_signaled", a->first_signaled);
		xc_u(&c, "pad", a->pad);
		xc_u(&c, "deadline_nsec", a->deadline_nsec);
		err = xc_run(&c, -1);
	}
	if (!err)
		a->first_signaled = (uint32_t)r_get_uint(&c.body, "first_signaled");
	xc_end(&c);
	return err;
}

/* RESET and SIGNAL: the same argument, each syncobj of the array emptied or signalled */
static int syncobj_array(struct xed_file *f, int op, struct drm_syncobj_array *a)
{
	struct xcall c;
	int err = xc_begin(&c, f, op);
	if (err)
		return err;
	int refused = a->pad || !a->count_handles;
	err = put_handles(&c, a->handles, refused ? 0 : a->count_handles);
	if (!err) {
		xc_u(&c, "pad", a->pad);
		err = xc_run(&c, -1);
	}
	xc_end(&c);
	return err;
}

int drm_syncobj_reset_ioctl(struct xed_file *f, void *kdata)
{
	return syncobj_array(f, XED_OP_SYNCOBJ_RESET, kdata);
}

int drm_syncobj_signal_ioctl(struct xed_file *f, void *kdata)
{
	return syncobj_array(f, XED_OP_SYNCOBJ_SIGNAL, kdata);
}

/* After the points array faulted, with the n handles at `handles` read: the
 * kernel finds every handle first, so a handle naming no syncobj is ENOENT still. A
 * QUERY of them (no flags) looks them up and changes nothing: ENOENT, or EFAULT. */
static int points_fault(struct xed_file *f, uint64_t handles, uint32_t n)
{
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_QUERY);
	if (err)
		return err;
	err = put_handles(&c, handles, n);
	if (!err) {
		xc_u64s(&c, "points", NULL, 0);
		xc_u(&c, "flags", 0);
		err = xc_run(&c, -1);
	}
	xc_end(&c);
	return err ? err : EFAULT;
}

/* The `points` field, the n points read from the program at ptr: none for NULL (the
 * daemon takes 0 for each, as the kernel does). 0 or EFAULT. */
static int put_points(struct xcall *c, uint64_t ptr, uint32_t n)
{
	uint64_t *p = (void *)(c->chan->buf + POINTS_AT);
	if (!ptr)
		n = 0;
	else if (copy_from_user(p, ptr, n * sizeof *p))
		return EFAULT;
	xc_u64s(c, "points", p, n);
	return 0;
}

/* The handles and the points of a TIMELINE_WAIT or TIMELINE_SIGNAL (n 0: refused by the
 * daemon before it reads them; none read). 0, or its errno: ENOMEM, EFAULT of the
 * handles, then ENOENT or EFAULT of the points. On failure c has ended. Near MAX_HANDLES
 * handles, large points may not fit a datagram: ENOMEM too, as for more handles. */
static int put_timeline(struct xcall *c, uint64_t handles, uint64_t points, uint32_t n)
{
	int err = put_handles(c, handles, n);
	if (!err && put_points(c, points, n)) {
		xc_end(c);
		return points_fault(c->file, handles, n);
	}
	if (!err && c->w.overflow)
		err = ENOMEM;
	if (err)
		xc_end(c);
	return err;
}

/* blocking on the daemon's side, as WAIT: the reply comes when the wait ends */
int drm_syncobj_timeline_wait_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_timeline_wait *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_TIMELINE_WAIT);
	if (err)
		return err;
	int refused = (a->flags & ~TIMELINE_WAIT_FLAGS) || !a->count_handles;
	err = put_timeline(&c, a->handles, a->points, refused ? 0 : a->count_handles);
	if (err)
		return err;
	xc_i(&c, "timeout_nsec", a->timeout_nsec);
	xc_u(&c, "flags", a->flags);
	xc_u(&c, "first_signaled", a->first_signaled);
	xc_u(&c, "pad", a->pad);
	xc_u(&c, "deadline_nsec", a->deadline_nsec);
	err = xc_run(&c, -1);
	if (!err)
		a->first_signaled = (uint32_t)r_get_uint(&c.body, "first_signaled");
	xc_end(&c);
	return err;
}

int drm_syncobj_timeline_signal_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_timeline_array *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_TIMELINE_SIGNAL);
	if (err)
		return err;
	int refused = a->flags || !a->count_handles;
	err = put_timeline(&c, a->handles, a->points, refused ? 0 : a->count_handles);
	if (err)
		return err;
	xc_u(&c, "flags", a->flags);
	err = xc_run(&c, -1);
	xc_end(&c);
	return err;
}

/* Each handle's point, written into the program's `points` once the daemon answers, one
 * at a time as drm_syncobj_query_ioctl() does: a fault is EFAULT, those before it land. */
int drm_syncobj_query_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_timeline_array *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_QUERY);
	if (err)
		return err;
	int refused = (a->flags & ~DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED) || !a->count_handles;
	uint32_t n = refused ? 0 : a->count_handles;
	err = put_handles(&c, a->handles, n);
	if (!err) {
		xc_u64s(&c, "points", NULL, 0); /* not read: the reply has them */
		xc_u(&c, "flags", a->flags);
		err = xc_run(&c, -1);
	}
	struct rbuf r;
	if (!err && r_get_array(&c.body, "points", &r) != (int64_t)n)
		err = EIO; /* not one per handle: no answer the kernel could give */
	for (uint32_t i = 0; i < n && !err; i++) {
		uint64_t point = r_uint(&r);
		if (r.bad)
			err = EIO;
		else if (copy_to_user(a->points + i * sizeof point, &point, sizeof point))
			err = EFAULT;
	}
	xc_end(&c);
	return err;
}

/* blocking on the daemon's side: WAIT_FOR_SUBMIT waits for the source point (up to 5 s) */
int drm_syncobj_transfer_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_transfer *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_TRANSFER);
	if (err)
		return err;
	xc_u(&c, "src_handle", a->src_handle);
	xc_u(&c, "dst_handle", a->dst_handle);
	xc_u(&c, "src_point", a->src_point);
	xc_u(&c, "dst_point", a->dst_point);
	xc_u(&c, "flags", a->flags);
	xc_u(&c, "pad", a->pad);
	err = xc_run(&c, -1);
	xc_end(&c);
	return err;
}

/* HANDLE_TO_FD and FD_TO_HANDLE: every field as the program gave it; the daemon checks
 * pad and flags (EINVAL) first, as drm_syncobj.c does */
static void put_syncobj_handle(struct xcall *c, const struct drm_syncobj_handle *a)
{
	xc_u(c, "handle", a->handle);
	xc_u(c, "flags", a->flags);
	xc_i(c, "fd", a->fd);
	xc_u(c, "pad", a->pad);
	xc_u(c, "point", a->point);
}

/* The reply's descriptor arrives close-on-exec (recv_frame), which is what the kernel
 * makes a syncobj's file and a sync file: no flag here asks for anything else. */
int drm_syncobj_handle_to_fd_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_handle *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_HANDLE_TO_FD);
	if (err)
		return err;
	put_syncobj_handle(&c, a);
	err = xc_run(&c, -1);
	int fd = err ? -1 : xc_take_new_fd(&c);
	xc_end(&c);
	if (err)
		return err;
	if (fd < 0)
		return EIO;
	a->fd = fd;
	return 0;
}

/* The kernel looks the descriptor up with fdget() (sync_file_get_fence() with
 * IMPORT_SYNC_FILE), whose failure is EINVAL there, not EBADF: so is a negative one
 * here, without asking, and one sendmsg finds closed. */
int drm_syncobj_fd_to_handle_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_syncobj_handle *a = kdata;
	if (a->fd < 0)
		return EINVAL;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNCOBJ_FD_TO_HANDLE);
	if (err)
		return err;
	put_syncobj_handle(&c, a);
	err = xc_run(&c, a->fd);
	if (!err)
		a->handle = (uint32_t)r_get_uint(&c.body, "handle");
	xc_end(&c);
	return err == EBADF ? EINVAL : err;
}
