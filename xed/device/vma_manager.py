"""Fake mmap offsets (drm_vma_offset_manager): one node per mappable object.

Offsets are device-wide, so a guessed or replayed offset finds the node; whether the
caller may map it is a per-file permission on the node (drm_vma_node_allow), which is
what turns another process's offset into EACCES rather than EINVAL.
"""

from __future__ import annotations

import bisect
from typing import Any

import attrs

# DRM_FILE_PAGE_OFFSET_START on 64-bit: 0xFFFFFFFF >> PAGE_SHIFT + 1 pages, above
# anything a real file offset would use (the same 4 GiB for 4 KiB and 64 KiB pages)
FIRST_OFFSET = 1 << 32


@attrs.define(eq=False)
class VmaNode:
    start: int
    size: int
    obj: Any
    # per-file count, like drm_vma_node_allow: every handle a file holds allows it once
    allowed: dict[Any, int] = attrs.field(factory=dict)

    def allow(self, file: Any) -> None:
        self.allowed[file] = self.allowed.get(file, 0) + 1

    def revoke(self, file: Any) -> None:
        left = self.allowed.get(file, 0) - 1
        if left > 0:
            self.allowed[file] = left
        else:
            self.allowed.pop(file, None)

    def is_allowed(self, file: Any) -> bool:
        return file in self.allowed


class VmaOffsetManager:
    """Offsets and node sizes in pages of the (emulated) host page size."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._next = FIRST_OFFSET
        # every start handed out, in order, including those of removed nodes not swept
        # yet: deleting from the middle of a list is O(n) in the nodes of every client,
        # so a removal only drops the node from _nodes and the list is rebuilt once the
        # stale starts outnumber the live ones (amortized O(1) per removal)
        self._starts: list[int] = []
        self._stale = 0
        self._nodes: dict[int, VmaNode] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def space(self) -> int:
        """Bytes of the whole offset space: no node can be larger (drm_vma_offset_add
        of a larger one is ENOSPC, whatever is free)."""
        shift = self.page_size.bit_length() - 1
        return (0xFFFFFFFF >> shift) * 256 * self.page_size

    def add(self, obj: Any, size: int) -> VmaNode:
        pages = -(-size // self.page_size)
        node = VmaNode(start=self._next, size=pages * self.page_size, obj=obj)
        # a one-page guard between nodes: an overrun never lands in the next object
        self._next += (pages + 1) * self.page_size
        self._starts.append(node.start)  # allocation is monotonic: stays sorted
        self._nodes[node.start] = node
        return node

    def remove(self, node: VmaNode) -> None:
        del self._nodes[node.start]
        self._stale += 1
        if self._stale > len(self._nodes):
            # a dict keeps insertion order and starts are handed out increasing: its
            # keys are the live starts, sorted, copied at C speed (no Python loop)
            self._starts = list(self._nodes)
            self._stale = 0
        node.allowed.clear()

    def nodes(self) -> list[VmaNode]:
        return list(self._nodes.values())

    def exact(self, offset: int) -> VmaNode | None:
        """The node starting at `offset` (drm_vma_offset_exact_lookup_locked)."""
        return self._nodes.get(offset)

    def containing(self, offset: int) -> VmaNode | None:
        """The node whose range holds `offset`, for user addresses inside a mapping."""
        index = bisect.bisect_right(self._starts, offset) - 1
        if index < 0:
            return None
        # a stale start is a removed node's: nodes never overlap and starts are never
        # handed out again, so no live node before it reaches `offset` either
        node = self._nodes.get(self._starts[index])
        return node if node is not None and offset < node.start + node.size else None
