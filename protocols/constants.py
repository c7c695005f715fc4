"""Constants from include/uapi/drm/xe_drm.h and the command streamer xed emulates.

Names and values are the kernel's, so code written against xed reads like code written
against the real uAPI.
"""

from __future__ import annotations

import enum

PAGE_SIZE = 4096  # the host's (x86-64); a daemon may emulate 64 KiB ([device] page_size)
SZ_4K = 4096  # the kernel's SZ_4K: sizes of the hardware's, whatever the host page

# --- memory regions (drm_xe_mem_region.mem_class) and placements -------------------
DRM_XE_MEM_REGION_CLASS_SYSMEM = 0
DRM_XE_MEM_REGION_CLASS_VRAM = 1

# placement bitmask bits = region instance: bit 0 system memory, bit 1 VRAM of tile 0
XE_PLACEMENT_SYSMEM = 1 << 0
XE_PLACEMENT_VRAM0 = 1 << 1

# --- DRM_IOCTL_XE_GEM_CREATE ----------------------------------------------------------
DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING = 1 << 0
DRM_XE_GEM_CREATE_FLAG_SCANOUT = 1 << 1
DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM = 1 << 2
DRM_XE_GEM_CREATE_FLAGS = (
    DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING
    | DRM_XE_GEM_CREATE_FLAG_SCANOUT
    | DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM
)
DRM_XE_GEM_CPU_CACHING_WB = 1
DRM_XE_GEM_CPU_CACHING_WC = 2

# --- DRM_IOCTL_XE_GEM_MMAP_OFFSET -----------------------------------------------------
DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER = 1 << 0
# not uAPI: clients must ask GEM_MMAP_OFFSET for it (0x50 << XE_PTE_SHIFT in xe)
XE_PCI_BARRIER_MMAP_OFFSET = 0x50 << 12
PCI_BARRIER_IDLE = 0xDEADBEEF  # what every word of the barrier page reads back
# The client library's barrier store: a tagged running sequence number in word 0, so the
# device can count writes that landed between two of its looks. Any other value is one.
PCI_BARRIER_SEQ_TAG = 0x5E00_0000
PCI_BARRIER_SEQ_MASK = 0x00FF_FFFF
# running numbers compare modulo the mask: one less than half its range ahead is later
PCI_BARRIER_SEQ_HALF = (PCI_BARRIER_SEQ_MASK + 1) // 2
# PCI_BARRIER_ACKS (xed's, no kernel equivalent): while this flag is set the device keeps,
# for the file's barrier page, the time of each look that counted barriers there (at most
# PCI_BARRIER_ACKS_KEPT between two calls); a call without it stops that
XED_PCI_BARRIER_ACKS_RECORD = 1 << 0
PCI_BARRIER_ACKS_KEPT = 1024
# A u32 at this byte offset of the device's notice page (UNPLUG_NOTICE, read-only for
# clients) is non-zero while the device's page watcher sleeps: a writer that finds it so
# after a barrier store FUTEX_WAKEs it there, so a barrier after a quiet spell is seen at
# once rather than at the watcher's next timed look. A plain store without the wake-up
# is counted all the same, at that next look.
NOTICE_WATCHER_ASLEEP = 64
# Word 0 of the notice page turns to this when the device is unplugged (its futex waiters
# are woken): the client libraries then put private zero pages under their mappings.
NOTICE_UNPLUGGED = 1

# HOST_MEMORY_INVALIDATE's events, as the MMU notifier reports a range of host memory:
# about to change (device accesses wait), then changed: replaced (new contents there) or
# freed (never to be read again)
HOST_INVALIDATE_START = 1
HOST_INVALIDATE_END_REPLACED = 2
HOST_INVALIDATE_END_FREED = 3

