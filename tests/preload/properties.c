/*
 * properties.c - the properties xe reports, from C. VM_GET_PROPERTY(FAULTS): the size
 * probe, the faults written to `data` as struct xe_vm_fault, a `data` the library cannot
 * write EFAULT (never a crash), the daemon's refusals passed back.
 * EXEC_QUEUE_GET_PROPERTY(BAN): 0, then 1 once a batch of the queue faulted.
 */
#include "check.h"
#include "gpu.h"

#define VA 0x1a0000ull
#define SIZE 0x10000ul
#define UNBOUND 0x700001234ull

static int get_property(int fd, struct drm_xe_vm_get_property *p)
{
	return ioctl(fd, DRM_IOCTL_XE_VM_GET_PROPERTY, p);
}

static uint64_t banned(int fd, uint32_t queue)
{
	struct drm_xe_exec_queue_get_property q = {.exec_queue_id = queue, .value = 77,
						   .property = DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_GET_PROPERTY, &q));
	return q.value;
}

int main(void)
{
	struct gpu g = gpu_open();
	struct drm_xe_vm_get_property p = {.vm_id = g.vm, .property = DRM_XE_VM_GET_PROPERTY_FAULTS};
	CHECK_OK(get_property(g.fd, &p));
	CHECK(p.size == 0); /* nothing faulted yet */

	uint32_t *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	CHECK_OK(bind(&g, m, VA, SIZE));
	CHECK(banned(g.fd, g.queue) == 0);
	store(&g, m, VA, 0, UNBOUND, 1); /* faults: the queue is banned, the fence comes */
	CHECK(banned(g.fd, g.queue) == 1);
	struct drm_xe_exec_queue_get_property q = {.exec_queue_id = 0xffff};
	CHECK_ERR(ioctl(g.fd, DRM_IOCTL_XE_EXEC_QUEUE_GET_PROPERTY, &q), ENOENT);
	q.exec_queue_id = g.queue, q.property = 1;
	CHECK_ERR(ioctl(g.fd, DRM_IOCTL_XE_EXEC_QUEUE_GET_PROPERTY, &q), EINVAL);
	CHECK_OK(get_property(g.fd, &p));
	CHECK(p.size == sizeof(struct xe_vm_fault));

	struct xe_vm_fault f[2];
	memset(f, 0xff, sizeof f);
	p.data = (uintptr_t)f;
	CHECK_OK(get_property(g.fd, &p));
	CHECK(f[0].address == (UNBOUND & ~0xfffull) && f[0].address_precision == 4096);
	CHECK(f[0].access_type == 1 && f[0].fault_type == 0 && f[0].fault_level == 0);
	CHECK(f[0].pad == 0 && f[0].reserved[0] == 0 && f[0].reserved[3] == 0);
	CHECK(f[1].address == ~0ull); /* one written, no more */

	void *bad[] = {NULL, unmapped_page(), read_only_page()};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		p.data = (uintptr_t)bad[i];
		CHECK_ERR(get_property(g.fd, &p), EFAULT);
	}
	p.data = (uintptr_t)f;
	p.size = 2 * sizeof(struct xe_vm_fault);
	CHECK_ERR(get_property(g.fd, &p), EINVAL); /* more than there is */
	struct drm_xe_vm_get_property refused = p;
	refused.size = 0, refused.reserved[2] = 1;
	CHECK_ERR(get_property(g.fd, &refused), EINVAL);
	refused.reserved[2] = 0, refused.vm_id = 0xdead;
	CHECK_ERR(get_property(g.fd, &refused), ENOENT);

	unbind(&g, VA, SIZE);
	CHECK_OK(munmap(m, SIZE));
	gpu_close(&g);
	puts("properties ok");
	return 0;
}
