/*
 * sw_sync.c - the kernel's validation timelines (drivers/dma-buf/sw_sync.c), which IGT
 * drives fences with: each open(2) of debugfs's sync/sw_sync is a new timeline at 0;
 * SW_SYNC_IOC_CREATE_FENCE on it makes a sync file of a point, signalled once
 * SW_SYNC_IOC_INC brings the timeline there; closing its last copy signals the points
 * still unsignalled with ENOENT.
 *
 * The timeline is the daemon's (SW_SYNC_TIMELINE_CREATE hands back one end of a socket
 * pair, as its sync files are), so the open of the stand-in's sync/sw_sync file is
 * replaced by that descriptor, and its two ioctls are asked of the daemon with it
 * attached, as syncfile.c asks a sync file's. A program that opened no drm file (IGT's
 * sw_sync opens none) is given a connection of its own, hidden from it (xf_any()),
 * which forked children and threads share as they share the program's drm files. The
 * sync files that come back are syncfile.c's like any other.
 *
 * The kernel releases a timeline within the close(2) of its last copy, so its fences
 * are signalled when close returns (IGT's timeline_closed polls one at once). The
 * daemon cannot see a close, only, later, its end's hang-up: so the library marks the
 * descriptors it made as timelines (files.c, carried through dup, dup2, dup3, fcntl's
 * F_DUPFD and F_DUPFD_CLOEXEC, close_range and fork) and after the real close of one
 * sends SW_SYNC_CLOSED with its inode, which the daemon answers once it released the
 * timeline, if that was its last copy. Not covered, where the daemon releases it by
 * itself a little later: a descriptor that came by SCM_RIGHTS, one inherited across
 * exec (the new image's library knows nothing of it), one closed by exit or by
 * close_range beyond its first CLOSE_BATCH timelines, or by a raw syscall(SYS_close).
 * Nor is a timeline descriptor a debugfs file in every respect: fstat says a socket,
 * and read(2) on it waits instead of failing (EINVAL); no program reads one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "preload.h"
#include "proto.h"
#include "sys.h"

/* --- open ---------------------------------------------------------------------------- */
/* Is fd, just opened at `mapped` (a debugfs path mapped into the stand-in), the
 * stand-in's sync/sw_sync? Any spelling the mapper accepts (sync//sw_sync, a detour
 * through ..) names the same file; only a name ending in "sw_sync" is looked at. */
static int is_sw_sync(int fd, const char *mapped)
{
	size_t n = strlen(mapped);
	if (n < 7 || strcmp(mapped + n - 7, "sw_sync"))
		return 0;
	char path[sizeof((struct path_info *)0)->mapped];
	int len = snprintf(path, sizeof path, "%s/sync/sw_sync", xed_config()->debugfs);
	struct stat a, b;
	return len > 0 && (size_t)len < sizeof path && !sys_fstatat(fd, "", &a, AT_EMPTY_PATH) &&
	       !sys_fstatat(AT_FDCWD, path, &b, 0) && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* a new timeline from the daemon: the descriptor, close-on-exec as `flags` say, marked;
 * or -1 and errno */
static int timeline_create(int flags)
{
	struct xed_file *f = xf_any();
	if (!f)
		return -1; /* no daemon: xf_any() said why (ENODEV, as a node's open) */
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SW_SYNC_TIMELINE_CREATE);
	int fd = -1;
	if (!err) {
		err = xc_run(&c, -1);
		fd = err ? -1 : xc_take_new_fd(&c);
		xc_end(&c);
	}
	xf_put(f);
	if (!err && fd < 0)
		err = EMFILE; /* no room for it here: recvmsg dropped it */
	if (err) {
		errno = err;
		return -1;
	}
	if (!(flags & O_CLOEXEC)) /* it comes close-on-exec (recv_frame) */
		sys_fcntl(fd, F_SETFD, 0L);
	if (flags & O_NONBLOCK)
		sys_fcntl(fd, F_SETFL, (long)O_NONBLOCK);
	fd_mark_timeline(fd);
	return fd;
}

int sw_sync_open(const char *mapped, int flags, mode_t mode)
{
	/* The stand-in file is opened first, as the kernel would open debugfs's: its
	 * checks and errno (ENOTDIR for O_DIRECTORY, EEXIST, EACCES, EMFILE...) are the
	 * open's. O_PATH opens no device, so it stays that file. */
	int fd = sys_openat(AT_FDCWD, mapped, flags, mode);
	if (fd < 0 || flags & O_PATH || !is_sw_sync(fd, mapped))
		return fd;
	sys_close(fd);
	return timeline_create(flags);
}

