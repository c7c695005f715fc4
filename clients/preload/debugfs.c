/*
 * debugfs.c - /sys/kernel/debug for a program under the library, without mounting it.
 *
 * The xe IGT tests decide whether debugfs is mounted by comparing the devices of
 * /sys/kernel/debug/. and /sys/kernel/debug/.. (else they try to mount it: as root,
 * on the host), then open dri/<minor>/ and files in it (name, forcewake_all). `xec
 * run` makes a directory holding those files and names it in XED_PRELOAD_DEBUGFS;
 * here every path under /sys/kernel/debug is mapped into it, and the root reports a
 * device of its own (stat.c) so that it looks mounted. Relative lookups (openat on a
 * descriptor of that directory) then go to the real directory by themselves.
 */
#include <stdio.h>
#include <string.h>

#include "preload.h"

int debugfs_map(const char *path, struct path_info *pi)
{
	const char *root = xed_config()->debugfs;
	const char *rest = path + strlen("/sys/kernel/debug");
	while (rest[0] == '/' && rest[1] == '/')
		rest++;
	pi->kind = PATH_DEBUGFS;
	if (!strcmp(rest, "") || !strcmp(rest, "/") || !strcmp(rest, "/.") || !strcmp(rest, "/./"))
		pi->debugfs_top = 1;
	else if (!strcmp(rest, "/..") || !strcmp(rest, "/../"))
		pi->debugfs_top = 2; /* the directory holding ours: another device */
	int n = snprintf(pi->mapped, sizeof pi->mapped, "%s%s", root, rest);
	if (n < 0 || (size_t)n >= sizeof pi->mapped)
		pi->kind = PATH_OTHER; /* too long to map: the kernel answers for it */
	return 0;
}
