/*
 * host_settings.c - the host settings IGT changes as root as it starts (the framebuffer
 * console's binding to its virtual terminal, ftrace_dump_on_oops; xe_vm's drop_caches) open, under the
 * library, as the stand-in's copies: regular files, not procfs or sysfs. Nothing is
 * written, so a broken stand-in fails this program without changing the host.
 */
#include "check.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#define PROC_SUPER_MAGIC 0x9fa0
#define SYSFS_MAGIC 0x62656572

static void stood_in(const char *path, long host_fs)
{
	int fd = open(path, O_WRONLY);
	CHECK(fd >= 0);
	struct statfs fs;
	CHECK_OK(fstatfs(fd, &fs));
	if (fs.f_type == host_fs)
		fprintf(stderr, "%s is the host's\n", path);
	CHECK(fs.f_type != host_fs);
	struct stat st;
	CHECK_OK(fstat(fd, &st));
	CHECK(S_ISREG(st.st_mode));
	CHECK_OK(close(fd));
}

int main(void)
{
	stood_in("/proc/sys/kernel/ftrace_dump_on_oops", PROC_SUPER_MAGIC);
	stood_in("/proc/sys/vm/drop_caches", PROC_SUPER_MAGIC);
	int consoles = 0;
	DIR *d = opendir("/sys/class/vtconsole"); /* the host's list: readdir is not stood in */
	for (struct dirent *e; d && (e = readdir(d));) {
		if (strncmp(e->d_name, "vtcon", 5))
			continue;
		char path[300];
		snprintf(path, sizeof path, "/sys/class/vtconsole/%s/bind", e->d_name);
		stood_in(path, SYSFS_MAGIC);
		consoles++;
	}
	if (d)
		closedir(d);
	printf("host settings ok (%d consoles)\n", consoles);
	return 0;
}
