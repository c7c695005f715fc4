/*
 * constants.c - prints every constant proto.h defines, one "NAME VALUE" a line, for
 * tests/test_preload.py to hold against the Python protocol. Not run under the library.
 * barrier.h repeats the barrier constants: included beside proto.h, any difference
 * between the two is a redefinition, which fails this program's compilation.
 */
#include <stdio.h>

#include "barrier.h"
#include "proto.h"

#define SHOW(name) printf("%s %#llx\n", #name, (unsigned long long)(name))

int main(void)
{
	SHOW(XED_PROTOCOL_MAJOR);
	SHOW(XED_PROTOCOL_MINOR);
	SHOW(XED_MAX_DATAGRAM);
	SHOW(XED_MAX_FDS);
	SHOW(XED_OP_VERSION);
	SHOW(XED_OP_GEM_CLOSE);
	SHOW(XED_OP_GEM_FLINK);
	SHOW(XED_OP_GEM_OPEN);
	SHOW(XED_OP_PRIME_HANDLE_TO_FD);
	SHOW(XED_OP_PRIME_FD_TO_HANDLE);
	SHOW(XED_OP_XE_DEVICE_QUERY);
	SHOW(XED_OP_XE_GEM_CREATE);
	SHOW(XED_OP_XE_GEM_MMAP_OFFSET);
	SHOW(XED_OP_XE_VM_CREATE);
	SHOW(XED_OP_XE_VM_DESTROY);
	SHOW(XED_OP_XE_VM_BIND);
	SHOW(XED_OP_XE_EXEC_QUEUE_CREATE);
	SHOW(XED_OP_XE_EXEC_QUEUE_DESTROY);
	SHOW(XED_OP_XE_EXEC);
	SHOW(XED_OP_XE_WAIT_USER_FENCE);
	SHOW(XED_OP_XE_MMIO_REGION_OPEN);
	SHOW(XED_OP_XE_MMIO_REGION_CLOSE);
	SHOW(XED_OP_XE_VM_EXPORT);
	SHOW(XED_OP_HELLO);
	SHOW(XED_OP_MMAP);
	SHOW(XED_OP_DMA_BUF_MMAP);
	SHOW(XED_OP_DMA_BUF_IOCTL_SYNC);
	SHOW(XED_OP_DMA_BUF_LLSEEK);
	SHOW(XED_OP_UNPLUG_NOTICE);
	SHOW(XED_EVENT_PROTOCOL_ERROR);
	SHOW(XED_PCI_BARRIER_MMAP_OFFSET);
	SHOW(XED_PCI_BARRIER_IDLE);
	SHOW(XED_PCI_BARRIER_SEQ_TAG);
	SHOW(XED_PCI_BARRIER_SEQ_MASK);
	SHOW(XED_NOTICE_WATCHER_ASLEEP);
	SHOW(XED_NOTICE_UNPLUGGED);
	return 0;
}
