/*
 * debugfs.c - /sys/kernel/debug as IGT's igt_debugfs finds it: "." and ".." of the
 * root on different devices (mounted), dri/<minor> named by the drm fd's minor, its
 * name file, the directory opened and forcewake_all opened relative to it.
 */
#include "check.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

int __openat64_2(int, const char *, int);

int main(void)
{
	struct stat64 dot, dotdot, st;
	CHECK_OK(stat64("/sys/kernel/debug/.", &dot));
	CHECK_OK(stat64("/sys/kernel/debug/..", &dotdot));
	CHECK(S_ISDIR(dot.st_mode) && S_ISDIR(dotdot.st_mode));
	CHECK(dot.st_dev != dotdot.st_dev);
	const char *nodes[] = {"/dev/dri/card0", "/dev/dri/renderD128"};
	for (int i = 0; i < 2; i++) {
		int fd = open(nodes[i], O_RDWR);
		CHECK(fd >= 0);
		CHECK_OK(fstat64(fd, &st));
		char dir[64], name[80];
		snprintf(dir, sizeof dir, "/sys/kernel/debug/dri/%u", minor(st.st_rdev));
		snprintf(name, sizeof name, "%s/name", dir);
		CHECK_OK(stat64(name, &st));
		int named = open(name, O_RDONLY);
		char text[64] = {0};
		CHECK(named >= 0 && read(named, text, sizeof text - 1) > 0);
		CHECK(!strncmp(text, "xe ", 3));
		close(named);
		int dirfd = open(dir, O_RDONLY | O_DIRECTORY);
		CHECK(dirfd >= 0);
		int fw = __openat64_2(dirfd, "forcewake_all", O_RDONLY);
		CHECK(fw >= 0);
		CHECK_OK(close(fw));
		CHECK_OK(close(dirfd));
		CHECK_OK(close(fd));
	}
	CHECK_ERR(open("/sys/kernel/debug/dri/5/name", O_RDONLY), ENOENT);
	return 0;
}
