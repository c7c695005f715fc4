/*
 * uapi.h - the kernel ABI the preload library translates: drm.h, xe_drm.h, dma-buf.h,
 * sync_file.h, sw_sync.h.
 *
 * Written here rather than included because no libc ships xe_drm.h (Debian bookworm's
 * kernel headers predate xe) and the library depends on libc alone. Layouts and ioctl
 * numbers are the kernel's; every struct's size and every field's offset is checked at
 * compile time against the numbers of the uAPI (x86-64), so a typo cannot slip through.
 * The structs of the proposals xed implements (MMIO regions, VM export) are not in any
 * kernel: their layouts are xed's, chosen as the uAPI would (naturally aligned, MBZ pad).
 */
#ifndef XED_UAPI_H
#define XED_UAPI_H

#include <stddef.h>
#include <stdint.h>

#define XED_CHECK(type, size) _Static_assert(sizeof(struct type) == (size), #type " size")
#define XED_AT(type, field, off) \
	_Static_assert(offsetof(struct type, field) == (off), #type "." #field " offset")

/* --- ioctl numbers (asm-generic/ioctl.h) ------------------------------------------ */
#define XED_IOC_NONE 0u
#define XED_IOC_WRITE 1u
#define XED_IOC_READ 2u
#define XED_IOC(dir, type, nr, size) \
	((unsigned long)(((dir) << 30) | ((size) << 16) | ((type) << 8) | (nr)))
#define XED_IOC_DIR(cmd) (((cmd) >> 30) & 3u)
#define XED_IOC_TYPE(cmd) (((cmd) >> 8) & 0xffu)
#define XED_IOC_NR(cmd) ((cmd) & 0xffu)
#define XED_IOC_SIZE(cmd) (((cmd) >> 16) & 0x3fffu)

#define DRM_IOCTL_BASE 'd'
#define DRM_COMMAND_BASE 0x40
#define DRM_COMMAND_END 0xa0
#define DRM_IO(nr) XED_IOC(XED_IOC_NONE, DRM_IOCTL_BASE, nr, 0)
#define DRM_IOW(nr, type) XED_IOC(XED_IOC_WRITE, DRM_IOCTL_BASE, nr, sizeof(type))
#define DRM_IOR(nr, type) XED_IOC(XED_IOC_READ, DRM_IOCTL_BASE, nr, sizeof(type))
#define DRM_IOWR(nr, type) XED_IOC(XED_IOC_READ | XED_IOC_WRITE, DRM_IOCTL_BASE, nr, sizeof(type))

/* --- drm.h ------------------------------------------------------------------------ */
struct drm_version {
	int version_major;
	int version_minor;
	int version_patchlevel;
	size_t name_len;
	char *name;
	size_t date_len;
	char *date;
	size_t desc_len;
	char *desc;
};
XED_CHECK(drm_version, 64);
XED_AT(drm_version, name_len, 16);
XED_AT(drm_version, name, 24);
XED_AT(drm_version, date_len, 32);
XED_AT(drm_version, date, 40);
XED_AT(drm_version, desc_len, 48);
XED_AT(drm_version, desc, 56);

/* DRM_IOCTL_GET_CAP / DRM_IOCTL_SET_CLIENT_CAP */
struct drm_get_cap {
	uint64_t capability;
	uint64_t value;
};
XED_CHECK(drm_get_cap, 16);
XED_AT(drm_get_cap, value, 8);
struct drm_set_client_cap {
	uint64_t capability;
	uint64_t value;
};
XED_CHECK(drm_set_client_cap, 16);
#define DRM_CAP_PRIME 0x5
#define DRM_PRIME_CAP_IMPORT 0x1
#define DRM_PRIME_CAP_EXPORT 0x2
#define DRM_CAP_TIMESTAMP_MONOTONIC 0x6
#define DRM_CAP_SYNCOBJ 0x13
#define DRM_CAP_SYNCOBJ_TIMELINE 0x14

struct drm_gem_close {
	uint32_t handle;
	uint32_t pad;
};
XED_CHECK(drm_gem_close, 8);
XED_AT(drm_gem_close, pad, 4);

struct drm_gem_flink {
	uint32_t handle;
	uint32_t name;
};
XED_CHECK(drm_gem_flink, 8);
XED_AT(drm_gem_flink, name, 4);

struct drm_gem_open {
	uint32_t name;
	uint32_t handle;
	uint64_t size;
};
XED_CHECK(drm_gem_open, 16);
XED_AT(drm_gem_open, handle, 4);
XED_AT(drm_gem_open, size, 8);

#define DRM_CLOEXEC 02000000 /* O_CLOEXEC */
#define DRM_RDWR 02	     /* O_RDWR */
struct drm_prime_handle {
	uint32_t handle;
	uint32_t flags;
	int32_t fd;
};
XED_CHECK(drm_prime_handle, 12);
XED_AT(drm_prime_handle, flags, 4);
XED_AT(drm_prime_handle, fd, 8);

/* drm_syncobj.c: syncobjs, binary and timeline, and their descriptors (EVENTFD is not
 * emulated) */
#define DRM_SYNCOBJ_CREATE_SIGNALED (1 << 0)
struct drm_syncobj_create {
	uint32_t handle;
	uint32_t flags;
};
XED_CHECK(drm_syncobj_create, 8);
XED_AT(drm_syncobj_create, flags, 4);

struct drm_syncobj_destroy {
	uint32_t handle;
	uint32_t pad;
};
XED_CHECK(drm_syncobj_destroy, 8);
XED_AT(drm_syncobj_destroy, pad, 4);

#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL (1 << 0)
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT (1 << 1)
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE (1 << 2)
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE (1 << 3)
struct drm_syncobj_wait {
	uint64_t handles;
	int64_t timeout_nsec;
	uint32_t count_handles;
	uint32_t flags;
	uint32_t first_signaled;
	uint32_t pad;
	uint64_t deadline_nsec;
};
XED_CHECK(drm_syncobj_wait, 40);
XED_AT(drm_syncobj_wait, timeout_nsec, 8);
XED_AT(drm_syncobj_wait, count_handles, 16);
XED_AT(drm_syncobj_wait, flags, 20);
XED_AT(drm_syncobj_wait, first_signaled, 24);
XED_AT(drm_syncobj_wait, pad, 28);
XED_AT(drm_syncobj_wait, deadline_nsec, 32);

struct drm_syncobj_array {
	uint64_t handles;
	uint32_t count_handles;
	uint32_t pad;
};
XED_CHECK(drm_syncobj_array, 16);
XED_AT(drm_syncobj_array, count_handles, 8);
XED_AT(drm_syncobj_array, pad, 12);

/* TIMELINE_WAIT: SYNCOBJ_WAIT with a point per handle (`points` NULL: 0 for each). 40
 * bytes before deadline_nsec: an older program's are zero-filled (drm_ioctl()). */
struct drm_syncobj_timeline_wait {
	uint64_t handles;
	uint64_t points;
	int64_t timeout_nsec;
	uint32_t count_handles;
	uint32_t flags;
	uint32_t first_signaled;
	uint32_t pad;
	uint64_t deadline_nsec;
};
XED_CHECK(drm_syncobj_timeline_wait, 48);
XED_AT(drm_syncobj_timeline_wait, points, 8);
XED_AT(drm_syncobj_timeline_wait, timeout_nsec, 16);
XED_AT(drm_syncobj_timeline_wait, count_handles, 24);
XED_AT(drm_syncobj_timeline_wait, flags, 28);
XED_AT(drm_syncobj_timeline_wait, first_signaled, 32);
XED_AT(drm_syncobj_timeline_wait, pad, 36);
XED_AT(drm_syncobj_timeline_wait, deadline_nsec, 40);

/* QUERY (points written) and TIMELINE_SIGNAL (points read; NULL: 0 for each) */
#define DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED (1 << 0)
struct drm_syncobj_timeline_array {
	uint64_t handles;
	uint64_t points;
	uint32_t count_handles;
	uint32_t flags;
};
XED_CHECK(drm_syncobj_timeline_array, 24);
XED_AT(drm_syncobj_timeline_array, points, 8);
XED_AT(drm_syncobj_timeline_array, count_handles, 16);
XED_AT(drm_syncobj_timeline_array, flags, 20);

/* EVENTFD: the eventfd `fd` counts 1 once `point` (0: the fence held) is signalled, or
 * with WAIT_AVAILABLE submitted (the only flag) */
struct drm_syncobj_eventfd {
	uint32_t handle;
	uint32_t flags;
	uint64_t point;
	int32_t fd;
	uint32_t pad;
};
XED_CHECK(drm_syncobj_eventfd, 24);
XED_AT(drm_syncobj_eventfd, point, 8);
XED_AT(drm_syncobj_eventfd, fd, 16);
XED_AT(drm_syncobj_eventfd, pad, 20);

struct drm_syncobj_transfer {
	uint32_t src_handle;
	uint32_t dst_handle;
	uint64_t src_point;
	uint64_t dst_point;
	uint32_t flags;
	uint32_t pad;
};
XED_CHECK(drm_syncobj_transfer, 32);
XED_AT(drm_syncobj_transfer, dst_handle, 4);
XED_AT(drm_syncobj_transfer, src_point, 8);
XED_AT(drm_syncobj_transfer, dst_point, 16);
XED_AT(drm_syncobj_transfer, flags, 24);
XED_AT(drm_syncobj_transfer, pad, 28);

/* HANDLE_TO_FD / FD_TO_HANDLE; `point` came later (programs built before it send the
 * 16 bytes up to pad: drm_ioctl() zero-fills the rest, as the kernel does) */
#define DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE (1 << 0)
#define DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE (1 << 1)
#define DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE (1 << 0)
#define DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE (1 << 1)
struct drm_syncobj_handle {
	uint32_t handle;
	uint32_t flags;
	int32_t fd;
	uint32_t pad;
	uint64_t point;
};
XED_CHECK(drm_syncobj_handle, 24);
XED_AT(drm_syncobj_handle, handle, 0);
XED_AT(drm_syncobj_handle, flags, 4);
XED_AT(drm_syncobj_handle, fd, 8);
XED_AT(drm_syncobj_handle, pad, 12);
XED_AT(drm_syncobj_handle, point, 16);

#define DRM_IOCTL_VERSION DRM_IOWR(0x00, struct drm_version)
#define DRM_IOCTL_GEM_CLOSE DRM_IOW(0x09, struct drm_gem_close)
#define DRM_IOCTL_GEM_FLINK DRM_IOWR(0x0a, struct drm_gem_flink)
#define DRM_IOCTL_GEM_OPEN DRM_IOWR(0x0b, struct drm_gem_open)
#define DRM_IOCTL_GET_CAP DRM_IOWR(0x0c, struct drm_get_cap)
#define DRM_IOCTL_SET_CLIENT_CAP DRM_IOW(0x0d, struct drm_set_client_cap)
#define DRM_IOCTL_PRIME_HANDLE_TO_FD DRM_IOWR(0x2d, struct drm_prime_handle)
#define DRM_IOCTL_PRIME_FD_TO_HANDLE DRM_IOWR(0x2e, struct drm_prime_handle)
#define DRM_IOCTL_SYNCOBJ_CREATE DRM_IOWR(0xbf, struct drm_syncobj_create)
#define DRM_IOCTL_SYNCOBJ_DESTROY DRM_IOWR(0xc0, struct drm_syncobj_destroy)
#define DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD DRM_IOWR(0xc1, struct drm_syncobj_handle)
#define DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE DRM_IOWR(0xc2, struct drm_syncobj_handle)
#define DRM_IOCTL_SYNCOBJ_WAIT DRM_IOWR(0xc3, struct drm_syncobj_wait)
#define DRM_IOCTL_SYNCOBJ_RESET DRM_IOWR(0xc4, struct drm_syncobj_array)
#define DRM_IOCTL_SYNCOBJ_SIGNAL DRM_IOWR(0xc5, struct drm_syncobj_array)
#define DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT DRM_IOWR(0xca, struct drm_syncobj_timeline_wait)
#define DRM_IOCTL_SYNCOBJ_QUERY DRM_IOWR(0xcb, struct drm_syncobj_timeline_array)
#define DRM_IOCTL_SYNCOBJ_TRANSFER DRM_IOWR(0xcc, struct drm_syncobj_transfer)
#define DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL DRM_IOWR(0xcd, struct drm_syncobj_timeline_array)
#define DRM_IOCTL_SYNCOBJ_EVENTFD DRM_IOWR(0xcf, struct drm_syncobj_eventfd)

/* --- xe_drm.h --------------------------------------------------------------------- */
struct drm_xe_user_extension {
	uint64_t next_extension;
	uint32_t name;
	uint32_t pad;
};
XED_CHECK(drm_xe_user_extension, 16);
XED_AT(drm_xe_user_extension, name, 8);

#define DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY 0
#define DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY 0
#define DRM_XE_EXEC_QUEUE_SET_PROPERTY_TIMESLICE 1
struct drm_xe_ext_set_property {
	struct drm_xe_user_extension base;
	uint32_t property;
	uint32_t pad;
	uint64_t value;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_ext_set_property, 48);
XED_AT(drm_xe_ext_set_property, property, 16);
XED_AT(drm_xe_ext_set_property, value, 24);

#define DRM_XE_ENGINE_CLASS_RENDER 0
#define DRM_XE_ENGINE_CLASS_COPY 1
#define DRM_XE_ENGINE_CLASS_VIDEO_DECODE 2
#define DRM_XE_ENGINE_CLASS_VIDEO_ENHANCE 3
#define DRM_XE_ENGINE_CLASS_COMPUTE 4
#define DRM_XE_ENGINE_CLASS_VM_BIND 5
struct drm_xe_engine_class_instance {
	uint16_t engine_class;
	uint16_t engine_instance;
	uint16_t gt_id;
	uint16_t pad;
};
XED_CHECK(drm_xe_engine_class_instance, 8);
XED_AT(drm_xe_engine_class_instance, engine_instance, 2);
XED_AT(drm_xe_engine_class_instance, gt_id, 4);
XED_AT(drm_xe_engine_class_instance, pad, 6);

struct drm_xe_engine {
	struct drm_xe_engine_class_instance instance;
	uint64_t reserved[3];
};
XED_CHECK(drm_xe_engine, 32);
XED_AT(drm_xe_engine, reserved, 8);

struct drm_xe_query_engines {
	uint32_t num_engines;
	uint32_t pad;
	struct drm_xe_engine engines[];
};
XED_CHECK(drm_xe_query_engines, 8);
XED_AT(drm_xe_query_engines, engines, 8);

struct drm_xe_mem_region {
	uint16_t mem_class;
	uint16_t instance;
	uint32_t min_page_size;
	uint64_t total_size;
	uint64_t used;
	uint64_t cpu_visible_size;
	uint64_t cpu_visible_used;
	uint64_t reserved[6];
};
XED_CHECK(drm_xe_mem_region, 88);
XED_AT(drm_xe_mem_region, instance, 2);
XED_AT(drm_xe_mem_region, min_page_size, 4);
XED_AT(drm_xe_mem_region, total_size, 8);
XED_AT(drm_xe_mem_region, used, 16);
XED_AT(drm_xe_mem_region, cpu_visible_size, 24);
XED_AT(drm_xe_mem_region, cpu_visible_used, 32);
XED_AT(drm_xe_mem_region, reserved, 40);

struct drm_xe_query_mem_regions {
	uint32_t num_mem_regions;
	uint32_t pad;
	struct drm_xe_mem_region mem_regions[];
};
XED_CHECK(drm_xe_query_mem_regions, 8);

struct drm_xe_query_config {
	uint32_t num_params;
	uint32_t pad;
	uint64_t info[];
};
XED_CHECK(drm_xe_query_config, 8);
XED_AT(drm_xe_query_config, info, 8);

struct drm_xe_gt {
	uint16_t type;
	uint16_t tile_id;
	uint16_t gt_id;
	uint16_t pad[3];
	uint32_t reference_clock;
	uint64_t near_mem_regions;
	uint64_t far_mem_regions;
	uint16_t ip_ver_major;
	uint16_t ip_ver_minor;
	uint16_t ip_ver_rev;
	uint16_t pad2;
	uint64_t reserved[7];
};
XED_CHECK(drm_xe_gt, 96);
XED_AT(drm_xe_gt, ip_ver_major, 32);
XED_AT(drm_xe_gt, ip_ver_minor, 34);
XED_AT(drm_xe_gt, ip_ver_rev, 36);
XED_AT(drm_xe_gt, pad2, 38);
XED_AT(drm_xe_gt, gt_id, 4);
XED_AT(drm_xe_gt, pad, 6);
XED_AT(drm_xe_gt, reference_clock, 12);
XED_AT(drm_xe_gt, near_mem_regions, 16);
XED_AT(drm_xe_gt, far_mem_regions, 24);
XED_AT(drm_xe_gt, reserved, 40);

struct drm_xe_query_gt_list {
	uint32_t num_gt;
	uint32_t pad;
	struct drm_xe_gt gt_list[];
};
XED_CHECK(drm_xe_query_gt_list, 8);

struct drm_xe_oa_unit {
	uint64_t extensions;
	uint32_t oa_unit_id;
	uint32_t oa_unit_type;
	uint64_t capabilities;
	uint64_t oa_timestamp_freq;
	uint64_t reserved[4];
	uint64_t num_engines;
	struct drm_xe_engine_class_instance eci[];
};
XED_CHECK(drm_xe_oa_unit, 72);
XED_AT(drm_xe_oa_unit, oa_unit_id, 8);
XED_AT(drm_xe_oa_unit, oa_unit_type, 12);
XED_AT(drm_xe_oa_unit, capabilities, 16);
XED_AT(drm_xe_oa_unit, oa_timestamp_freq, 24);
XED_AT(drm_xe_oa_unit, reserved, 32);
XED_AT(drm_xe_oa_unit, num_engines, 64);
XED_AT(drm_xe_oa_unit, eci, 72);

struct drm_xe_query_oa_units {
	uint64_t extensions;
	uint32_t num_oa_units;
	uint32_t pad;
	uint64_t oa_units[];
};
XED_CHECK(drm_xe_query_oa_units, 16);
XED_AT(drm_xe_query_oa_units, num_oa_units, 8);
XED_AT(drm_xe_query_oa_units, oa_units, 16);

struct drm_xe_query_topology_mask {
	uint16_t gt_id;
	uint16_t type;
	uint32_t num_bytes;
	uint8_t mask[];
};
XED_CHECK(drm_xe_query_topology_mask, 8);
#define DRM_XE_TOPO_DSS_GEOMETRY 1
#define DRM_XE_TOPO_DSS_COMPUTE 2
#define DRM_XE_TOPO_L3_BANK 3
#define DRM_XE_TOPO_EU_PER_DSS 4
#define DRM_XE_TOPO_SIMD16_EU_PER_DSS 5

struct drm_xe_query_uc_fw_version {
	uint16_t uc_type;
	uint16_t pad;
	uint32_t branch_ver;
	uint32_t major_ver;
	uint32_t minor_ver;
	uint32_t patch_ver;
	uint32_t pad2;
	uint64_t reserved;
};
XED_CHECK(drm_xe_query_uc_fw_version, 32);
XED_AT(drm_xe_query_uc_fw_version, pad2, 20);
XED_AT(drm_xe_query_uc_fw_version, reserved, 24);
#define XE_QUERY_UC_TYPE_GUC_SUBMISSION 0
#define XE_QUERY_UC_TYPE_HUC 1

struct drm_xe_query_pxp_status {
	uint32_t status;
	uint32_t supported_session_types;
};
XED_CHECK(drm_xe_query_pxp_status, 8);

#define DRM_XE_DEVICE_QUERY_ENGINES 0
#define DRM_XE_DEVICE_QUERY_MEM_REGIONS 1
#define DRM_XE_DEVICE_QUERY_CONFIG 2
#define DRM_XE_DEVICE_QUERY_GT_LIST 3
#define DRM_XE_DEVICE_QUERY_HWCONFIG 4
#define DRM_XE_DEVICE_QUERY_GT_TOPOLOGY 5
#define DRM_XE_DEVICE_QUERY_ENGINE_CYCLES 6
#define DRM_XE_DEVICE_QUERY_UC_FW_VERSION 7
#define DRM_XE_DEVICE_QUERY_OA_UNITS 8
#define DRM_XE_DEVICE_QUERY_PXP_STATUS 9
#define DRM_XE_DEVICE_QUERY_EU_STALL 10
/* drm_xe_query_config.info[] */
#define DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID 0
#define DRM_XE_QUERY_CONFIG_FLAGS 1
#define DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM (1 << 0)
#define DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY (1 << 1)
#define DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT 2
#define DRM_XE_QUERY_CONFIG_VA_BITS 3
#define DRM_XE_QUERY_CONFIG_MAX_EXEC_QUEUE_PRIORITY 4
#define DRM_XE_MEM_REGION_CLASS_SYSMEM 0
#define DRM_XE_MEM_REGION_CLASS_VRAM 1
struct drm_xe_device_query {
	uint64_t extensions;
	uint32_t query;
	uint32_t size;
	uint64_t data;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_device_query, 40);
XED_AT(drm_xe_device_query, query, 8);
XED_AT(drm_xe_device_query, size, 12);
XED_AT(drm_xe_device_query, data, 16);
XED_AT(drm_xe_device_query, reserved, 24);

#define DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING (1 << 0)
#define DRM_XE_GEM_CREATE_FLAG_SCANOUT (1 << 1)
#define DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM (1 << 2)
#define DRM_XE_GEM_CPU_CACHING_WB 1
#define DRM_XE_GEM_CPU_CACHING_WC 2
struct drm_xe_gem_create {
	uint64_t extensions;
	uint64_t size;
	uint32_t placement;
	uint32_t flags;
	uint32_t vm_id;
	uint32_t handle;
	uint16_t cpu_caching;
	uint16_t pad[3];
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_gem_create, 56);
XED_AT(drm_xe_gem_create, size, 8);
XED_AT(drm_xe_gem_create, placement, 16);
XED_AT(drm_xe_gem_create, flags, 20);
XED_AT(drm_xe_gem_create, vm_id, 24);
XED_AT(drm_xe_gem_create, handle, 28);
XED_AT(drm_xe_gem_create, cpu_caching, 32);
XED_AT(drm_xe_gem_create, pad, 34);
XED_AT(drm_xe_gem_create, reserved, 40);

#define DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER (1 << 0)
struct drm_xe_gem_mmap_offset {
	uint64_t extensions;
	uint32_t handle;
	uint32_t flags;
	uint64_t offset;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_gem_mmap_offset, 40);
XED_AT(drm_xe_gem_mmap_offset, handle, 8);
XED_AT(drm_xe_gem_mmap_offset, flags, 12);
XED_AT(drm_xe_gem_mmap_offset, offset, 16);
XED_AT(drm_xe_gem_mmap_offset, reserved, 24);

#define DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE (1 << 0)
#define DRM_XE_VM_CREATE_FLAG_LR_MODE (1 << 1)
#define DRM_XE_VM_CREATE_FLAG_FAULT_MODE (1 << 2)
struct drm_xe_vm_create {
	uint64_t extensions;
	uint32_t flags;
	uint32_t vm_id;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_vm_create, 32);
XED_AT(drm_xe_vm_create, flags, 8);
XED_AT(drm_xe_vm_create, vm_id, 12);
XED_AT(drm_xe_vm_create, reserved, 16);

struct drm_xe_vm_destroy {
	uint32_t vm_id;
	uint32_t pad;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_vm_destroy, 24);
XED_AT(drm_xe_vm_destroy, pad, 4);
XED_AT(drm_xe_vm_destroy, reserved, 8);

/* VM_GET_PROPERTY(FAULTS): the page faults a VM's work met, one struct xe_vm_fault each */
#define DRM_XE_VM_GET_PROPERTY_FAULTS 0
struct drm_xe_vm_get_property {
	uint64_t extensions;
	uint32_t vm_id;
	uint32_t property;
	uint32_t size;
	uint32_t pad;
	union {
		uint64_t data;
		uint64_t value;
	};
	uint64_t reserved[3];
};
XED_CHECK(drm_xe_vm_get_property, 56);
XED_AT(drm_xe_vm_get_property, vm_id, 8);
XED_AT(drm_xe_vm_get_property, size, 16);
XED_AT(drm_xe_vm_get_property, data, 24);
XED_AT(drm_xe_vm_get_property, reserved, 32);

struct xe_vm_fault {
	uint64_t address;
	uint32_t address_precision;
	uint8_t access_type;
	uint8_t fault_type;
	uint8_t fault_level;
	uint8_t pad;
	uint64_t reserved[4];
};
XED_CHECK(xe_vm_fault, 48);
XED_AT(xe_vm_fault, address_precision, 8);
XED_AT(xe_vm_fault, access_type, 12);
XED_AT(xe_vm_fault, fault_level, 14);
XED_AT(xe_vm_fault, reserved, 16);

#define DRM_XE_VM_BIND_OP_MAP 0x0
#define DRM_XE_VM_BIND_OP_UNMAP 0x1
#define DRM_XE_VM_BIND_OP_MAP_USERPTR 0x2
#define DRM_XE_VM_BIND_OP_UNMAP_ALL 0x3
#define DRM_XE_VM_BIND_OP_PREFETCH 0x4
#define DRM_XE_VM_BIND_FLAG_READONLY (1 << 0)
#define DRM_XE_VM_BIND_FLAG_IMMEDIATE (1 << 1)
#define DRM_XE_VM_BIND_FLAG_NULL (1 << 2)
struct drm_xe_vm_bind_op {
	uint64_t extensions;
	uint32_t obj;
	uint16_t pat_index;
	uint16_t pad;
	union {
		uint64_t obj_offset;
		uint64_t userptr;
	};
	uint64_t range;
	uint64_t addr;
	uint32_t op;
	uint32_t flags;
	uint32_t prefetch_mem_region_instance;
	uint32_t pad2;
	uint64_t reserved[3];
};
XED_CHECK(drm_xe_vm_bind_op, 80);
XED_AT(drm_xe_vm_bind_op, obj, 8);
XED_AT(drm_xe_vm_bind_op, pat_index, 12);
XED_AT(drm_xe_vm_bind_op, pad, 14);
XED_AT(drm_xe_vm_bind_op, obj_offset, 16);
XED_AT(drm_xe_vm_bind_op, range, 24);
XED_AT(drm_xe_vm_bind_op, addr, 32);
XED_AT(drm_xe_vm_bind_op, op, 40);
XED_AT(drm_xe_vm_bind_op, flags, 44);
XED_AT(drm_xe_vm_bind_op, prefetch_mem_region_instance, 48);
XED_AT(drm_xe_vm_bind_op, pad2, 52);
XED_AT(drm_xe_vm_bind_op, reserved, 56);

struct drm_xe_vm_bind {
	uint64_t extensions;
	uint32_t vm_id;
	uint32_t exec_queue_id;
	uint32_t pad;
	uint32_t num_binds;
	union {
		struct drm_xe_vm_bind_op bind;
		uint64_t vector_of_binds;
	};
	uint32_t pad2;
	uint32_t num_syncs;
	uint64_t syncs;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_vm_bind, 136);
XED_AT(drm_xe_vm_bind, vm_id, 8);
XED_AT(drm_xe_vm_bind, exec_queue_id, 12);
XED_AT(drm_xe_vm_bind, pad, 16);
XED_AT(drm_xe_vm_bind, num_binds, 20);
XED_AT(drm_xe_vm_bind, bind, 24);
XED_AT(drm_xe_vm_bind, vector_of_binds, 24);
XED_AT(drm_xe_vm_bind, pad2, 104);
XED_AT(drm_xe_vm_bind, num_syncs, 108);
XED_AT(drm_xe_vm_bind, syncs, 112);
XED_AT(drm_xe_vm_bind, reserved, 120);

struct drm_xe_exec_queue_create {
	uint64_t extensions;
	uint16_t width;
	uint16_t num_placements;
	uint32_t vm_id;
	uint32_t flags;
	uint32_t exec_queue_id;
	uint64_t instances;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_exec_queue_create, 48);
XED_AT(drm_xe_exec_queue_create, width, 8);
XED_AT(drm_xe_exec_queue_create, num_placements, 10);
XED_AT(drm_xe_exec_queue_create, vm_id, 12);
XED_AT(drm_xe_exec_queue_create, flags, 16);
XED_AT(drm_xe_exec_queue_create, exec_queue_id, 20);
XED_AT(drm_xe_exec_queue_create, instances, 24);
XED_AT(drm_xe_exec_queue_create, reserved, 32);
#define DRM_XE_EXEC_QUEUE_LOW_LATENCY_HINT (1 << 0)

struct drm_xe_exec_queue_destroy {
	uint32_t exec_queue_id;
	uint32_t pad;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_exec_queue_destroy, 24);
XED_AT(drm_xe_exec_queue_destroy, reserved, 8);

#define DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN 0
struct drm_xe_exec_queue_get_property {
	uint64_t extensions;
	uint32_t exec_queue_id;
	uint32_t property;
	uint64_t value;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_exec_queue_get_property, 40);
XED_AT(drm_xe_exec_queue_get_property, exec_queue_id, 8);
XED_AT(drm_xe_exec_queue_get_property, value, 16);
XED_AT(drm_xe_exec_queue_get_property, reserved, 24);

#define DRM_XE_SYNC_TYPE_SYNCOBJ 0x0
#define DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ 0x1
#define DRM_XE_SYNC_TYPE_USER_FENCE 0x2
#define DRM_XE_SYNC_FLAG_SIGNAL (1 << 0)
struct drm_xe_sync {
	uint64_t extensions;
	uint32_t type;
	uint32_t flags;
	union {
		uint32_t handle;
		uint64_t addr;
	};
	uint64_t timeline_value;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_sync, 48);
XED_AT(drm_xe_sync, type, 8);
XED_AT(drm_xe_sync, flags, 12);
XED_AT(drm_xe_sync, handle, 16);
XED_AT(drm_xe_sync, addr, 16);
XED_AT(drm_xe_sync, timeline_value, 24);
XED_AT(drm_xe_sync, reserved, 32);

struct drm_xe_exec {
	uint64_t extensions;
	uint32_t exec_queue_id;
	uint32_t num_syncs;
	uint64_t syncs;
	uint64_t address;
	uint16_t num_batch_buffer;
	uint16_t pad[3];
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_exec, 56);
XED_AT(drm_xe_exec, exec_queue_id, 8);
XED_AT(drm_xe_exec, num_syncs, 12);
XED_AT(drm_xe_exec, syncs, 16);
XED_AT(drm_xe_exec, address, 24);
XED_AT(drm_xe_exec, num_batch_buffer, 32);
XED_AT(drm_xe_exec, pad, 34);
XED_AT(drm_xe_exec, reserved, 40);

#define DRM_XE_UFENCE_WAIT_OP_EQ 0x0
#define DRM_XE_UFENCE_WAIT_OP_NEQ 0x1
#define DRM_XE_UFENCE_WAIT_OP_GT 0x2
#define DRM_XE_UFENCE_WAIT_OP_GTE 0x3
#define DRM_XE_UFENCE_WAIT_OP_LT 0x4
#define DRM_XE_UFENCE_WAIT_OP_LTE 0x5
#define DRM_XE_UFENCE_WAIT_FLAG_ABSTIME (1 << 0)
struct drm_xe_wait_user_fence {
	uint64_t extensions;
	uint64_t addr;
	uint16_t op;
	uint16_t flags;
	uint32_t pad;
	uint64_t value;
	uint64_t mask;
	int64_t timeout;
	uint32_t exec_queue_id;
	uint32_t pad2;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_wait_user_fence, 72);
XED_AT(drm_xe_wait_user_fence, addr, 8);
XED_AT(drm_xe_wait_user_fence, op, 16);
XED_AT(drm_xe_wait_user_fence, flags, 18);
XED_AT(drm_xe_wait_user_fence, pad, 20);
XED_AT(drm_xe_wait_user_fence, value, 24);
XED_AT(drm_xe_wait_user_fence, mask, 32);
XED_AT(drm_xe_wait_user_fence, timeout, 40);
XED_AT(drm_xe_wait_user_fence, exec_queue_id, 48);
XED_AT(drm_xe_wait_user_fence, pad2, 52);
XED_AT(drm_xe_wait_user_fence, reserved, 56);

/* --- proposals xed implements (not in any kernel: xed's layouts) --------------------- */
#define DRM_XE_DEVICE_QUERY_MMIO_REGIONS 0x20
struct drm_xe_mmio_region {
	char name[32];
	uint64_t bar_offset;
	uint64_t size;
	uint32_t access; /* XE_MMIO_ACCESS_READ_ONLY (1) or _PER_FILE (2) */
	uint32_t count;
};
XED_CHECK(drm_xe_mmio_region, 56);
XED_AT(drm_xe_mmio_region, bar_offset, 32);
XED_AT(drm_xe_mmio_region, size, 40);
XED_AT(drm_xe_mmio_region, access, 48);
XED_AT(drm_xe_mmio_region, count, 52);

struct drm_xe_query_mmio_regions {
	uint32_t num_regions;
	uint32_t pad;
	struct drm_xe_mmio_region regions[];
};
XED_CHECK(drm_xe_query_mmio_regions, 8);

struct drm_xe_mmio_region_open {
	uint64_t extensions;
	uint64_t bar_offset; /* in: a listed region; out: where this file's lies in BAR0 */
	uint64_t size;
	uint32_t flags;
	uint32_t pad;
	uint32_t region_id; /* out */
	uint32_t pad2;
	uint64_t offset; /* out: the fake offset to mmap, exactly `size` bytes */
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_mmio_region_open, 64);
XED_AT(drm_xe_mmio_region_open, bar_offset, 8);
XED_AT(drm_xe_mmio_region_open, size, 16);
XED_AT(drm_xe_mmio_region_open, flags, 24);
XED_AT(drm_xe_mmio_region_open, pad, 28);
XED_AT(drm_xe_mmio_region_open, region_id, 32);
XED_AT(drm_xe_mmio_region_open, pad2, 36);
XED_AT(drm_xe_mmio_region_open, offset, 40);
XED_AT(drm_xe_mmio_region_open, reserved, 48);

struct drm_xe_mmio_region_close {
	uint32_t region_id;
	uint32_t pad;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_mmio_region_close, 24);
XED_AT(drm_xe_mmio_region_close, reserved, 8);

struct drm_xe_vm_export {
	uint32_t vm_id;
	uint32_t pad;
	int32_t fd; /* out */
	uint32_t pad1;
	uint64_t reserved[2];
};
XED_CHECK(drm_xe_vm_export, 32);
XED_AT(drm_xe_vm_export, pad, 4);
XED_AT(drm_xe_vm_export, fd, 8);
XED_AT(drm_xe_vm_export, pad1, 12);
XED_AT(drm_xe_vm_export, reserved, 16);

#define DRM_XE_DEVICE_QUERY 0x00
#define DRM_XE_GEM_CREATE 0x01
#define DRM_XE_GEM_MMAP_OFFSET 0x02
#define DRM_XE_VM_CREATE 0x03
#define DRM_XE_VM_DESTROY 0x04
#define DRM_XE_VM_BIND 0x05
#define DRM_XE_EXEC_QUEUE_CREATE 0x06
#define DRM_XE_EXEC_QUEUE_DESTROY 0x07
#define DRM_XE_EXEC_QUEUE_GET_PROPERTY 0x08
#define DRM_XE_EXEC 0x09
#define DRM_XE_WAIT_USER_FENCE 0x0a
#define DRM_XE_VM_GET_PROPERTY 0x0f
#define DRM_XE_MMIO_REGION_OPEN 0x20
#define DRM_XE_MMIO_REGION_CLOSE 0x21
#define DRM_XE_VM_EXPORT 0x22

#define DRM_IOCTL_XE_DEVICE_QUERY \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_DEVICE_QUERY, struct drm_xe_device_query)
#define DRM_IOCTL_XE_GEM_CREATE \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_GEM_CREATE, struct drm_xe_gem_create)
#define DRM_IOCTL_XE_GEM_MMAP_OFFSET \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_GEM_MMAP_OFFSET, struct drm_xe_gem_mmap_offset)
#define DRM_IOCTL_XE_VM_CREATE DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_VM_CREATE, struct drm_xe_vm_create)
#define DRM_IOCTL_XE_VM_DESTROY \
	DRM_IOW(DRM_COMMAND_BASE + DRM_XE_VM_DESTROY, struct drm_xe_vm_destroy)
#define DRM_IOCTL_XE_VM_BIND DRM_IOW(DRM_COMMAND_BASE + DRM_XE_VM_BIND, struct drm_xe_vm_bind)
#define DRM_IOCTL_XE_EXEC_QUEUE_CREATE \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_EXEC_QUEUE_CREATE, struct drm_xe_exec_queue_create)
#define DRM_IOCTL_XE_EXEC_QUEUE_DESTROY \
	DRM_IOW(DRM_COMMAND_BASE + DRM_XE_EXEC_QUEUE_DESTROY, struct drm_xe_exec_queue_destroy)
#define DRM_IOCTL_XE_EXEC_QUEUE_GET_PROPERTY                                            \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_EXEC_QUEUE_GET_PROPERTY,                     \
		 struct drm_xe_exec_queue_get_property)
