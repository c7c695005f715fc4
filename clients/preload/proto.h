/*
 * proto.h - the few constants of xed's own wire protocol the C side needs.
 *
 * The protocol's source of truth is the Python package `protocols` (ops.py, codec.py,
 * version.py, constants.py). These are copies by hand, so tests/test_preload.py
 * compiles a program that prints every one of them and checks it against `protocols`:
 * the two cannot drift apart unnoticed.
 */
#ifndef XED_PROTO_H
#define XED_PROTO_H

#define XED_PROTOCOL_MAJOR 1
#define XED_PROTOCOL_MINOR 7
#define XED_MAX_DATAGRAM (64 * 1024)
#define XED_MAX_FDS 8

/* op numbers (protocols/ops.py Op): DRM core and xe ops keep their ioctl numbers */
#define XED_OP_VERSION 0x00
#define XED_OP_GEM_CLOSE 0x09
#define XED_OP_GEM_FLINK 0x0a
#define XED_OP_GEM_OPEN 0x0b
#define XED_OP_PRIME_HANDLE_TO_FD 0x2d
#define XED_OP_PRIME_FD_TO_HANDLE 0x2e
#define XED_OP_SYNCOBJ_CREATE 0xbf
#define XED_OP_SYNCOBJ_DESTROY 0xc0
#define XED_OP_SYNCOBJ_HANDLE_TO_FD 0xc1
#define XED_OP_SYNCOBJ_FD_TO_HANDLE 0xc2
#define XED_OP_SYNCOBJ_WAIT 0xc3
#define XED_OP_SYNCOBJ_RESET 0xc4
#define XED_OP_SYNCOBJ_SIGNAL 0xc5
#define XED_OP_SYNCOBJ_TIMELINE_WAIT 0xca
#define XED_OP_SYNCOBJ_QUERY 0xcb
#define XED_OP_SYNCOBJ_TRANSFER 0xcc
#define XED_OP_SYNCOBJ_TIMELINE_SIGNAL 0xcd
#define XED_OP_XE_DEVICE_QUERY 0x40
#define XED_OP_XE_GEM_CREATE 0x41
#define XED_OP_XE_GEM_MMAP_OFFSET 0x42
#define XED_OP_XE_VM_CREATE 0x43
#define XED_OP_XE_VM_DESTROY 0x44
#define XED_OP_XE_VM_BIND 0x45
#define XED_OP_XE_EXEC_QUEUE_CREATE 0x46
#define XED_OP_XE_EXEC_QUEUE_DESTROY 0x47
#define XED_OP_XE_EXEC_QUEUE_GET_PROPERTY 0x48
#define XED_OP_XE_EXEC 0x49
#define XED_OP_XE_WAIT_USER_FENCE 0x4a
#define XED_OP_XE_VM_GET_PROPERTY 0x4f
#define XED_OP_XE_MMIO_REGION_OPEN 0x60
#define XED_OP_XE_MMIO_REGION_CLOSE 0x61
#define XED_OP_XE_VM_EXPORT 0x62
#define XED_OP_HELLO 0x100
#define XED_OP_MMAP 0x101
#define XED_OP_DMA_BUF_MMAP 0x102
#define XED_OP_DMA_BUF_IOCTL_SYNC 0x103
#define XED_OP_DMA_BUF_LLSEEK 0x104
#define XED_OP_UNPLUG_NOTICE 0x105
#define XED_OP_DMA_BUF_EXPORT_SYNC_FILE 0x106
#define XED_OP_DMA_BUF_IMPORT_SYNC_FILE 0x107
#define XED_OP_SYNC_FILE_MERGE 0x108
#define XED_OP_SYNC_FILE_INFO 0x109
#define XED_OP_SW_SYNC_TIMELINE_CREATE 0x10a
#define XED_OP_SW_SYNC_CREATE_FENCE 0x10b
#define XED_OP_SW_SYNC_INC 0x10c
#define XED_OP_SW_SYNC_CLOSED 0x10d
#define XED_OP_SYNCOBJ_EVENTFD_REGISTER 0x10e
#define XED_OP_SYNCOBJ_EVENTFD_WAIT 0x10f
#define XED_OP_HOST_MEMORY_REGISTER 0x130
#define XED_OP_HOST_MEMORY_INVALIDATE 0x131

/* event numbers (protocols/ops.py Event): an event is a frame with request id 0 */
#define XED_EVENT_PROTOCOL_ERROR 2

/* protocols/constants.py */
#define XED_PCI_BARRIER_MMAP_OFFSET (0x50ull << 12)
#define XED_PCI_BARRIER_IDLE 0xdeadbeefu
#define XED_PCI_BARRIER_SEQ_TAG 0x5e000000u
#define XED_PCI_BARRIER_SEQ_MASK 0x00ffffffu
#define XED_NOTICE_WATCHER_ASLEEP 64 /* byte offset of a u32 in the notice page */
#define XED_NOTICE_UNPLUGGED 1 /* the notice page's word 0 once its device is unplugged */
#define XED_HOST_INVALIDATE_START 1 /* HOST_MEMORY_INVALIDATE's events */
#define XED_HOST_INVALIDATE_END_REPLACED 2
#define XED_HOST_INVALIDATE_END_FREED 3
#define XED_CHAIN_LINK_FAULT 1 /* EXEC_QUEUE_CREATE's chain_end: how the walk ended */
#define XED_CHAIN_BODY_FAULT 2
#define XED_CHAIN_TOO_LONG 3

#endif /* XED_PROTO_H */
