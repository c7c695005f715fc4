/*
 * ioctls.c - every ioctl the library translates, its success and its error paths,
 * with the errno the kernel gives (DRM core framing, xe, the proposals).
 */
#include "check.h"

#include <pthread.h>
#include <time.h>

/* after a moment, 10 into the word at p (a user fence in plain memory) */
static void *write_later(void *p)
{
	struct timespec moment = {0, 50000000};
	nanosleep(&moment, NULL);
	*(volatile uint64_t *)p = 10;
	return NULL;
}

#define VA 0x100000000ull
#define MI_BATCH_BUFFER_END (0x0Au << 23)

static void version(int fd)
{
	char name[1] = {0};
	struct drm_version v = {.name_len = 1, .name = name};
	CHECK_OK(ioctl(fd, DRM_IOCTL_VERSION, &v));
	CHECK(v.name_len == 2 && name[0] == 'x'); /* truncated, the length says all */
	CHECK(v.date_len > 0 && v.desc_len > 0);
	struct drm_version none = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_VERSION, &none)); /* NULL buffers: lengths only */
	CHECK(none.name_len == 2);
	char *ro = read_only_page();
	struct drm_version bad = {.name_len = 15, .name = ro};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_VERSION, &bad), EFAULT);
}

static void gem(int fd)
{
	struct drm_xe_gem_create c = {.size = 4096, .placement = 1, .cpu_caching = 1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &c));
	CHECK(c.handle);
	struct drm_xe_gem_create bad;
	bad = c, bad.handle = 0, bad.flags = ~0u;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c, bad.handle = 0, bad.size = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c, bad.handle = 0, bad.size = 4095;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c, bad.handle = 0, bad.cpu_caching = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c, bad.handle = 0, bad.cpu_caching = 3;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c; /* handle not zero on input */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c, bad.handle = 0, bad.placement = 0;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c, bad.handle = 0, bad.placement = 2; /* VRAM with WB */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad = c, bad.handle = 0, bad.vm_id = 999;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), ENOENT);
	bad = c, bad.handle = 0, bad.pad[1] = 1;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	/* extensions: xe walks the chain once the BO exists, and frees it if one fails */
	struct drm_xe_user_extension ext = {.name = 7};
	bad = c, bad.handle = 0, bad.extensions = (uintptr_t)&ext;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EINVAL);
	bad.extensions = (uintptr_t)bad_address();
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &bad), EFAULT);
	struct drm_xe_gem_create vram = {.size = 8192, .placement = 2, .cpu_caching = 2,
					 .flags = DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_CREATE, &vram));
	CHECK(vram.handle == c.handle + 1); /* the failed creates left no handle behind */

	struct drm_xe_gem_mmap_offset mo = {.handle = c.handle};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo));
	CHECK(mo.offset && !(mo.offset & 4095));
	mo.handle = 0xdeadbeef;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo), ENOENT);
	mo.handle = c.handle, mo.flags = ~0u;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo), EINVAL);
	mo.flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER; /* a real handle: EINVAL */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo), EINVAL);
	struct drm_xe_user_extension named = {.name = ~0u};
	mo.flags = 0, mo.extensions = (uintptr_t)&named;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo), EINVAL);

	CHECK_OK(gem_close(fd, c.handle));
	CHECK_ERR(gem_close(fd, c.handle), EINVAL);
	CHECK_OK(gem_close(fd, vram.handle));
}