#define DRM_IOCTL_XE_EXEC DRM_IOW(DRM_COMMAND_BASE + DRM_XE_EXEC, struct drm_xe_exec)
#define DRM_IOCTL_XE_WAIT_USER_FENCE \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_WAIT_USER_FENCE, struct drm_xe_wait_user_fence)
#define DRM_IOCTL_XE_VM_GET_PROPERTY \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_VM_GET_PROPERTY, struct drm_xe_vm_get_property)
#define DRM_IOCTL_XE_MMIO_REGION_OPEN \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_MMIO_REGION_OPEN, struct drm_xe_mmio_region_open)
#define DRM_IOCTL_XE_MMIO_REGION_CLOSE \
	DRM_IOW(DRM_COMMAND_BASE + DRM_XE_MMIO_REGION_CLOSE, struct drm_xe_mmio_region_close)
#define DRM_IOCTL_XE_VM_EXPORT DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_VM_EXPORT, struct drm_xe_vm_export)

/* --- dma-buf.h -------------------------------------------------------------------- */
#define DMA_BUF_SYNC_READ (1 << 0)
#define DMA_BUF_SYNC_WRITE (2 << 0)
#define DMA_BUF_SYNC_RW (DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE)
#define DMA_BUF_SYNC_START (0 << 2)
#define DMA_BUF_SYNC_END (1 << 2)
struct dma_buf_sync {
	uint64_t flags;
};
XED_CHECK(dma_buf_sync, 8);
struct dma_buf_export_sync_file {
	uint32_t flags; /* DMA_BUF_SYNC_READ / WRITE / RW */
	int32_t fd;	/* out: the sync file */
};
XED_CHECK(dma_buf_export_sync_file, 8);
XED_AT(dma_buf_export_sync_file, fd, 4);
struct dma_buf_import_sync_file {
	uint32_t flags;
	int32_t fd; /* the sync file whose fence joins the dma-buf's */
};
XED_CHECK(dma_buf_import_sync_file, 8);
XED_AT(dma_buf_import_sync_file, fd, 4);
#define DMA_BUF_BASE 'b'
#define DMA_BUF_IOCTL_SYNC XED_IOC(XED_IOC_WRITE, DMA_BUF_BASE, 0, sizeof(struct dma_buf_sync))
#define DMA_BUF_IOCTL_EXPORT_SYNC_FILE \
	XED_IOC(XED_IOC_READ | XED_IOC_WRITE, DMA_BUF_BASE, 2, sizeof(struct dma_buf_export_sync_file))
