/*
 * xe_ioctl.c - the xe ioctls (and the proposals' xed implements) as daemon requests.
 *
 * Each struct's fields travel under the names xe_drm.h gives them, MBZ fields
 * included, so the daemon checks them exactly as xe does. Where the struct has a user
 * pointer and a count (the binds, the syncs, the engine instances), the array is read
 * from the program with copy_from_user and sent as a list: a bad pointer is EFAULT
 * here, after the checks the kernel makes before its own copy. User fences given as
 * CPU addresses (WAIT_USER_FENCE, a VM_BIND's sync) are translated into the daemon's
 * fake-offset space through the library's table of the file's mappings (mmap.c).
 */
#include <errno.h>
#include <string.h>

#include "preload.h"
#include "proto.h"

#define MAX_SYNCS 64	 /* protocols/constants.py XE_MAX_SYNCS */
#define MAX_BINDS 512	 /* XE_MAX_BINDS_PER_IOCTL */
#define MAX_INSTANCES 64 /* the daemon's list cap */
/* an address no mapping has: the daemon answers EFAULT after its own checks */
#define NOWHERE(addr) (0xfffffffffffff000ull | ((addr) & 0xfffull))

static void reserved(struct xcall *c, const uint64_t *r, uint32_t n) { xc_u64s(c, "reserved", r, n); }

static uint64_t fence_address(struct xed_file *f, uint64_t addr)
{
	uint64_t out;
	return user_address(f, addr, &out) ? out : NOWHERE(addr);
}

static void put_syncs(struct xcall *c, struct xed_file *f, const struct drm_xe_sync *s,
		      uint32_t n, int user_addresses)
{
	xc_key(c, "syncs");
	w_array(&c->w, n);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t addr = s[i].addr;
		if (user_addresses && s[i].type == DRM_XE_SYNC_TYPE_USER_FENCE)
			addr = fence_address(f, addr);
		w_map(&c->w, 7);
		w_kuint(&c->w, "extensions", s[i].extensions);
		w_kuint(&c->w, "type", s[i].type);
		w_kuint(&c->w, "flags", s[i].flags);
		w_kuint(&c->w, "handle", s[i].handle);
		w_kuint(&c->w, "addr", addr);
		w_kuint(&c->w, "timeline_value", s[i].timeline_value);
		w_kuints(&c->w, "reserved", s[i].reserved, 2);
	}
}

/* read n syncs from the program: 0, EINVAL (too many) or EFAULT */
static int get_syncs(struct drm_xe_sync *out, uint64_t ptr, uint32_t n)
{
	if (n > MAX_SYNCS)
		return EINVAL;
	return copy_from_user(out, ptr, n * sizeof *out);
}

/*
 * gem_create_user_extensions(): xe walks the chain once the BO exists and frees it if
 * an extension fails. The only extension is SET_PROPERTY(PXP_TYPE), and the emulated
 * device has no PXP: the first link of any chain fails, so the chain is never walked on.
 */
static int create_extensions(uint64_t ptr)
{
	struct {
		struct drm_xe_user_extension base;
		uint32_t property, pad;
		uint64_t value, reserved[2];
	} ext;
	if (copy_from_user(&ext.base, ptr, sizeof ext.base))
		return EFAULT;
	if (ext.base.pad || ext.base.name != 0) /* DRM_XE_GEM_CREATE_EXTENSION_SET_PROPERTY */
		return EINVAL;
	if (copy_from_user(&ext, ptr, sizeof ext))
		return EFAULT;
	if (ext.pad || ext.reserved[0] || ext.reserved[1] || ext.property != 0)
		return EINVAL; /* DRM_XE_GEM_CREATE_SET_PROPERTY_PXP_TYPE is 0 */
	return ENODEV;	       /* a valid PXP request: this device has no PXP */
}

static int gem_create(struct xcall *c, struct drm_xe_gem_create *a)
{
	xc_u(c, "extensions", 0);
	xc_u(c, "size", a->size);
	xc_u(c, "placement", a->placement);
	xc_u(c, "flags", a->flags);
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "handle", a->handle);
	xc_u(c, "cpu_caching", a->cpu_caching);
	xc_u16s(c, "pad", a->pad, 3);
	reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err)
		a->handle = (uint32_t)r_get_uint(&c->body, "handle");
	return err;
}

/* the BO exists; a bad extension chain undoes it, as xe frees the BO */
static int gem_create_finish(struct xed_file *f, struct drm_xe_gem_create *a)
{
	int err = create_extensions(a->extensions);
	if (!err)
		return 0;
	struct xcall c;
	if (!xc_begin(&c, f, XED_OP_GEM_CLOSE)) {
		xc_u(&c, "handle", a->handle);
		xc_run(&c, -1);
		xc_end(&c);
	}
	a->handle = 0;
	return err;
}

