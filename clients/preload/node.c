/*
 * node.c - /dev/dri/card0 and renderD128 for a program that has no such device.
 *
 * Opening a node (by any of libc's open entry points and creat, or by reopening a drm
 * descriptor through /proc/self/fd/N) connects to the daemon and hands the program
 * that connection as its descriptor: a new drm_file each time. stat and friends report
 * the character devices 226:0 and 226:128 the kernel's devtmpfs would; readlink of
 * /proc/self/fd/N names the node. Paths are read from the program with
 * string_from_user, so a bad pointer is EFAULT, as from the kernel. Everything else
 * goes to the kernel unchanged. The stat family lives in stat.c.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preload.h"
#include "sys.h"

static const char *const paths[] = {"/dev/dri/card0", "/dev/dri/renderD128"};

const char *node_path(int node) { return paths[node]; }

/* "/proc/self/fd/N" and its spellings: N, or -1 */
static int proc_fd_number(const char *p)
{
	static const char *const prefixes[] = {"/proc/self/fd/", "/proc/thread-self/fd/",
					       "/dev/fd/"};
	const char *rest = NULL;
	for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes && !rest; i++)
		if (!strncmp(p, prefixes[i], strlen(prefixes[i])))
			rest = p + strlen(prefixes[i]);
	if (!rest && !strncmp(p, "/proc/", 6)) {
		char *end;
		long pid = strtol(p + 6, &end, 10);
		if (end != p + 6 && pid == xed_pid && !strncmp(end, "/fd/", 4))
			rest = end + 4;
	}
	if (!rest || *rest < '0' || *rest > '9')
		return -1;
	char *end;
	long n = strtol(rest, &end, 10);
	return *end || n > 0x7fffffff ? -1 : (int)n;
}

int path_classify(const char *user_path, struct path_info *pi)
{
	char p[4096];
	pi->kind = PATH_OTHER;
	pi->debugfs_top = 0;
	long len = string_from_user(p, user_path, sizeof p);
	if (len == -EFAULT)
		return -EFAULT;
	if (len < 0 || p[0] != '/')
		return 0; /* too long or relative: the kernel's business */
	const struct xed_config *cfg = xed_config();
	for (int node = 0; node < 2; node++)
		if (!strcmp(p, paths[node])) {
			pi->node = node;
			pi->kind = cfg->nodes & 1 << node ? PATH_NODE : PATH_MISSING;
			return 0;
		}
	if (!strcmp(p, "/dev/dri") || !strcmp(p, "/dev/dri/")) {
		pi->kind = PATH_DRI_DIR;
		return 0;
	}
	int fd = proc_fd_number(p);
	if (fd >= 0) {
		struct xed_file *f = xf_get(fd);
		if (f) {
			pi->kind = PATH_PROC_FD;
			pi->fd = fd;
			pi->node = f->node;
			xf_put(f);
		}
		return 0;
	}
	if (!strncmp(p, "/sys/kernel/debug", 17) && (p[17] == 0 || p[17] == '/') && cfg->debugfs[0])
		return debugfs_map(p, pi);
	if (cfg->debugfs[0])
		host_setting_map(p, pi);
	return 0;
}

/* --- open ------------------------------------------------------------------------------ */
static int open_node(int node, int flags)
{
	if (flags & O_DIRECTORY) {
		errno = ENOTDIR;
		return -1;
	}
	struct xed_file *f;
	int fd = xed_open_node(node, flags & O_CLOEXEC, &f);
	if (fd < 0) {
		errno = -fd;
		return -1;
	}
	if (flags & O_NONBLOCK)
		sys_fcntl(fd, F_SETFL, (long)O_NONBLOCK);
	fd_install(fd, f);
	return fd;
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode)
{
	struct path_info pi;
	int err = path_classify(path, &pi);
	if (err) {
		errno = -err;
		return -1;
	}
	switch (pi.kind) {
	case PATH_NODE:
	case PATH_PROC_FD:
		return open_node(pi.node, flags);
	case PATH_MISSING:
		errno = ENOENT;
		return -1;
	case PATH_DEBUGFS: /* sync/sw_sync there opens a new timeline (sw_sync.c) */
		return sw_sync_open(pi.mapped, flags, mode);
	}
	return sys_openat(dirfd, path, flags, mode);
}

static mode_t mode_arg(int flags, va_list ap)
{
	return flags & (O_CREAT | __O_TMPFILE) ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_VARIANT(name)                                      \
	XED_EXPORT int name(const char *path, int flags, ...)   \
	{                                                       \
		va_list ap;                                     \
		va_start(ap, flags);                            \
		mode_t mode = mode_arg(flags, ap);              \
		va_end(ap);                                     \
		return do_openat(AT_FDCWD, path, flags, mode);  \
	}
#define OPENAT_VARIANT(name)                                          \
	XED_EXPORT int name(int dirfd, const char *path, int flags, ...) \
	{                                                             \
		va_list ap;                                           \
		va_start(ap, flags);                                  \
		mode_t mode = mode_arg(flags, ap);                    \
		va_end(ap);                                           \
		return do_openat(dirfd, path, flags, mode);           \
	}
OPEN_VARIANT(open)
OPEN_VARIANT(open64)
OPENAT_VARIANT(openat)
OPENAT_VARIANT(openat64)

/* creat(2) is open(2) with these flags: libc's own calls the kernel without open() */
XED_EXPORT int creat(const char *path, mode_t mode)
{
	return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}
XED_EXPORT int creat64(const char *path, mode_t mode)
{
	return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

/* _FORTIFY_SOURCE's checked entry points: no mode (O_CREAT without one aborts) */
XED_EXPORT int __open_2(const char *path, int flags) { return do_openat(AT_FDCWD, path, flags, 0); }
XED_EXPORT int __open64_2(const char *path, int flags)
{
	return do_openat(AT_FDCWD, path, flags, 0);
}
XED_EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}
XED_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}

