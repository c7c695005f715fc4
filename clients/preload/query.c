/*
 * query.c - DRM_IOCTL_XE_DEVICE_QUERY: the kernel's binary layouts and size probe.
 *
 * The daemon answers a query with lists of records; the program expects the
 * drm_xe_query_* layout in its own buffer, and the kernel's protocol to get it: size 0
 * asks for the size, any other size than that one is EINVAL, then the data is copied
 * out (EFAULT for a buffer it cannot write, a read-only page included). The daemon is
 * asked each time, as the kernel computes each time (memory use changes).
 */
#include <errno.h>
#include <string.h>

#include "preload.h"
#include "proto.h"

static void get_u64s(const struct rbuf *map, const char *key, uint64_t *out, int n)
{
	struct rbuf v;
	if (!r_find(map, key, &v) || r_array(&v) != n)
		return;
	for (int i = 0; i < n; i++)
		out[i] = r_uint(&v);
}

static void engine(struct rbuf *r, void *out)
{
	struct drm_xe_engine *e = out;
	struct rbuf inst;
	if (r_find(r, "instance", &inst)) {
		e->instance.engine_class = (uint16_t)r_get_uint(&inst, "engine_class");
		e->instance.engine_instance = (uint16_t)r_get_uint(&inst, "engine_instance");
		e->instance.gt_id = (uint16_t)r_get_uint(&inst, "gt_id");
	}
	get_u64s(r, "reserved", e->reserved, 3);
}

static void mem_region(struct rbuf *r, void *out)
{
	struct drm_xe_mem_region *m = out;
	m->mem_class = (uint16_t)r_get_uint(r, "mem_class");
	m->instance = (uint16_t)r_get_uint(r, "instance");
	m->min_page_size = (uint32_t)r_get_uint(r, "min_page_size");
	m->total_size = r_get_uint(r, "total_size");
	m->used = r_get_uint(r, "used");
	m->cpu_visible_size = r_get_uint(r, "cpu_visible_size");
	m->cpu_visible_used = r_get_uint(r, "cpu_visible_used");
}

static void gt(struct rbuf *r, void *out)
{
	struct drm_xe_gt *g = out;
	g->type = (uint16_t)r_get_uint(r, "type");
	g->tile_id = (uint16_t)r_get_uint(r, "tile_id");
	g->gt_id = (uint16_t)r_get_uint(r, "gt_id");
	g->reference_clock = (uint32_t)r_get_uint(r, "reference_clock");
	g->near_mem_regions = r_get_uint(r, "near_mem_regions");
	g->far_mem_regions = r_get_uint(r, "far_mem_regions");
	g->ip_ver_major = (uint16_t)r_get_uint(r, "ip_ver_major");
	g->ip_ver_minor = (uint16_t)r_get_uint(r, "ip_ver_minor");
	g->ip_ver_rev = (uint16_t)r_get_uint(r, "ip_ver_rev");
	get_u64s(r, "reserved", g->reserved, 7);
}

/* drm_xe_query_oa_units: units of varying size, each with its engines after it */
static long oa_units(const struct rbuf *body, uint8_t *out, size_t cap)
{
	struct rbuf r;
	int64_t n = r_get_array(body, "oa_units", &r);
	size_t at = sizeof(struct drm_xe_query_oa_units);
	if (n < 0 || at > cap)
		return -1;
	memset(out, 0, at);
	((struct drm_xe_query_oa_units *)out)->num_oa_units = (uint32_t)n;
	for (int64_t i = 0; i < n && !r.bad; i++) {
		struct rbuf engines;
		int64_t ne = r_get_array(&r, "eci", &engines);
		size_t size = sizeof(struct drm_xe_oa_unit) + (size_t)(ne > 0 ? ne : 0) * 8;
		if (ne < 0 || at + size > cap)
			return -1;
		struct drm_xe_oa_unit *u = (void *)(out + at);
		memset(u, 0, size);
		u->oa_unit_id = (uint32_t)r_get_uint(&r, "oa_unit_id");
		u->oa_unit_type = (uint32_t)r_get_uint(&r, "oa_unit_type");
		u->capabilities = r_get_uint(&r, "capabilities");
		u->oa_timestamp_freq = r_get_uint(&r, "oa_timestamp_freq");
		u->num_engines = (uint64_t)ne;
		for (int64_t e = 0; e < ne; e++) {
			u->eci[e].engine_class = (uint16_t)r_get_uint(&engines, "engine_class");
			u->eci[e].engine_instance = (uint16_t)r_get_uint(&engines, "engine_instance");
			u->eci[e].gt_id = (uint16_t)r_get_uint(&engines, "gt_id");
			r_skip(&engines);
		}
		at += size;
		r_skip(&r);
	}
	return r.bad ? -1 : (long)at;
}