static int gem_mmap_offset(struct xcall *c, struct drm_xe_gem_mmap_offset *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "handle", a->handle);
	xc_u(c, "flags", a->flags);
	reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err)
		a->offset = r_get_uint(&c->body, "offset");
	return err;
}

static int vm_create(struct xcall *c, struct drm_xe_vm_create *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "flags", a->flags);
	xc_u(c, "vm_id", a->vm_id);
	reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err)
		a->vm_id = (uint32_t)r_get_uint(&c->body, "vm_id");
	return err;
}

static int vm_destroy(struct xcall *c, struct drm_xe_vm_destroy *a)
{
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "pad", a->pad);
	reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

static int vm_bind(struct xcall *c, struct drm_xe_vm_bind *a)
{
	/* read into the reply half of the channel's buffer: free until the reply comes */
	struct drm_xe_vm_bind_op *ops = (void *)(c->chan->buf + XED_CHAN_BUF / 2);
	_Static_assert(MAX_BINDS * sizeof *ops <= XED_CHAN_BUF / 2, "binds fit");
	struct drm_xe_sync syncs[MAX_SYNCS];
	uint32_t nb = a->num_binds, ns = a->num_syncs;
	/* the kernel's order: MBZ fields, then the binds array, then the syncs */
	int mbz = a->extensions || a->reserved[0] || a->reserved[1];
	if (mbz) {
		nb = ns = 0;
	} else if (nb > 1) {
		if (nb > MAX_BINDS)
			return EINVAL;
		if (copy_from_user(ops, a->vector_of_binds, nb * sizeof *ops))
			return EFAULT;
	} else if (nb == 1) {
		ops = &a->bind;
	}
	int err = mbz ? 0 : get_syncs(syncs, a->syncs, ns);
	if (err)
		return err;
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	xc_u(c, "pad", a->pad);
	xc_key(c, "binds");
	w_array(&c->w, nb);
	for (uint32_t i = 0; i < nb; i++) {
		const struct drm_xe_vm_bind_op *o = &ops[i];
		w_map(&c->w, 12);
		w_kuint(&c->w, "extensions", o->extensions);
		w_kuint(&c->w, "obj", o->obj);
		w_kuint(&c->w, "pat_index", o->pat_index);
		w_kuint(&c->w, "pad", o->pad);
		w_kuint(&c->w, "obj_offset", o->obj_offset);
		w_kuint(&c->w, "range", o->range);
		w_kuint(&c->w, "addr", o->addr);
		w_kuint(&c->w, "op", o->op);
		w_kuint(&c->w, "flags", o->flags);
		w_kuint(&c->w, "prefetch_mem_region_instance", o->prefetch_mem_region_instance);
		w_kuint(&c->w, "pad2", o->pad2);
		w_kuints(&c->w, "reserved", o->reserved, 3);
	}
	xc_u(c, "pad2", a->pad2);
	put_syncs(c, c->file, syncs, ns, 1);
	reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

static int exec_queue_create(struct xcall *c, struct drm_xe_exec_queue_create *a)
{
	struct drm_xe_engine_class_instance eci[MAX_INSTANCES];
	uint32_t n = (uint32_t)a->width * a->num_placements;
	if (a->extensions || a->flags || a->reserved[0] || a->reserved[1] || n > MAX_INSTANCES)
		n = 0; /* the daemon refuses it before looking at the engines */
	else if (copy_from_user(eci, a->instances, n * sizeof *eci))
		return EFAULT;
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "width", a->width);
	xc_u(c, "num_placements", a->num_placements);
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "flags", a->flags);
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	xc_key(c, "instances");
	w_array(&c->w, n);
	for (uint32_t i = 0; i < n; i++) {
		w_map(&c->w, 4);
		w_kuint(&c->w, "engine_class", eci[i].engine_class);
		w_kuint(&c->w, "engine_instance", eci[i].engine_instance);
		w_kuint(&c->w, "gt_id", eci[i].gt_id);
		w_kuint(&c->w, "pad", eci[i].pad);
	}
	reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err)
		a->exec_queue_id = (uint32_t)r_get_uint(&c->body, "exec_queue_id");
	return err;
}

