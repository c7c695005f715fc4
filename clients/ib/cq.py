"""The completion queue: a ring in memory shared by the aux driver and the application.

As with real verbs, polling a CQ is a read of user memory, not a request: the driver
writes each completion into the next slot and then advances `head`; the application
reads the slots up to `head` and advances `tail`. The ring is the application's to
scribble on, so the driver keeps its own head privately (publishing a copy), trusts no
tail that is not within one ring of it, and seals the memfd against resizing (a
truncated ring would SIGBUS the driver). The ring is the application's to
scribble on, so the driver keeps its own head privately (publishing a copy), trusts no
tail that is not within one ring of it, and seals the memfd against resizing (a
truncated ring would SIGBUS the driver). Each index is one 8-byte store
(protocols.words), and x86 stores become visible in order, so a reader that sees the
new head sees the slot written before it. A full ring drops the completion and counts
an overrun, as a CQ overrun would.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

from protocols import messages as m
from protocols.words import Words

CQ_ENTRIES = 1024
CQ_HEAD = 0  # u64, written by the driver
CQ_TAIL = 8  # u64, written by the application
CQ_OVERRUNS = 16  # u64, written by the driver
CQ_FIRST = 64
CQE = struct.Struct("<QIIQQ")  # wr_id, status, opcode, byte_len, pad: 32 bytes
CQ_SIZE = 65536
assert CQ_FIRST + CQ_ENTRIES * CQE.size <= CQ_SIZE


class CompletionRing:
    def __init__(self, fd: int) -> None:
        self.mm = mmap.mmap(fd, CQ_SIZE, mmap.MAP_SHARED)
        self.words = Words(self.mm)
        self._head = 0  # the driver's own count: never read back from shared memory
        self._overruns = 0

    @classmethod
    def create(cls) -> tuple[CompletionRing, int]:
        """A new ring and its descriptor (to hand to the application; caller closes)."""
        fd = os.memfd_create("ib-cq", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, CQ_SIZE)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
        return cls(fd), fd

    # --- the driver's side --------------------------------------------------------------
    def push(self, wr_id: int, status: int, opcode: int, byte_len: int) -> bool:
        head = self._head
        tail = self.words.load_u64(CQ_TAIL)
        if not head - CQ_ENTRIES <= tail <= head or head - tail >= CQ_ENTRIES:
            # full, or a tail the application made up: the completion is lost either way
            self._overruns += 1
            self.words.store_u64(CQ_OVERRUNS, self._overruns)
            return False
        slot = CQ_FIRST + (head % CQ_ENTRIES) * CQE.size
        CQE.pack_into(self.mm, slot, wr_id, status, opcode, byte_len, 0)
        self._head = head + 1
        self.words.store_u64(CQ_HEAD, self._head)  # publish after the slot is written
        return True

    # --- the application's side ---------------------------------------------------------
    def poll(self, most: int) -> tuple[m.IbvWc, ...]:
        tail = self.words.load_u64(CQ_TAIL)
        ready = max(min(self.words.load_u64(CQ_HEAD) - tail, most, CQ_ENTRIES), 0)
        taken = []
        for index in range(tail, tail + ready):
            wr_id, status, opcode, byte_len, _ = CQE.unpack_from(
                self.mm, CQ_FIRST + (index % CQ_ENTRIES) * CQE.size
            )
            taken.append(m.IbvWc(wr_id=wr_id, status=status, opcode=opcode, byte_len=byte_len))
        self.words.store_u64(CQ_TAIL, tail + ready)
        return tuple(taken)

    @property
    def overruns(self) -> int:
        return self.words.load_u64(CQ_OVERRUNS)

    def close(self) -> None:
        if not self.mm.closed:
            self.words.release()
            self.mm.close()