static void flink(int fd, int other)
{
	uint32_t bo = bo_create(fd, 8192);
	struct drm_gem_flink fl = {.handle = bo};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GEM_FLINK, &fl));
	CHECK(fl.name);
	struct drm_gem_flink again = {.handle = bo};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GEM_FLINK, &again));
	CHECK(again.name == fl.name);
	struct drm_gem_open op = {.name = fl.name};
	CHECK_OK(ioctl(other, DRM_IOCTL_GEM_OPEN, &op));
	CHECK(op.handle && op.size == 8192);
	struct drm_gem_open op2 = {.name = fl.name};
	CHECK_OK(ioctl(other, DRM_IOCTL_GEM_OPEN, &op2));
	CHECK(op2.handle != op.handle);
	fl.handle = 0xdead;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_GEM_FLINK, &fl), ENOENT);
	struct drm_gem_open none = {.name = 0x7fffffff};
	CHECK_ERR(ioctl(other, DRM_IOCTL_GEM_OPEN, &none), ENOENT);
	int render = open("/dev/dri/renderD128", O_RDWR);
	CHECK(render >= 0);
	uint32_t rbo = bo_create(render, 4096);
	struct drm_gem_flink rfl = {.handle = rbo};
	CHECK_ERR(ioctl(render, DRM_IOCTL_GEM_FLINK, &rfl), EACCES);
	struct drm_gem_open rop = {.name = fl.name};
	CHECK_ERR(ioctl(render, DRM_IOCTL_GEM_OPEN, &rop), EACCES);
	CHECK_OK(close(render));
	CHECK_OK(gem_close(fd, bo));
	CHECK_OK(gem_close(other, op.handle));
	CHECK_OK(gem_close(other, op2.handle));
	struct drm_gem_open gone = {.name = again.name}; /* the last handle took the name */
	CHECK_ERR(ioctl(other, DRM_IOCTL_GEM_OPEN, &gone), ENOENT);
}

static void prime(int fd, int other)
{
	uint32_t bo = bo_create(fd, 4096);
	struct drm_prime_handle ph = {.handle = bo, .flags = DRM_CLOEXEC | DRM_RDWR, .fd = -1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
	CHECK(ph.fd >= 0 && (fcntl(ph.fd, F_GETFD) & FD_CLOEXEC));
	struct drm_prime_handle imp = {.fd = ph.fd};
	CHECK_OK(ioctl(other, DRM_IOCTL_PRIME_FD_TO_HANDLE, &imp));
	struct drm_prime_handle again = {.fd = ph.fd};
	CHECK_OK(ioctl(other, DRM_IOCTL_PRIME_FD_TO_HANDLE, &again));
	CHECK(again.handle == imp.handle); /* a re-import gives the same handle */
	struct drm_prime_handle self = {.fd = ph.fd};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, &self));
	CHECK(self.handle == bo);
	struct drm_prime_handle inherit = {.handle = bo, .flags = DRM_RDWR};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &inherit));
	CHECK(!(fcntl(inherit.fd, F_GETFD) & FD_CLOEXEC));
	CHECK_OK(close(inherit.fd));
	struct drm_prime_handle bad = {.handle = 0xdead, .flags = DRM_CLOEXEC, .fd = -1};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &bad), ENOENT);
	CHECK(bad.fd == -1); /* untouched on failure */
	bad.handle = bo, bad.flags = 0x1234;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &bad), EINVAL);
	int p[2];
	CHECK_OK(pipe(p));
	struct drm_prime_handle notbuf = {.fd = p[0]};
	CHECK_ERR(ioctl(other, DRM_IOCTL_PRIME_FD_TO_HANDLE, &notbuf), EINVAL);
	notbuf.fd = -1;
	CHECK_ERR(ioctl(other, DRM_IOCTL_PRIME_FD_TO_HANDLE, &notbuf), EBADF);
	close(p[0]);
	close(p[1]);
	notbuf.fd = p[0]; /* closed now */
	CHECK_ERR(ioctl(other, DRM_IOCTL_PRIME_FD_TO_HANDLE, &notbuf), EBADF);
	notbuf.fd = fd; /* a drm descriptor is no dma-buf */
	CHECK_ERR(ioctl(other, DRM_IOCTL_PRIME_FD_TO_HANDLE, &notbuf), EINVAL);
	CHECK_OK(close(ph.fd));
	CHECK_OK(gem_close(fd, bo));
	CHECK_OK(gem_close(other, imp.handle));
}

