/*
 * nodes.c - device-node discovery as IGT and libdrm do it: stat, open (every libc
 * entry point), fstat, readlink and reopen of /proc/self/fd/N, the rules of a drm fd.
 */
#include "check.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

int __open_2(const char *, int);
int __open64_2(const char *, int);
int __openat_2(int, const char *, int);
int __openat64_2(int, const char *, int);

static void is_node(const struct stat *st, unsigned minor_nr)
{
	CHECK(S_ISCHR(st->st_mode));
	CHECK(major(st->st_rdev) == 226 && minor(st->st_rdev) == minor_nr);
}

/* fd is a drm file of its own: a BO made on it is unknown to `other` */
static void separate_files(int fd, int other)
{
	uint32_t bo = bo_create(fd, 4096);
	CHECK_ERR(gem_close(other, bo), EINVAL);
	CHECK_OK(gem_close(fd, bo));
}

int main(void)
{
	struct stat st;
	struct stat64 st64;
	struct statx sx;
	CHECK_OK(stat("/dev/dri/card0", &st));
	is_node(&st, 0);
	CHECK_OK(stat64("/dev/dri/renderD128", &st64));
	is_node((struct stat *)&st64, 128);
	CHECK_OK(lstat("/dev/dri/card0", &st));
	is_node(&st, 0);
	CHECK_OK(fstatat(AT_FDCWD, "/dev/dri/renderD128", &st, 0));
	is_node(&st, 128);
	CHECK_OK(statx(AT_FDCWD, "/dev/dri/card0", 0, STATX_BASIC_STATS, &sx));
	CHECK(S_ISCHR(sx.stx_mode) && sx.stx_rdev_major == 226 && sx.stx_rdev_minor == 0);
	CHECK_OK(stat("/dev/dri", &st));
	CHECK(S_ISDIR(st.st_mode));
	CHECK_OK(access("/dev/dri/card0", R_OK | W_OK));
	CHECK_ERR(stat("/dev/dri/card1", &st), ENOENT);

	/* every open entry point gives a descriptor, each a drm file of its own */
	int fds[8];
	fds[0] = open("/dev/dri/card0", O_RDWR);
	fds[1] = open64("/dev/dri/card0", O_RDWR | O_CLOEXEC);
	fds[2] = openat(AT_FDCWD, "/dev/dri/renderD128", O_RDWR);
	fds[3] = openat64(AT_FDCWD, "/dev/dri/card0", O_RDWR);
	fds[4] = __open_2("/dev/dri/card0", O_RDWR);
	fds[5] = __open64_2("/dev/dri/renderD128", O_RDWR);
	fds[6] = __openat_2(AT_FDCWD, "/dev/dri/card0", O_RDWR);
	fds[7] = __openat64_2(AT_FDCWD, "/dev/dri/card0", O_RDWR);
	for (int i = 0; i < 8; i++) {
		CHECK(fds[i] >= 0);
		CHECK_OK(fstat(fds[i], &st));
		is_node(&st, i == 2 || i == 5 ? 128 : 0);
		CHECK_OK(fstat64(fds[i], &st64));
		CHECK_OK(fstatat(fds[i], "", &st, AT_EMPTY_PATH));
		is_node(&st, i == 2 || i == 5 ? 128 : 0);
		CHECK(lseek(fds[i], 0, SEEK_SET) == 0); /* noop_llseek */
		if (i)
			separate_files(fds[i], fds[i - 1]);
	}
	CHECK((fcntl(fds[1], F_GETFD) & FD_CLOEXEC) && !(fcntl(fds[0], F_GETFD) & FD_CLOEXEC));

	/* /proc/self/fd/N names the node, and opening it is a new drm file */
	char path[64], link[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fds[0]);
	ssize_t n = readlink(path, link, sizeof link);
	CHECK(n == 14 && !memcmp(link, "/dev/dri/card0", 14));
	CHECK(readlink(path, link, 4) == 4 && !memcmp(link, "/dev", 4));
	snprintf(path, sizeof path, "/proc/self/fd/%d", fds[2]);
	n = readlink(path, link, sizeof link);
	CHECK(n == 19 && !memcmp(link, "/dev/dri/renderD128", 19));
	CHECK_OK(stat(path, &st));
	is_node(&st, 128);
	int again = open(path, O_RDWR);
	CHECK(again >= 0 && again != fds[2]);
	CHECK_OK(fstat(again, &st));
	is_node(&st, 128);
	separate_files(again, fds[2]);
	snprintf(path, sizeof path, "/proc/%d/fd/%d", getpid(), fds[0]);
	n = readlink(path, link, sizeof link);
	CHECK(n == 14);

	/* a directory open of a node, and paths that are not ours */
	CHECK_ERR(open("/dev/dri/card0", O_RDONLY | O_DIRECTORY), ENOTDIR);
	CHECK_ERR(open("/dev/dri/card7", O_RDWR), ENOENT);
	CHECK_ERR(open(bad_address(), O_RDWR), EFAULT);
	CHECK_ERR(stat(bad_address(), &st), EFAULT);
	CHECK_ERR(stat("/dev/dri/card0", bad_address()), EFAULT);
	CHECK_ERR(fstat(fds[0], (struct stat *)read_only_page()), EFAULT);
	CHECK_ERR(readlink("/proc/self/fd/0", bad_address(), 64), EFAULT);
	snprintf(path, sizeof path, "/proc/self/fd/%d", fds[0]);
	CHECK_ERR(readlink(path, (char *)read_only_page(), 64), EFAULT);
	for (int i = 0; i < 8; i++)
		CHECK_OK(close(fds[i]));
	CHECK_OK(close(again));
	CHECK_ERR(close(fds[0]), EBADF);
	return 0;
}
