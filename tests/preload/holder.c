/*
 * holder.c - takes a bit of everything (BOs, a mapping, a dma-buf, a VM, an exec
 * queue, a second drm file), says "ready PID" and waits to be killed: the daemon must
 * release it all when the process dies without closing anything.
 */
#include "check.h"

int main(void)
{
	int fd = open_card(), fd2 = open_card();
	uint32_t bo = bo_create(fd, 0x10000);
	char *cpu = bo_map(fd, bo, 0x10000);
	cpu[0] = 1;
	struct drm_prime_handle ph = {.handle = bo, .flags = DRM_CLOEXEC | DRM_RDWR};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
	struct drm_prime_handle imp = {.fd = ph.fd};
	CHECK_OK(ioctl(fd2, DRM_IOCTL_PRIME_FD_TO_HANDLE, &imp));
	struct drm_xe_vm_create vc = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, &vc));
	struct drm_xe_engine_class_instance eci = {0};
	struct drm_xe_exec_queue_create qc = {.width = 1, .num_placements = 1, .vm_id = vc.vm_id,
					      .instances = (uintptr_t)&eci};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc));
	bo_create(fd2, 4096);
	printf("ready %d\n", getpid());
	fflush(stdout);
	for (;;)
		pause();
}