# --- MMIO regions (proposal) -----------------------------------------------------------
XE_MMIO_ACCESS_READ_ONLY = 1  # one sealed page set shared by every file
XE_MMIO_ACCESS_PER_FILE = 2  # writable, a page of its own for each file (doorbells)
# BAR0 layout of the emulated device
XE_BAR0_INFO_OFFSET = 0x0
XE_BAR0_INFO_SIZE = 0x2000
XE_BAR0_IRQ_STATUS_OFFSET = 0x2000  # read clears: never exposable
XE_BAR0_GT_REGS_OFFSET = 0x3000  # engine and power control: never exposable
XE_BAR0_DOORBELL_OFFSET = 0x100000
# registers of the info block (offsets into it)
XE_INFO_DEVICE_ID = 0x00  # u32
XE_INFO_REVISION = 0x04  # u32
XE_INFO_VRAM_SIZE = 0x08  # u64
XE_INFO_TIMESTAMP = 0x10  # u64, free running, in reference clock ticks
XE_INFO_SYSTEM_MEMORY = 0x18  # u64
XE_INFO_VA_BITS = 0x20  # u32
XE_INFO_DOORBELLS = 0x24  # u32: doorbell pages a file may be given

# --- DRM_IOCTL_XE_VM_CREATE -----------------------------------------------------------
DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE = 1 << 0
DRM_XE_VM_CREATE_FLAG_LR_MODE = 1 << 1
DRM_XE_VM_CREATE_FLAG_FAULT_MODE = 1 << 2
DRM_XE_VM_CREATE_FLAGS = (
    DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE
    | DRM_XE_VM_CREATE_FLAG_LR_MODE
    | DRM_XE_VM_CREATE_FLAG_FAULT_MODE
)

# --- DRM_IOCTL_XE_VM_BIND -------------------------------------------------------------
DRM_XE_VM_BIND_OP_MAP = 0x0
DRM_XE_VM_BIND_OP_UNMAP = 0x1
DRM_XE_VM_BIND_OP_MAP_USERPTR = 0x2
DRM_XE_VM_BIND_OP_UNMAP_ALL = 0x3
DRM_XE_VM_BIND_OP_PREFETCH = 0x4

DRM_XE_VM_BIND_FLAG_READONLY = 1 << 0
DRM_XE_VM_BIND_FLAG_IMMEDIATE = 1 << 1
DRM_XE_VM_BIND_FLAG_NULL = 1 << 2
DRM_XE_VM_BIND_FLAG_DUMPABLE = 1 << 3
# "no effect on BOs that are not marked as using PXP": no BO here is
DRM_XE_VM_BIND_FLAG_CHECK_PXP = 1 << 4
DRM_XE_VM_BIND_FLAGS = (
    DRM_XE_VM_BIND_FLAG_READONLY
    | DRM_XE_VM_BIND_FLAG_IMMEDIATE
    | DRM_XE_VM_BIND_FLAG_NULL
    | DRM_XE_VM_BIND_FLAG_DUMPABLE
    | DRM_XE_VM_BIND_FLAG_CHECK_PXP
)
DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN = 0
# EXEC_QUEUE_CREATE's extension chain: SET_PROPERTY links, at most 16
DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY = 0
DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY = 0
DRM_XE_EXEC_QUEUE_SET_PROPERTY_TIMESLICE = 1
XE_EXEC_QUEUE_PRIORITY_NORMAL = 1
XE_EXEC_QUEUE_PRIORITY_HIGH = 2  # above NORMAL takes CAP_SYS_NICE
XE_HW_ENGINE_TIMESLICE_MIN = 1  # us
XE_HW_ENGINE_TIMESLICE_MAX = 10_000_000
MAX_USER_EXTENSIONS = 16
CHAIN_LINK_FAULT = 1  # chain_end values (the library's report of how the walk ended)
CHAIN_BODY_FAULT = 2
CHAIN_TOO_LONG = 3
# VM_GET_PROPERTY: the faults a VM's work met (struct xe_vm_fault, 48 bytes each)
DRM_XE_VM_GET_PROPERTY_FAULTS = 0
XE_VM_FAULT_SIZE = 48
FAULT_ACCESS_TYPE_READ = 0
FAULT_ACCESS_TYPE_WRITE = 1
FAULT_ACCESS_TYPE_ATOMIC = 2
FAULT_TYPE_NOT_PRESENT = 0
FAULT_TYPE_WRITE_ACCESS = 1
FAULT_LEVEL_PTE = 0
XE_MAX_BINDS_PER_IOCTL = 512  # cap on one VM_BIND's array, like any buffer cap


