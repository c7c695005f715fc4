/*
 * gpu.h - what the userptr test programs share: a VM with an exec queue and a syncobj,
 * MAP_USERPTR binds made and waited for, a batch storing one dword run from memory.
 */
#ifndef XED_TEST_GPU_H
#define XED_TEST_GPU_H

#include "check.h"

#include <stdint.h>

#define MI_STORE_DWORD_IMM ((0x20u << 23) | 2) /* 4 dwords: header, address, data */
#define MI_BATCH_BUFFER_END (0x0Au << 23)

struct gpu {
	int fd;
	uint32_t vm, queue, done;
};

static inline struct gpu gpu_open(void)
{
	struct gpu g = {.fd = open_card()};
	struct drm_xe_vm_create vc = {0};
	CHECK_OK(ioctl(g.fd, DRM_IOCTL_XE_VM_CREATE, &vc));
	g.vm = vc.vm_id;
	struct drm_xe_engine_class_instance eci = {.engine_class = 0};
	struct drm_xe_exec_queue_create qc = {.width = 1, .num_placements = 1, .vm_id = g.vm,
					      .instances = (uintptr_t)&eci};
	CHECK_OK(ioctl(g.fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc));
	g.queue = qc.exec_queue_id;
	struct drm_syncobj_create sc = {0};
	CHECK_OK(ioctl(g.fd, DRM_IOCTL_SYNCOBJ_CREATE, &sc));
	g.done = sc.handle;
	return g;
}

static inline void gpu_close(struct gpu *g)
{
	struct drm_xe_exec_queue_destroy qd = {.exec_queue_id = g->queue};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, &qd));
	struct drm_syncobj_destroy sd = {.handle = g->done};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_SYNCOBJ_DESTROY, &sd));
	struct drm_xe_vm_destroy vd = {.vm_id = g->vm};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_XE_VM_DESTROY, &vd));
	CHECK_OK(close(g->fd));
}

static inline void wait_done(struct gpu *g)
{
	struct drm_syncobj_wait w = {.handles = (uintptr_t)&g->done, .count_handles = 1,
				     .timeout_nsec = INT64_MAX};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_SYNCOBJ_WAIT, &w));
	struct drm_syncobj_array r = {.handles = (uintptr_t)&g->done, .count_handles = 1};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_SYNCOBJ_RESET, &r));
}

/* VM_BIND MAP_USERPTR (op) of [cpu, cpu+len) at va: 0, or -1 and errno */
static inline int bind_op(struct gpu *g, const void *cpu, uint64_t va, uint64_t len, uint32_t op)
{
	struct drm_xe_sync done = {.type = DRM_XE_SYNC_TYPE_SYNCOBJ,
				   .flags = DRM_XE_SYNC_FLAG_SIGNAL, .handle = g->done};
	struct drm_xe_vm_bind b = {.vm_id = g->vm, .num_binds = 1, .num_syncs = 1,
				   .syncs = (uintptr_t)&done,
				   .bind = {.obj_offset = (uintptr_t)cpu, .range = len, .addr = va,
					    .op = op}};
	int r = ioctl(g->fd, DRM_IOCTL_XE_VM_BIND, &b);
	if (!r)
		wait_done(g);
	return r;
}

static inline int bind(struct gpu *g, const void *cpu, uint64_t va, uint64_t len)
{
	return bind_op(g, cpu, va, len, DRM_XE_VM_BIND_OP_MAP_USERPTR);
}

static inline void unbind(struct gpu *g, uint64_t va, uint64_t len)
{
	CHECK_OK(bind_op(g, NULL, va, len, DRM_XE_VM_BIND_OP_UNMAP));
}

/* write at cpu+at a batch storing `value` at GPU address `store`, run it from va+at */
static inline void store(struct gpu *g, uint32_t *cpu, uint64_t va, uint32_t at, uint64_t store,
		  uint32_t value)
{
	uint32_t *b = cpu + at / 4;
	b[0] = MI_STORE_DWORD_IMM;
	b[1] = (uint32_t)store;
	b[2] = (uint32_t)(store >> 32);
	b[3] = value;
	b[4] = MI_BATCH_BUFFER_END;
	struct drm_xe_sync done = {.type = DRM_XE_SYNC_TYPE_SYNCOBJ,
				   .flags = DRM_XE_SYNC_FLAG_SIGNAL, .handle = g->done};
	struct drm_xe_exec ex = {.exec_queue_id = g->queue, .num_syncs = 1,
				 .syncs = (uintptr_t)&done, .address = va + at,
				 .num_batch_buffer = 1};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_XE_EXEC, &ex));
	wait_done(g);
}

static inline void pattern(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed + i * 7);
}

static inline int has_pattern(const uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(seed + i * 7))
			return 0;
	return 1;
}

#endif
