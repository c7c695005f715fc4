/*
 * dmabuf.c - the dma-buf descriptors PRIME_HANDLE_TO_FD hands out, as the program uses them.
 *
 * An xed dma-buf is one end of a socket pair whose other end the daemon holds, so the
 * kernel answers lseek with ESPIPE, mmap with ENODEV and the dma-buf ioctls with
 * ENOTTY. Those answers are where the library steps in: it asks the daemon, on any drm
 * connection of this process, with the descriptor attached (DMA_BUF_LLSEEK,
 * DMA_BUF_MMAP, and the ioctls DMA_BUF_IOCTL_SYNC, DMA_BUF_IOCTL_EXPORT_SYNC_FILE and
 * DMA_BUF_IOCTL_IMPORT_SYNC_FILE), and gives the kernel's dma-buf answer instead; any
 * other dma-buf ioctl is ENOTTY, as dma_buf_ioctl() answers a number it does not know.
 * Descriptors made here are known; one that came from elsewhere (another program sent
 * it) is recognised the first time such a call fails on it, by asking the daemon. Its
 * mappings are remembered as the drm file's are (mmap.c), so that they fall onto zero
 * pages when the device is unplugged (unplug.c).
 *
 * A sync file (EXPORT_SYNC_FILE's, or SYNCOBJ_HANDLE_TO_FD's) is a socket of the daemon's
 * too, but needs nothing from here: it polls readable once its fence is signalled and
 * is closed as any descriptor. Asked whether it is a dma-buf (an lseek, mmap or dma-buf
 * ioctl on it), the daemon refuses its DMA_BUF_LLSEEK, so it is never taken for one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

/* one request about dma-buf fd on drm file f (held: dmabuf_end lets it go); `also`, if
 * not -1, is attached after fd (IMPORT_SYNC_FILE's sync file) */
static int dmabuf_call(struct xed_file *f, int fd, int also, int op, struct xcall *c,
		       uint64_t a, uint64_t b, uint64_t p, uint64_t fl)
{
	c->chan = NULL;
	c->file = f;
	if (!c->file)
		return ENODEV;
	int err = xc_begin(c, c->file, op);
	if (!err) {
		if (op == XED_OP_DMA_BUF_LLSEEK) {
			xc_i(c, "offset", (int64_t)a);
			xc_u(c, "whence", b);
		} else if (op == XED_OP_DMA_BUF_IOCTL_SYNC) {
			xc_u(c, "flags", a);
		} else if (op == XED_OP_DMA_BUF_EXPORT_SYNC_FILE ||
			   op == XED_OP_DMA_BUF_IMPORT_SYNC_FILE) {
			xc_u(c, "flags", a);
			xc_i(c, "fd", (int64_t)b);
		} else {
			xc_u(c, "offset", a);
			xc_u(c, "length", b);
			xc_u(c, "prot", p);
			xc_u(c, "flags", fl);
		}
		int fds[2] = {fd, also};
		err = xc_run_fds(c, fds, also >= 0 ? 2 : 1);
	}
	return err;
}

static void dmabuf_end(struct xcall *c)
{
	if (c->chan)
		xc_end(c);
	if (c->file)
		xf_put(c->file);
}

static int llseek(int fd, off_t off, int whence, off_t *pos)
{
	struct xcall c;
	int err = dmabuf_call(xf_any(), fd, -1, XED_OP_DMA_BUF_LLSEEK, &c, (uint64_t)off,
			      (uint64_t)whence, 0, 0);
	if (!err)
		*pos = (off_t)r_get_uint(&c.body, "offset");
	dmabuf_end(&c);
	return err;
}

int dmabuf_is(int fd)
{
	if (fd_kind(fd) == FD_DMABUF)
		return 1;
	if (fd_kind(fd) == FD_TIMELINE)
		return 0; /* a sw_sync timeline's: no dma-buf, no need to ask */
	int type = 0, domain = 0;
	socklen_t len = sizeof type;
	if (syscall(SYS_getsockopt, (long)fd, (long)SOL_SOCKET, (long)SO_TYPE, &type, &len) < 0 ||
	    type != SOCK_SEQPACKET)
		return 0;
	len = sizeof domain;
	if (syscall(SYS_getsockopt, (long)fd, (long)SOL_SOCKET, (long)SO_DOMAIN, &domain, &len) < 0 ||
	    domain != AF_UNIX || fd_kind(fd) == FD_DRM)
		return 0;
	off_t size;
	if (llseek(fd, 0, SEEK_END, &size))
		return 0;
	fd_mark_dmabuf(fd);
	return 1;
}

/* EXPORT_SYNC_FILE: the reply's descriptor (close-on-exec, as the kernel's) goes to the
 * program in arg.fd; if that cannot be written, the kernel never installs it: closed */