# --- engines --------------------------------------------------------------------------
class EngineClass(enum.IntEnum):
    RENDER = 0
    COPY = 1
    VIDEO_DECODE = 2
    VIDEO_ENHANCE = 3
    COMPUTE = 4
    VM_BIND = 5


XE_HW_ENGINE_MAX_INSTANCE = 9

# --- drm_xe_sync ----------------------------------------------------------------------
DRM_XE_SYNC_TYPE_SYNCOBJ = 0x0
DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ = 0x1
DRM_XE_SYNC_TYPE_USER_FENCE = 0x2
DRM_XE_SYNC_FLAG_SIGNAL = 1 << 0
# drm.h: DRM syncobjs
DRM_SYNCOBJ_CREATE_SIGNALED = 1 << 0
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL = 1 << 0
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT = 1 << 1
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE = 1 << 2  # timeline waits only
DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE = 1 << 3
DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED = 1 << 0
DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE = 1 << 0
DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE = 1 << 1  # with IMPORT_SYNC_FILE: into `point`
DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE = 1 << 0
DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE = 1 << 1  # with EXPORT_SYNC_FILE: `point`'s fence
XE_MAX_SYNCS = 64


# --- DRM_IOCTL_XE_WAIT_USER_FENCE -----------------------------------------------------
class UfenceOp(enum.IntEnum):
    EQ = 0x0
    NEQ = 0x1
    GT = 0x2
    GTE = 0x3
    LT = 0x4
    LTE = 0x5


DRM_XE_UFENCE_WAIT_FLAG_ABSTIME = 1 << 0


# --- DRM_IOCTL_XE_DEVICE_QUERY --------------------------------------------------------
class Query(enum.IntEnum):
    ENGINES = 0
    MEM_REGIONS = 1
    CONFIG = 2
    GT_LIST = 3
    HWCONFIG = 4
    GT_TOPOLOGY = 5
    ENGINE_CYCLES = 6
    UC_FW_VERSION = 7
    OA_UNITS = 8
    PXP_STATUS = 9
    EU_STALL = 10
    MMIO_REGIONS = 0x20  # the "mmap-ing mmio regions" proposal: what may be exposed


# drm_xe_query_topology_mask.type
DRM_XE_TOPO_DSS_GEOMETRY = 1
DRM_XE_TOPO_DSS_COMPUTE = 2
DRM_XE_TOPO_L3_BANK = 3
DRM_XE_TOPO_EU_PER_DSS = 4
DRM_XE_TOPO_SIMD16_EU_PER_DSS = 5
# drm_xe_query_uc_fw_version.uc_type
XE_QUERY_UC_TYPE_GUC_SUBMISSION = 0
XE_QUERY_UC_TYPE_HUC = 1

# drm_xe_query_config.info[] indices
DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID = 0
DRM_XE_QUERY_CONFIG_FLAGS = 1
DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT = 2
DRM_XE_QUERY_CONFIG_VA_BITS = 3
DRM_XE_QUERY_CONFIG_MAX_EXEC_QUEUE_PRIORITY = 4
DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM = 1 << 0
# the EXEC_QUEUE_CREATE LOW_LATENCY_HINT flag is honoured: xe sets it on every device
DRM_XE_QUERY_CONFIG_FLAG_HAS_LOW_LATENCY = 1 << 1
DRM_XE_QUERY_CONFIG_NUM_PARAMS = DRM_XE_QUERY_CONFIG_MAX_EXEC_QUEUE_PRIORITY + 1

DRM_XE_QUERY_GT_TYPE_MAIN = 0
DRM_XE_QUERY_GT_TYPE_MEDIA = 1

# --- PRIME and dma-buf (drm.h, linux/dma-buf.h) -----------------------------------
DRM_CLOEXEC = 0o2000000  # O_CLOEXEC
DRM_RDWR = 0o2  # O_RDWR: the dma-buf may be mapped writable
DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 1 << 1
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE
DMA_BUF_SYNC_START = 0 << 2
DMA_BUF_SYNC_END = 1 << 2
DMA_BUF_SYNC_VALID_FLAGS_MASK = DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END
SEEK_SET = 0
SEEK_END = 2