static void vm_exec_fence(int fd)
{
	struct drm_xe_vm_create vc = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, &vc));
	CHECK(vc.vm_id);
	struct drm_xe_vm_create badvc = {.flags = 0x80};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, &badvc), EINVAL);
	uint32_t bo = bo_create(fd, 0x10000), bo2 = bo_create(fd, 0x1000);
	uint32_t *cpu = bo_map(fd, bo, 0x10000);

	struct drm_xe_vm_bind bind = {.vm_id = vc.vm_id, .num_binds = 1,
				      .bind = {.obj = bo, .range = 0x10000, .addr = VA,
					       .op = DRM_XE_VM_BIND_OP_MAP}};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &bind));
	struct drm_xe_vm_bind_op two[2] = {
		{.obj = bo2, .range = 0x1000, .addr = VA + 0x100000, .op = DRM_XE_VM_BIND_OP_MAP},
		{.obj = bo2, .range = 0x1000, .addr = VA + 0x200000, .op = DRM_XE_VM_BIND_OP_MAP},
	};
	struct drm_xe_vm_bind vec = {.vm_id = vc.vm_id, .num_binds = 2,
				     .vector_of_binds = (uintptr_t)two};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &vec));
	two[1].obj = 0xdead;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &vec), ENOENT);
	struct drm_xe_vm_bind nobo = bind;
	nobo.bind.obj = 0xdead;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &nobo), ENOENT);
	struct drm_xe_vm_bind unmap = {.vm_id = vc.vm_id, .num_binds = 1,
				       .bind = {.range = 0x1000, .addr = VA + 0x200000,
						.op = DRM_XE_VM_BIND_OP_UNMAP}};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &unmap));

	struct drm_xe_engine_class_instance eci = {.engine_class = 0};
	struct drm_xe_exec_queue_create qc = {.width = 1, .num_placements = 1, .vm_id = vc.vm_id,
					      .instances = (uintptr_t)&eci};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc));
	CHECK(qc.exec_queue_id);
	struct drm_xe_engine_class_instance nope = {.engine_class = 77};
	struct drm_xe_exec_queue_create badqc = qc;
	badqc.instances = (uintptr_t)&nope;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &badqc), EINVAL);

	/* a batch that ends at once; its user fence lands at the BO's first qword */
	cpu[0x100 / 4] = MI_BATCH_BUFFER_END;
	struct drm_xe_sync sync = {.type = DRM_XE_SYNC_TYPE_USER_FENCE,
				   .flags = DRM_XE_SYNC_FLAG_SIGNAL, .addr = VA,
				   .timeline_value = 42};
	struct drm_xe_exec ex = {.exec_queue_id = qc.exec_queue_id, .num_syncs = 1,
				 .syncs = (uintptr_t)&sync, .address = VA + 0x100,
				 .num_batch_buffer = 1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC, &ex));
	struct drm_xe_wait_user_fence w = {.addr = (uintptr_t)cpu, .op = DRM_XE_UFENCE_WAIT_OP_EQ,
					   .value = 42, .mask = ~0ull, .timeout = 5000000000ll};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &w));
	CHECK(*(volatile uint64_t *)cpu == 42);
	CHECK(w.timeout > 0 && w.timeout <= 5000000000ll);
	struct drm_xe_wait_user_fence never = w;
	never.value = 43, never.timeout = 1000000;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &never), ETIME);
	CHECK(never.timeout == 0);
	never.addr = (uintptr_t)&never; /* plain memory: the library watches it, as xe reads it */
	never.timeout = 1000000;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &never), ETIME);
	CHECK(never.timeout == 0);
	never.addr = (uintptr_t)bad_address(); /* nothing there: copy_from_user faults */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &never), EFAULT);
	never.addr = (uintptr_t)&never, never.exec_queue_id = 0xdead; /* the daemon's checks first */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &never), ENOENT);
	never.exec_queue_id = 0;
	never.addr = (uintptr_t)cpu + 4;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &never), EINVAL);
	/* a second mapping of the BO, moved by mremap: the fence is found where it went, and
	 * where it was is nobody's memory */
	char *again = (char *)bo_map(fd, bo, 0x10000), *place;
	place = mmap(NULL, 0x10000, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(place != MAP_FAILED);
	CHECK(mremap(again, 0x10000, 0x10000, MREMAP_MAYMOVE | MREMAP_FIXED, place) == place);
	struct drm_xe_wait_user_fence moved = w;
	moved.addr = (uintptr_t)place;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &moved));
	moved.addr = (uintptr_t)again;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &moved), EFAULT);
	CHECK_OK(munmap(place, 0x10000));
	struct drm_xe_exec badex = ex;
	badex.exec_queue_id = 0xdead;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC, &badex), ENOENT);

	/* a VM_BIND user fence is a CPU address: the library names it to the daemon */
	struct drm_xe_sync ufence = {.type = DRM_XE_SYNC_TYPE_USER_FENCE,
				     .flags = DRM_XE_SYNC_FLAG_SIGNAL, .addr = (uintptr_t)(cpu + 2),
				     .timeline_value = 7};
	struct drm_xe_vm_bind fenced = unmap;
	fenced.bind.addr = VA + 0x100000;
	fenced.num_syncs = 1, fenced.syncs = (uintptr_t)&ufence;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &fenced));
	CHECK(*(volatile uint64_t *)(cpu + 2) == 7);
	/* in plain memory the library writes it once the binds are done, as xe's worker does,
	 * and WAIT_USER_FENCE finds it there */
	volatile uint64_t plain = 0;
	ufence.addr = (uintptr_t)&plain, ufence.timeline_value = 9;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &fenced));
	CHECK(plain == 9);
	struct drm_xe_wait_user_fence seen = {.addr = (uintptr_t)&plain, .op = DRM_XE_UFENCE_WAIT_OP_GTE,
					      .value = 9, .mask = ~0ull, .timeout = 5000000000ll};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &seen));
	CHECK(seen.timeout > 0 && seen.timeout <= 5000000000ll);
	/* a relative timeout of INT64_MAX is as good as endless: the word written later by
	 * another thread ends the wait (the deadline must not wrap round into the past) */
	pthread_t writer;
	seen.value = 10, seen.timeout = INT64_MAX;
	CHECK(pthread_create(&writer, NULL, write_later, (void *)&plain) == 0);
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_WAIT_USER_FENCE, &seen));
	CHECK(pthread_join(writer, NULL) == 0);
	CHECK(plain == 10);
	ufence.addr = (uintptr_t)&plain + 4; /* the daemon's checks still apply: alignment */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &fenced), EINVAL);
	struct drm_xe_sync two_fences[2] = {ufence, ufence};
	two_fences[0].addr = two_fences[1].addr = (uintptr_t)&plain; /* and one fence at most */
	fenced.num_syncs = 2, fenced.syncs = (uintptr_t)two_fences;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &fenced), EINVAL);
	fenced.num_syncs = 1, fenced.syncs = (uintptr_t)&ufence;
	ufence.addr = (uintptr_t)bad_address(); /* a fence nothing can hold: dropped, as xe's */
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &fenced));

	struct drm_xe_exec_queue_destroy qd = {.exec_queue_id = qc.exec_queue_id};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, &qd));
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, &qd), ENOENT);

	struct drm_xe_vm_export exp = {.vm_id = vc.vm_id};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_EXPORT, &exp));
	CHECK(exp.fd >= 0);
	struct drm_xe_vm_export twice = {.vm_id = vc.vm_id};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_EXPORT, &twice), EEXIST);
	twice.pad = 1;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_EXPORT, &twice), EINVAL);
	struct drm_xe_vm_destroy vd = {.vm_id = vc.vm_id};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_DESTROY, &vd), EBUSY);
	CHECK_OK(close(exp.fd));
	/* the last close releases the export at once, as in the kernel */
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_DESTROY, &vd));
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_VM_DESTROY, &vd), ENOENT);
	CHECK_OK(munmap(cpu, 0x10000));
	CHECK_OK(gem_close(fd, bo));
	CHECK_OK(gem_close(fd, bo2));
}