#define DMA_BUF_IOCTL_IMPORT_SYNC_FILE \
	XED_IOC(XED_IOC_WRITE, DMA_BUF_BASE, 3, sizeof(struct dma_buf_import_sync_file))

/* --- sync_file.h: the ioctls of a sync file (drivers/dma-buf/sync_file.c) ---------- */
struct sync_merge_data {
	char name[32]; /* the merged file's; the kernel keeps 31 bytes and a NUL */
	int32_t fd2; /* the sync file merged with this one */
	int32_t fence; /* out: the merged sync file */
	uint32_t flags;
	uint32_t pad;
};
XED_CHECK(sync_merge_data, 48);
XED_AT(sync_merge_data, fd2, 32);
XED_AT(sync_merge_data, fence, 36);
XED_AT(sync_merge_data, flags, 40);
XED_AT(sync_merge_data, pad, 44);
struct sync_fence_info {
	char obj_name[32]; /* the fence's timeline */
	char driver_name[32];
	int32_t status; /* 1 signalled, 0 active, < 0 an error */
	uint32_t flags;
	uint64_t timestamp_ns; /* when it signalled */
};
XED_CHECK(sync_fence_info, 80);
XED_AT(sync_fence_info, driver_name, 32);
XED_AT(sync_fence_info, status, 64);
XED_AT(sync_fence_info, flags, 68);
XED_AT(sync_fence_info, timestamp_ns, 72);
struct sync_file_info {
	char name[32];
	int32_t status;
	uint32_t flags;
	uint32_t num_fences; /* in: room at sync_fence_info (0: the count only); out: count */
	uint32_t pad;
	uint64_t sync_fence_info; /* a user pointer to num_fences struct sync_fence_info */
};
XED_CHECK(sync_file_info, 56);
XED_AT(sync_file_info, status, 32);
XED_AT(sync_file_info, flags, 36);
XED_AT(sync_file_info, num_fences, 40);
XED_AT(sync_file_info, pad, 44);
XED_AT(sync_file_info, sync_fence_info, 48);
#define SYNC_IOC_MAGIC '>'
#define SYNC_IOC_MERGE \
	XED_IOC(XED_IOC_READ | XED_IOC_WRITE, SYNC_IOC_MAGIC, 3, sizeof(struct sync_merge_data))