# --- the IB-like aux driver's verbs (names and values from ibverbs) -------------------
IBV_ACCESS_LOCAL_WRITE = 1 << 0
IBV_ACCESS_REMOTE_WRITE = 1 << 1
IBV_ACCESS_REMOTE_READ = 1 << 2
IBV_ACCESS_FLAGS = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ
IBV_WR_RDMA_WRITE = 0
IBV_WR_RDMA_READ = 4
IBV_WC_SUCCESS = 0
IBV_WC_LOC_LEN_ERR = 1
IBV_WC_LOC_PROT_ERR = 4
IBV_WC_REM_ACCESS_ERR = 10
IBV_WC_RETRY_EXC_ERR = 12  # the peer QP is gone

# --- mmap(2) bits carried in the MMAP request ----------------------------------------
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02


# --- the command streamer (MI_* instructions as on Xe) -------------------------------
def mi_instr(opcode: int, flags: int = 0) -> int:
    """MI instructions: client 0 (bits 31:29), opcode in bits 28:23."""
    return (opcode << 23) | flags


MI_NOOP = mi_instr(0x00)
MI_BATCH_BUFFER_END = mi_instr(0x0A)
MI_MEM_FENCE = mi_instr(0x09)
MI_STORE_DATA_IMM = mi_instr(0x20)
MI_SDI_NUM_QW_BIT = 1 << 21  # data is qwords
MI_SDI_LEN_DW_MASK = 0x3FF  # dword length minus 2
MI_FLUSH_DW = mi_instr(0x26)
MI_FLUSH_DW_OP_STOREDW = 1 << 14  # post-sync write of the immediate
MI_COPY_MEM_MEM = mi_instr(0x2E, 3)  # copies one dword: dst, src
MI_ATOMIC = mi_instr(0x2F)
MI_ATOMIC_OP_SHIFT = 8
MI_ATOMIC_OP_MASK = 0xFF << MI_ATOMIC_OP_SHIFT
MI_ATOMIC_INC = 0x05 << MI_ATOMIC_OP_SHIFT
MI_ATOMIC_ADD = 0x07 << MI_ATOMIC_OP_SHIFT
MI_ATOMIC_INC8B = 0x25 << MI_ATOMIC_OP_SHIFT  # 64-bit increment
MI_ATOMIC_INLINE_DATA = 1 << 18
MI_ARB_CHECK = mi_instr(0x05)  # a preemption point: nothing to do here
MI_BATCH_BUFFER_START = mi_instr(0x31, 1)  # jump to a GPU address (3 dwords)
MI_BBS_PPGTT = 1 << 8  # in the VM (the only address space here)
MI_BBS_SECOND_LEVEL = 1 << 22  # a call: its MI_BATCH_BUFFER_END returns here
MI_COND_BATCH_BUFFER_END = mi_instr(0x36, 2)  # end unless a dword compares (4 dwords)
MI_DO_COMPARE = 1 << 21
MI_COND_MODE_SHIFT = 12  # MAD_*_IDD: 0 GT, 1 GTE, 2 LT, 3 LTE, 4 EQ, 5 NEQ: go on if true
MI_OPCODE_MASK = 0x3F << 23
MI_CLIENT_MASK = 0x7 << 29
# the blitter's MEM_COPY, as xe_migrate and IGT emit it: dw0, width - 1, height - 1, source
# pitch - 1, destination pitch - 1, source lo/hi, destination lo/hi, MOCS (10 dwords)
MEM_COPY = (2 << 29) | (0x5A << 22) | 8
MEM_COPY_DWORDS = 10
MEM_COPY_MATRIX = 1 << 17  # height + 1 rows of width + 1 units at their pitches; else one run
MEM_COPY_PAGE_MODE = 1 << 19  # width counts 256-byte pages; else bytes
MEM_COPY_PAGE = 256
MEM_COPY_FIELD = 1 << 18  # width, height and pitches are 18-bit fields (of the value - 1)
XE_MAX_BATCH_DWORDS = 1 << 20  # a batch longer than this is a runaway: the queue is banned