/* fopen(3) opens inside libc, past open(): a path the library maps (the debugfs stand-in,
 * the host settings, the kernel's modules: libkmod reads modules.dep.bin so) is opened
 * here as open() would and the stream made on it; any other goes to libc's own */
typedef FILE *fopen_fn(const char *, const char *);

static int fopen_flags(const char *mode)
{
	int flags = mode[0] == 'r' ? O_RDONLY : mode[0] == 'w' ? O_WRONLY | O_CREAT | O_TRUNC
					      : O_WRONLY | O_CREAT | O_APPEND;
	for (const char *m = mode + 1; *m && *m != ','; m++)
		flags = *m == '+' ? (flags & ~O_ACCMODE) | O_RDWR
			: *m == 'e' ? flags | O_CLOEXEC
			: *m == 'x' ? flags | O_EXCL
				    : flags;
	return flags;
}

static FILE *do_fopen(const char *path, const char *mode, const char *real_name)
{
	struct path_info pi;
	int err = path_classify(path, &pi);
	if (err) {
		errno = -err;
		return NULL;
	}
	char m[8] = {0};
	if (pi.kind != PATH_DEBUGFS || string_from_user(m, mode, sizeof m) < 1 ||
	    !strchr("rwa", m[0])) {
		fopen_fn *real = (fopen_fn *)dlsym(RTLD_NEXT, real_name);
		if (!real) {
			errno = ENOSYS;
			return NULL;
		}
		return real(path, mode);
	}
	int fd = sw_sync_open(pi.mapped, fopen_flags(m), 0666);
	if (fd < 0)
		return NULL;
	/* fclose() closes inside libc, past close(): a timeline opened so is not marked (the
	 * daemon sees its last close by itself, a moment later, not within fclose) */
	fd_forget(fd);
	FILE *stream = fdopen(fd, m);
	if (!stream) {
		int saved = errno;
		sys_close(fd);
		errno = saved;
	}
	return stream;
}

XED_EXPORT FILE *fopen(const char *path, const char *mode) { return do_fopen(path, mode, "fopen"); }
XED_EXPORT FILE *fopen64(const char *path, const char *mode)
{
	return do_fopen(path, mode, "fopen64");
}

/* --- readlink ---------------------------------------------------------------------------- */
static ssize_t do_readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
	struct path_info pi;
	int err = path_classify(path, &pi);
	if (err) {
		errno = -err;
		return -1;
	}
	if (pi.kind == PATH_PROC_FD) {
		const char *target = node_path(pi.node);
		size_t n = strlen(target);
		if ((ssize_t)size <= 0) {
			errno = EINVAL;
			return -1;
		}
		if (n > size)
			n = size;
		if (copy_to_user((uintptr_t)buf, target, n)) {
			errno = EFAULT;
			return -1;
		}
		return (ssize_t)n;
	}
	if (pi.kind == PATH_DEBUGFS)
		return sys_readlinkat(AT_FDCWD, pi.mapped, buf, size);
	return sys_readlinkat(dirfd, path, buf, size);
}

XED_EXPORT ssize_t readlink(const char *path, char *buf, size_t size)
{
	return do_readlinkat(AT_FDCWD, path, buf, size);
}

XED_EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
	return do_readlinkat(dirfd, path, buf, size);
}

/* --- access ------------------------------------------------------------------------------ */
static int do_faccessat(int dirfd, const char *path, int mode, int flags)
{
	struct path_info pi;
	int err = path_classify(path, &pi);
	if (err) {
		errno = -err;
		return -1;
	}
	switch (pi.kind) {
	case PATH_NODE:
	case PATH_PROC_FD:
		if (mode & X_OK) {
			errno = EACCES;
			return -1;
		}
		return 0;
	case PATH_MISSING:
		errno = ENOENT;
		return -1;
	case PATH_DEBUGFS:
		dirfd = AT_FDCWD;
		path = pi.mapped;
	}
	if (flags)
		return (int)syscall(SYS_faccessat2, (long)dirfd, path, (long)mode, (long)flags);
	return sys_faccessat(dirfd, path, mode);
}

XED_EXPORT int access(const char *path, int mode)
{
	return do_faccessat(AT_FDCWD, path, mode, 0);
}
XED_EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	return do_faccessat(dirfd, path, mode, flags);
}
XED_EXPORT int euidaccess(const char *path, int mode)
{
	return do_faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}
XED_EXPORT int eaccess(const char *path, int mode)
{
	return do_faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}
