"""Where xed departs from the kernel, said once (rendered into REFERENCE.md).

Each entry is (what, what xed does and why). An op's own departures are also in its
errors and in its handler's docstring; the ones here belong to no single op, or are
things xed cannot enforce at all because clients map the descriptors themselves: the
kernel decides a mapping's flags in its mmap handler, xed hands out a memfd and the
client calls mmap(2), mremap(2), mprotect(2) and madvise(2) on it as it likes. None of
them reaches memory the descriptor did not already reach.
"""

from __future__ import annotations

DEPARTURES: tuple[tuple[str, str], ...] = (
    (
        "Extension chains",
        "followed only where an op documents it (EXEC_QUEUE_CREATE's SET_PROPERTY links, "
        "read by the client library and sent as `chain`); elsewhere a non-zero "
        "`extensions` is `EINVAL` wherever the kernel would walk the chain. The priority "
        "and timeslice a queue is given are checked as xe checks them and change nothing: "
        "the emulated engines do not schedule by them.",
    ),
    (
        "Syncobjs",
        "binary and timeline ones, with every DRM syncobj ioctl. EVENTFD is the C "
        "library's: the daemon never writes to a client's eventfd (a full counter "
        "would block it), so the library registers the point on a channel of its own "
        "(SYNCOBJ_EVENTFD_REGISTER) and a thread of the program waits there "
        "(SYNCOBJ_EVENTFD_WAIT) and counts the eventfd itself: a connection per pending "
        "registration, where the kernel's costs a small allocation. As the kernel's, "
        "it ends uncounted when the syncobj is freed or the drm file closed, and takes "
        "no limits.fence_waits slot. A VM_BIND that waits on "
        "a fence not signalled yet is queued and the ioctl returns at once, as xe's, "
        "unless one of its syncs is a user fence: then it answers once the binds are "
        "made (the caller's thread waits), because a C program's user fence is the "
        "preload library's to write when the ioctl answers. A bind with nothing to "
        "wait for is made as its ioctl is answered. Binds of two queues wait for each "
        "other where they touch the same addresses, or a 2 MiB block of page tables "
        "nothing mapped before the first; xe orders them by the page-table pages they update.",
    ),
    (
        "Banned VMs",
        "xe bans a VM (`xe_vm_kill`) when its rebind worker fails, such as a preempt "
        "fence timing out behind a long-running job that does not yield. xed has no "
        "rebind worker, so no VM is ever banned, and the `ENOENT` (VM_BIND, VM_EXPORT, "
        "AUX_VM_IMPORT) and `ECANCELED` (EXEC) xe gives for one never come. A GPU fault "
        "or a GT reset ends the queue alone, in every mode, as in xe.",
    ),
    (
        "Page-fault mode",
        "a `FAULT_MODE` VM's binds need no room (its BOs are backed where there is "
        "some, and count there); its GPU faults are not replayed: one on an address no "
        "VMA maps ends the queue, as in LR mode. `PREFETCH` moves its BOs' charge to "
        "the region; userptr ranges it leaves as they are.",
    ),
    (
        "Parallel submission",
        "a parallel queue's lanes (width above 1, on the video classes, xe's multi-LRC "
        "ones) run one after the other, lane 0 first: the same stores as side by side, "
        "unless one lane's batch waits for another's (the command streamer has no "
        "semaphores). An EXEC with no batch (`num_batch_buffer` 0) on such a queue does "
        "not read the array `address` points at, which xe copies (and faults on) even "
        "then: the C library cannot know the queue's width there.",
    ),
    (
        "User addresses",
        "the daemon cannot see a client's address space: a user pointer is an address in "
        "the connection's fake-offset space (see [User addresses](#user-addresses)), and "
        "a user fence anywhere else is `EFAULT`. The C preload library keeps such a "
        "fence itself: a VM_BIND's is written when the daemon answers, and "
        "WAIT_USER_FENCE watches the word in the program (and asks the daemon, once "
        "its naps are long, whether the queue it names was reset).",
    ),
    (
        "`VM_DONTEXPAND`",
        "the kernel sets it on every mapping of the DRM file (BOs, MMIO regions, the "
        "barrier page), so `mremap()` cannot grow one. The client maps the memfd itself: "
        "growing a mapping with `mremap()` is not refused. It reaches no more than the "
        "descriptor did (the rest of the same BO; past the memfd's end, pages that raise "
        "SIGBUS).",
    ),
    (
        "`VM_MAYREAD` cleared (the barrier page)",
        "the kernel maps the barrier page write-only for good, so `mprotect(PROT_READ)` "
        "fails. Here `mprotect(PROT_READ)` of a barrier mapping is not refused; it reads "
        "`0xdeadbeef`, as the write-only mapping reads on x86 anyway.",
    ),
    (
        "`VM_DONTCOPY` outside the client library",
        "MMIO-region mappings are not inherited across `fork()` because the client library "
        "asks `MADV_DONTFORK`. A program that maps the descriptor itself, or undoes it with "
        "`MADV_DOFORK`, keeps the mapping in its child (the kernel's `VM_DONTCOPY` on a "
        "`VM_IO` mapping cannot be cleared). The child reaches only what its parent did.",
    ),
    (
        "The info block after `XE_MMIO_REGION_CLOSE`",
        "a closed doorbell region is revoked: its memfd is cut to nothing and every mapping "
        "of it raises SIGBUS, as the final version of the proposal zaps them. The "
        "read-only info block is one memfd shared by every file and cannot be cut for one: "
        "mappings of a closed info region keep reading it (nothing in it is anyone's data, "
        "and nothing can write it).",
    ),
    (
        "A doorbell mapping left when its connection closes",
        "the kernel's mapping holds the DRM file, so the doorbell goes on working after "
        "`close()`. Here the connection is the file: when it closes, its doorbell page is "
        "let go, and a mapping left behind is plain memory that rings nothing (not "
        "revoked: the kernel would not fault it).",
    ),
    (
        "Writes after an unplug, through a mapping made by hand",
        "the kernel zaps every mapping of an unplugged device and later accesses fault in a "
        "private zeroed page. The daemon empties the memory (every mapping reads zeros) and "
        "turns the device's `UNPLUG_NOTICE` page; the Python library and the C preload "
        "library then put private zero pages under the mappings they made, a few "
        "milliseconds later (until then a write still lands in the emptied memory). A "
        "mapping made some other way (a descriptor the daemon sent mapped by hand, or with "
        "a raw `mmap` syscall past the preload library) keeps the emptied memfd: what is "
        "written to it afterwards is seen by other such mappings of the same memory, never "
        "by the device. The C library's barrier page keeps reading `0xdeadbeef` and "
        "swallowing stores (counted nowhere) where the kernel's dummy page would read zeros "
        "and keep them.",
    ),
    (
        "Objects of an unplugged device",
        "a dma-buf or exported VM of a device since unplugged is `ENODEV` wherever it is "
        "presented (mmap and lseek of such a dma-buf included, where the kernel would map "
        "its dummy pages). Another daemon that imported one of its dma-bufs reads zeros "
        "after the unplug (the kernel's importing device would keep the pages).",
    ),
)
