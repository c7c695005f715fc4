"""A batch-buffer builder for the instructions xed's command streamer executes."""

from __future__ import annotations

import struct

from protocols.constants import (
    MEM_COPY,
    MEM_COPY_FIELD,
    MEM_COPY_PAGE,
    MEM_COPY_PAGE_MODE,
    MI_ARB_CHECK,
    MI_ATOMIC,
    MI_ATOMIC_ADD,
    MI_ATOMIC_INC,
    MI_ATOMIC_INC8B,
    MI_ATOMIC_INLINE_DATA,
    MI_ATOMIC_OP_SHIFT,
    MI_BATCH_BUFFER_END,
    MI_BATCH_BUFFER_START,
    MI_BBS_PPGTT,
    MI_BBS_SECOND_LEVEL,
    MI_COND_BATCH_BUFFER_END,
    MI_COND_MODE_SHIFT,
    MI_COPY_MEM_MEM,
    MI_DO_COMPARE,
    MI_FLUSH_DW,
    MI_FLUSH_DW_OP_STOREDW,
    MI_MEM_FENCE,
    MI_NOOP,
    MI_SDI_NUM_QW_BIT,
    MI_STORE_DATA_IMM,
)


def _lo_hi(addr: int) -> tuple[int, int]:
    return addr & 0xFFFF_FFFF, addr >> 32


class Batch:
    """Dwords of a batch, built instruction by instruction; finish with end()."""

    def __init__(self) -> None:
        self.dwords: list[int] = []

    def _emit(self, *dwords: int) -> Batch:
        self.dwords.extend(d & 0xFFFF_FFFF for d in dwords)
        return self

    def noop(self) -> Batch:
        return self._emit(MI_NOOP)

    def store_dword(self, addr: int, value: int) -> Batch:
        """MI_STORE_DATA_IMM of one dword (length field = dwords - 2)."""
        return self._emit(MI_STORE_DATA_IMM | 2, *_lo_hi(addr), value)

    def store_qword(self, addr: int, value: int) -> Batch:
        return self._emit(MI_STORE_DATA_IMM | MI_SDI_NUM_QW_BIT | 3, *_lo_hi(addr), *_lo_hi(value))

    def atomic_inc(self, addr: int) -> Batch:
        """MI_ATOMIC INC of the dword at `addr`."""
        return self._emit(MI_ATOMIC | MI_ATOMIC_INC | 1, *_lo_hi(addr))

    def atomic_inc64(self, addr: int) -> Batch:
        return self._emit(MI_ATOMIC | MI_ATOMIC_INC8B | 1, *_lo_hi(addr))

    def atomic_add(self, addr: int, value: int) -> Batch:
        return self._emit(
            MI_ATOMIC | MI_ATOMIC_ADD | MI_ATOMIC_INLINE_DATA | 2, *_lo_hi(addr), value
        )

    def atomic(self, addr: int, op: int, operand: int | None = None, qword: bool = False) -> Batch:
        """MI_ATOMIC operation `op` (its five-bit code: AND 1 ... UMIN 0xd) on the dword,
        or with `qword` the qword, at `addr`, with `operand` inline if given."""
        header = MI_ATOMIC | (op | (0x20 if qword else 0)) << MI_ATOMIC_OP_SHIFT
        if operand is None:
            return self._emit(header | 1, *_lo_hi(addr))
        data = _lo_hi(operand) if qword else (operand,)
        return self._emit(header | MI_ATOMIC_INLINE_DATA | (1 + len(data)), *_lo_hi(addr), *data)

    def arb_check(self) -> Batch:
        """MI_ARB_CHECK: a preemption point (one dword)."""
        return self._emit(MI_ARB_CHECK)

    def batch_start(self, addr: int, second_level: bool = False) -> Batch:
        """MI_BATCH_BUFFER_START in the VM: jump to `addr`; `second_level`, a call whose
        MI_BATCH_BUFFER_END comes back after this instruction."""
        flags = MI_BBS_PPGTT | (MI_BBS_SECOND_LEVEL if second_level else 0)
        return self._emit(MI_BATCH_BUFFER_START | flags, *_lo_hi(addr))

    def cond_end(self, addr: int, value: int, mode: int | None = None) -> Batch:
        """MI_CONDITIONAL_BATCH_BUFFER_END: the batch ends unless the dword at `addr`
        compares to `value` as `mode` says (MAD_*_IDD: 0 GT, 1 GTE, 2 LT, 3 LTE, 4 EQ,
        5 NEQ; None, the legacy form: GT)."""
        header = MI_COND_BATCH_BUFFER_END
        if mode is not None:
            header |= MI_DO_COMPARE | mode << MI_COND_MODE_SHIFT
        return self._emit(header, value, *_lo_hi(addr))

    def mem_fence(self) -> Batch:
        return self._emit(MI_MEM_FENCE)

    def flush_dw(self, addr: int | None = None, value: int = 0) -> Batch:
        """MI_FLUSH_DW, with a post-sync store of `value` (a dword) when `addr` is given."""
        if addr is None:
            return self._emit(MI_FLUSH_DW | 2, 0, 0, 0)
        return self._emit(MI_FLUSH_DW | MI_FLUSH_DW_OP_STOREDW | 2, *_lo_hi(addr), value)

    def copy_dword(self, dst: int, src: int) -> Batch:
        """MI_COPY_MEM_MEM: one dword from `src` to `dst`."""
        return self._emit(MI_COPY_MEM_MEM, *_lo_hi(dst), *_lo_hi(src))

    def mem_copy(self, dst: int, src: int, length: int) -> Batch:
        """Copy `length` bytes with the blitter's linear MEM_COPY, as memmove does: one
        instruction in byte mode up to 256 KiB; beyond, whole 256-byte pages in page mode
        (up to 64 MiB each) and one for a tail of bytes, the highest first where the
        destination overlaps the source from above."""
        pieces = []
        done = 0
        while done < length:
            left = length - done
            if left <= MEM_COPY_FIELD:
                pieces.append((done, left, 0, left))
            else:
                pages = min(left // MEM_COPY_PAGE, MEM_COPY_FIELD)
                pieces.append((done, pages * MEM_COPY_PAGE, MEM_COPY_PAGE_MODE, pages))
            done += pieces[-1][1]
        if src < dst < src + length:
            pieces.reverse()
        for offset, _size, mode, units in pieces:
            self.mem_copy_raw(dst + offset, src + offset, units, mode=mode)
        return self

    def mem_copy_raw(
        self,
        dst: int,
        src: int,
        width: int,
        height: int = 1,
        src_pitch: int = 1,
        dst_pitch: int = 1,
        mode: int = 0,
    ) -> Batch:
        """One MEM_COPY as the hardware takes it: `width` bytes (pages, with
        MEM_COPY_PAGE_MODE in `mode`); with MEM_COPY_MATRIX, `height` rows of them at
        their pitches."""
        return self._emit(
            MEM_COPY | mode, width - 1, height - 1, src_pitch - 1, dst_pitch - 1,
            *_lo_hi(src), *_lo_hi(dst), 0,
        )  # fmt: skip

    def raw(self, *dwords: int) -> Batch:
        """Anything at all, e.g. to see the command streamer refuse it."""
        return self._emit(*dwords)

    def end(self) -> Batch:
        return self._emit(MI_BATCH_BUFFER_END)

    def tobytes(self) -> bytes:
        return struct.pack(f"<{len(self.dwords)}I", *self.dwords)

    def __len__(self) -> int:
        return 4 * len(self.dwords)