static int exec_queue_destroy(struct xcall *c, struct drm_xe_exec_queue_destroy *a)
{
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	xc_u(c, "pad", a->pad);
	reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

static int exec(struct xcall *c, struct drm_xe_exec *a)
{
	struct drm_xe_sync syncs[MAX_SYNCS];
	uint32_t ns = a->num_syncs;
	int mbz = a->extensions || a->reserved[0] || a->reserved[1] || a->pad[0] || a->pad[1] ||
		  a->pad[2];
	int err = mbz ? 0 : get_syncs(syncs, a->syncs, ns);
	if (err)
		return err;
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	put_syncs(c, c->file, syncs, mbz ? 0 : ns, 0);
	xc_u(c, "address", a->address);
	xc_u(c, "num_batch_buffer", a->num_batch_buffer);
	xc_u16s(c, "pad", a->pad, 3);
	reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

static int wait_user_fence(struct xcall *c, struct drm_xe_wait_user_fence *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "addr", fence_address(c->file, a->addr));
	xc_u(c, "op", a->op);
	xc_u(c, "flags", a->flags);
	xc_u(c, "pad", a->pad);
	xc_u(c, "value", a->value);
	xc_u(c, "mask", a->mask);
	xc_i(c, "timeout", a->timeout);
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	xc_u(c, "pad2", a->pad2);
	reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	int relative = !(a->flags & DRM_XE_UFENCE_WAIT_FLAG_ABSTIME);
	if (!err && relative)
		a->timeout = r_get_int(&c->body, "timeout");
	else if (err == ETIME && relative)
		a->timeout = 0; /* what is left of it, as the kernel writes back */
	return err;
}

static int mmio_region_open(struct xcall *c, struct drm_xe_mmio_region_open *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "bar_offset", a->bar_offset);
	xc_u(c, "size", a->size);
	xc_u(c, "flags", a->flags);
	xc_u(c, "pad", a->pad);
	reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err) {
		a->region_id = (uint32_t)r_get_uint(&c->body, "region_id");
		a->offset = r_get_uint(&c->body, "offset");
		a->size = r_get_uint(&c->body, "size");
		a->bar_offset = r_get_uint(&c->body, "bar_offset");
	}
	return err;
}

static int mmio_region_close(struct xcall *c, struct drm_xe_mmio_region_close *a)
{
	xc_u(c, "region_id", a->region_id);
	xc_u(c, "pad", a->pad);
	reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

static int vm_export(struct xcall *c, struct drm_xe_vm_export *a)
{
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "pad", a->pad);
	xc_i(c, "fd", a->fd);
	xc_u(c, "pad1", a->pad1);
	reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err) {
		a->fd = xc_take_fd(c);
		if (a->fd < 0)
			err = EIO;
	}
	return err;
}

int xe_ioctl(struct xed_file *f, unsigned nr, void *kdata)
{
	if (nr == DRM_XE_DEVICE_QUERY)
		return xe_query(f, kdata);
	static const int ops[] = {
		[DRM_XE_GEM_CREATE] = XED_OP_XE_GEM_CREATE,
		[DRM_XE_GEM_MMAP_OFFSET] = XED_OP_XE_GEM_MMAP_OFFSET,
		[DRM_XE_VM_CREATE] = XED_OP_XE_VM_CREATE,
		[DRM_XE_VM_DESTROY] = XED_OP_XE_VM_DESTROY,
		[DRM_XE_VM_BIND] = XED_OP_XE_VM_BIND,
		[DRM_XE_EXEC_QUEUE_CREATE] = XED_OP_XE_EXEC_QUEUE_CREATE,
		[DRM_XE_EXEC_QUEUE_DESTROY] = XED_OP_XE_EXEC_QUEUE_DESTROY,
		[DRM_XE_EXEC] = XED_OP_XE_EXEC,
		[DRM_XE_WAIT_USER_FENCE] = XED_OP_XE_WAIT_USER_FENCE,
		[DRM_XE_MMIO_REGION_OPEN] = XED_OP_XE_MMIO_REGION_OPEN,
		[DRM_XE_MMIO_REGION_CLOSE] = XED_OP_XE_MMIO_REGION_CLOSE,
		[DRM_XE_VM_EXPORT] = XED_OP_XE_VM_EXPORT,
	};
	struct xcall c;
	int err = xc_begin(&c, f, ops[nr]);
	if (err)
		return err;
	switch (nr) {
	case DRM_XE_GEM_CREATE: err = gem_create(&c, kdata); break;
	case DRM_XE_GEM_MMAP_OFFSET: err = gem_mmap_offset(&c, kdata); break;
	case DRM_XE_VM_CREATE: err = vm_create(&c, kdata); break;
	case DRM_XE_VM_DESTROY: err = vm_destroy(&c, kdata); break;
	case DRM_XE_VM_BIND: err = vm_bind(&c, kdata); break;
	case DRM_XE_EXEC_QUEUE_CREATE: err = exec_queue_create(&c, kdata); break;
	case DRM_XE_EXEC_QUEUE_DESTROY: err = exec_queue_destroy(&c, kdata); break;
	case DRM_XE_EXEC: err = exec(&c, kdata); break;
	case DRM_XE_WAIT_USER_FENCE: err = wait_user_fence(&c, kdata); break;
	case DRM_XE_MMIO_REGION_OPEN: err = mmio_region_open(&c, kdata); break;
	case DRM_XE_MMIO_REGION_CLOSE: err = mmio_region_close(&c, kdata); break;
	case DRM_XE_VM_EXPORT: err = vm_export(&c, kdata); break;
	default: err = EINVAL;
	}
	xc_end(&c);
	if (!err && nr == DRM_XE_GEM_CREATE && ((struct drm_xe_gem_create *)kdata)->extensions)
		err = gem_create_finish(f, kdata);
	return err;
}
