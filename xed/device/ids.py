"""Id allocation as idr_alloc/xa_alloc do it: the lowest free id, starting at 1."""

from __future__ import annotations

import heapq


class IdAllocator:
    def __init__(self, first: int = 1, limit: int = 0xFFFF_FFFF) -> None:
        self._next = first
        self._free: list[int] = []
        self._limit = limit

    def alloc(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        if self._next > self._limit:
            raise OverflowError("id space exhausted")
        self._next += 1
        return self._next - 1

    def release(self, ident: int) -> None:
        heapq.heappush(self._free, ident)