static void mmio_region(struct rbuf *r, void *out)
{
	struct drm_xe_mmio_region *m = out;
	struct rbuf v;
	size_t n = 0;
	const char *name = r_find(r, "name", &v) ? r_str(&v, &n) : NULL;
	if (name && n < sizeof m->name)
		memcpy(m->name, name, n);
	m->bar_offset = r_get_uint(r, "bar_offset");
	m->size = r_get_uint(r, "size");
	m->access = (uint32_t)r_get_uint(r, "access");
	m->count = (uint32_t)r_get_uint(r, "count");
}

/* drm_xe_query_topology_mask after drm_xe_query_topology_mask, each as long as its mask */
static long topology(const struct rbuf *body, uint8_t *out, size_t cap)
{
	struct rbuf r;
	int64_t n = r_get_array(body, "topology", &r);
	size_t at = 0;
	for (int64_t i = 0; i < n && !r.bad; i++) {
		struct rbuf v;
		size_t len = 0;
		const char *mask = r_find(&r, "mask", &v) ? r_str(&v, &len) : NULL;
		if (!mask || at + sizeof(struct drm_xe_query_topology_mask) + len > cap)
			return -1;
		struct drm_xe_query_topology_mask *t = (void *)(out + at);
		t->gt_id = (uint16_t)r_get_uint(&r, "gt_id");
		t->type = (uint16_t)r_get_uint(&r, "type");
		t->num_bytes = (uint32_t)len;
		memcpy(t->mask, mask, len);
		at += sizeof *t + len;
		r_skip(&r);
	}
	return n < 0 || r.bad ? -1 : (long)at;
}

static long uc_fw_version(const struct rbuf *body, uint8_t *out, size_t cap)
{
	struct drm_xe_query_uc_fw_version *u = (void *)out;
	struct rbuf r;
	if (cap < sizeof *u || !r_find(body, "uc_fw_version", &r))
		return -1;
	memset(u, 0, sizeof *u);
	u->uc_type = (uint16_t)r_get_uint(&r, "uc_type");
	u->branch_ver = (uint32_t)r_get_uint(&r, "branch_ver");
	u->major_ver = (uint32_t)r_get_uint(&r, "major_ver");
	u->minor_ver = (uint32_t)r_get_uint(&r, "minor_ver");
	u->patch_ver = (uint32_t)r_get_uint(&r, "patch_ver");
	return r.bad ? -1 : (long)sizeof *u;
}

