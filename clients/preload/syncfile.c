/*
 * syncfile.c - a sync file's own ioctls (drivers/dma-buf/sync_file.c): SYNC_IOC_MERGE and
 * SYNC_IOC_FILE_INFO on the sync files the daemon hands out, and SYNC_IOC_SET_DEADLINE (a
 * hint, taken and dropped).
 *
 * Such a sync file (SYNCOBJ_HANDLE_TO_FD's, EXPORT_SYNC_FILE's, a merge's) is one end of
 * a socket pair, so the kernel answers its ioctls with ENOTTY. The library asks the
 * daemon instead, on any drm connection of this process, with the descriptor attached.
 * The daemon answers ENOTTY for a descriptor that is none of its sync files, and the
 * kernel is then asked after all: a real sync file (another driver's) works as before,
 * and anything else gets the kernel's own answer. Other '>' commands go to the kernel
 * without asking: ENOTTY on a socket, as on a file that does not know them.
 *
 * The kernel answers ENOTTY for a descriptor that is no sync file before it reads the
 * argument; so an argument that cannot be read is EFAULT only once the daemon has said
 * the descriptor is its sync file (a FILE_INFO asking the count: it changes nothing).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

/* strscpy() of the reply's string `key` into dst[size]: at most size-1 bytes and a NUL;
 * what follows the NUL is left as it was, as the kernel leaves it */
static void get_name(const struct rbuf *map, const char *key, char *dst, size_t size)
{
	struct rbuf v;
	size_t n = 0;
	const char *s = r_find(map, key, &v) ? r_str(&v, &n) : NULL;
	const char *nul = s ? memchr(s, '\0', n) : NULL;
	n = !s ? 0 : nul ? (size_t)(nul - s) : n;
	n = n < size - 1 ? n : size - 1;
	if (n)
		memcpy(dst, s, n);
	dst[n] = '\0';
}

/* one struct sync_fence_info of the reply's `fences` (zeroed before: kzalloc's) */
static void fence_info(struct rbuf *r, void *out)
{
	struct sync_fence_info *f = out;
	get_name(r, "obj_name", f->obj_name, sizeof f->obj_name);
	get_name(r, "driver_name", f->driver_name, sizeof f->driver_name);
	f->status = (int32_t)r_get_int(r, "status");
	f->flags = (uint32_t)r_get_uint(r, "flags");
	f->timestamp_ns = r_get_uint(r, "timestamp_ns");
}

/* FILE_INFO's request on fd (c begun): the reply's errno */
static int info_run(struct xcall *c, int fd, const struct sync_file_info *a)
{
	xc_u(c, "num_fences", a->num_fences);
	xc_u(c, "flags", a->flags);
	xc_u(c, "pad", a->pad);
	return xc_run(c, fd);
}

/* is fd one of the daemon's sync files? 0 if so, ENOTTY if not (or closed), another
 * errno if the daemon cannot say; asked with a FILE_INFO of the count, which changes
 * nothing */
static int ours(struct xed_file *f, int fd)
{
	struct xcall c;
	struct sync_file_info count = {0};
	int err = xc_begin(&c, f, XED_OP_SYNC_FILE_INFO);
	if (err)
		return err;
	err = info_run(&c, fd, &count);
	xc_end(&c);
	return err == EBADF ? ENOTTY : err;
}

/* An argument that cannot be read: EFAULT on a sync file of the daemon's, else the
 * kernel's to answer (ENOTTY here). EBADF: fd is closed, the kernel says so too. */
static int unreadable(struct xed_file *f, int fd)
{
	int err = ours(f, fd);
	return err == ENOTTY ? ENOTTY : EFAULT;
}

/* sync_file_ioctl_set_deadline(): a hint for the fence's driver to hurry; an emulated
 * engine has no clock to raise, so once the descriptor is known for the daemon's sync
 * file the hint is taken, and dropped */
static int set_deadline(struct xed_file *f, int fd, uint64_t arg)
{
	int err = ours(f, fd);
	if (err)
		return err;
	struct sync_set_deadline a;
	if (copy_from_user(&a, arg, sizeof a))
		return EFAULT;
	return a.pad ? EINVAL : 0;
}

/* sync_file_ioctl_merge(): the sync file attached first, fd2's second; the merged one
 * comes back, close-on-exec as the kernel's (recv_frame makes it so) */
