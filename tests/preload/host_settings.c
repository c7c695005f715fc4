/*
 * host_settings.c - the host settings IGT changes as root as it starts (the framebuffer
 * console's binding to its virtual terminal, ftrace_dump_on_oops; xe_vm's drop_caches) open, under the
 * library, as the stand-in's copies: regular files, not procfs or sysfs. Nothing is
 * written, so a broken stand-in fails this program without changing the host. The
 * kernel's modules are hidden (IGT's modprobe, as root, would load one).
 */
#include "check.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/utsname.h>
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

	/* the kernel's modules are hidden, so IGT's modprobe loads nothing: through open()
	 * and through fopen(), which libkmod reads modules.dep.bin with (inside libc) */
	struct utsname u;
	CHECK_OK(uname(&u));
	char dep[400];
	snprintf(dep, sizeof dep, "/lib/modules/%s/modules.dep.bin", u.release);
	CHECK_ERR(open(dep, O_RDONLY), ENOENT);
	errno = 0;
	CHECK(fopen(dep, "re") == NULL && errno == ENOENT);
	snprintf(dep, sizeof dep, "/usr/lib/modules/%s/modules.dep", u.release);
	errno = 0;
	CHECK(fopen(dep, "r") == NULL && errno == ENOENT);
	/* a stand-in file through fopen, and any other file as libc opens it */
	FILE *stand_in = fopen("/proc/sys/kernel/ftrace_dump_on_oops", "r+e");
	CHECK(stand_in != NULL);
	struct statfs fs;
	CHECK_OK(fstatfs(fileno(stand_in), &fs));
	CHECK(fs.f_type != PROC_SUPER_MAGIC);
	CHECK((fcntl(fileno(stand_in), F_GETFD) & FD_CLOEXEC) && fclose(stand_in) == 0);
	FILE *plain = fopen("/proc/self/stat", "r");
	CHECK(plain != NULL && fclose(plain) == 0);
	errno = 0;
	CHECK(fopen("/nonexistent/xed", "r") == NULL && errno == ENOENT);
	printf("host settings ok (%d consoles)\n", consoles);
	return 0;
}
