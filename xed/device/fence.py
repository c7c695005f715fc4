"""Fences (dma-fence.c, dma-fence-array.c, dma-fence-chain.c): what a job, a bind, a
sw_sync point or SYNCOBJ_SIGNAL signals once, and what syncobjs, sync files and a
dma-buf's reservation hold.

A Fence is signalled once, with an error or none; callbacks run when it is, in the
signalling task. A FenceArray is several as one (a merged sync file's); a FenceChain
is a timeline syncobj's point: its own fence and the point before it.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator

import trio

_pending: collections.deque[Callable[[], None]] = collections.deque()
_running = False


def _run_callbacks(callbacks: list[Callable[[], None]]) -> None:
    """Run a signalled fence's callbacks, and those of the fences they signal in turn,
    one after the other rather than nested: a timeline of thousands of points waiting
    on one fence signals them all without a call per point on the stack."""
    global _running
    _pending.extend(callbacks)
    if _running:
        return  # the outer call runs them, once the callback that signalled returns
    _running = True
    try:
        while _pending:
            _pending.popleft()()
    finally:
        _running = False


new_context = itertools.count(1).__next__  # dma_fence_context_alloc: never reused


class Fence:
    """A dma_fence: signalled once, with an error or none (dma_fence_set_error before
    the signal: a fence signalled by a timeline's release, say). Callbacks
    (dma_fence_add_callback) run when it is, in the signalling task, and may be removed
    before: what a sync file watches with, rather than a task of its own that would
    outlive its descriptor. It records when it was signalled (dma_fence_timestamp:
    CLOCK_MONOTONIC, what SYNC_IOC_FILE_INFO reports; a fence made signalled, when
    made)."""

    __slots__ = ("signalled", "error", "timestamp", "_event", "_callbacks", "__weakref__")
    # what SYNC_IOC_FILE_INFO names it by (dma_fence_ops): the device's own fences
    driver_name = "xe"
    timeline_name = "xed"
    context: int | None = None  # a timeline's: a merge keeps its latest point only
    seqno = 0

    def __init__(self, signalled: bool = False) -> None:
        self.signalled = signalled
        self.error = 0  # an errno, once signalled with one
        self.timestamp = time.monotonic_ns() if signalled else 0  # ns, once signalled
        self._event: trio.Event | None = None
        self._callbacks: list[Callable[[], None]] | None = None

    def signal(self, error: int = 0) -> None:
        if self.signalled:
            return
        self.error = error
        self.signalled = True
        self.timestamp = time.monotonic_ns()
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            _run_callbacks(callbacks)

    def status(self) -> int:
        """dma_fence_get_status: 0 while unsignalled, 1 once signalled, -errno if
        signalled with an error."""
        if not self.signalled:
            return 0
        return -self.error if self.error else 1

    async def wait(self) -> None:
        if not self.signalled:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` once this fence is signalled (it must not be yet)."""
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        if self._callbacks and callback in self._callbacks:
            self._callbacks.remove(callback)


class FenceArray(Fence):
    """Several fences as one (dma_fence_array, what sync_file_merge makes): signalled
    once all its parts are, with the first error among them. It keeps no state of its
    own, so nothing needs to watch the parts for it: whoever holds it asks them."""

    __slots__ = ("parts", "_watches", "_done")

    def __init__(self, parts: list[Fence]) -> None:  # not Fence's: its state is derived
        self._event = None
        self._callbacks = None
        self.parts = parts
        self._watches: dict[Callable[[], None], tuple[Callable[[], None], list[Fence]]] = {}
        self._done = 0  # parts[:_done] are signalled: a part never goes back

    @property
    def signalled(self) -> bool:  # type: ignore[override]
        parts, done = self.parts, self._done
        while done < len(parts) and parts[done].signalled:
            done += 1
        self._done = done
        return done == len(parts)

    @property
    def error(self) -> int:  # type: ignore[override]
        return next((part.error for part in self.parts if part.error), 0)

    @property
    def timestamp(self) -> int:  # type: ignore[override]
        """When its last part was signalled (0 until all are)."""
        return max(part.timestamp for part in self.parts) if self.signalled else 0

    def signal(self, error: int = 0) -> None:
        raise AssertionError("a fence array is signalled by its parts")

    async def wait(self) -> None:
        for part in self.parts:
            await part.wait()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every part is signalled (one is not yet): through the
        parts' own callbacks, removed with it."""
        waiting = [part for part in self.parts if not part.signalled]

        def part_signalled() -> None:
            if all(part.signalled for part in waiting):
                self._watches.pop(callback, None)
                callback()

        self._watches[callback] = (part_signalled, waiting)
        for part in waiting:
            part.add_callback(part_signalled)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        part_signalled, waiting = self._watches.pop(callback, (None, []))
        for part in waiting:
            part.remove_callback(part_signalled)  # type: ignore[arg-type]


def is_later(a: int, b: int) -> bool:
    """__dma_fence_is_later for 32-bit points: `a` comes after `b`, across the wrap."""
    return 0 < (a - b) & 0xFFFF_FFFF < 0x8000_0000


class FenceChain(Fence):
    """A point of a timeline syncobj (dma_fence_chain): `fence`, and `prev`, the point
    the syncobj held before (None once nothing before it matters). Signalled once its
    fence and every point before it are. A point later than `prev`'s continues its
    context; one that is not starts a context of its own, numbered as the later of the
    two (dma_fence_chain_init), and a walk stops there.

    Its state is asked, as dma_fence_chain_signaled asks it: a point nobody waits for
    watches nothing, so a chain let go of (a RESET, its syncobj destroyed) is freed at
    once whatever its fences do. A callback arms it: it then watches one pending fence
    of the chain at a time (dma_fence_chain_enable_signaling)."""

    __slots__ = ("prev", "fence", "seqno", "context", "prev_seqno", "_done", "_armed")
    driver_name = "dma_fence_chain"
    timeline_name = "unbound"

    def __init__(self, prev: Fence | None, fence: Fence, seqno: int) -> None:
        self._event = None
        self._callbacks = None
        self.error = 0
        self._done = False
        self._armed: Fence | None = None  # the pending fence a callback waits on
        self.prev = prev
        self.fence = fence
        self.prev_seqno = 0
        if isinstance(prev, FenceChain) and seqno > prev.seqno:
            self.context = prev.context
            self.prev_seqno = prev.seqno
        else:
            self.context = new_context()
            if isinstance(prev, FenceChain):
                seqno = max(prev.seqno, seqno)
        self.seqno = seqno

    @property
    def signalled(self) -> bool:  # type: ignore[override]
        return self._pending() is None

    @property
    def timestamp(self) -> int:  # type: ignore[override]
        """When its own fence was signalled, once the chain is (the points before it
        are let go when signalled, so their times are not kept)."""
        return _contained(self).timestamp if self.signalled else 0

    def _pending(self) -> Fence | None:
        """The first fence of the chain, from this point back, not signalled yet (None
        once all are: then what came before is let go)."""
        if self._done:
            return None
        for node in self.walk():
            part = _contained(node)
            if not part.signalled:
                return part
        self._done = True
        self.prev = None
        return None

    def signal(self, error: int = 0) -> None:
        raise AssertionError("a timeline point is signalled by its fences")

    async def wait(self) -> None:
        while (part := self._pending()) is not None:
            await part.wait()

    def add_callback(self, callback: Callable[[], None]) -> None:
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)
        if self._armed is None:
            self._part_signalled()

    def remove_callback(self, callback: Callable[[], None]) -> None:
        super().remove_callback(callback)
        if not self._callbacks and self._armed is not None:
            self._armed.remove_callback(self._part_signalled)
            self._armed = None

    def _part_signalled(self) -> None:
        """The fence watched is signalled: watch the next, or tell the callbacks."""
        self._armed = None
        if not self._callbacks:
            return
        part = self._pending()
        if part is not None:
            self._armed = part
            part.add_callback(self._part_signalled)
            return
        callbacks, self._callbacks = self._callbacks, None
        _run_callbacks(callbacks)

    def collapse(self) -> None:
        """dma_fence_chain_walk's first step: drop the points right behind this one
        whose own fences are signalled."""
        walker = self.walk()
        next(walker)
        next(walker, None)

    def walk(self) -> Iterator[FenceChain | Fence]:
        """dma_fence_chain_for_each: this point, then each earlier one whose own fence is
        not signalled yet; points passed over are dropped from the chain on the way
        (dma_fence_chain_walk's garbage collection)."""
        node: FenceChain | Fence | None = self
        while node is not None:
            yield node
            if not isinstance(node, FenceChain):
                return
            prev = node.prev
            while prev is not None and _contained(prev).signalled:
                prev = prev.prev if isinstance(prev, FenceChain) else None
                node.prev = prev
            node = prev

    def find_seqno(self, seqno: int) -> Fence | None:
        """dma_fence_chain_find_seqno: the fence that signals once point `seqno` has;
        None when it is signalled and gone from the chain (the stub's case). The caller
        checks that `seqno` was submitted (not above this head's)."""
        return self.find_seqnos([seqno])[seqno]

    def find_seqnos(self, seqnos: Iterable[int]) -> dict[int, Fence | None]:
        """find_seqno() of each of `seqnos`, in one walk of the chain rather than one
        each (a TIMELINE_WAIT may name thousands of points of one chain). The walk is
        the same whichever point is looked for, and the node found for a point is never
        further along it than the one found for a lower point: so the highest is found
        first, and the walk goes on from there for the next, no further than the lowest
        needs (what it drops on the way is what a look-up of the lowest alone drops)."""
        wanted = sorted(set(seqnos), reverse=True)
        found: dict[int, Fence | None] = dict.fromkeys(wanted)
        if not wanted:
            return found
        index = 0
        for node in self.walk():
            while index < len(wanted) and (
                node.context != self.context
                or (isinstance(node, FenceChain) and node.prev_seqno < wanted[index])
            ):
                found[wanted[index]] = node
                index += 1
            if index == len(wanted):
                break  # not a step further: the walk drops points as it goes
        return found

    def unwrapped(self) -> list[Fence]:
        """dma_fence_unwrap_for_each: the fences of its points not signalled yet."""
        return [part for node in self.walk() if not (part := _contained(node)).signalled]


def _contained(node: Fence) -> Fence:
    """dma_fence_chain_contained: a point's own fence; any other fence itself."""
    return node.fence if isinstance(node, FenceChain) else node


def unwrap(fence: Fence) -> list[Fence]:
    """dma_fence_unwrap_for_each: the fences inside an array or a timeline point's chain
    (those of its points not signalled yet), else the fence itself."""
    if isinstance(fence, FenceArray):
        return fence.parts
    if isinstance(fence, FenceChain):
        return [leaf for part in fence.unwrapped() for leaf in unwrap(part)]
    return [fence]
