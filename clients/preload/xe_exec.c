/*
 * xe_exec.c - the xe ioctls that carry arrays and CPU addresses: VM_BIND (its binds
 * and syncs), EXEC_QUEUE_CREATE (its engine instances and extension chain), EXEC (its
 * syncs, and a parallel queue's batch addresses) and WAIT_USER_FENCE.
 *
 * Each array is read from the program with copy_from_user and sent as a list: a bad
 * pointer is EFAULT here, after the checks the kernel makes before its own copy. User
 * fences given as CPU addresses (WAIT_USER_FENCE, a VM_BIND's sync) are translated into
 * the daemon's fake-offset space through the library's table of the file's mappings
 * (mmap.c); one in no mapping becomes an address nothing has, which the daemon refuses
 * with EFAULT after its own checks (alignment first), in the kernel's order.
 */
#include <errno.h>
#include <string.h>

#include "preload.h"
#include "proto.h"

#define MAX_SYNCS 64	 /* protocols/constants.py XE_MAX_SYNCS */
#define MAX_BINDS 512	 /* XE_MAX_BINDS_PER_IOCTL */
#define MAX_INSTANCES 9	 /* XE_HW_ENGINE_MAX_INSTANCE: more is EINVAL before any copy */
/* an address no mapping has: the daemon answers EFAULT after its own checks */
#define NOWHERE(addr) (0xfffffffffffff000ull | ((addr) & 0xfffull))

static uint64_t fence_address(struct xed_file *f, uint64_t addr)
{
	uint64_t out;
	return user_address(f, addr, &out) ? out : NOWHERE(addr);
}

/* the syncs but the one at index `skip` (-1: none) */
static void put_syncs(struct xcall *c, struct xed_file *f, const struct drm_xe_sync *s,
		      uint32_t n, int user_addresses, int skip)
{
	xc_key(c, "syncs");
	w_array(&c->w, n - (skip >= 0));
	for (uint32_t i = 0; i < n; i++) {
		if ((int)i == skip)
			continue;
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

int xe_vm_bind(struct xcall *c, struct drm_xe_vm_bind *a)
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
		uint64_t obj_offset = userptr_obj_offset(c->file, o); /* userptr.c */
		w_map(&c->w, 12);
		w_kuint(&c->w, "extensions", o->extensions);
		w_kuint(&c->w, "obj", o->obj);
		w_kuint(&c->w, "pat_index", o->pat_index);
		w_kuint(&c->w, "pad", o->pad);
		w_kuint(&c->w, "obj_offset", obj_offset);
		w_kuint(&c->w, "range", o->range);
		w_kuint(&c->w, "addr", o->addr);
		w_kuint(&c->w, "op", o->op);
		w_kuint(&c->w, "flags", o->flags);
		w_kuint(&c->w, "prefetch_mem_region_instance", o->prefetch_mem_region_instance);
		w_kuint(&c->w, "pad2", o->pad2);
		w_kuints(&c->w, "reserved", o->reserved, 3);
	}
	xc_u(c, "pad2", a->pad2);
	int kept = ufence_kept_back(c->file, syncs, ns, nb); /* plain memory: ufence.c */
	put_syncs(c, c->file, syncs, ns, 1, kept);
	xe_reserved(c, a->reserved, 2);
	err = xc_run(c, -1);
	if (!err && kept >= 0)
		ufence_signal(&syncs[kept]);
	return err;
}

/* EXEC_QUEUE_CREATE's extension chain, read as xe walks it (exec_queue_user_extensions):
 * each link's base, then its SET_PROPERTY body, until the last link or MAX_EXTENSIONS.
 * The links read go to the daemon, with how the walk ended (a link or a body that
 * faults, a 17th link), and the daemon answers each in the kernel's order: what is
 * wrong with a link read before the fault comes first. */
#define MAX_EXTENSIONS 16 /* xe's MAX_USER_EXTENSIONS: more is E2BIG */

static uint32_t read_chain(uint64_t at, struct drm_xe_ext_set_property *links, uint32_t *n)
{
	for (*n = 0; at; at = links[*n - 1].base.next_extension) {
		if (*n == MAX_EXTENSIONS)
			return XED_CHAIN_TOO_LONG;
		struct drm_xe_ext_set_property *l = &links[*n];
		memset(l, 0, sizeof *l);
		if (copy_from_user(&l->base, at, sizeof l->base))
			return XED_CHAIN_LINK_FAULT;
		++*n;
		if (l->base.pad || l->base.name != DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY)
			return 0; /* refused as it is: nothing after it is read */
		if (copy_from_user(l, at, sizeof *l))
			return XED_CHAIN_BODY_FAULT;
	}
	return 0;
}