#define SYNC_IOC_FILE_INFO \
	XED_IOC(XED_IOC_READ | XED_IOC_WRITE, SYNC_IOC_MAGIC, 4, sizeof(struct sync_file_info))
struct sync_set_deadline {
	uint64_t deadline_ns; /* absolute CLOCK_MONOTONIC: a hint to the fence's driver */
	uint64_t pad;	      /* must be zero */
};
XED_CHECK(sync_set_deadline, 16);
XED_AT(sync_set_deadline, pad, 8);
#define SYNC_IOC_SET_DEADLINE \
	XED_IOC(XED_IOC_WRITE, SYNC_IOC_MAGIC, 5, sizeof(struct sync_set_deadline))

/* --- sw_sync.h: the validation timelines of drivers/dma-buf/sw_sync.c -------------- */
struct sw_sync_create_fence_data {
	uint32_t value; /* the point: signalled once the timeline reaches it */
	char name[32];	/* unused by the kernel */
	int32_t fence;	/* out: the new sync file */
};
XED_CHECK(sw_sync_create_fence_data, 40);
XED_AT(sw_sync_create_fence_data, name, 4);
XED_AT(sw_sync_create_fence_data, fence, 36);
#define SW_SYNC_IOC_MAGIC 'W'
#define SW_SYNC_IOC_CREATE_FENCE                                              \
	XED_IOC(XED_IOC_READ | XED_IOC_WRITE, SW_SYNC_IOC_MAGIC, 0,           \
		sizeof(struct sw_sync_create_fence_data))
