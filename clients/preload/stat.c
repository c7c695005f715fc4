/*
 * stat.c - the stat family, for device nodes, drm descriptors and the debugfs stand-in.
 *
 * IGT finds a device by stat64("/dev/dri/cardN") and trusts fstat64() of what it
 * opened to be a character device whose minor names its debugfs directory; libdrm does
 * the same. Each entry point libc offers (stat, stat64, lstat, fstat, fstatat,
 * newfstatat, statx, and the __xstat family old binaries still call) answers for our
 * paths and descriptors with the devtmpfs node the kernel would show, written into the
 * program's buffer with copy_to_user (EFAULT for a bad one); all others go to the kernel.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "preload.h"
#include "sys.h"

#define DEVTMPFS_DEV makedev(0, 6)
#define DEBUGFS_DEV makedev(0, 0x7e) /* what the debugfs root reports: not its parent's */

void node_stat(int node, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_dev = DEVTMPFS_DEV;
	st->st_ino = node == XED_NODE_PRIMARY ? 1001 : 1128;
	st->st_mode = S_IFCHR | 0666;
	st->st_nlink = 1;
	st->st_rdev = makedev(XED_DRM_MAJOR, node == XED_NODE_PRIMARY ? 0 : 128);
	st->st_blksize = 4096;
}

static int put_stat(void *buf, const struct stat *st)
{
	if (copy_to_user((uintptr_t)buf, st, sizeof *st)) {
		errno = EFAULT;
		return -1;
	}
	return 0;
}

static int dri_dir(void *buf)
{
	struct stat st;
	if (!sys_fstatat(AT_FDCWD, "/dev/dri", &st, 0))
		return put_stat(buf, &st);
	memset(&st, 0, sizeof st); /* a host without /dev/dri: the directory udev makes */
	st.st_dev = DEVTMPFS_DEV;
	st.st_ino = 1000;
	st.st_mode = S_IFDIR | 0755;
	st.st_nlink = 3;
	st.st_blksize = 4096;
	return put_stat(buf, &st);
}

static int do_fstatat(int dirfd, const char *path, void *buf, int flags)
{
	struct stat st;
	struct path_info pi;
	struct xed_file *f;
	char empty;
	if ((flags & AT_EMPTY_PATH) && !copy_from_user(&empty, (uintptr_t)path, 1) && !empty &&
	    (f = xf_get(dirfd))) {
		node_stat(f->node, &st);
		xf_put(f);
		return put_stat(buf, &st);
	}
	int err = path_classify(path, &pi);
	if (err) {
		errno = -err;
		return -1;
	}
	switch (pi.kind) {
	case PATH_PROC_FD:
		if (flags & AT_SYMLINK_NOFOLLOW)
			break; /* the /proc link itself */
		/* fall through */
	case PATH_NODE:
		node_stat(pi.node, &st);
		return put_stat(buf, &st);
	case PATH_DRI_DIR:
		return dri_dir(buf);
	case PATH_MISSING:
		errno = ENOENT;
		return -1;
	case PATH_DEBUGFS:
		if (sys_fstatat(AT_FDCWD, pi.mapped, &st, flags & AT_SYMLINK_NOFOLLOW) < 0)
			return -1;
		if (pi.debugfs_top == 1)
			st.st_dev = DEBUGFS_DEV;
		return put_stat(buf, &st);
	}
	return sys_fstatat(dirfd, path, buf, flags);
}

static int do_fstat(int fd, void *buf)
{
	struct xed_file *f = xf_get(fd);
	if (!f)
		return sys_fstatat(fd, "", buf, AT_EMPTY_PATH);
	struct stat st;
	node_stat(f->node, &st);
	xf_put(f);
	return put_stat(buf, &st);
}

/* x86-64: struct stat and struct stat64 are one layout, the kernel's */
XED_EXPORT int stat(const char *path, struct stat *buf) { return do_fstatat(AT_FDCWD, path, buf, 0); }
XED_EXPORT int stat64(const char *path, struct stat64 *buf)
{
	return do_fstatat(AT_FDCWD, path, buf, 0);
}
XED_EXPORT int lstat(const char *path, struct stat *buf)
{
	return do_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}