static int merge(struct xed_file *f, int fd, uint64_t arg)
{
	struct sync_merge_data a;
	if (copy_from_user(&a, arg, sizeof a))
		return unreadable(f, fd);
	a.name[sizeof a.name - 1] = '\0'; /* the kernel's: 31 bytes kept, and written back so */
	char name[sizeof a.name];
	memcpy(name, a.name, sizeof name);
	utf8_only(name);
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNC_FILE_MERGE);
	if (err)
		return err;
	xc_key(&c, "name");
	w_str(&c.w, name);
	xc_i(&c, "fd2", a.fd2);
	xc_u(&c, "flags", a.flags);
	xc_u(&c, "pad", a.pad);
	/* A negative or closed fd2 is the kernel's ENOENT, but only after its ENOTTY (fd no
	 * sync file) and EINVAL (flags, pad): in its place goes a descriptor that is surely
	 * no sync file, this connection's own, so the daemon answers in that order. */
	int open2 = a.fd2 >= 0 && sys_fcntl(a.fd2, F_GETFD, 0L) >= 0;
	int fds[2] = {fd, open2 ? a.fd2 : c.chan->fd};
	err = xc_run_fds(&c, fds, 2);
	int merged = err ? -1 : xc_take_new_fd(&c);
	xc_end(&c);
	if (err == EBADF) /* closed meanwhile: fd is the kernel's EBADF, fd2 its ENOENT */
		return sys_fcntl(fd, F_GETFD, 0L) < 0 ? ENOTTY : ENOENT;
	if (err)
		return err;
	if (merged < 0)
		return EIO;
	a.fence = merged;
	if (copy_to_user(arg, &a, sizeof a)) {
		sys_close(merged); /* the kernel never installs it */
		return EFAULT;
	}
	return 0;
}

/* sync_file_ioctl_fence_info(): the daemon checks flags, pad and the room (EINVAL); the
 * fence infos are written before the struct, as the kernel writes them */
static int file_info(struct xed_file *f, int fd, uint64_t arg)
{
	struct sync_file_info a;
	if (copy_from_user(&a, arg, sizeof a))
		return unreadable(f, fd);
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SYNC_FILE_INFO);
	if (err)
		return err;
	err = info_run(&c, fd, &a);
	if (!err && a.num_fences) {
		/* laid out in the request's half of the buffer, free now, as query.c does */
		const size_t item = sizeof(struct sync_fence_info);
		int64_t n = r_get_records(&c.body, "fences", c.w.p, item, XED_SEND_CAP, fence_info);
		if (n < 0 || (uint64_t)n > a.num_fences)
			err = EIO; /* an answer the program has no room for: a daemon's bug */
		else
			err = copy_to_user(a.sync_fence_info, c.w.p, (size_t)n * item);
	}
	if (!err) {
		get_name(&c.body, "name", a.name, sizeof a.name);
		a.status = (int32_t)r_get_int(&c.body, "status");
		a.num_fences = (uint32_t)r_get_uint(&c.body, "num_fences");
		err = copy_to_user(arg, &a, sizeof a);
	}
	xc_end(&c);
	return err == EBADF ? ENOTTY : err; /* fd closed: the kernel's EBADF */
}

int sync_file_ioctl(int fd, unsigned long cmd, uint64_t arg)
{
	if (cmd != SYNC_IOC_MERGE && cmd != SYNC_IOC_FILE_INFO && cmd != SYNC_IOC_SET_DEADLINE)
		return ENOTTY;
	/* ours are sockets: another driver's sync file goes to the kernel without asking
	 * (the daemon may be unplugged or short of descriptors: that is none of its business) */
	struct stat st;
	if (sys_fstatat(fd, "", &st, AT_EMPTY_PATH) < 0 || !S_ISSOCK(st.st_mode))
		return ENOTTY;
	struct xed_file *f = xf_any();
	if (!f)
		return ENOTTY; /* no daemon to ask: the kernel answers */
	int err = cmd == SYNC_IOC_MERGE	       ? merge(f, fd, arg)
		  : cmd == SYNC_IOC_FILE_INFO ? file_info(f, fd, arg)
					      : set_deadline(f, fd, arg);
	xf_put(f);
	return err;
}
