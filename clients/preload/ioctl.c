/*
 * ioctl.c - ioctl(2) on a drm descriptor, framed as DRM core's drm_ioctl() frames it.
 *
 * The kernel copies the argument in by the size the command number encodes, zero-fills
 * up to the size the driver declared, runs the handler and copies the argument back
 * out (even after a failure): a short, unreadable or read-only argument gets EFAULT at
 * the same point as there, a command of another type ENOTTY, an unknown DRM number
 * EINVAL. Here the handler is a request to the daemon: the DRM core ioctls (VERSION,
 * GEM_CLOSE, GEM_FLINK, GEM_OPEN, PRIME) are translated below, the syncobj ones (binary
 * and timeline) in syncobj.c but EVENTFD, eventfd.c's, the xe ones in xe_ioctl.c.
 * Descriptors that are not ours go to the kernel untouched, but for a dma-buf's ioctls
 * (dmabuf.c), a sync file's (syncfile.c) and a sw_sync timeline's (sw_sync.c), which
 * the daemon answers for its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

/* generic VFS ioctls (asm-generic/ioctls.h): do_vfs_ioctl() answers them, not DRM */
#define FIONBIO 0x5421
#define FIONCLEX 0x5450
#define FIOCLEX 0x5451
#define FIOASYNC 0x5452

static int copy_field(uint64_t buf, size_t *buf_len, const char *value, size_t value_len)
{
	/* drm_copy_field(): at most the buffer's length, no NUL; the length says the whole */
	size_t len = value_len < *buf_len ? value_len : *buf_len;
	*buf_len = value_len;
	return len && buf ? copy_to_user(buf, value, len) : 0;
}

int drm_version_ioctl(struct xed_file *f, void *kdata)
{
	struct drm_version *v = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_VERSION);
	if (err)
		return err;
	err = xc_run(&c, -1);
	if (!err) {
		v->version_major = (int)r_get_int(&c.body, "version_major");
		v->version_minor = (int)r_get_int(&c.body, "version_minor");
		v->version_patchlevel = (int)r_get_int(&c.body, "version_patchlevel");
		static const char *const names[] = {"name", "date", "desc"};
		size_t *lens[] = {&v->name_len, &v->date_len, &v->desc_len};
		char *bufs[] = {v->name, v->date, v->desc};
		for (int i = 0; i < 3 && !err; i++) {
			struct rbuf s;
			size_t n = 0;
			const char *text = r_find(&c.body, names[i], &s) ? r_str(&s, &n) : "";
			err = copy_field((uintptr_t)bufs[i], lens[i], text ? text : "", text ? n : 0);
		}
	}
	xc_end(&c);
	return err;
}

static int gem_close(struct xed_file *f, void *kdata)
{
	struct drm_gem_close *a = kdata;
	return xc_handle_pad(f, XED_OP_GEM_CLOSE, a->handle, a->pad);
}

static int gem_flink(struct xed_file *f, void *kdata)
{
	struct drm_gem_flink *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_GEM_FLINK);
	if (err)
		return err;
	xc_u(&c, "handle", a->handle);
	err = xc_run(&c, -1);
	if (!err)
		a->name = (uint32_t)r_get_uint(&c.body, "name");
	xc_end(&c);
	return err;
}

static int gem_open(struct xed_file *f, void *kdata)
{
	struct drm_gem_open *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_GEM_OPEN);
	if (err)
		return err;
	xc_u(&c, "name", a->name);
	err = xc_run(&c, -1);
	if (!err) {
		a->handle = (uint32_t)r_get_uint(&c.body, "handle");
		a->size = r_get_uint(&c.body, "size");
	}
	xc_end(&c);
	return err;
}

static int prime_handle_to_fd(struct xed_file *f, void *kdata)
{
	struct drm_prime_handle *a = kdata;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_PRIME_HANDLE_TO_FD);
	if (err)
		return err;
	xc_u(&c, "handle", a->handle);
	xc_u(&c, "flags", a->flags);
	xc_i(&c, "fd", a->fd);
	err = xc_run(&c, -1);
	int fd = err ? -1 : xc_take_fd(&c);
	xc_end(&c);
	if (err)
		return err;
	if (fd < 0)
		return EIO;
	if (!(a->flags & DRM_CLOEXEC))
		sys_fcntl(fd, F_SETFD, 0L);
	fd_mark_dmabuf(fd);
	a->fd = fd;
	return 0;
}