/* GT_TOPOLOGY's masks back to back, each as long as it says; UC_FW_VERSION reading the
 * caller's struct only once the size is right (EFAULT then), refusing MBZ with EINVAL */
static void query_topology_and_firmware(int fd)
{
	static uint8_t data[4096];
	struct drm_xe_device_query q = {.query = DRM_XE_DEVICE_QUERY_GT_TOPOLOGY};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	CHECK(q.size > sizeof(struct drm_xe_query_topology_mask) && q.size <= sizeof data);
	q.data = (uintptr_t)data;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	uint32_t at = 0, last = 0, n = 0;
	while (at < q.size) {
		const struct drm_xe_query_topology_mask *t = (const void *)(data + at);
		CHECK(t->gt_id == 0 && t->num_bytes > 0);
		last = t->type;
		at += sizeof *t + t->num_bytes;
		n++;
	}
	CHECK(at == q.size && n == 4 && last == DRM_XE_TOPO_SIMD16_EU_PER_DSS);

	struct drm_xe_query_uc_fw_version uc = {.uc_type = XE_QUERY_UC_TYPE_GUC_SUBMISSION};
	q = (struct drm_xe_device_query){.query = DRM_XE_DEVICE_QUERY_UC_FW_VERSION};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q)); /* the size: data is not read */
	CHECK(q.size == sizeof uc);
	q.data = (uintptr_t)bad_address();
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EFAULT);
	q.size = 8;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EINVAL); /* before the copy */
	q.size = sizeof uc;
	q.data = (uintptr_t)&uc;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	CHECK(uc.major_ver > 0 && uc.uc_type == XE_QUERY_UC_TYPE_GUC_SUBMISSION);
	uc.pad2 = 1;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EINVAL);
	uc = (struct drm_xe_query_uc_fw_version){.uc_type = XE_QUERY_UC_TYPE_HUC};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), ENODEV);
}

