/*
 * early_copy.c - the program's memory is read with process_vm_readv even where the
 * library's first copy comes before its constructor has run, as in IGT's programs,
 * whose libraries' constructors open files first. Here a .preinit_array function, which
 * runs before any library's constructor, opens a file; then pipes are forbidden
 * (seccomp, EPERM), so an ioctl whose argument the library could only read through a
 * pipe would fail, and each must still read and write back its argument.
 */
#include "check.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static void before_every_constructor(void)
{
	int fd = open("/nonexistent/xed-early-copy", O_RDONLY); /* its path is copied in */
	if (fd >= 0)
		close(fd);
}

__attribute__((section(".preinit_array"), used)) static void (*const preinit)(void) =
	before_every_constructor;

static void forbid_pipes(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pipe2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {sizeof filter / sizeof *filter, filter};
	CHECK_OK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	CHECK_OK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog));
	int p[2];
	CHECK_ERR(pipe2(p, O_CLOEXEC), EPERM);
}

int main(void)
{
	forbid_pipes();
	int fd = open_card();
	char name[16] = {0};
	struct drm_version v = {.name_len = sizeof name - 1, .name = name};
	CHECK_OK(ioctl(fd, DRM_IOCTL_VERSION, &v));
	CHECK(!strcmp(name, "xe"));
	struct drm_xe_device_query q = {.query = DRM_XE_DEVICE_QUERY_CONFIG};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	CHECK(q.size > 0);
	CHECK_ERR(ioctl(fd, DRM_IOCTL_VERSION, NULL), EFAULT);
	close(fd);
	puts("OK");
	return 0;
}
