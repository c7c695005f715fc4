/*
 * sys.h - libc's own functions, reached without going through our interposers.
 *
 * The library defines open, close, ioctl, mmap... so calling them from inside would
 * recurse. Raw syscall(2) reaches the kernel directly: it works before our constructor
 * has run, from any thread, and never re-enters the library. (syscall() sets errno.)
 */
#ifndef XED_SYS_H
#define XED_SYS_H

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

struct statx;

static inline int sys_openat(int dirfd, const char *path, int flags, mode_t mode)
{
	return (int)syscall(SYS_openat, (long)dirfd, path, (long)flags, (long)mode);
}
static inline int sys_close(int fd) { return (int)syscall(SYS_close, (long)fd); }
static inline int sys_ioctl(int fd, unsigned long cmd, unsigned long arg)
{
	return (int)syscall(SYS_ioctl, (long)fd, cmd, arg);
}
static inline void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, (long)prot, (long)flags, (long)fd, (long)off);
}
static inline int sys_munmap(void *addr, size_t len)
{
	return (int)syscall(SYS_munmap, addr, len);
}
static inline int sys_fcntl(int fd, int cmd, unsigned long arg)
{
	return (int)syscall(SYS_fcntl, (long)fd, (long)cmd, arg);
}
static inline int sys_dup(int fd) { return (int)syscall(SYS_dup, (long)fd); }
static inline int sys_dup3(int fd, int fd2, int flags)
{
	return (int)syscall(SYS_dup3, (long)fd, (long)fd2, (long)flags);
}
static inline int sys_fstatat(int dirfd, const char *path, void *st, int flags)
{
	return (int)syscall(SYS_newfstatat, (long)dirfd, path, st, (long)flags);
}
static inline int sys_statx(int dirfd, const char *path, int flags, unsigned mask, void *stx)
{
	return (int)syscall(SYS_statx, (long)dirfd, path, (long)flags, (long)mask, stx);
}
static inline long sys_readlinkat(int dirfd, const char *path, char *buf, size_t len)
{
	return syscall(SYS_readlinkat, (long)dirfd, path, buf, len);
}
static inline off_t sys_lseek(int fd, off_t off, int whence)
{
	return (off_t)syscall(SYS_lseek, (long)fd, (long)off, (long)whence);
}
static inline int sys_faccessat(int dirfd, const char *path, int mode)
{
	return (int)syscall(SYS_faccessat, (long)dirfd, path, (long)mode);
}
static inline int sys_close_range(unsigned lo, unsigned hi, int flags)
{
	return (int)syscall(SYS_close_range, lo, hi, (long)flags);
}

#endif /* XED_SYS_H */