/* --- ioctls -------------------------------------------------------------------------- */
/* INC by `value` of the timeline fd, on f: 0, ENOTTY if fd is none of the daemon's
 * timelines (EBADF from sendmsg: closed, the kernel's to say), or another errno */
static int inc(struct xed_file *f, int fd, uint32_t value)
{
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SW_SYNC_INC);
	if (err)
		return err;
	xc_u(&c, "value", value);
	err = xc_run(&c, fd);
	xc_end(&c);
	return err == EBADF ? ENOTTY : err;
}

/* The kernel answers ENOTTY for a descriptor that is no timeline before any other
 * check: an errno that would come first for a timeline only (`err`, EMFILE or EFAULT)
 * is given once the daemon says fd is one (an INC by 0, which changes nothing). */
static int if_timeline(struct xed_file *f, int fd, int err)
{
	return inc(f, fd, 0) == ENOTTY ? ENOTTY : err;
}

/* sw_sync_ioctl_create_fence(): a free descriptor (EMFILE), the argument (EFAULT), the
 * fence, the argument written back with .fence (EFAULT: the sync file is never
 * installed). The name is unused by the kernel; it goes as UTF-8 (wire.h). */
static int create_fence(struct xed_file *f, int fd, uint64_t arg)
{
	int spare = sys_fcntl(f->io.fd, F_DUPFD_CLOEXEC, 0L);
	if (spare < 0 && errno == EMFILE)
		return if_timeline(f, fd, EMFILE);
	if (spare >= 0)
		sys_close(spare);
	struct sw_sync_create_fence_data a;
	if (copy_from_user(&a, arg, sizeof a))
		return if_timeline(f, fd, EFAULT);
	char name[sizeof a.name];
	memcpy(name, a.name, sizeof name - 1);
	name[sizeof name - 1] = '\0';
	utf8_only(name);
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_SW_SYNC_CREATE_FENCE);
	if (err)
		return err;
	xc_u(&c, "value", a.value);
	xc_key(&c, "name");
	w_str(&c.w, name);
	err = xc_run(&c, fd);
	int fence = err ? -1 : xc_take_new_fd(&c);
	xc_end(&c);
	if (err)
		return err == EBADF ? ENOTTY : err; /* closed meanwhile: the kernel's EBADF */
	if (fence < 0)
		return EMFILE; /* taken by another thread since: recvmsg had no room for it */
	a.fence = fence;
	if (copy_to_user(arg, &a, sizeof a)) {
		sys_close(fence);
		return EFAULT;
	}
	return 0;
}

/* sw_sync_ioctl_inc(): the count read (EFAULT), the timeline advanced */
static int inc_ioctl(struct xed_file *f, int fd, uint64_t arg)
{
	uint32_t value;
	if (copy_from_user(&value, arg, sizeof value))
		return if_timeline(f, fd, EFAULT);
	return inc(f, fd, value);
}

int sw_sync_ioctl(int fd, unsigned long cmd, uint64_t arg)
{
	if (cmd != SW_SYNC_IOC_CREATE_FENCE && cmd != SW_SYNC_IOC_INC)
		return ENOTTY;
	/* the daemon's timelines are sockets: anything else is the kernel's (a real
	 * sw_sync timeline, a watchdog: 'W' is theirs too) */
	struct stat st;
	if (sys_fstatat(fd, "", &st, AT_EMPTY_PATH) < 0 || !S_ISSOCK(st.st_mode))
		return ENOTTY;
	struct xed_file *f = xf_any();
	if (!f)
		return ENOTTY; /* no daemon to ask: the kernel answers */
	int err = cmd == SW_SYNC_IOC_CREATE_FENCE ? create_fence(f, fd, arg) : inc_ioctl(f, fd, arg);
	xf_put(f);
	return err;
}

/* --- close --------------------------------------------------------------------------- */
uint64_t sw_sync_ino(int fd)
{
	struct stat st;
	if (sys_fstatat(fd, "", &st, AT_EMPTY_PATH) < 0 || !S_ISSOCK(st.st_mode))
		return 0;
	return st.st_ino;
}

void sw_sync_closed(uint64_t ino)
{
	int saved = errno; /* close's own errno is the program's */
	struct xed_file *f = ino ? xf_any() : NULL;
	struct xcall c;
	if (f && !xc_begin(&c, f, XED_OP_SW_SYNC_CLOSED)) {
		xc_u(&c, "ino", ino);
		xc_run(&c, -1); /* its answer: the timeline released, if that was its last copy */
		xc_end(&c);
	}
	if (f)
		xf_put(f);
	errno = saved;
}
