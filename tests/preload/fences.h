/*
 * fences.h - what the fence test programs (syncobj.c, timeline.c, eventfd.c, sync_file.c,
 * sw_sync.c) all make: syncobjs, sw_sync timelines and their fences, the clock their
 * deadlines count on, and a look at a descriptor's readiness. Every call is checked.
 */
#ifndef XED_TEST_FENCES_H
#define XED_TEST_FENCES_H

#include "check.h"

#include <poll.h>
#include <stdint.h>
#include <time.h>

#define SW_SYNC "/sys/kernel/debug/sync/sw_sync"

/* CLOCK_MONOTONIC in nanoseconds: the clock of every syncobj deadline */
static inline int64_t now_ns(void)
{
	struct timespec ts;
	CHECK_OK(clock_gettime(CLOCK_MONOTONIC, &ts));
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint32_t create(int fd, uint32_t flags)
{
	struct drm_syncobj_create c = {.flags = flags};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &c));
	CHECK(c.handle);
	return c.handle;
}

/* DESTROY's own answer (0, or -1 and errno) */
static inline int try_destroy(int fd, uint32_t handle)
{
	struct drm_syncobj_destroy d = {.handle = handle};
	return ioctl(fd, DRM_IOCTL_SYNCOBJ_DESTROY, &d);
}

static inline void destroy(int fd, uint32_t handle) { CHECK_OK(try_destroy(fd, handle)); }

/* a new sw_sync timeline, at 0 */
static inline int sw_sync_timeline(void)
{
	int fd = open(SW_SYNC, O_RDWR);
	CHECK(fd >= 0);
	return fd;
}

/* a sync file of point `value` of the timeline */
static inline int sw_sync_fence(int timeline, uint32_t value)
{
	struct sw_sync_create_fence_data d = {.value = value, .fence = -1};
	CHECK_OK(ioctl(timeline, SW_SYNC_IOC_CREATE_FENCE, &d));
	CHECK(d.fence >= 0);
	return d.fence;
}

static inline void sw_sync_inc(int timeline, uint32_t n)
{
	CHECK_OK(ioctl(timeline, SW_SYNC_IOC_INC, &n));
}

/* --- a job whose fences the syncobj tests put in syncobjs and wait on ------------------ */
#define JOB_VA 0x100000000ull
#define MI_STORE_DWORD_IMM ((0x20u << 23) | 2) /* 4 dwords: header, address, data */
#define MI_BATCH_BUFFER_END (0x0Au << 23)

/* a VM, a 64 KiB BO mapped with a batch at 0x100 that stores 0xc0ffee at 0x200 (once
 * bound at JOB_VA), and a render queue */
struct job_rig {
	uint32_t vm, bo, queue;
	volatile uint32_t *cpu;
};

static inline void rig_up(int fd, struct job_rig *r)
{
	struct drm_xe_vm_create vc = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_CREATE, &vc));
	r->vm = vc.vm_id;
	r->bo = bo_create(fd, 0x10000);
	r->cpu = bo_map(fd, r->bo, 0x10000);
	const uint32_t batch[] = {MI_STORE_DWORD_IMM, (uint32_t)(JOB_VA + 0x200),
				  (uint32_t)(JOB_VA >> 32), 0xc0ffee, MI_BATCH_BUFFER_END};
	for (size_t i = 0; i < sizeof batch / sizeof *batch; i++)
		r->cpu[0x100 / 4 + i] = batch[i];
	struct drm_xe_engine_class_instance eci = {.engine_class = 0};
	struct drm_xe_exec_queue_create qc = {.width = 1, .num_placements = 1, .vm_id = r->vm,
					      .instances = (uintptr_t)&eci};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_CREATE, &qc));
	r->queue = qc.exec_queue_id;
}

/* the BO bound at JOB_VA, `sync` signalled by the bind */
static inline void rig_bind(int fd, struct job_rig *r, struct drm_xe_sync *sync)
{
	struct drm_xe_vm_bind bind = {.vm_id = r->vm, .num_binds = 1,
				      .bind = {.obj = r->bo, .range = 0x10000, .addr = JOB_VA,
					       .op = DRM_XE_VM_BIND_OP_MAP},
				      .num_syncs = 1, .syncs = (uintptr_t)sync};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_BIND, &bind));
}

/* the batch run with `n` syncs */
static inline void rig_exec(int fd, struct job_rig *r, struct drm_xe_sync *syncs, uint32_t n)
{
	struct drm_xe_exec ex = {.exec_queue_id = r->queue, .num_syncs = n,
				 .syncs = (uintptr_t)syncs, .address = JOB_VA + 0x100,
				 .num_batch_buffer = 1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC, &ex));
}

static inline void rig_down(int fd, struct job_rig *r)
{
	struct drm_xe_exec_queue_destroy qd = {.exec_queue_id = r->queue};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_EXEC_QUEUE_DESTROY, &qd));
	CHECK_OK(munmap((void *)r->cpu, 0x10000));
	CHECK_OK(gem_close(fd, r->bo));
	struct drm_xe_vm_destroy vd = {.vm_id = r->vm};
	CHECK_OK(ioctl(fd, DRM_IOCTL_XE_VM_DESTROY, &vd));
}

/* readable (POLLIN) within timeout_ms (0: now) */
static inline int readable_within(int fd, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int n = poll(&p, 1, timeout_ms);
	CHECK(n >= 0);
	return n == 1 && (p.revents & POLLIN);
}

#endif
