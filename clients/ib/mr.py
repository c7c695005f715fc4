"""Memory regions of the IB-like aux driver: mapped pages, and the keys that name them.

An lkey names a region to the context that registered it; an rkey is what that context
hands a peer so the peer's work requests can reach the region. Both are secrets, as on
real HCAs where a guessed rkey is an attack: 32 random bits, never 0, never two alike
while their regions live. Counting keys up made the next one a guess away.
"""

from __future__ import annotations

import errno
import mmap
import secrets
from typing import TYPE_CHECKING

from protocols import messages as m
from protocols.constants import IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_REMOTE_WRITE, PAGE_SIZE
from protocols.memfd import UnsafeMemory, check_memfd

from .errors import VerbsError, refuse_if

if TYPE_CHECKING:
    from .driver import Context


class Keys:
    """The lkeys and rkeys in use, one pool for both: a key names one region only."""

    def __init__(self) -> None:
        self._live: set[int] = set()

    def take(self) -> int:
        while True:
            key = secrets.randbits(32)
            if key and key not in self._live:
                self._live.add(key)
                return key

    def give_back(self, *keys: int) -> None:
        self._live.difference_update(keys)

    def __len__(self) -> int:
        return len(self._live)


class MemoryRegion:
    """Mapped pages behind [addr, addr+length) of one context's VM."""

    def __init__(
        self, context: Context, addr: int, length: int, access: int, lkey: int, rkey: int
    ) -> None:
        self.context = context
        self.addr = addr
        self.length = length
        self.access = access
        self.lkey = lkey
        self.rkey = rkey
        self.valid = True
        self.evicted = False  # pages let go for a userptr change: fault them in again
        self._maps: list[mmap.mmap] = []
        self._spans: list[tuple[int, int, memoryview]] = []  # (va, length, pages)

    def map(self, spans: tuple[m.XedAuxSpan, ...], fds: list[int]) -> None:
        """Map the spans' pages; EFAULT (nothing mapped) for memory not safe to map."""
        maps = _map_safely(spans, fds, self.access)
        self._maps = maps
        self.evicted = False
        for span in spans:
            whole = memoryview(maps[span.fd_index])
            self._spans.append(
                (span.va, span.length, whole[span.offset : span.offset + span.length])
            )
            whole.release()

    def covers(self, addr: int, length: int) -> bool:
        return self.addr <= addr and addr + length <= self.addr + self.length

    def overlaps(self, start: int, length: int) -> bool:
        return start < self.addr + self.length and self.addr < start + length

    def pieces(self, addr: int, length: int) -> list[memoryview]:
        """The mapped pages of [addr, addr+length), in order."""
        out = []
        end = addr + length
        for va, span_len, pages in self._spans:
            lo, hi = max(addr, va), min(end, va + span_len)
            if lo < hi:
                out.append(pages[lo - va : hi - va])
        return out

    def invalidate(self) -> None:
        """Let the pages go: nothing of this region is touched again."""
        self.valid = False
        self.evict()

    def evict(self) -> None:
        """Let the pages go until the next fault maps them again."""
        self.evicted = True
        for _va, _len, pages in self._spans:
            pages.release()
        self._spans.clear()
        for mapping in self._maps:
            mapping.close()
        self._maps.clear()


def _map_safely(spans: tuple[m.XedAuxSpan, ...], fds: list[int], access: int) -> list[mmap.mmap]:
    """Map each descriptor as far as the spans reach into it, after judging it as the
    daemon judges what clients send (protocols.memfd): memory someone could shrink under
    us, hugetlbfs, or a span beyond the memory would end this process with SIGBUS, so
    they fail the region (EFAULT, as ib_umem_get fails on pages it cannot get). A
    read-only descriptor maps read-only, for a region that never receives bytes."""
    ends = [0] * len(fds)
    for span in spans:
        refuse_if(span.fd_index >= len(fds), errno.EFAULT, "a span without its memory")
        ends[span.fd_index] = max(ends[span.fd_index], span.offset + span.length)
    writes = access & (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)
    maps: list[mmap.mmap] = []
    try:
        for fd, end in zip(fds, ends, strict=True):
            size = -(-end // PAGE_SIZE) * PAGE_SIZE
            try:
                writable = check_memfd(fd, size)
            except UnsafeMemory as exc:
                raise VerbsError(errno.EFAULT, f"memory not safe to map: {exc}") from None
            refuse_if(writes and not writable, errno.EFAULT, "read-only memory, write access")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            try:
                maps.append(mmap.mmap(fd, size, mmap.MAP_SHARED, prot))
            except OSError as exc:
                raise VerbsError(errno.EFAULT, f"cannot map it: {exc.strerror}") from None
    except VerbsError:
        for mapping in maps:
            mapping.close()
        raise
    return maps


def copy_pieces(dst: list[memoryview], src: list[memoryview]) -> int:
    """One memcpy per overlap of the two piece lists (they cover equal lengths)."""
    moved = 0
    di = si = 0
    doff = soff = 0
    while di < len(dst) and si < len(src):
        n = min(len(dst[di]) - doff, len(src[si]) - soff)
        dst[di][doff : doff + n] = src[si][soff : soff + n]
        moved += n
        doff += n
        soff += n
        if doff == len(dst[di]):
            di, doff = di + 1, 0
        if soff == len(src[si]):
            si, soff = si + 1, 0
    return moved