XED_EXPORT int lstat64(const char *path, struct stat64 *buf)
{
	return do_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}
XED_EXPORT int fstat(int fd, struct stat *buf) { return do_fstat(fd, buf); }
XED_EXPORT int fstat64(int fd, struct stat64 *buf) { return do_fstat(fd, buf); }
XED_EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags)
{
	return do_fstatat(dirfd, path, buf, flags);
}
XED_EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags)
{
	return do_fstatat(dirfd, path, buf, flags);
}
XED_EXPORT int newfstatat(int dirfd, const char *path, struct stat *buf, int flags)
{
	return do_fstatat(dirfd, path, buf, flags);
}

/* the glibc < 2.33 ABI, which binaries built then still call */
XED_EXPORT int __xstat(int ver, const char *path, struct stat *buf)
{
	(void)ver;
	return do_fstatat(AT_FDCWD, path, buf, 0);
}
XED_EXPORT int __xstat64(int ver, const char *path, struct stat64 *buf)
{
	(void)ver;
	return do_fstatat(AT_FDCWD, path, buf, 0);
}
XED_EXPORT int __lxstat(int ver, const char *path, struct stat *buf)
{
	(void)ver;
	return do_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}
XED_EXPORT int __lxstat64(int ver, const char *path, struct stat64 *buf)
{
	(void)ver;
	return do_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW);
}
XED_EXPORT int __fxstat(int ver, int fd, struct stat *buf)
{
	(void)ver;
	return do_fstat(fd, buf);
}
XED_EXPORT int __fxstat64(int ver, int fd, struct stat64 *buf)
{
	(void)ver;
	return do_fstat(fd, buf);
}
XED_EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags)
{
	(void)ver;
	return do_fstatat(dirfd, path, buf, flags);
}
XED_EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags)
{
	(void)ver;
	return do_fstatat(dirfd, path, buf, flags);
}

/* --- statx ------------------------------------------------------------------------------- */
static int node_statx(int node, void *buf)
{
	struct stat st;
	struct statx sx;
	node_stat(node, &st);
	memset(&sx, 0, sizeof sx);
	sx.stx_mask = STATX_BASIC_STATS;
	sx.stx_blksize = (uint32_t)st.st_blksize;
	sx.stx_nlink = (uint32_t)st.st_nlink;
	sx.stx_mode = (uint16_t)st.st_mode;
	sx.stx_ino = st.st_ino;
	sx.stx_rdev_major = major(st.st_rdev);
	sx.stx_rdev_minor = minor(st.st_rdev);
	sx.stx_dev_major = major(st.st_dev);
	sx.stx_dev_minor = minor(st.st_dev);
	if (copy_to_user((uintptr_t)buf, &sx, sizeof sx)) {
		errno = EFAULT;
		return -1;
	}
	return 0;
}

XED_EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *buf)
{
	struct path_info pi;
	struct xed_file *f;
	char empty;
	if ((flags & AT_EMPTY_PATH) && !copy_from_user(&empty, (uintptr_t)path, 1) && !empty &&
	    (f = xf_get(dirfd))) {
		int node = f->node;
		xf_put(f);
		return node_statx(node, buf);
	}
	int err = path_classify(path, &pi);
	if (err) {
		errno = -err;
		return -1;
	}
	if (pi.kind == PATH_NODE || (pi.kind == PATH_PROC_FD && !(flags & AT_SYMLINK_NOFOLLOW)))
		return node_statx(pi.node, buf);
	if (pi.kind == PATH_MISSING) {
		errno = ENOENT;
		return -1;
	}
	if (pi.kind == PATH_DEBUGFS) {
		int r = sys_statx(AT_FDCWD, pi.mapped, flags, mask, buf);
		if (r == 0 && pi.debugfs_top == 1) {
			struct statx sx;
			if (!copy_from_user(&sx, (uintptr_t)buf, sizeof sx)) {
				sx.stx_dev_major = major(DEBUGFS_DEV);
				sx.stx_dev_minor = minor(DEBUGFS_DEV);
				copy_to_user((uintptr_t)buf, &sx, sizeof sx);
			}
		}
		return r;
	}
	return sys_statx(dirfd, path, flags, mask, buf);
}
