/*
 * xe_ioctl.c - the xe ioctls (and the proposals' xed implements) as daemon requests.
 *
 * Each struct's fields travel under the names xe_drm.h gives them, MBZ fields
 * included, so the daemon checks them exactly as xe does. The ioctls with arrays and
 * CPU addresses (VM_BIND, EXEC_QUEUE_CREATE, EXEC, WAIT_USER_FENCE) are in xe_exec.c,
 * DEVICE_QUERY in query.c; the rest, and the dispatch, here.
 */
#include <errno.h>
#include <string.h>

#include "preload.h"
#include "proto.h"

void xe_reserved(struct xcall *c, const uint64_t *r, uint32_t n)
{
	xc_u64s(c, "reserved", r, n);
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
	xe_reserved(c, a->reserved, 2);
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
	(void)xc_handle_pad(f, XED_OP_GEM_CLOSE, a->handle, 0);
	a->handle = 0;
	return err;
}

static int gem_mmap_offset(struct xcall *c, struct drm_xe_gem_mmap_offset *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "handle", a->handle);
	xc_u(c, "flags", a->flags);
	xe_reserved(c, a->reserved, 2);
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
	xe_reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err)
		a->vm_id = (uint32_t)r_get_uint(&c->body, "vm_id");
	return err;
}

static int vm_destroy(struct xcall *c, struct drm_xe_vm_destroy *a)
{
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "pad", a->pad);
	xe_reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

static int mmio_region_open(struct xcall *c, struct drm_xe_mmio_region_open *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "bar_offset", a->bar_offset);
	xc_u(c, "size", a->size);
	xc_u(c, "flags", a->flags);
	xc_u(c, "pad", a->pad);
	xe_reserved(c, a->reserved, 2);
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
	xe_reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

static int vm_export(struct xcall *c, struct drm_xe_vm_export *a)
{
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "pad", a->pad);
	xc_i(c, "fd", a->fd);
	xc_u(c, "pad1", a->pad1);
	xe_reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err) {
		a->fd = xc_take_fd(c);
		if (a->fd < 0)
			err = EIO;
	}
	return err;
}

int xe_exec_queue_get_property(struct xcall *c, struct drm_xe_exec_queue_get_property *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	xc_u(c, "property", a->property);
	xc_u(c, "value", a->value);
	xe_reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (!err)
		a->value = r_get_uint(&c->body, "value");
	return err;
}

/* VM_GET_PROPERTY: asked with size 0, the size; else the faults the daemon sends,
 * written to `data` (copy_to_user: EFAULT once the daemon has made its checks) */
static int vm_get_property(struct xcall *c, struct drm_xe_vm_get_property *a)
{
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "vm_id", a->vm_id);
	xc_u(c, "property", a->property);
	xc_u(c, "size", a->size);
	xc_u(c, "pad", a->pad);
	xe_reserved(c, a->reserved, 3);
	int err = xc_run(c, -1);
	if (err)
		return err;
	if (!a->size) {
		a->size = (uint32_t)r_get_uint(&c->body, "size");
		return 0;
	}
	struct rbuf r;
	int64_t n = r_find(&c->body, "faults", &r) ? r_array(&r) : 0;
	for (int64_t i = 0; i < n && !err; i++) {
		struct xe_vm_fault f = {
			.address = r_get_uint(&r, "address"),
			.address_precision = (uint32_t)r_get_uint(&r, "address_precision"),
			.access_type = (uint8_t)r_get_uint(&r, "access_type"),
			.fault_type = (uint8_t)r_get_uint(&r, "fault_type"),
			.fault_level = (uint8_t)r_get_uint(&r, "fault_level"),
		};
		r_skip(&r);
		err = copy_to_user(a->data + (uint64_t)i * sizeof f, &f, sizeof f);
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
		[DRM_XE_EXEC_QUEUE_GET_PROPERTY] = XED_OP_XE_EXEC_QUEUE_GET_PROPERTY,
		[DRM_XE_EXEC] = XED_OP_XE_EXEC,
		[DRM_XE_WAIT_USER_FENCE] = XED_OP_XE_WAIT_USER_FENCE,
		[DRM_XE_VM_GET_PROPERTY] = XED_OP_XE_VM_GET_PROPERTY,
		[DRM_XE_MMIO_REGION_OPEN] = XED_OP_XE_MMIO_REGION_OPEN,
		[DRM_XE_MMIO_REGION_CLOSE] = XED_OP_XE_MMIO_REGION_CLOSE,
		[DRM_XE_VM_EXPORT] = XED_OP_XE_VM_EXPORT,
	};
	if (nr == DRM_XE_VM_BIND && ((struct drm_xe_vm_bind *)kdata)->num_binds == 1)
		userptr_register(f, &((struct drm_xe_vm_bind *)kdata)->bind); /* before the call */
	struct xcall c;
	int err = xc_begin(&c, f, ops[nr]);
	if (err)
		return err;
	switch (nr) {
	case DRM_XE_GEM_CREATE: err = gem_create(&c, kdata); break;
	case DRM_XE_GEM_MMAP_OFFSET: err = gem_mmap_offset(&c, kdata); break;
	case DRM_XE_VM_CREATE: err = vm_create(&c, kdata); break;
	case DRM_XE_VM_DESTROY: err = vm_destroy(&c, kdata); break;
	case DRM_XE_VM_BIND: err = xe_vm_bind(&c, kdata); break;
	case DRM_XE_EXEC_QUEUE_CREATE: err = xe_exec_queue_create(&c, kdata); break;
	case DRM_XE_EXEC_QUEUE_DESTROY: err = xe_exec_queue_destroy(&c, kdata); break;
	case DRM_XE_EXEC_QUEUE_GET_PROPERTY: err = xe_exec_queue_get_property(&c, kdata); break;
	case DRM_XE_EXEC: err = xe_exec(&c, kdata); break;
	case DRM_XE_WAIT_USER_FENCE: err = xe_wait_user_fence(&c, kdata); break;
	case DRM_XE_VM_GET_PROPERTY: err = vm_get_property(&c, kdata); break;
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
