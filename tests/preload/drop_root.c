/*
 * drop_root.c - a forked child that gives up root before its first call on the drm file
 * it inherited (IGT's igt_drop_root(), a privilege-separated server) still holds the
 * file: its calls reach the daemon, and each is checked against the rights it has then.
 * Run as root, with the daemon's socket out of reach of uid 65534.
 */
#include "check.h"

#include <grp.h>
#include <sys/wait.h>

#define NOBODY 65534
#define PRIORITY_NORMAL 1
#define PRIORITY_HIGH 2 /* above NORMAL takes CAP_SYS_NICE */

static int queue_with_priority(int fd, uint32_t vm, uint64_t priority, uint32_t *id)
{
	struct drm_xe_ext_set_property prio = {
		.base.name = DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY,
		.property = DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY,
		.value = priority,
	};
	struct drm_xe_engine_class_instance eci = {.engine_class = 0};
	struct drm_xe_exec_queue_create qc = {.extensions = (uintptr_t)&prio, .width = 1,
					      .num_placements = 1, .vm_id = vm,
					      .instances = (uintptr_t)&eci};
	int ret = ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc);
	*id = qc.exec_queue_id;
	return ret;
}

static void as_nobody(int fd, uint32_t vm)
{
	CHECK_OK(setgroups(0, NULL));
	CHECK_OK(setgid(NOBODY));
	CHECK_OK(setuid(NOBODY));
	CHECK(geteuid() == NOBODY);
	uint32_t id;
	CHECK_ERR(queue_with_priority(fd, vm, PRIORITY_HIGH, &id), EPERM); /* no CAP_SYS_NICE */
	CHECK_OK(queue_with_priority(fd, vm, PRIORITY_NORMAL, &id));
	struct drm_xe_exec_queue_destroy qd = {.exec_queue_id = id};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, &qd));
	/* a new open is the node's: a socket uid 65534 may not reach, a node it may not open */
	errno = 0;
	CHECK(open("/dev/dri/card0", O_RDWR) == -1 && errno == EACCES);
}

int main(void)
{
	CHECK(geteuid() == 0);
	int fd = open_card();
	struct drm_xe_vm_create vc = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, &vc));
	uint32_t id;
	CHECK_OK(queue_with_priority(fd, vc.vm_id, PRIORITY_HIGH, &id)); /* root may */

	pid_t child = fork();
	CHECK(child >= 0);
	if (!child) {
		as_nobody(fd, vc.vm_id);
		_exit(0);
	}
	int status;
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* a grandchild: its parent's connection made at the fork is not its own */
	child = fork();
	CHECK(child >= 0);
	if (!child) {
		pid_t grandchild = fork();
		CHECK(grandchild >= 0);
		if (!grandchild) {
			as_nobody(fd, vc.vm_id);
			_exit(0);
		}
		CHECK(waitpid(grandchild, &status, 0) == grandchild);
		_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
	}
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	struct drm_xe_exec_queue_destroy qd = {.exec_queue_id = id};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, &qd));
	CHECK_OK(close(fd));
	puts("drop_root ok");
	return 0;
}