static int export_sync_file(int fd, uint64_t arg)
{
	struct dma_buf_export_sync_file a;
	if (copy_from_user(&a, arg, sizeof a))
		return EFAULT;
	struct xcall c;
	int err = dmabuf_call(xf_any(), fd, -1, XED_OP_DMA_BUF_EXPORT_SYNC_FILE, &c, a.flags,
			      (uint64_t)(int64_t)a.fd, 0, 0);
	int sync = err ? -1 : xc_take_new_fd(&c);
	dmabuf_end(&c);
	if (err)
		return err;
	if (sync < 0)
		return EIO;
	a.fd = sync;
	if (copy_to_user(arg, &a, sizeof a)) {
		sys_close(sync);
		return EFAULT;
	}
	return 0;
}

/* IMPORT_SYNC_FILE: the dma-buf attached first, the sync file second. The kernel's
 * sync_file_get_fence() failing is EINVAL, not EBADF: so is a negative arg.fd here,
 * without asking, and one sendmsg finds closed (unless the dma-buf itself is). */
static int import_sync_file(int fd, uint64_t arg)
{
	struct dma_buf_import_sync_file a;
	if (copy_from_user(&a, arg, sizeof a))
		return EFAULT;
	if (a.fd < 0)
		return EINVAL;
	struct xcall c;
	int err = dmabuf_call(xf_any(), fd, a.fd, XED_OP_DMA_BUF_IMPORT_SYNC_FILE, &c, a.flags,
			      (uint64_t)(int64_t)a.fd, 0, 0);
	dmabuf_end(&c);
	if (err == EBADF && sys_fcntl(fd, F_GETFD, 0L) >= 0)
		return EINVAL;
	return err;
}

int dmabuf_ioctl(int fd, unsigned long cmd, uint64_t arg)
{
	if (cmd == DMA_BUF_IOCTL_EXPORT_SYNC_FILE)
		return export_sync_file(fd, arg);
	if (cmd == DMA_BUF_IOCTL_IMPORT_SYNC_FILE)
		return import_sync_file(fd, arg);
	if (cmd != DMA_BUF_IOCTL_SYNC)
		return ENOTTY;
	struct dma_buf_sync sync;
	if (copy_from_user(&sync, arg, sizeof sync))
		return EFAULT;
	struct xcall c;
	int err = dmabuf_call(xf_any(), fd, -1, XED_OP_DMA_BUF_IOCTL_SYNC, &c, sync.flags, 0, 0, 0);
	dmabuf_end(&c);
	return err;
}

int dmabuf_mmap(int fd, void *addr, size_t len, int prot, int flags, off_t off, void **out)
{
	int type = flags & MAP_TYPE;
	struct xed_file *f = xf_any();
	struct xcall c;
	uint64_t plen = (len + 4095) & ~4095ul;
	/* the mapping falls with the device of the file that asks (a foreign dma-buf's too,
	 * as the Python library's) */
	struct xed_notice *n = f ? notice_get(f) : NULL;
	if (f && !n && errno == ENODEV) {
		xf_put(f);
		return ENODEV; /* unplugged: DMA_BUF_MMAP would say so too */
	}
	int err = dmabuf_call(f, fd, -1, XED_OP_DMA_BUF_MMAP, &c, (uint64_t)off, plen,
			      (unsigned)prot, type == MAP_PRIVATE ? MAP_PRIVATE : MAP_SHARED);
	uint64_t at = err ? 0 : r_get_uint(&c.body, "offset");
	int memfd = err ? -1 : xc_take_fd(&c);
	dmabuf_end(&c);
	if (err)
		return err;
	if (memfd < 0)
		return EIO;
	void *p = maps_map(NULL, (uint64_t)off, n, addr, len, prot, flags, memfd, (off_t)at);
	err = p == MAP_FAILED ? errno : 0;
	sys_close(memfd);
	*out = p;
	return err;
}

static off_t do_lseek(int fd, off_t off, int whence)
{
	struct xed_file *f = xf_get(fd);
	if (f) {
		xf_put(f);
		return 0; /* drm files use noop_llseek: the position stays 0 */
	}
	off_t pos;
	if (fd_kind(fd) != FD_DMABUF) {
		pos = sys_lseek(fd, off, whence);
		if (pos >= 0 || errno != ESPIPE)
			return pos;
		if (!dmabuf_is(fd)) {
			errno = ESPIPE; /* the kernel's answer, whatever asking left in errno */
			return -1;
		}
	}
	int err = llseek(fd, off, whence, &pos);
	if (err) {
		errno = err;
		return -1;
	}
	return pos;
}

XED_EXPORT off_t lseek(int fd, off_t off, int whence) { return do_lseek(fd, off, whence); }
XED_EXPORT off_t lseek64(int fd, off_t off, int whence) { return do_lseek(fd, off, whence); }