int xe_exec_queue_create(struct xcall *c, struct drm_xe_exec_queue_create *a)
{
	struct drm_xe_engine_class_instance eci[MAX_INSTANCES];
	struct drm_xe_ext_set_property links[MAX_EXTENSIONS];
	uint32_t n = (uint32_t)a->width * a->num_placements, nl = 0, end = 0;
	/* xe checks the flags, reserved and the count, then copies the instances */
	if (a->flags & ~DRM_XE_EXEC_QUEUE_LOW_LATENCY_HINT || a->reserved[0] || a->reserved[1] ||
	    !n || n > MAX_INSTANCES)
		n = 0; /* the daemon refuses it before looking at the engines */
	else if (copy_from_user(eci, a->instances, n * sizeof *eci))
		return EFAULT;
	if (n)
		end = read_chain(a->extensions, links, &nl);
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
	xe_reserved(c, a->reserved, 2);
	xc_key(c, "chain");
	w_array(&c->w, nl);
	for (uint32_t i = 0; i < nl; i++) {
		w_map(&c->w, 5);
		w_kuint(&c->w, "name", links[i].base.name);
		w_kuint(&c->w, "pad", links[i].base.pad);
		w_kuint(&c->w, "property", links[i].property);
		w_kuint(&c->w, "pad2", links[i].pad);
		w_kuint(&c->w, "value", links[i].value);
	}
	xc_u(c, "chain_end", end);
	int err = xc_run(c, -1);
	if (!err)
		a->exec_queue_id = (uint32_t)r_get_uint(&c->body, "exec_queue_id");
	return err;
}

int xe_exec_queue_destroy(struct xcall *c, struct drm_xe_exec_queue_destroy *a)
{
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	xc_u(c, "pad", a->pad);
	xe_reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

/* A parallel queue's EXEC (num_batch_buffer above 1): `address` points at a batch
 * address a lane. Sent as `addresses`, or none where they cannot be read, which the
 * daemon answers EFAULT once it knows the queue's width is num_batch_buffer (a wrong
 * count is EINVAL first, as xe copies the array only then). */
static uint32_t get_lanes(uint64_t *lanes, const struct drm_xe_exec *a)
{
	uint32_t n = a->num_batch_buffer;
	if (n < 2 || n > MAX_INSTANCES || copy_from_user(lanes, a->address, n * sizeof *lanes))
		return 0;
	return n;
}

int xe_exec(struct xcall *c, struct drm_xe_exec *a)
{
	struct drm_xe_sync syncs[MAX_SYNCS];
	uint64_t lanes[MAX_INSTANCES];
	uint32_t ns = a->num_syncs;
	int mbz = a->extensions || a->reserved[0] || a->reserved[1] || a->pad[0] || a->pad[1] ||
		  a->pad[2];
	int err = mbz ? 0 : get_syncs(syncs, a->syncs, ns);
	if (err)
		return err;
	xc_u(c, "extensions", a->extensions);
	xc_u(c, "exec_queue_id", a->exec_queue_id);
	put_syncs(c, c->file, syncs, mbz ? 0 : ns, 0, -1);
	xc_u(c, "address", a->address);
	xc_u64s(c, "addresses", lanes, mbz ? 0 : get_lanes(lanes, a));
	xc_u(c, "num_batch_buffer", a->num_batch_buffer);
	xc_u16s(c, "pad", a->pad, 3);
	xe_reserved(c, a->reserved, 2);
	return xc_run(c, -1);
}

int xe_wait_user_fence(struct xcall *c, struct drm_xe_wait_user_fence *a)
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
	xe_reserved(c, a->reserved, 2);
	int err = xc_run(c, -1);
	if (err == EFAULT && ufence_is_local(c->file, a->addr))
		return ufence_wait(c->file, a); /* the daemon's checks passed; the word is ours */
	int relative = !(a->flags & DRM_XE_UFENCE_WAIT_FLAG_ABSTIME);
	if (!err && relative)
		a->timeout = r_get_int(&c->body, "timeout");
	else if (err == ETIME && relative)
		a->timeout = 0; /* what is left of it, as the kernel writes back */
	return err;
}
