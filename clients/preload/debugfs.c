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
 *
 * Run as root, IGT also changes two host settings as it starts: it unbinds the
 * framebuffer console from its virtual terminal (/sys/class/vtconsole/vtconN/bind) and
 * has the kernel dump ftrace on an oops (/proc/sys/kernel/ftrace_dump_on_oops); xe_vm
 * drops the page cache (/proc/sys/vm/drop_caches). Those paths go to copies beside the
 * stand-in (`host/`, which `xec run` fills from the host),
 * so a test run as root leaves the host's console and kernel as they were. The kernel's
 * modules (/lib/modules) map there too, to nothing: IGT loads sw_sync with libkmod
 * before it looks for the file, and as root that would load the host's module.
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

static const char *const host_settings[] = {
	"/sys/class/vtconsole/",		/* a directory: everything under it */
	"/proc/sys/kernel/ftrace_dump_on_oops", /* a file */
	"/proc/sys/vm/drop_caches",		/* xe_vm drops the page cache */
	/* kernel modules: nothing in `host/` stands for them, so libkmod finds none and
	 * IGT's modprobe (sw_sync's, the syncobj tests') loads nothing into the host */
	"/lib/modules/",
	"/usr/lib/modules/",
};

int host_setting_map(const char *path, struct path_info *pi)
{
	for (size_t i = 0; i < sizeof host_settings / sizeof *host_settings; i++) {
		const char *s = host_settings[i];
		size_t n = strlen(s);
		if (s[n - 1] == '/' ? strncmp(path, s, n) : strcmp(path, s))
			continue;
		int len = snprintf(pi->mapped, sizeof pi->mapped, "%s/../host%s",
				   xed_config()->debugfs, path);
		if (len < 0 || (size_t)len >= sizeof pi->mapped)
			return 0;
		pi->kind = PATH_DEBUGFS;
		return 1;
	}
	return 0;
}