#define SW_SYNC_IOC_INC XED_IOC(XED_IOC_WRITE, SW_SYNC_IOC_MAGIC, 1, sizeof(uint32_t))

/* the ioctl numbers themselves, as the uAPI headers expand them */
_Static_assert(DRM_IOCTL_VERSION == 0xc0406400ul, "DRM_IOCTL_VERSION");
_Static_assert(DRM_IOCTL_GEM_CLOSE == 0x40086409ul, "DRM_IOCTL_GEM_CLOSE");
_Static_assert(DRM_IOCTL_GEM_FLINK == 0xc008640aul, "DRM_IOCTL_GEM_FLINK");
_Static_assert(DRM_IOCTL_GEM_OPEN == 0xc010640bul, "DRM_IOCTL_GEM_OPEN");
_Static_assert(DRM_IOCTL_GET_CAP == 0xc010640cul, "DRM_IOCTL_GET_CAP");
_Static_assert(DRM_IOCTL_SET_CLIENT_CAP == 0x4010640dul, "DRM_IOCTL_SET_CLIENT_CAP");
_Static_assert(DRM_IOCTL_PRIME_HANDLE_TO_FD == 0xc00c642dul, "DRM_IOCTL_PRIME_HANDLE_TO_FD");
_Static_assert(DRM_IOCTL_PRIME_FD_TO_HANDLE == 0xc00c642eul, "DRM_IOCTL_PRIME_FD_TO_HANDLE");
_Static_assert(DRM_IOCTL_SYNCOBJ_CREATE == 0xc00864bful, "DRM_IOCTL_SYNCOBJ_CREATE");
_Static_assert(DRM_IOCTL_SYNCOBJ_DESTROY == 0xc00864c0ul, "DRM_IOCTL_SYNCOBJ_DESTROY");
_Static_assert(DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD == 0xc01864c1ul, "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD");
_Static_assert(DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE == 0xc01864c2ul, "DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE");
_Static_assert(DRM_IOCTL_SYNCOBJ_WAIT == 0xc02864c3ul, "DRM_IOCTL_SYNCOBJ_WAIT");
_Static_assert(DRM_IOCTL_SYNCOBJ_RESET == 0xc01064c4ul, "DRM_IOCTL_SYNCOBJ_RESET");
_Static_assert(DRM_IOCTL_SYNCOBJ_SIGNAL == 0xc01064c5ul, "DRM_IOCTL_SYNCOBJ_SIGNAL");
_Static_assert(DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT == 0xc03064caul, "DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT");
_Static_assert(DRM_IOCTL_SYNCOBJ_QUERY == 0xc01864cbul, "DRM_IOCTL_SYNCOBJ_QUERY");
_Static_assert(DRM_IOCTL_SYNCOBJ_TRANSFER == 0xc02064ccul, "DRM_IOCTL_SYNCOBJ_TRANSFER");
_Static_assert(DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL == 0xc01864cdul,
	       "DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL");