static void query(int fd)
{
	static const uint32_t queries[] = {DRM_XE_DEVICE_QUERY_ENGINES,
					   DRM_XE_DEVICE_QUERY_MEM_REGIONS,
					   DRM_XE_DEVICE_QUERY_CONFIG, DRM_XE_DEVICE_QUERY_GT_LIST,
					   DRM_XE_DEVICE_QUERY_OA_UNITS,
					   DRM_XE_DEVICE_QUERY_MMIO_REGIONS};
	static uint64_t data[1024];
	for (size_t i = 0; i < sizeof queries / sizeof *queries; i++) {
		struct drm_xe_device_query q = {.query = queries[i]};
		CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
		CHECK(q.size >= 8 && q.size <= sizeof data);
		q.data = (uintptr_t)data;
		CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
		q.size += 8;
		CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EINVAL);
	}
	struct drm_xe_device_query q = {.query = DRM_XE_DEVICE_QUERY_CONFIG};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	CHECK(q.size == 8 + 5 * 8);
	q.data = (uintptr_t)data;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	struct drm_xe_query_config *cfg = (void *)data;
	CHECK(cfg->num_params == 5 && cfg->info[2] == 4096 && cfg->info[3] >= 48);
	q = (struct drm_xe_device_query){.query = DRM_XE_DEVICE_QUERY_MEM_REGIONS};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	q.data = (uintptr_t)data;
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	struct drm_xe_query_mem_regions *mr = (void *)data;
	CHECK(mr->num_mem_regions == 2 && mr->mem_regions[0].mem_class == 0);
	CHECK(mr->mem_regions[1].mem_class == 1 && mr->mem_regions[1].instance == 1);
	q = (struct drm_xe_device_query){.query = DRM_XE_DEVICE_QUERY_HWCONFIG};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	CHECK(q.size == 0);
	q = (struct drm_xe_device_query){.query = 77};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EINVAL);
	/* no PXP: the size probe passes, the query itself is ENODEV (query_pxp_status) */
	q = (struct drm_xe_device_query){.query = DRM_XE_DEVICE_QUERY_PXP_STATUS};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q));
	CHECK(q.size == sizeof(struct drm_xe_query_pxp_status));
	q.data = (uintptr_t)data;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), ENODEV);
	q.size = 4;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EINVAL);
	q = (struct drm_xe_device_query){.query = DRM_XE_DEVICE_QUERY_ENGINES, .extensions = 1};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_DEVICE_QUERY, &q), EINVAL);
	query_topology_and_firmware(fd);
}

