/*
 * efault.c - a bad user pointer anywhere in an ioctl is EFAULT, never a crash: the
 * argument itself (NULL, unmapped, read-only for an ioctl that writes back), and every
 * pointer inside one (query data, binds, syncs, engine instances, VERSION's buffers).
 * The program also installs a SIGSEGV handler that fails the test if it ever runs.
 */
#include "check.h"

#include <signal.h>


#define VA 0x100000000ull

static void segv(int sig)
{
	(void)sig;
	static const char msg[] = "SIGSEGV inside an ioctl\n";
	write(2, msg, sizeof msg - 1);
	_exit(3);
}

int main(void)
{
	signal(SIGSEGV, segv);
	int fd = open_card();
	void *ro = read_only_page(), *gone = unmapped_page(); /* nothing maps after this */
	void *none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(none != MAP_FAILED);
	void *bad[] = {NULL, gone, none, bad_address()};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		CHECK_ERR(ioctl(fd, DRM_IOCTL_VERSION, bad[i]), EFAULT);
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, bad[i]), EFAULT);
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, bad[i]), EFAULT);
		CHECK_ERR(ioctl(fd, DRM_IOCTL_GEM_CLOSE, bad[i]), EFAULT);
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, bad[i]), EFAULT);
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC, bad[i]), EFAULT);
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, bad[i]), EFAULT);
		CHECK_ERR(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, bad[i]), EFAULT);
	}
	/* an ioctl that writes back into a read-only argument: EFAULT, after the work */
	memset(ro, 0, 0); /* (ro holds zeros: a VM_CREATE with no flags) */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, ro), EFAULT);
	/* a write-only ioctl reads only: a read-only argument is fine */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_GEM_CLOSE, ro), EINVAL); /* handle 0: no such handle */

	/* query data: NULL, unmapped, read-only (what IGT's xe_mmap cpu-caching does) */
	struct drm_xe_device_query q = {.query = DRM_XE_DEVICE_QUERY_CONFIG};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		q.data = (uintptr_t)bad[i];
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EFAULT);
	}
	q.data = (uintptr_t)ro;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EFAULT);
	struct drm_xe_device_query items = {.query = DRM_XE_DEVICE_QUERY_ENGINES, .size = 1,
					    .data = (uintptr_t)ro};
	CHECK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &items) < 0);

	/* the pointers inside VM_BIND, EXEC and EXEC_QUEUE_CREATE */
	struct drm_xe_vm_create vc = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, &vc));
	uint32_t bo = bo_create(fd, 0x10000);
	struct drm_xe_vm_bind vec = {.vm_id = vc.vm_id, .num_binds = 2,
				     .vector_of_binds = (uintptr_t)gone};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &vec), EFAULT);
	vec.vector_of_binds = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &vec), EFAULT);
	struct drm_xe_vm_bind bind = {.vm_id = vc.vm_id, .num_binds = 1,
				      .bind = {.obj = bo, .range = 0x10000, .addr = VA},
				      .num_syncs = 1, .syncs = (uintptr_t)gone};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &bind), EFAULT);
	bind.num_syncs = 0;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &bind));
	struct drm_xe_exec_queue_create qc = {.width = 1, .num_placements = 1, .vm_id = vc.vm_id,
					      .instances = (uintptr_t)gone};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc), EFAULT);
	qc.instances = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc), EFAULT);
	struct drm_xe_engine_class_instance eci = {0};
	qc.instances = (uintptr_t)&eci;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc));
	/* the instances are copied before the extension chain is looked at (IGT xe_create's
	 * invalid-extensions: both pointers bad); a chain that faults is walked once the
	 * queue exists: EFAULT, and the queue is gone (ids are the lowest free) */
	struct drm_xe_exec_queue_create chained = qc;
	chained.exec_queue_id = 0, chained.extensions = (uintptr_t)-1, chained.instances = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &chained), EFAULT);
	chained.instances = (uintptr_t)&eci, chained.extensions = (uintptr_t)gone;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &chained), EFAULT);
	CHECK(chained.exec_queue_id == 0);
	struct drm_xe_user_extension link = {.name = 7}; /* readable: no extension is emulated */
	chained.extensions = (uintptr_t)&link;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &chained), EINVAL);
	chained.vm_id = 999; /* the VM is looked up before the chain */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &chained), ENOENT);
	chained.extensions = (uintptr_t)gone;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &chained), ENOENT);
	chained.vm_id = qc.vm_id, chained.extensions = 0;
	chained.flags = DRM_XE_EXEC_QUEUE_LOW_LATENCY_HINT; /* a hint xe takes on any device */
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &chained));
	CHECK(chained.exec_queue_id == qc.exec_queue_id + 1); /* nothing was left behind */
	struct drm_xe_exec_queue_destroy qd = {.exec_queue_id = chained.exec_queue_id};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, &qd));
	struct drm_xe_exec ex = {.exec_queue_id = qc.exec_queue_id, .num_syncs = 3,
				 .syncs = (uintptr_t)gone, .address = VA, .num_batch_buffer = 1};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC, &ex), EFAULT);

	/* PRIME: the fd comes back into a read-only argument */
	struct drm_prime_handle *rph = ro;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, rph), EFAULT);
	CHECK_OK(gem_close(fd, bo));
	CHECK_OK(close(fd));
	return 0;
}
