"""The registration behind SYNCOBJ_EVENTFD (drm_syncobj_eventfd_ioctl), which the C
library answers itself: the daemon never writes to a program's eventfd (a full counter
would block it). Within the ioctl the library registers the point on a channel of the
file's own (SYNCOBJ_EVENTFD_REGISTER, answered at once, so a DESTROY the program makes
next comes after it); a thread of the program then waits on that channel
(SYNCOBJ_EVENTFD_WAIT) and counts the eventfd when it is answered.

The kernel keeps a registration on its syncobj without a reference, and frees it with
the syncobj: once the last handle is destroyed and no descriptor is left, it ends
uncounted. So a registration holds the syncobj weakly, and its wait answers ENOENT when
the syncobj is freed. It counts against no limits.fence_waits: the kernel's take no
such slot, and each is a connection of its own, which the uid's connection limit bounds.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Awaitable, Callable
from errno import EBUSY, EINVAL, ENOENT
from typing import TYPE_CHECKING

import attrs
import trio

from protocols import messages as m
from protocols.constants import DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE

from .errors import IoctlError, refuse_if
from .syncobj import lookup

if TYPE_CHECKING:
    from .file import XeFile
    from .syncobj import DrmSyncobj


@attrs.frozen
class Registration:
    syncobj: weakref.ref[DrmSyncobj]
    handle: int
    point: int
    available: bool


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
    slot.registration = Registration(weakref.ref(syncobj), args.handle, args.point, available)
    return m.Empty()


async def syncobj_eventfd_wait_ioctl(xef: XeFile, args: m.Empty) -> m.Empty:
    """SYNCOBJ_EVENTFD_WAIT: until the registered point is signalled (WAIT_AVAILABLE:
    submitted).

    Checks, in order:
    - no registration on this connection, or its WAIT is under way: EINVAL
    - the syncobj freed (before or while waiting): ENOENT
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
    syncobj = registration.syncobj()
    if syncobj is None:
        raise IoctlError(ENOENT, f"syncobj {registration.handle} was freed")
    freed = trio.Event()
    watch = weakref.finalize(syncobj, freed.set)
    del syncobj  # from here on only the weak reference: the registration keeps nothing
    try:
        while True:
            current = registration.syncobj()
            if current is None:
                raise IoctlError(ENOENT, f"syncobj {registration.handle} was freed")
            fence = current.find_fence(registration.point)
            if fence is not None and (registration.available or fence.signalled):
                return
            wait = current.changed().wait if fence is None else fence.wait
            del current
            async with trio.open_nursery() as nursery:  # whichever comes first

                async def until(event: Callable[[], Awaitable[None]]) -> None:
                    await event()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until, freed.wait)
                nursery.start_soon(until, wait)
    finally:
        watch.detach()  # a syncobj that outlives its registrations keeps none of them