static int prime_fd_to_handle(struct xed_file *f, void *kdata)
{
	struct drm_prime_handle *a = kdata;
	if (a->fd < 0)
		return EBADF; /* dma_buf_get() */
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_PRIME_FD_TO_HANDLE);
	if (err)
		return err;
	xc_u(&c, "handle", a->handle);
	xc_u(&c, "flags", a->flags);
	xc_i(&c, "fd", a->fd);
	err = xc_run(&c, a->fd);
	if (!err)
		a->handle = (uint32_t)r_get_uint(&c.body, "handle");
	xc_end(&c);
	return err;
}

/* drm_getcap() of a driver without modesetting: the emulated device has no display, so
 * the KMS capabilities (dumb buffers, cursors, page flips...) are EOPNOTSUPP. Answered
 * here: they are what the emulation is, not state of the daemon. */
static int get_cap(struct xed_file *f, void *kdata)
{
	struct drm_get_cap *a = kdata;
	(void)f;
	switch (a->capability) {
	case DRM_CAP_TIMESTAMP_MONOTONIC: a->value = 1; return 0;
	case DRM_CAP_PRIME: a->value = DRM_PRIME_CAP_IMPORT | DRM_PRIME_CAP_EXPORT; return 0;
	case DRM_CAP_SYNCOBJ: a->value = 1; return 0;
	case DRM_CAP_SYNCOBJ_TIMELINE: a->value = 1; return 0;
	default: return EOPNOTSUPP;
	}
}

/* drm_setclientcap(): every client capability is a KMS one */
static int set_client_cap(struct xed_file *f, void *kdata)
{
	(void)f, (void)kdata;
	return EOPNOTSUPP;
}

struct drm_ioctl_desc {
	unsigned size; /* the driver's struct size (what _IOC_SIZE of its command says) */
	int (*func)(struct xed_file *f, void *kdata);
};

/* by number; the driver's range (DRM_COMMAND_BASE..END) is xe_sizes' and stays empty */
static const struct drm_ioctl_desc core_ioctls[0x100] = {
	[0x00] = {sizeof(struct drm_version), drm_version_ioctl},
	[0x09] = {sizeof(struct drm_gem_close), gem_close},
	[0x0a] = {sizeof(struct drm_gem_flink), gem_flink},
	[0x0b] = {sizeof(struct drm_gem_open), gem_open},
	[0x0c] = {sizeof(struct drm_get_cap), get_cap},
	[0x0d] = {sizeof(struct drm_set_client_cap), set_client_cap},
	[0x2d] = {sizeof(struct drm_prime_handle), prime_handle_to_fd},
	[0x2e] = {sizeof(struct drm_prime_handle), prime_fd_to_handle},
	[0xbf] = {sizeof(struct drm_syncobj_create), drm_syncobj_create_ioctl},
	[0xc0] = {sizeof(struct drm_syncobj_destroy), drm_syncobj_destroy_ioctl},
	/* 24 bytes since `point`: an older program's 16 are zero-filled (point 0) */
	[0xc1] = {sizeof(struct drm_syncobj_handle), drm_syncobj_handle_to_fd_ioctl},
	[0xc2] = {sizeof(struct drm_syncobj_handle), drm_syncobj_fd_to_handle_ioctl},
	[0xc3] = {sizeof(struct drm_syncobj_wait), drm_syncobj_wait_ioctl},
	[0xc4] = {sizeof(struct drm_syncobj_array), drm_syncobj_reset_ioctl},
	[0xc5] = {sizeof(struct drm_syncobj_array), drm_syncobj_signal_ioctl},
	/* 48 bytes since deadline_nsec: an older program's 40 are zero-filled (none) */
	[0xca] = {sizeof(struct drm_syncobj_timeline_wait), drm_syncobj_timeline_wait_ioctl},
	[0xcb] = {sizeof(struct drm_syncobj_timeline_array), drm_syncobj_query_ioctl},
	[0xcc] = {sizeof(struct drm_syncobj_transfer), drm_syncobj_transfer_ioctl},
	[0xcd] = {sizeof(struct drm_syncobj_timeline_array), drm_syncobj_timeline_signal_ioctl},
	[0xcf] = {sizeof(struct drm_syncobj_eventfd), drm_syncobj_eventfd_ioctl},
};

