"""The completion queue: a ring in memory shared by the aux driver and the application.

As with real verbs, polling a CQ is a read of user memory, not a request: the driver
writes each completion into the next slot and then advances `head`; the application
reads the slots up to `head` and advances `tail`. Each index is one 8-byte store
(protocols.words), and x86 stores become visible in order, so a reader that sees the
new head sees the slot written before it. A full ring drops the completion and counts
an overrun, as a CQ overrun would.
"""

from __future__ import annotations

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

    @classmethod
    def create(cls) -> tuple[CompletionRing, int]:
        """A new ring and its descriptor (to hand to the application; caller closes)."""
        fd = os.memfd_create("ib-cq", os.MFD_CLOEXEC)
        os.ftruncate(fd, CQ_SIZE)
        return cls(fd), fd

    # --- the driver's side --------------------------------------------------------------
    def push(self, wr_id: int, status: int, opcode: int, byte_len: int) -> bool:
        head = self.words.load_u64(CQ_HEAD)
        if head - self.words.load_u64(CQ_TAIL) >= CQ_ENTRIES:
            self.words.store_u64(CQ_OVERRUNS, self.words.load_u64(CQ_OVERRUNS) + 1)
            return False
        CQE.pack_into(
            self.mm, CQ_FIRST + (head % CQ_ENTRIES) * CQE.size, wr_id, status, opcode, byte_len, 0
        )
        self.words.store_u64(CQ_HEAD, head + 1)  # publish after the slot is written
        return True

    # --- the application's side ---------------------------------------------------------
    def poll(self, most: int) -> tuple[m.IbvWc, ...]:
        tail = self.words.load_u64(CQ_TAIL)
        ready = min(self.words.load_u64(CQ_HEAD) - tail, most)
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
