/*
 * parallel.c - a parallel exec queue (width 2 on the video decode engines) from C: each
 * EXEC's `address` points at one batch address a lane, which the library reads and
 * sends. Every lane's batch runs; a wrong count is EINVAL before the array is read, an
 * array that cannot be read is EFAULT (never a crash), and a queue of width 1 reads no
 * array at all. Needs a device with two video decode engines.
 */
#include "check.h"

#include <signal.h>

#define VA 0x100000000ull
#define MI_STORE_DWORD_IMM ((0x20u << 23) | 2)
#define MI_BATCH_BUFFER_END (0x0Au << 23)

static void segv(int sig)
{
	(void)sig;
	static const char msg[] = "SIGSEGV inside an ioctl\n";
	write(2, msg, sizeof msg - 1);
	_exit(3);
}

/* a batch at dword `at` of the BO storing `value` at byte `where` of it */
static uint64_t store_batch(uint32_t *cpu, unsigned at, uint64_t where, uint32_t value)
{
	uint32_t *b = cpu + at;
	b[0] = MI_STORE_DWORD_IMM, b[1] = (uint32_t)(VA + where), b[2] = (uint32_t)((VA + where) >> 32);
	b[3] = value, b[4] = MI_BATCH_BUFFER_END;
	return VA + at * 4;
}

static void wait_fence(int fd, uint64_t *fence, uint64_t value)
{
	struct drm_xe_wait_user_fence w = {.addr = (uintptr_t)fence, .op = DRM_XE_UFENCE_WAIT_OP_EQ,
					   .value = value, .mask = ~0ull, .timeout = 5000000000ll};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &w));
}

int main(void)
{
	signal(SIGSEGV, segv);
	int fd = open_card();
	struct drm_xe_vm_create vc = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, &vc));
	uint32_t bo = bo_create(fd, 0x10000);
	uint32_t *cpu = bo_map(fd, bo, 0x10000);
	struct drm_xe_vm_bind bind = {.vm_id = vc.vm_id, .num_binds = 1,
				      .bind = {.obj = bo, .range = 0x10000, .addr = VA}};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &bind));

	struct drm_xe_engine_class_instance vcs[2] = {
		{.engine_class = DRM_XE_ENGINE_CLASS_VIDEO_DECODE, .engine_instance = 0},
		{.engine_class = DRM_XE_ENGINE_CLASS_VIDEO_DECODE, .engine_instance = 1},
	};
	struct drm_xe_exec_queue_create qc = {.width = 2, .num_placements = 1, .vm_id = vc.vm_id,
					      .instances = (uintptr_t)vcs};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc));
	struct drm_xe_exec_queue_create single = qc;
	single.width = 1;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &single));

	/* lane 0 stores 0xa0 at byte 0x800, lane 1 0xa1 at 0x804; the fence at byte 0 */
	uint64_t lanes[2] = {store_batch(cpu, 0x100, 0x800, 0xa0), store_batch(cpu, 0x140, 0x804, 0xa1)};
	struct drm_xe_sync sync = {.type = DRM_XE_SYNC_TYPE_USER_FENCE,
				   .flags = DRM_XE_SYNC_FLAG_SIGNAL, .addr = VA, .timeline_value = 1};
	struct drm_xe_exec ex = {.exec_queue_id = qc.exec_queue_id, .num_syncs = 1,
				 .syncs = (uintptr_t)&sync, .address = (uintptr_t)lanes,
				 .num_batch_buffer = 2};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC, &ex));
	wait_fence(fd, (uint64_t *)cpu, 1);
	CHECK(cpu[0x800 / 4] == 0xa0 && cpu[0x804 / 4] == 0xa1);

	/* the array read from read-only memory is fine: it is only read */
	uint64_t *ro = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED);
	CHECK_OK(munmap((char *)ro + 4096, 4096)); /* nothing after the page */
	ro[0] = store_batch(cpu, 0x180, 0x808, 0xb0), ro[1] = store_batch(cpu, 0x1c0, 0x80c, 0xb1);
	CHECK_OK(mprotect(ro, 4096, PROT_READ));
	struct drm_xe_exec again = ex;
	again.address = (uintptr_t)ro, sync.timeline_value = 2;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC, &again));
	wait_fence(fd, (uint64_t *)cpu, 2);
	CHECK(cpu[0x808 / 4] == 0xb0 && cpu[0x80c / 4] == 0xb1);

	/* an array that cannot be read: EFAULT; half of it readable: EFAULT */
	void *bad[] = {NULL, unmapped_page(), bad_address(), (char *)ro + 4096 - 8};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		struct drm_xe_exec faulty = ex;
		faulty.address = (uintptr_t)bad[i];
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC, &faulty), EFAULT);
		/* the count is checked first: one batch, or three, is EINVAL whatever it points at */
		faulty.num_batch_buffer = 1;
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC, &faulty), EINVAL);
		faulty.num_batch_buffer = 3;
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC, &faulty), EINVAL);
		/* a queue of width 1 takes `address` as the batch itself */
		faulty.exec_queue_id = single.exec_queue_id, faulty.num_batch_buffer = 2;
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC, &faulty), EINVAL);
	}
	struct drm_xe_exec one = ex;
	one.exec_queue_id = single.exec_queue_id, one.address = lanes[0], one.num_batch_buffer = 1;
	sync.timeline_value = 3;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC, &one));
	wait_fence(fd, (uint64_t *)cpu, 3);

	/* no parallel queue on a class without multi-LRC (compute), nor on lanes out of order */
	struct drm_xe_engine_class_instance ccs[2] = {
		{.engine_class = DRM_XE_ENGINE_CLASS_COMPUTE, .engine_instance = 0},
		{.engine_class = DRM_XE_ENGINE_CLASS_COMPUTE, .engine_instance = 1},
	};
	struct drm_xe_exec_queue_create refused = qc;
	refused.instances = (uintptr_t)ccs;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &refused), EINVAL);
	struct drm_xe_engine_class_instance backwards[2] = {vcs[1], vcs[0]};
	refused.instances = (uintptr_t)backwards;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &refused), EINVAL);

	CHECK_OK(munmap(ro, 4096));
	CHECK_OK(munmap(cpu, 0x10000));
	CHECK_OK(gem_close(fd, bo));
	CHECK_OK(close(fd));
	return 0;
}
