"""GEM_FLINK and GEM_OPEN: global names for GEM objects (drm_gem.c), on a primary node.

A name is global to the device and belongs to the object: flinking the object again,
from any file, gives the same name, and the name goes when the object's last handle
goes (drm_gem_object_handle_free), even while dma-bufs or mappings keep its memory.
GEM_OPEN makes a new handle each time; it does not register the handle for the
object's dma-buf (drm_gem_handle_create_tail does not), so PRIME_FD_TO_HANDLE of that
dma-buf in the file answers what drm_prime registered there, or a new handle.

Who may open a name: the kernel lets any authenticated client of the primary node open
any name (the flink hole that render nodes closed), authentication being the DRM
master's to give. xed has no master; it lets a file open the names that a file of its
own uid flinked (or any name, as root), and to every other uid the name does not exist.
"""

from __future__ import annotations

from errno import ENOENT
from typing import TYPE_CHECKING

from protocols import messages as m

from .errors import IoctlError, refuse_if
from .limits import refuse_over

if TYPE_CHECKING:
    from .bo import XeBo
    from .file import XeFile


def drop_name(bo: XeBo) -> None:
    """The object's last handle is gone: so is its name (drm_gem_object_handle_free)."""
    if bo.name:
        del bo.device.names[bo.name]
        bo.device.name_ids.release(bo.name)
        bo.name = 0
        bo.name_uids.clear()


def drm_gem_flink_ioctl(xef: XeFile, args: m.DrmGemFlink) -> m.DrmGemFlinkReply:
    """DRM_IOCTL_GEM_FLINK (DRM_AUTH, not DRM_RENDER_ALLOW: a render node refuses it
    before this handler runs, protocols/connection.py).

    Checks: no such handle: ENOENT. The object's name, made on its first FLINK.
    """
    bo = xef.handles.get(args.handle)
    if bo is None:
        raise IoctlError(ENOENT, f"no handle {args.handle}")
    device = xef.device
    if not bo.name:
        bo.name = device.name_ids.alloc()
        device.names[bo.name] = bo
    bo.name_uids.add(xef.uid)
    xef.log.debug("gem_flink", handle=args.handle, name=bo.name)
    return m.DrmGemFlinkReply(name=bo.name)


def drm_gem_open_ioctl(xef: XeFile, args: m.DrmGemOpen) -> m.DrmGemOpenReply:
    """DRM_IOCTL_GEM_OPEN (DRM_AUTH, not DRM_RENDER_ALLOW: a render node refuses it
    before this handler runs, protocols/connection.py).

    Checks, in order:
    - no object has that name (never given, or its last handle closed): ENOENT
    - only files of other uids flinked it, and we are not root: ENOENT (xed)
    - the file holds limits.bos GEM handles already: ENOMEM
    A new handle every time, even where the file has one for the object already.
    """
    bo = xef.device.names.get(args.name)
    refuse_if(
        bo is None or (xef.uid != 0 and xef.uid not in bo.name_uids),
        ENOENT,
        f"no object named {args.name}",
    )
    assert bo is not None
    refuse_over(xef, "bos", len(xef.handles))
    handle = xef.handle_create(bo)
    xef.log.debug("gem_open", name=args.name, handle=handle)
    return m.DrmGemOpenReply(handle=handle, size=bo.size)