static void mmio(int fd)
{
	struct drm_xe_mmio_region_open op = info_region_open(fd);
	volatile uint32_t *info = mmap(NULL, op.size, PROT_READ, MAP_SHARED, fd, (off_t)op.offset);
	CHECK(info != MAP_FAILED);
	CHECK(info[0] != 0); /* XE_INFO_DEVICE_ID */
	CHECK(mmap(NULL, op.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)op.offset) ==
	      MAP_FAILED);
	CHECK_OK(munmap((void *)info, op.size));
	struct drm_xe_mmio_region_close cl = {.region_id = op.region_id};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_MMIO_REGION_CLOSE, &cl));
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_MMIO_REGION_CLOSE, &cl), ENOENT);
	struct drm_xe_mmio_region_open bad = {.bar_offset = 0x3000, .size = 4096};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_XE_MMIO_REGION_OPEN, &bad), EPERM);
}

static void framing(int fd)
{
	/* DRM core: an unknown number is EINVAL, another type ENOTTY, VFS ioctls work */
	CHECK_ERR(ioctl(fd, DRM_IOWR(0x30, struct drm_gem_close), bad_address()), EINVAL);
	CHECK_ERR(ioctl(fd, DRM_IOWR(0x58, struct drm_gem_close), bad_address()), EINVAL);
	CHECK_ERR(ioctl(fd, 0x5401 /* TCGETS */, bad_address()), ENOTTY);
	CHECK_ERR(isatty(fd) ? 0 : -1, ENOTTY);
	CHECK_OK(ioctl(fd, 0x5451 /* FIOCLEX */));
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	CHECK_OK(ioctl(fd, 0x5450 /* FIONCLEX */));
	/* a shorter struct than the driver's: zero-filled past it, as drm_ioctl does */
	struct drm_xe_gem_create c = {.size = 4096, .placement = 1, .cpu_caching = 1};
	unsigned long short_cmd = XED_IOC(3u, 'd', 0x41, 40);
	CHECK_OK(ioctl(fd, short_cmd, &c)); /* pad/reserved beyond 40 bytes read as 0 */
	CHECK(c.handle);
	CHECK_OK(gem_close(fd, c.handle));
	/* a descriptor that is not ours goes to the kernel */
	int p[2], n = -1;
	CHECK_OK(pipe(p));
	CHECK_OK(ioctl(p[0], 0x541B /* FIONREAD */, &n));
	CHECK(n == 0);
	close(p[0]);
	close(p[1]);
}

/* GET_CAP as a driver without modesetting answers: the render capabilities, and
 * EOPNOTSUPP for the KMS ones (the emulated device has no display) */
static void caps(int fd)
{
	struct drm_get_cap cap = {.capability = DRM_CAP_PRIME};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GET_CAP, &cap));
	CHECK(cap.value == (DRM_PRIME_CAP_IMPORT | DRM_PRIME_CAP_EXPORT));
	cap = (struct drm_get_cap){.capability = DRM_CAP_SYNCOBJ};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GET_CAP, &cap));
	CHECK(cap.value == 1);
	cap = (struct drm_get_cap){.capability = DRM_CAP_SYNCOBJ_TIMELINE, .value = 7};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GET_CAP, &cap));
	CHECK(cap.value == 1); /* timeline syncobjs (timeline.c) */
	cap = (struct drm_get_cap){.capability = DRM_CAP_TIMESTAMP_MONOTONIC};
	CHECK_OK(ioctl(fd, DRM_IOCTL_GET_CAP, &cap));
	CHECK(cap.value == 1);
	cap = (struct drm_get_cap){.capability = 0x1}; /* DRM_CAP_DUMB_BUFFER: KMS */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_GET_CAP, &cap), EOPNOTSUPP);
	CHECK_ERR(ioctl(fd, DRM_IOCTL_GET_CAP, (void *)8), EFAULT);
	struct drm_set_client_cap set = {.capability = 2, .value = 1}; /* UNIVERSAL_PLANES */
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SET_CLIENT_CAP, &set), EOPNOTSUPP);
}

int main(void)
{
	int fd = open_card(), other = open_card();
	version(fd);
	caps(fd);
	gem(fd);
	flink(fd, other);
	prime(fd, other);
	vm_exec_fence(fd);
	query(fd);
	mmio(fd);
	framing(fd);
	CHECK_OK(close(other));
	CHECK_OK(close(fd));
	return 0;
}