static const unsigned xe_sizes[0x60] = {
	[DRM_XE_DEVICE_QUERY] = sizeof(struct drm_xe_device_query),
	[DRM_XE_GEM_CREATE] = sizeof(struct drm_xe_gem_create),
	[DRM_XE_GEM_MMAP_OFFSET] = sizeof(struct drm_xe_gem_mmap_offset),
	[DRM_XE_VM_CREATE] = sizeof(struct drm_xe_vm_create),
	[DRM_XE_VM_DESTROY] = sizeof(struct drm_xe_vm_destroy),
	[DRM_XE_VM_BIND] = sizeof(struct drm_xe_vm_bind),
	[DRM_XE_EXEC_QUEUE_CREATE] = sizeof(struct drm_xe_exec_queue_create),
	[DRM_XE_EXEC_QUEUE_DESTROY] = sizeof(struct drm_xe_exec_queue_destroy),
	[DRM_XE_EXEC_QUEUE_GET_PROPERTY] = sizeof(struct drm_xe_exec_queue_get_property),
	[DRM_XE_EXEC] = sizeof(struct drm_xe_exec),
	[DRM_XE_WAIT_USER_FENCE] = sizeof(struct drm_xe_wait_user_fence),
	[DRM_XE_VM_GET_PROPERTY] = sizeof(struct drm_xe_vm_get_property),
	[DRM_XE_MMIO_REGION_OPEN] = sizeof(struct drm_xe_mmio_region_open),
	[DRM_XE_MMIO_REGION_CLOSE] = sizeof(struct drm_xe_mmio_region_close),
	[DRM_XE_VM_EXPORT] = sizeof(struct drm_xe_vm_export),
};

int drm_ioctl(struct xed_file *f, int fd, unsigned long cmd, uint64_t arg)
{
	if (cmd == FIOCLEX || cmd == FIONCLEX || cmd == FIONBIO || cmd == FIOASYNC)
		return sys_ioctl(fd, cmd, arg) < 0 ? errno : 0;
	if (XED_IOC_TYPE(cmd) != DRM_IOCTL_BASE)
		return ENOTTY;
	unsigned nr = XED_IOC_NR(cmd), drv_size;
	int xe = nr >= DRM_COMMAND_BASE && nr < DRM_COMMAND_END;
	if (xe)
		drv_size = xe_sizes[nr - DRM_COMMAND_BASE];
	else
		drv_size = core_ioctls[nr].func ? core_ioctls[nr].size : 0;
	if (!drv_size)
		return EINVAL; /* no such ioctl on this driver */
	unsigned usize = XED_IOC_SIZE(cmd), dir = XED_IOC_DIR(cmd);
	unsigned in_size = dir & XED_IOC_WRITE ? usize : 0;
	unsigned out_size = dir & XED_IOC_READ ? usize : 0;
	unsigned ksize = in_size > out_size ? in_size : out_size;
	ksize = ksize > drv_size ? ksize : drv_size;
	union {
		uint8_t b[256];
		uint64_t align;
	} stack;
	uint8_t *kdata = stack.b;
	if (ksize > sizeof stack.b) {
		kdata = sys_mmap(NULL, ksize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (kdata == MAP_FAILED)
			return ENOMEM;
	}
	int err = copy_from_user(kdata, arg, in_size);
	if (!err) {
		memset(kdata + in_size, 0, ksize - in_size);
		err = xe ? xe_ioctl(f, nr - DRM_COMMAND_BASE, kdata) : core_ioctls[nr].func(f, kdata);
		if (copy_to_user(arg, kdata, out_size))
			err = EFAULT;
	}
	if (kdata != stack.b)
		sys_munmap(kdata, ksize);
	return err;
}

XED_EXPORT int ioctl(int fd, unsigned long cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	uint64_t arg = va_arg(ap, uint64_t);
	va_end(ap);
	struct xed_file *f = xf_get(fd);
	if (f) {
		int err = drm_ioctl(f, fd, cmd, arg);
		xf_put(f);
		if (!err)
			return 0;
		errno = err;
		return -1;
	}
	if (XED_IOC_TYPE(cmd) == DMA_BUF_BASE && dmabuf_is(fd)) {
		int err = dmabuf_ioctl(fd, cmd, arg);
		if (!err)
			return 0;
		errno = err;
		return -1;
	}
	int err = XED_IOC_TYPE(cmd) == SYNC_IOC_MAGIC	   ? sync_file_ioctl(fd, cmd, arg)
		  : XED_IOC_TYPE(cmd) == SW_SYNC_IOC_MAGIC ? sw_sync_ioctl(fd, cmd, arg)
							   : ENOTTY;
	if (!err)
		return 0;
	if (err != ENOTTY) { /* ENOTTY: not the daemon's sync file or timeline: the kernel's */
		errno = err;
		return -1;
	}
	return sys_ioctl(fd, cmd, arg);
}
