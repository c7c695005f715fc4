"""mmap(2) of the DRM file, and user addresses as the daemon can reach them.

The kernel's mmap handler looks the fake offset up, checks the file may map it, checks
the length and refuses copy-on-write mappings. Here the client asks with MMAP and the
daemon answers with a descriptor of the object for the client to map itself.

A "user address" (WAIT_USER_FENCE.addr, a VM_BIND user fence) names memory in the
client's address space; the only user memory the daemon can reach is what the client
mapped from it, so user addresses are expressed in the file's fake-offset space: the
fake offset of a mapping plus the offset inside it. The client library translates.
"""

from __future__ import annotations

from errno import EACCES, EFAULT, EINVAL, ENOMEM
from typing import TYPE_CHECKING, Any

from protocols import messages as m
from protocols.constants import (
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    SZ_4K,
    XE_PCI_BARRIER_MMAP_OFFSET,
)
from protocols.words import Words

from .errors import IoctlError, refuse_if
from .pages import BarrierPage
from .views import SHORT_OF

if TYPE_CHECKING:
    from .file import XeFile

_PROT_ALL = PROT_READ | PROT_WRITE | PROT_EXEC


def xed_mmap_ioctl(xef: XeFile, args: m.XedMmap) -> tuple[m.XedMmapReply, list[int]]:
    """MMAP: map `length` bytes of the DRM file at fake `offset`.

    Checks, in order (mmap(2), drm_gem_mmap, ttm_bo_mmap_obj), in pages of the host
    page size the device follows ([device] page_size: mmap(2) maps whole pages, so the
    length is rounded up to one before it is compared):
    - the daemon is down to its descriptor reserve (limits.descriptor_reserve): EMFILE
    - length zero or offset not page aligned: EINVAL
    - flags not exactly one of MAP_SHARED / MAP_PRIVATE: EINVAL
    - prot bits outside READ | WRITE | EXEC: EINVAL
    - no object starts at offset, or length runs past its end: EINVAL
    - the offset is this file's host memory (the client maps its own memfd): EINVAL
    - the object is not mapped-allowed for this file: EACCES
    - a private (copy-on-write) mapping: EINVAL
    - an MMIO region: length other than the region's size: EINVAL
    - a BO made with DEFER_BACKING is backed now, as GEM_CREATE places one (evicted to
      system memory if VRAM has no room); larger than its placement, or with system
      memory full too: ENOMEM (xe's CPU fault would find no room: VM_FAULT_OOM; here
      the mapping is refused instead, as the pages are handed out now)

    The PCI barrier offset (on a discrete device) goes to xe_pci_barrier_mmap()
    instead: length zero or more than 4096 bytes, a private mapping, or PROT_READ /
    PROT_EXEC asked for: EINVAL. (On x86 a write-only mapping still reads, which is how
    its 0xdeadbeef is seen.) With pages over 4 KiB no mapping of it is 4 KiB and xe's
    offset test does not match: EINVAL (drm_gem_mmap finds no object there).

    Answers with a fresh descriptor of the object's memory to map at reply.offset (the
    length asked for: the real host's pages are 4 KiB whatever the device follows). For
    VRAM the CPU cannot reach (outside a small BAR, XeBo.cpu_visible) that is an empty
    memfd: the mapping is made, and every access faults SIGBUS, as xe's fault handler
    answers.
    """
    page = xef.device.page_size
    if args.offset == XE_PCI_BARRIER_MMAP_OFFSET and xef.device.config.vram_size:
        refuse_if(page > SZ_4K, EINVAL, "no PCI barrier page with pages over 4 KiB")
        return _pci_barrier_mmap(xef, args)
    refuse_if(not args.length or args.offset % page, EINVAL, "bad length or offset")
    length = -(-args.length // page) * page  # the vma's length
    refuse_if(args.flags not in (MAP_SHARED, MAP_PRIVATE), EINVAL, "need MAP_SHARED or MAP_PRIVATE")
    refuse_if(args.prot & ~_PROT_ALL, EINVAL, f"unknown prot bits {args.prot:#x}")
    node = xef.device.vma.exact(args.offset)
    refuse_if(node is None or length > node.size, EINVAL, f"nothing maps at {args.offset:#x}")
    assert node is not None
    refuse_if(not node.is_allowed(xef), EACCES, "offset belongs to another file")
    refuse_if(not getattr(node.obj, "mappable", True), EINVAL, "host memory is the client's own")
    refuse_if(length > node.obj.size, EINVAL, "length larger than the object")
    refuse_if(args.flags == MAP_PRIVATE, EINVAL, "copy-on-write mappings are refused")
    refuse_if(
        node.obj.exact_length and length != node.obj.size,
        EINVAL,
        f"an MMIO region maps whole: {node.obj.size} bytes",
    )
    return m.XedMmapReply(offset=0, length=args.length), [node.obj.mmap_fd()]


def _pci_barrier_mmap(xef: XeFile, args: m.XedMmap) -> tuple[m.XedMmapReply, list[int]]:
    refuse_if(not args.length, EINVAL, "length zero")
    refuse_if(args.length > SZ_4K, EINVAL, "the barrier page is 4096 bytes")
    refuse_if(args.flags != MAP_SHARED, EINVAL, "the barrier page maps shared only")
    refuse_if(args.prot & (PROT_READ | PROT_EXEC), EINVAL, "the barrier page is write-only")
    if xef.barrier_page is None:
        xef.barrier_page = BarrierPage(xef)
        xef.device.watcher.add(xef.barrier_page)
    return m.XedMmapReply(offset=0, length=args.length), [xef.barrier_page.mmap_fd()]


def user_memory(xef: XeFile, addr: int, length: int) -> tuple[Any, int]:
    """The object (BO or host memory) and offset behind user address [addr,
    addr+length): or EFAULT (also inside a GEM mapping of a foreign import while
    dma_buf.imported_mmap = "xe": the CPU faults there, so copy_from_user would). The
    pair names the memory word whatever address reaches it."""
    node = xef.device.vma.containing(addr)
    if node is None or not node.is_allowed(xef) or not hasattr(node.obj, "words"):
        raise IoctlError(EFAULT, f"user address {addr:#x} is not a BO mapped by this file")
    refuse_if(
        getattr(node.obj, "imported", False) and xef.device.dma_buf_config.imported_mmap == "xe",
        EFAULT,
        f"user address {addr:#x} is in a GEM mapping of a foreign import: no pages (SIGBUS)",
    )
    offset = addr - node.start
    refuse_if(offset + length > node.obj.size, EFAULT, f"user address {addr:#x} overruns")
    return node.obj, offset


def words_of(memory: Any, addr: int, write: bool = True) -> Words:
    """The words of a BO or host memory, mapped by the daemon to reach them (views.py),
    to write them or only read them. A map the kernel refuses is ENOMEM when the daemon
    is short of descriptors or memory, else EFAULT (pages it cannot map as it must, as
    copy_to_user would fault: a write to a read-only import or to a buffer sealed
    against writes; reading those works, as copy_from_user would).
    Use the words at once: the next mapping may unmap them."""
    try:
        words: Words = memory.words(write)
    except OSError as exc:
        err = ENOMEM if exc.errno in SHORT_OF else EFAULT
        raise IoctlError(err, f"the daemon cannot map {addr:#x}: {exc.strerror}") from exc
    return words


def user_words(xef: XeFile, addr: int, length: int, write: bool = True) -> tuple[Words, int]:
    """The words and offset behind user address [addr, addr+length) of a BO: or EFAULT
    (or ENOMEM, see words_of)."""
    memory, offset = user_memory(xef, addr, length)
    return words_of(memory, addr, write), offset


def user_read_u64(xef: XeFile, addr: int) -> int:
    words, offset = user_words(xef, addr, 8, write=False)
    return words.load_u64(offset)