/* lay the reply out in out[cap]: its size, or -1 if it cannot be laid out */
static long layout(const struct rbuf *body, uint32_t query, uint8_t *out, size_t cap)
{
	struct rbuf r;
	int64_t n;
	size_t item;
	const char *key;
	void (*fill)(struct rbuf *, void *);
	switch (query) {
	case DRM_XE_DEVICE_QUERY_ENGINES:
		key = "engines", item = sizeof(struct drm_xe_engine), fill = engine;
		break;
	case DRM_XE_DEVICE_QUERY_MEM_REGIONS:
		key = "mem_regions", item = sizeof(struct drm_xe_mem_region), fill = mem_region;
		break;
	case DRM_XE_DEVICE_QUERY_GT_LIST:
		key = "gt_list", item = sizeof(struct drm_xe_gt), fill = gt;
		break;
	case DRM_XE_DEVICE_QUERY_MMIO_REGIONS:
		key = "mmio_regions", item = sizeof(struct drm_xe_mmio_region), fill = mmio_region;
		break;
	case DRM_XE_DEVICE_QUERY_CONFIG:
		n = r_get_array(body, "config", &r);
		if (n < 0 || 8 + (size_t)n * 8 > cap)
			return -1;
		memset(out, 0, 8 + (size_t)n * 8);
		((struct drm_xe_query_config *)out)->num_params = (uint32_t)n;
		for (int64_t i = 0; i < n; i++)
			((struct drm_xe_query_config *)out)->info[i] = r_uint(&r);
		return r.bad ? -1 : 8 + n * 8;
	case DRM_XE_DEVICE_QUERY_HWCONFIG: { /* the table as it is: key, length, values */
		struct rbuf v;
		size_t len = 0;
		const char *blob = r_find(body, "hwconfig", &v) ? r_str(&v, &len) : "";
		if (!blob || len > cap)
			return -1;
		memcpy(out, blob, len);
		return (long)len;
	}
	case DRM_XE_DEVICE_QUERY_OA_UNITS:
		return oa_units(body, out, cap);
	case DRM_XE_DEVICE_QUERY_GT_TOPOLOGY:
		return topology(body, out, cap);
	case DRM_XE_DEVICE_QUERY_UC_FW_VERSION:
		return uc_fw_version(body, out, cap);
	default:
		return -1;
	}
	if (cap < 8)
		return -1;
	n = r_get_records(body, key, out + 8, item, cap - 8, fill); /* cap: half a buffer */
	if (n < 0)
		return -1;
	memset(out, 0, 8);
	*(uint32_t *)out = (uint32_t)n; /* num_engines / num_mem_regions / num_gt / ... */
	return (long)(8 + (size_t)n * item);
}

int xe_query(struct xed_file *f, struct drm_xe_device_query *q)
{
	/* UC_FW_VERSION reads the caller's struct (the firmware asked about), once the
	 * argument's own checks and the size have passed: query_uc_fw_version's order. A
	 * size probe or a wrong size sends zeros, which the daemon answers as for the GuC. */
	struct drm_xe_query_uc_fw_version uc = {0};
	if (q->query == DRM_XE_DEVICE_QUERY_UC_FW_VERSION && q->size == sizeof uc &&
	    !q->extensions && !q->reserved[0] && !q->reserved[1] &&
	    copy_from_user(&uc, q->data, sizeof uc))
		return EFAULT;
	struct xcall c;
	int err = xc_begin(&c, f, XED_OP_XE_DEVICE_QUERY);
	if (err)
		return err;
	xc_u(&c, "extensions", q->extensions);
	xc_u(&c, "query", q->query);
	xc_u64s(&c, "reserved", q->reserved, 2);
	xc_key(&c, "uc_fw_version");
	w_map(&c.w, 8);
	w_kuint(&c.w, "uc_type", uc.uc_type);
	w_kuint(&c.w, "pad", uc.pad);
	w_kuint(&c.w, "branch_ver", uc.branch_ver);
	w_kuint(&c.w, "major_ver", uc.major_ver);
	w_kuint(&c.w, "minor_ver", uc.minor_ver);
	w_kuint(&c.w, "patch_ver", uc.patch_ver);
	w_kuint(&c.w, "pad2", uc.pad2);
	w_kuint(&c.w, "reserved", uc.reserved);
	err = xc_run(&c, -1);
	if (err == ENODEV && q->query == DRM_XE_DEVICE_QUERY_PXP_STATUS && q->size == 0) {
		/* query_pxp_status answers the size probe before it looks for PXP */
		q->size = sizeof(struct drm_xe_query_pxp_status);
		err = 0;
	} else if (err == ENODEV && q->query == DRM_XE_DEVICE_QUERY_PXP_STATUS &&
		   q->size != sizeof(struct drm_xe_query_pxp_status)) {
		err = EINVAL; /* ... and a wrong size, too */
	} else if (!err) {
		/* the request half of the buffer is free now: lay the answer out there */
		long size = layout(&c.body, q->query, c.w.p, XED_CHAN_BUF / 2);
		if (size < 0)
			err = EIO; /* an answer we cannot lay out: a daemon newer than us */
		else if (q->size == 0)
			q->size = (uint32_t)size;
		else if (q->size != (uint64_t)size)
			err = EINVAL;
		else
			err = copy_to_user(q->data, c.w.p, (size_t)size);
	}
	xc_end(&c);
	return err;
}