_Static_assert(DRM_IOCTL_SYNCOBJ_EVENTFD == 0xc01864cful, "DRM_IOCTL_SYNCOBJ_EVENTFD");
_Static_assert(DRM_IOCTL_XE_DEVICE_QUERY == 0xc0286440ul, "DRM_IOCTL_XE_DEVICE_QUERY");
_Static_assert(DRM_IOCTL_XE_GEM_CREATE == 0xc0386441ul, "DRM_IOCTL_XE_GEM_CREATE");
_Static_assert(DRM_IOCTL_XE_GEM_MMAP_OFFSET == 0xc0286442ul, "DRM_IOCTL_XE_GEM_MMAP_OFFSET");
_Static_assert(DRM_IOCTL_XE_VM_BIND == 0x40886445ul, "DRM_IOCTL_XE_VM_BIND");
_Static_assert(DRM_IOCTL_XE_EXEC == 0x40386449ul, "DRM_IOCTL_XE_EXEC");
_Static_assert(DRM_IOCTL_XE_WAIT_USER_FENCE == 0xc048644aul, "DRM_IOCTL_XE_WAIT_USER_FENCE");
_Static_assert(DMA_BUF_IOCTL_SYNC == 0x40086200ul, "DMA_BUF_IOCTL_SYNC");
_Static_assert(DMA_BUF_IOCTL_EXPORT_SYNC_FILE == 0xc0086202ul, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE");
_Static_assert(DMA_BUF_IOCTL_IMPORT_SYNC_FILE == 0x40086203ul, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE");
_Static_assert(SYNC_IOC_MERGE == 0xc0303e03ul, "SYNC_IOC_MERGE");
_Static_assert(SYNC_IOC_FILE_INFO == 0xc0383e04ul, "SYNC_IOC_FILE_INFO");
_Static_assert(SYNC_IOC_SET_DEADLINE == 0x40103e05ul, "SYNC_IOC_SET_DEADLINE");
_Static_assert(SW_SYNC_IOC_CREATE_FENCE == 0xc0285700ul, "SW_SYNC_IOC_CREATE_FENCE");
_Static_assert(SW_SYNC_IOC_INC == 0x40045701ul, "SW_SYNC_IOC_INC");

#endif /* XED_UAPI_H */
