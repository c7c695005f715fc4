"""The device's own mappings of BOs: a bounded cache, least recently used out first.

Every BO the device touches (a batch's store, a user fence, WAIT_USER_FENCE) must be
mapped in the daemon, and each mapping costs a map-count entry (vm.max_map_count,
65530 by default) and a descriptor (CPython's mmap keeps a dup of the file). Kept for
the BO's whole life, a batch touching a few thousand BOs would run the daemon out of
one or the other. So the mappings are a cache: at most `limit` at once, the least
recently used unmapped to make room, and when the kernel refuses a map for want of
descriptors or memory, every cached one is dropped and the map tried once more (the
kernel's shrinker, in small). A map that fails even then is the caller's to report: a
GPU fault on the device side, an errno on an ioctl.

A BO has one view at most. It is read-only where the device may not write the pages
(a read-only import, or a foreign buffer its owner sealed against writes since: the
kernel refuses a writable shared map of it, not a read-only one); a seal is never
removed, so such a view is kept as it is, never swapped for a writable one.

Whoever maps must use the view and its words at once: nothing may keep either across
an await, since the next access (any task's) may unmap it.
"""

from __future__ import annotations

import collections
import mmap
from collections.abc import Callable
from errno import EMFILE, ENFILE, ENOMEM
from typing import Protocol

MAX_VIEWS = 1024  # far below the default map count, and a descriptor each
SHORT_OF = (EMFILE, ENFILE, ENOMEM)  # the kernel is short of something: shrink and retry


class Mappable(Protocol):
    def drop_view(self) -> None: ...


def views_limit(nofile: int) -> int:
    """How many views to keep with a descriptor limit of `nofile`: an eighth of it at
    most, since every BO already costs a descriptor of its own, and MAX_VIEWS."""
    return max(1, min(MAX_VIEWS, nofile // 8))


class ViewCache:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lru: collections.OrderedDict[Mappable, None] = collections.OrderedDict()
        self.shrinks = 0  # times a refused map emptied the cache

    def __len__(self) -> int:
        return len(self._lru)

    def map(self, owner: Mappable, create: Callable[[], mmap.mmap]) -> mmap.mmap:
        """A new view for `owner`, made room for first; OSError if the kernel refuses."""
        while len(self._lru) >= self.limit:
            self._evict_oldest()
        try:
            view = create()
        except OSError as exc:
            if exc.errno not in SHORT_OF or not self._lru:
                raise
            self.shrinks += 1
            while self._lru:
                self._evict_oldest()
            view = create()
        self._lru[owner] = None
        return view

    def used(self, owner: Mappable) -> None:
        """`owner`'s view was used again: it is the last to go."""
        self._lru.move_to_end(owner)

    def forget(self, owner: Mappable) -> None:
        """`owner` unmapped its view itself (it is being freed)."""
        self._lru.pop(owner, None)

    def _evict_oldest(self) -> None:
        owner, _ = self._lru.popitem(last=False)
        owner.drop_view()
