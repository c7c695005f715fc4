"""The registration behind SYNCOBJ_EVENTFD (drm_syncobj_eventfd_ioctl), which the C
library answers itself: the daemon never writes to a program's eventfd (a full counter
would block it). Within the ioctl the library registers the point on a channel of the
file's own (SYNCOBJ_EVENTFD_REGISTER, answered at once, so a DESTROY the program makes
next comes after it); a thread of the program then waits on that channel
(SYNCOBJ_EVENTFD_WAIT) and counts the eventfd when it is answered.

As the kernel's (syncobj_eventfd_entry_func), a registration whose point is submitted
when it is made, or once it is, holds that fence and counts when it signals (with
WAIT_AVAILABLE, at once), whatever then becomes of the syncobj: destroyed, reset, given
another fence. Until then it waits on the syncobj without a reference, and ends
uncounted (ENOENT) if the syncobj is freed first: the kernel frees the registrations
still on its list with it. It counts against no limits.fence_waits: the kernel's take
no such slot, and each is a connection of its own, which the uid's connections bound.
"""

from __future__ import annotations

import contextvars
import weakref
from errno import EBUSY, EINVAL, ENOENT
from typing import TYPE_CHECKING

import attrs

from protocols import messages as m
from protocols.constants import DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE

from .errors import IoctlError, refuse_if
from .syncobj import lookup

if TYPE_CHECKING:
    from .fence import Fence
    from .file import XeFile
    from .syncobj import DrmSyncobj


@attrs.frozen
class Registration:
    syncobj: weakref.ref[DrmSyncobj]
    handle: int
    point: int
    available: bool
    fence: Fence | None  # the point's, if it was submitted when registered


@attrs.define
class _Slot:
    """A connection's one registration, from REGISTER until its WAIT is answered: one
    at a time, so the waits a client can leave pending are bounded by its connections
    (they take no fence_waits slot)."""

    registration: Registration | None = None
    waiting: bool = False


# REGISTER runs in the connection's own task and puts its slot in that task's context;
# WAIT, in a task the connection starts, sees the same slot (a copy of a context shares
# its values), as process.caller_pid is seen.
_slot: contextvars.ContextVar[_Slot] = contextvars.ContextVar("eventfd_registration")


def syncobj_eventfd_register_ioctl(xef: XeFile, args: m.SyncobjEventfdRegister) -> m.Empty:
    """SYNCOBJ_EVENTFD_REGISTER: the point this connection's WAIT waits for.

    Checks, in order:
    - flags other than WAIT_AVAILABLE, or pad not zero: EINVAL
    - no syncobj of that handle: ENOENT
    - this connection has a registration not answered yet (waited on or not): EBUSY
    """
    refuse_if(args.flags & ~DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE, EINVAL, "bad flags")
    refuse_if(args.pad, EINVAL, "pad must be zero")
    syncobj = lookup(xef, args.handle)
    slot = _slot.get(None)
    if slot is None:
        slot = _Slot()
        _slot.set(slot)
    refuse_if(slot.registration is not None, EBUSY, "this connection's registration is pending")
    available = bool(args.flags & DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE)
    fence = syncobj.find_fence(args.point)
    slot.registration = Registration(
        weakref.ref(syncobj), args.handle, args.point, available, fence
    )
    return m.Empty()


async def syncobj_eventfd_wait_ioctl(xef: XeFile, args: m.Empty) -> m.Empty:
    """SYNCOBJ_EVENTFD_WAIT: until the registered point is signalled (WAIT_AVAILABLE:
    submitted).

    Checks, in order:
    - no registration on this connection, or its WAIT is under way: EINVAL
    - the syncobj freed before the point was submitted: ENOENT
    The registration is over once the WAIT is answered, whatever the answer.
    """
    slot = _slot.get(None)
    registration = None if slot is None or slot.waiting else slot.registration
    if registration is None:
        raise IoctlError(EINVAL, "nothing registered on this connection, or waited on")
    assert slot is not None
    slot.waiting = True
    try:
        await _wait(registration)
    finally:
        slot.registration, slot.waiting = None, False
    return m.Empty()


async def _wait(registration: Registration) -> None:
    fence = registration.fence or await _submitted(registration)
    if not registration.available:
        await fence.wait()


async def _submitted(registration: Registration) -> Fence:
    """The point's fence once it is submitted; ENOENT if the syncobj is freed first.
    Only a weak reference to the syncobj is held meanwhile: its freeing sets the event
    a submission would, and the look that follows finds it gone."""
    while True:
        syncobj = registration.syncobj()
        if syncobj is None:
            raise IoctlError(ENOENT, f"syncobj {registration.handle} was freed")
        fence = syncobj.find_fence(registration.point)
        if fence is not None:
            return fence
        changed = syncobj.changed()
        watch = weakref.finalize(syncobj, changed.set)
        del syncobj  # from here on only the weak reference: the registration keeps nothing
        try:
            await changed.wait()
        finally:
            watch.detach()  # a syncobj that outlives its registrations keeps none of them
